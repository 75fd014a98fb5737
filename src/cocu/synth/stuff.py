"""Procedural textures and region shapes of the world's stuff (sky, grass, water, walls, ...).

``texture(name, ...)`` returns the colour field [h,S,3] of one stuff concept over some full-width rows of
the canvas (:class:`Rows`); its vertical extent (``top``..``bottom``, pixels) shapes its gradients and
patterns, and the scene composer paints it through a region mask. Region helpers return boundaries as
[1,S] rows of y values (one per column).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from cocu.synth.canvas import Grid, Rows, noise, rows, sample_hsv, shade
from cocu.synth.concepts import concept

_WHITE = np.ones(3, dtype=np.float32)


def _base(rng: np.random.Generator, name: str, part: str = "base") -> np.ndarray:
    return sample_hsv(rng, concept(name).colours[part])


def _depth(r: Rows, top: float, bottom: float) -> np.ndarray:
    """[h,1] 0 at ``top`` .. 1 at ``bottom``."""
    return np.clip((r.ys - top) / max(bottom - top, 1.0), 0.0, 1.0)


def _sky(rng: np.random.Generator, r: Rows, top: float, bottom: float) -> np.ndarray:
    base = _base(rng, "sky")
    t = _depth(r, top, bottom)[:, :, None]  # [h,1,1]: the sky only changes with height
    haze = 0.45 * t * t
    return np.broadcast_to(base * (1.0 - haze) + _WHITE * haze, r.shape + (3,))


def _cloud(rng: np.random.Generator, r: Rows, top: float, bottom: float) -> np.ndarray:
    base = _base(rng, "cloud")
    puffs = 0.85 + 0.2 * r.noise(rng, 6, 8)
    return shade(base, puffs * (1.05 - 0.25 * _depth(r, top, bottom)))


def _grass(rng: np.random.Generator, r: Rows, top: float, bottom: float) -> np.ndarray:
    base = _base(rng, "grass")
    blades = r.noise(rng, 3, max(4, r.size // 2))
    field = 0.6 + 0.45 * blades + 0.15 * r.speckle(rng) + 0.2 * _depth(r, top, bottom)
    return shade(base, field)


def _water(rng: np.random.Generator, r: Rows, top: float, bottom: float) -> np.ndarray:
    base = _base(rng, "water")
    ripples = r.noise(rng, max(4, r.size // 3), 3)
    field = (0.8 + 0.4 * ripples) * (1.1 - 0.35 * _depth(r, top, bottom))
    colour = shade(base, field)
    glint = ((ripples > 0.75) & (r.speckle(rng) > 0.6))[:, :, None]
    return np.where(glint, 0.5 * colour + 0.5 * _WHITE, colour)


def _sand(rng: np.random.Generator, r: Rows, top: float, bottom: float) -> np.ndarray:
    base = _base(rng, "sand")
    return shade(base, 0.88 + 0.12 * r.noise(rng, 4, 4) + 0.16 * (r.speckle(rng) - 0.5))


def _snow(rng: np.random.Generator, r: Rows, top: float, bottom: float) -> np.ndarray:
    base = _base(rng, "snow")
    drift = r.noise(rng, 4, 6)
    blue = np.array([0.78, 0.86, 1.0], dtype=np.float32)
    tint = (0.8 * (1.0 - drift) ** 2)[:, :, None]
    colour = (base * (1.0 - tint) + base * blue * tint) * (0.9 + 0.1 * drift)[:, :, None]
    sparkle = (r.speckle(rng) > 0.93)[:, :, None]
    return np.where(sparkle, _WHITE, colour)


def _road(rng: np.random.Generator, r: Rows, top: float, bottom: float) -> np.ndarray:
    base = _base(rng, "road")
    colour = shade(base, 0.85 + 0.3 * r.speckle(rng) + 0.1 * r.noise(rng, 3, 6))
    mid = top + (bottom - top) * (0.4 + 0.2 * rng.random())
    period = r.size * (0.22 + 0.1 * rng.random())
    thick = max(1.0, (bottom - top) * 0.05)
    dashes = (np.abs(r.ys - mid) < thick) & (((r.xs + rng.random() * period) % period) < 0.55 * period)
    return np.where(dashes[:, :, None], _base(rng, "road", "line"), colour)


def _wall(rng: np.random.Generator, r: Rows, top: float, bottom: float) -> np.ndarray:
    base = _base(rng, "wall")
    brick_h = r.size * (0.06 + 0.04 * rng.random())
    brick_w = brick_h * (2.0 + 0.6 * rng.random())
    mortar = max(1.0, r.size / 64.0)
    row = np.floor(r.ys / brick_h)
    shifted = r.xs + (row % 2) * brick_w * 0.5
    col = np.floor(shifted / brick_w)
    tones = rng.random((int(r.size / brick_h) + 2, int(r.size / brick_w) + 3), dtype=np.float32)
    tone = tones[row.astype(np.int64), col.astype(np.int64)]  # [h,S]
    colour = shade(base, 0.8 + 0.3 * tone + 0.08 * (r.speckle(rng) - 0.5))
    joints = ((r.ys % brick_h) < mortar) | ((shifted % brick_w) < mortar)
    grout = np.clip(base * 0.4 + 0.5, 0.0, 1.0)
    return np.where(joints[:, :, None], grout, colour)


def _mountain(rng: np.random.Generator, r: Rows, top: float, bottom: float) -> np.ndarray:
    base = _base(rng, "mountain")
    rock = 0.75 + 0.35 * r.noise(rng, 7, 7) + 0.1 * (r.speckle(rng) - 0.5)
    return shade(base, rock * (1.15 - 0.3 * _depth(r, top, bottom)))


def _floor(rng: np.random.Generator, r: Rows, top: float, bottom: float) -> np.ndarray:
    base = _base(rng, "floor")
    plank_h = r.size * (0.06 + 0.04 * rng.random())
    row = np.floor((r.ys - top) / plank_h)
    tones = rng.random(int(r.size / plank_h) + 3, dtype=np.float32)
    tone = tones[np.clip(row, 0, len(tones) - 1).astype(np.int64)]  # [h,1]
    grain = r.noise(rng, max(4, r.size // 4), 2)
    colour = shade(base, (0.8 + 0.25 * tone) * (0.9 + 0.2 * grain) * (0.85 + 0.25 * _depth(r, top, bottom)))
    seams = (r.ys - top) % plank_h < max(1.0, r.size / 64.0)  # [h,1]
    return np.where(seams[:, :, None], colour * 0.55, colour)


_TEXTURES: dict[str, Callable[[np.random.Generator, Rows, float, float], np.ndarray]] = {
    "sky": _sky, "cloud": _cloud, "grass": _grass, "water": _water, "sand": _sand, "snow": _snow,
    "road": _road, "wall": _wall, "mountain": _mountain, "floor": _floor,
}


def texture(name: str, rng: np.random.Generator, region: Rows, top: float, bottom: float) -> np.ndarray:
    """[h,S,3] float32 colour field of stuff ``name`` over ``region``, for a band spanning ``top``..``bottom``."""
    return _TEXTURES[name](rng, region, top, bottom)


def wavy_boundary(rng: np.random.Generator, g: Grid, y: float, amplitude: float) -> np.ndarray:
    """[1,S] a gently undulating boundary around row ``y``."""
    phase = rng.random() * 2.0 * np.pi
    waves = 0.5 + 1.5 * rng.random()
    bumps = g.interp(4)[:, :] @ rng.random(5).astype(np.float32)
    return y + amplitude * (np.sin(2.0 * np.pi * waves * g.xs / g.size + phase) + bumps[None, :] - 0.5)


def mountain_top(rng: np.random.Generator, g: Grid, horizon: float) -> tuple[np.ndarray, float]:
    """[1,S] ridge line of 1-3 peaks rising above ``horizon``; also its highest point (row)."""
    s = float(g.size)
    n = int(rng.integers(1, 4))
    peaks_x = rng.uniform(0.0, s, n)[:, None, None]
    peaks_y = horizon - rng.uniform(0.45, 0.85, n)[:, None, None] * horizon
    slopes = rng.uniform(0.45, 1.1, n)[:, None, None]
    ridge = np.min(peaks_y + np.abs(g.xs[None] - peaks_x) * slopes, axis=0)  # [1,S]
    ridge = ridge + (noise(rng, g, 2, max(4, g.size // 4))[:1] - 0.5) * s * 0.05
    return ridge.astype(np.float32), float(peaks_y.min())


def cloud_mask(rng: np.random.Generator, g: Grid, below: np.ndarray) -> tuple[Rows, np.ndarray]:
    """1-3 clouds, each a union of soft ellipses, kept above the boundary ``below`` [1,S].

    Returns the rows the clouds may occupy (the top half at most) and their mask [h,S] over those rows.
    """
    s = float(g.size)
    region = rows(g, 0.0, min(0.5 * s, float(below.max())))
    mask = np.zeros(region.shape, dtype=bool)
    for _ in range(int(rng.integers(1, 4))):
        cx = rng.uniform(0.0, s)
        cy = rng.uniform(0.08, 0.3) * s
        width = rng.uniform(0.12, 0.22) * s
        for _ in range(int(rng.integers(3, 6))):
            ex = cx + rng.uniform(-1.0, 1.0) * width
            ey = cy + rng.uniform(-0.3, 0.2) * width
            rx = width * rng.uniform(0.45, 0.8)
            ry = rx * rng.uniform(0.45, 0.7)
            mask |= ((region.xs - ex) / rx) ** 2 + ((region.ys - ey) / ry) ** 2 <= 1.0
    return region, mask & (region.ys < below)


def skyline(rng: np.random.Generator, g: Grid, low: float, high: float) -> np.ndarray:
    """[1,S] step-shaped top edge of a row of buildings, each top row between ``high`` and ``low``."""
    edges = np.sort(rng.uniform(0.0, g.size, int(rng.integers(1, 4))))
    tops = rng.uniform(high, low, len(edges) + 1).astype(np.float32)
    return tops[np.searchsorted(edges, g.xs[0])][None, :]
