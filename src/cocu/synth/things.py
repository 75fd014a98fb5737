"""Procedural looks of the world's things, each drawn into a box on a :class:`Canvas`.

A painter gets the canvas, the per-image random generator, the thing's box and its instance id; it
paints every part of the thing with the thing's class and returns the colour the captions may name.
Shapes are masks in box-local coordinates ``u`` (0 = left edge, 1 = right edge, mirrored when the
box is flipped) and ``v`` (0 = top, 1 = bottom).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from cocu.synth.canvas import Canvas, Window, noise, sample_hsv, shade
from cocu.synth.concepts import concept


@dataclass(frozen=True)
class Box:
    """Where a thing is drawn, in pixels: top-left corner, width, height; ``flip`` mirrors it."""

    x0: float
    y0: float
    w: float
    h: float
    flip: bool = False


class _Local:
    """Box-local coordinates over the canvas window the box covers, shape masks and painting.

    ``u`` [1,w] and ``v`` [h,1] cover only the window (the box clipped to the canvas), so every mask
    and colour field of a thing has the window's shape [h,w].
    """

    def __init__(self, canvas: Canvas, box: Box, name: str, instance: int):
        g = canvas.grid
        r0, r1 = _span(box.y0, box.h, canvas.size)
        c0, c1 = _span(box.x0, box.w, canvas.size)
        self.window: Window = (slice(r0, r1), slice(c0, c1))
        u = (g.xs[:, c0:c1] - box.x0) / box.w
        self.u = 1.0 - u if box.flip else u
        self.v = (g.ys[r0:r1] - box.y0) / box.h
        self.aspect = box.w / box.h
        self.canvas = canvas
        self.name = name
        self.instance = instance

    def paint(self, mask: np.ndarray, colour: np.ndarray) -> None:
        self.canvas.paint(mask, colour, self.name, self.instance, self.window)

    def noise(self, rng: np.random.Generator, cells: int) -> np.ndarray:
        return noise(rng, self.canvas.grid, cells, cells, self.window)

    def rect(self, u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
        return ((self.u >= u0) & (self.u < u1)) & ((self.v >= v0) & (self.v < v1))

    def ellipse(self, cu: float, cv: float, ru: float, rv: float) -> np.ndarray:
        return ((self.u - cu) / ru) ** 2 + ((self.v - cv) / rv) ** 2 <= 1.0

    def disc(self, cu: float, cv: float, r: float) -> np.ndarray:
        """A round disc of radius ``r`` in units of the box height."""
        return self.ellipse(cu, cv, r / self.aspect, r)

    def poly(self, pts: list[tuple[float, float]]) -> np.ndarray:
        """Convex polygon given by its corners (u, v) in order."""
        area = sum(a[0] * b[1] - b[0] * a[1] for a, b in zip(pts, pts[1:] + pts[:1]))
        sign = 1.0 if area >= 0 else -1.0
        inside = None
        for (x1, y1), (x2, y2) in zip(pts, pts[1:] + pts[:1]):
            # the pixel is on the inner side of edge (x1,y1)->(x2,y2); row and column terms are separable
            side = (sign * (x2 - x1)) * (self.v - y1) >= (sign * (y2 - y1)) * (self.u - x1)
            inside = side if inside is None else inside & side
        return inside

    def polar(self, cu: float, cv: float) -> tuple[np.ndarray, np.ndarray]:
        """Radius (box-height units) and angle of every pixel around (cu, cv)."""
        du = (self.u - cu) * self.aspect
        dv = self.v - cv
        return np.sqrt(du * du + dv * dv), np.arctan2(dv, du)


def _span(start: float, length: float, size: int) -> tuple[int, int]:
    """Pixel rows (or columns) whose centres may fall inside [start, start + length), clipped."""
    lo = min(max(int(np.floor(start)), 0), size)
    hi = max(min(int(np.ceil(start + length)), size), lo)
    return lo, hi


def _colour(rng: np.random.Generator, name: str, part: str) -> np.ndarray:
    return sample_hsv(rng, concept(name).colours[part])


def _lit(rng: np.random.Generator, loc: _Local, cells: int = 5, amp: float = 0.25) -> np.ndarray:
    """[h,w] brightness: smooth noise plus light from the top of the box."""
    n = loc.noise(rng, cells)
    return (1.0 + amp * (n - 0.5)) * (1.1 - 0.25 * np.clip(loc.v, 0.0, 1.0))


def draw_tree(canvas: Canvas, rng: np.random.Generator, box: Box, inst: int) -> np.ndarray:
    loc = _Local(canvas, box, "tree", inst)
    trunk = _colour(rng, "tree", "trunk")
    crown = _colour(rng, "tree", "crown")
    loc.paint(loc.rect(0.42, 0.58, 0.5, 1.0), shade(trunk, _lit(rng, loc, 8, 0.4)))
    if rng.random() < 0.4:
        mask = (loc.poly([(0.5, 0.0), (0.8, 0.32), (0.2, 0.32)]) | loc.poly([(0.5, 0.15), (0.92, 0.55), (0.08, 0.55)])
                | loc.poly([(0.5, 0.3), (1.0, 0.8), (0.0, 0.8)]))
        crown = crown * np.array([0.7, 0.85, 0.8], dtype=np.float32)
    else:
        mask = loc.disc(0.5, 0.27, 0.26) | loc.disc(0.27, 0.45, 0.2) | loc.disc(0.73, 0.45, 0.2) | loc.disc(0.5, 0.52, 0.18)
    dapple = 0.7 + 0.6 * loc.noise(rng, 9)
    loc.paint(mask, shade(crown, dapple * (1.15 - 0.35 * np.clip(loc.v, 0, 1))))
    return crown


def draw_house(canvas: Canvas, rng: np.random.Generator, box: Box, inst: int) -> np.ndarray:
    loc = _Local(canvas, box, "house", inst)
    walls = _colour(rng, "house", "walls")
    siding = 0.92 + 0.08 * (np.floor(loc.v * 14.0) % 2)
    loc.paint(loc.rect(0.08, 0.92, 0.4, 1.0), shade(walls, siding * _lit(rng, loc, 4, 0.15)))
    roof = _colour(rng, "house", "roof")
    loc.paint(loc.rect(0.7, 0.8, 0.05, 0.3), roof * 0.8)
    shingles = 0.85 + 0.15 * (np.floor(loc.v * 12.0) % 2)
    loc.paint(loc.poly([(0.0, 0.44), (0.5, 0.0), (1.0, 0.44)]), shade(roof, shingles * np.ones_like(loc.u)))
    window = _colour(rng, "house", "window")
    for u0 in (0.17, 0.66):
        loc.paint(loc.rect(u0, u0 + 0.17, 0.52, 0.7), window)
    loc.paint(loc.rect(0.42, 0.58, 0.62, 1.0), roof * 0.6)
    return walls


def draw_car(canvas: Canvas, rng: np.random.Generator, box: Box, inst: int) -> np.ndarray:
    loc = _Local(canvas, box, "car", inst)
    body = _colour(rng, "car", "body")
    light = shade(body, (1.15 - 0.4 * np.clip(loc.v, 0, 1)) * np.ones_like(loc.u))
    cabin = loc.poly([(0.2, 0.45), (0.32, 0.04), (0.7, 0.04), (0.84, 0.45)])
    hull = loc.rect(0.04, 0.96, 0.4, 0.84) | loc.ellipse(0.06, 0.62, 0.06, 0.22) | loc.ellipse(0.94, 0.62, 0.06, 0.22)
    loc.paint(cabin | hull, light)
    glass = _colour(rng, "car", "window")
    loc.paint(loc.poly([(0.26, 0.42), (0.35, 0.12), (0.5, 0.12), (0.5, 0.42)]), glass)
    loc.paint(loc.poly([(0.55, 0.42), (0.55, 0.12), (0.67, 0.12), (0.77, 0.42)]), glass * 0.9)
    loc.paint(loc.rect(0.92, 0.98, 0.48, 0.58), np.array([1.0, 0.95, 0.6], dtype=np.float32))
    tyre = _colour(rng, "car", "wheel")
    for cu in (0.24, 0.76):
        loc.paint(loc.disc(cu, 0.8, 0.2), tyre)
        loc.paint(loc.disc(cu, 0.8, 0.09), np.array([0.65, 0.65, 0.68], dtype=np.float32))
    return body


def draw_boat(canvas: Canvas, rng: np.random.Generator, box: Box, inst: int) -> np.ndarray:
    loc = _Local(canvas, box, "boat", inst)
    sail = _colour(rng, "boat", "sail")
    loc.paint(loc.rect(0.47, 0.52, 0.0, 0.74), np.array([0.35, 0.25, 0.15], dtype=np.float32))
    folds = shade(sail, (0.85 + 0.15 * loc.u) * np.ones_like(loc.v))
    loc.paint(loc.poly([(0.54, 0.04), (0.54, 0.68), (0.95, 0.68)]), folds)
    loc.paint(loc.poly([(0.45, 0.14), (0.45, 0.68), (0.12, 0.68)]), sail * 0.9)
    hull = _colour(rng, "boat", "hull")
    loc.paint(loc.poly([(0.0, 0.72), (1.0, 0.72), (0.84, 1.0), (0.16, 1.0)]), shade(hull, _lit(rng, loc, 4, 0.2)))
    loc.paint(loc.rect(0.05, 0.95, 0.76, 0.81), np.clip(1.4 - hull, 0, 1))
    return hull


def draw_person(canvas: Canvas, rng: np.random.Generator, box: Box, inst: int) -> np.ndarray:
    loc = _Local(canvas, box, "person", inst)
    skin = _colour(rng, "person", "skin")
    shirt = _colour(rng, "person", "shirt")
    trousers = _colour(rng, "person", "trousers")
    loc.paint(loc.rect(0.27, 0.47, 0.53, 0.97) | loc.rect(0.53, 0.73, 0.53, 0.97), trousers)
    loc.paint(loc.rect(0.22, 0.47, 0.95, 1.0) | loc.rect(0.53, 0.78, 0.95, 1.0), trousers * 0.4)
    loc.paint(loc.rect(0.06, 0.94, 0.5, 0.56) & ~loc.rect(0.2, 0.8, 0.0, 1.0), skin)
    torso = loc.rect(0.22, 0.78, 0.2, 0.56) | loc.rect(0.06, 0.22, 0.22, 0.5) | loc.rect(0.78, 0.94, 0.22, 0.5)
    loc.paint(torso, shade(shirt, _lit(rng, loc, 4, 0.2)))
    loc.paint(loc.rect(0.42, 0.58, 0.16, 0.22), skin * 0.9)
    loc.paint(loc.disc(0.5, 0.1, 0.09), skin)
    loc.paint(loc.disc(0.5, 0.08, 0.085) & (loc.v < 0.07), trousers * 0.5 + 0.05)
    return shirt


def draw_dog(canvas: Canvas, rng: np.random.Generator, box: Box, inst: int) -> np.ndarray:
    loc = _Local(canvas, box, "dog", inst)
    fur = _colour(rng, "dog", "fur")
    coat = shade(fur, _lit(rng, loc, 6, 0.3))
    loc.paint(loc.poly([(0.1, 0.42), (0.0, 0.08), (0.06, 0.06), (0.18, 0.38)]), coat)
    legs = loc.rect(0.16, 0.26, 0.45, 1.0) | loc.rect(0.3, 0.4, 0.45, 1.0) | loc.rect(0.56, 0.66, 0.45, 1.0) | loc.rect(0.7, 0.8, 0.45, 1.0)
    loc.paint(legs, coat * 0.9)
    loc.paint(loc.ellipse(0.46, 0.44, 0.36, 0.2) | loc.rect(0.68, 0.8, 0.22, 0.5), coat)
    loc.paint(loc.disc(0.8, 0.22, 0.16) | loc.ellipse(0.92, 0.3, 0.08, 0.09), coat)
    loc.paint(loc.ellipse(0.74, 0.26, 0.05, 0.16), fur * 0.55)
    loc.paint(loc.disc(0.99, 0.27, 0.04) | loc.disc(0.84, 0.17, 0.03), np.full(3, 0.05, dtype=np.float32))
    return fur


def draw_bird(canvas: Canvas, rng: np.random.Generator, box: Box, inst: int) -> np.ndarray:
    loc = _Local(canvas, box, "bird", inst)
    body = _colour(rng, "bird", "body")
    wing = body * 0.75
    loc.paint(loc.poly([(0.32, 0.55), (0.02, 0.0), (0.16, 0.0), (0.52, 0.5)]), wing)
    loc.paint(loc.poly([(0.48, 0.5), (0.84, 0.0), (0.98, 0.0), (0.68, 0.55)]), wing)
    loc.paint(loc.poly([(0.3, 0.58), (0.08, 0.45), (0.08, 0.78)]), body * 0.85)
    loc.paint(loc.ellipse(0.48, 0.62, 0.24, 0.16), shade(body, (1.1 - 0.3 * np.clip(loc.v, 0, 1)) * np.ones_like(loc.u)))
    loc.paint(loc.disc(0.73, 0.52, 0.13), body)
    loc.paint(loc.poly([(0.8, 0.45), (0.97, 0.54), (0.8, 0.6)]), _colour(rng, "bird", "beak"))
    loc.paint(loc.disc(0.76, 0.48, 0.035), np.full(3, 0.05, dtype=np.float32))
    return body


def draw_flower(canvas: Canvas, rng: np.random.Generator, box: Box, inst: int) -> np.ndarray:
    loc = _Local(canvas, box, "flower", inst)
    stem = _colour(rng, "flower", "stem")
    loc.paint(loc.rect(0.46, 0.54, 0.35, 1.0) | loc.ellipse(0.7, 0.72, 0.2, 0.06), stem)
    petals = _colour(rng, "flower", "petals")
    n = int(rng.integers(5, 9))
    radius, angle = loc.polar(0.5, 0.3)
    edge = 0.24 + 0.06 * np.cos(n * (angle + rng.random()))
    loc.paint(radius <= edge, shade(petals, 1.1 - 0.9 * radius))
    loc.paint(radius <= 0.09, _colour(rng, "flower", "centre"))
    return petals


def draw_fence(canvas: Canvas, rng: np.random.Generator, box: Box, inst: int) -> np.ndarray:
    loc = _Local(canvas, box, "fence", inst)
    wood = _colour(rng, "fence", "wood")
    grain = shade(wood, _lit(rng, loc, 3, 0.2))
    loc.paint(loc.rect(0.0, 1.0, 0.3, 0.42) | loc.rect(0.0, 1.0, 0.68, 0.8), grain * 0.8)
    period = 1.0 / int(rng.integers(6, 10))
    frac = (loc.u % period) / (0.6 * period)
    tip = 0.2 * np.abs(2.0 * frac - 1.0)
    pickets = (frac < 1.0) & (loc.v >= tip) & (loc.v < 1.0) & (loc.u >= 0.0) & (loc.u < 1.0)
    loc.paint(pickets, grain)
    return wood


def draw_sun(canvas: Canvas, rng: np.random.Generator, box: Box, inst: int) -> np.ndarray:
    loc = _Local(canvas, box, "sun", inst)
    disc = _colour(rng, "sun", "disc")
    radius, angle = loc.polar(0.5, 0.5)
    rays = 0.3 + 0.2 * np.clip((np.cos(int(rng.integers(8, 13)) * (angle + rng.random())) - 0.3) / 0.7, 0, 1)
    loc.paint((radius <= rays) & (radius > 0.28), disc * np.array([1.0, 0.85, 0.7], dtype=np.float32))
    loc.paint(radius <= 0.3, shade(disc, 1.15 - 0.6 * radius))
    return disc


def draw_umbrella(canvas: Canvas, rng: np.random.Generator, box: Box, inst: int) -> np.ndarray:
    loc = _Local(canvas, box, "umbrella", inst)
    loc.paint(loc.rect(0.47, 0.53, 0.3, 1.0), np.array([0.3, 0.3, 0.32], dtype=np.float32))
    canopy = _colour(rng, "umbrella", "canopy")
    stripe = _colour(rng, "umbrella", "stripe") if rng.random() < 0.6 else _colour(rng, "umbrella", "canopy")
    radius, angle = loc.polar(0.5, 0.48)
    sector = np.floor((angle + np.pi) / (np.pi / 8.0)) % 2
    colour = np.where(sector[:, :, None] > 0, canopy, stripe)
    loc.paint((radius <= 0.47) & (loc.v <= 0.48), colour * (1.05 - 0.3 * radius)[:, :, None])
    loc.paint(loc.disc(0.5, 0.01, 0.035), canopy * 0.7)
    return canopy


def draw_ball(canvas: Canvas, rng: np.random.Generator, box: Box, inst: int) -> np.ndarray:
    loc = _Local(canvas, box, "ball", inst)
    body = _colour(rng, "ball", "body")
    band = _colour(rng, "ball", "band")
    radius, _ = loc.polar(0.5, 0.5)
    _, angle = loc.polar(0.5 + 0.2 * (rng.random() - 0.5), 0.15)
    sector = np.floor((angle + np.pi) / (np.pi / 3.0)) % 2
    colour = np.where(sector[:, :, None] > 0, body, band)
    dist_light = np.sqrt((loc.u - 0.35) ** 2 + (loc.v - 0.3) ** 2)
    loc.paint(radius <= 0.5, colour * (1.15 - 0.6 * dist_light)[:, :, None])
    loc.paint(loc.ellipse(0.33, 0.25, 0.08, 0.05), np.ones(3, dtype=np.float32))
    return body


def draw_chair(canvas: Canvas, rng: np.random.Generator, box: Box, inst: int) -> np.ndarray:
    loc = _Local(canvas, box, "chair", inst)
    wood = _colour(rng, "chair", "wood")
    grain = shade(wood, _lit(rng, loc, 3, 0.25))
    legs = loc.rect(0.1, 0.2, 0.5, 1.0) | loc.rect(0.8, 0.9, 0.5, 1.0) | loc.rect(0.26, 0.33, 0.5, 0.9) | loc.rect(0.67, 0.74, 0.5, 0.9)
    loc.paint(legs, grain * 0.8)
    slats = loc.rect(0.15, 0.85, 0.08, 0.45) & ((loc.u - 0.15) % 0.14 < 0.07)
    back = loc.rect(0.12, 0.22, 0.0, 0.5) | loc.rect(0.78, 0.88, 0.0, 0.5) | loc.rect(0.12, 0.88, 0.0, 0.1) | slats
    loc.paint(back, grain)
    loc.paint(loc.poly([(0.06, 0.5), (0.94, 0.5), (1.0, 0.6), (0.0, 0.6)]), grain * 1.1)
    return wood


def draw_kite(canvas: Canvas, rng: np.random.Generator, box: Box, inst: int) -> np.ndarray:
    loc = _Local(canvas, box, "kite", inst)
    sail = _colour(rng, "kite", "sail")
    tail = _colour(rng, "kite", "tail")
    wave = 0.5 + 0.12 * np.sin((loc.v - 0.65) * 30.0)
    loc.paint((np.abs(loc.u - wave) < 0.05) & (loc.v > 0.62) & (loc.v < 1.0), tail)
    for cv in (0.78, 0.92):
        loc.paint(loc.ellipse(0.5 + 0.12 * np.sin((cv - 0.65) * 30.0), cv, 0.1, 0.03), tail)
    diamond = loc.poly([(0.5, 0.0), (1.0, 0.26), (0.5, 0.68), (0.0, 0.26)])
    quarter = (loc.u < 0.5) ^ (loc.v < 0.26)
    loc.paint(diamond, np.where(quarter[:, :, None], sail, tail))
    spars = diamond & ((np.abs(loc.u - 0.5) < 0.03) | (np.abs(loc.v - 0.26) < 0.02))
    loc.paint(spars, np.full(3, 0.2, dtype=np.float32))
    return sail


Painter = Callable[[Canvas, np.random.Generator, Box, int], np.ndarray]

PAINTERS: dict[str, Painter] = {
    "tree": draw_tree, "house": draw_house, "car": draw_car, "boat": draw_boat, "person": draw_person,
    "dog": draw_dog, "bird": draw_bird, "flower": draw_flower, "fence": draw_fence, "sun": draw_sun,
    "umbrella": draw_umbrella, "ball": draw_ball, "chair": draw_chair, "kite": draw_kite,
}
