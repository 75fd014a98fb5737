"""Scene composition: pick a scene type, lay out its stuff, place and draw its things.

Scene types carry the world's co-occurrence statistics (boats on water, cars on roads, snow under
mountains, chairs indoors); about 56 % of them have a sky, the rest are close-ups, rooms and
garden walls so that no concept is in nearly every image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from cocu.synth.canvas import Canvas, Rows, colour_name, rows
from cocu.synth.concepts import concept
from cocu.synth.stuff import cloud_mask, mountain_top, skyline, texture, wavy_boundary
from cocu.synth.things import PAINTERS, Box

_MULTI = {"tree": 3, "person": 3, "bird": 3, "flower": 3, "boat": 2, "car": 2, "umbrella": 2, "house": 2, "dog": 2}
_BACK_THINGS = ("sun",)
_FRONT_THINGS = ("bird", "kite")


@dataclass(frozen=True)
class SceneType:
    """A kind of scene: how often it occurs, whether it has a sky, and which things it may hold."""

    name: str
    weight: float
    has_sky: bool
    things: dict[str, float]
    closeup: bool = False


SCENE_TYPES: tuple[SceneType, ...] = (
    SceneType("meadow", 0.14, True, {"tree": 0.55, "house": 0.25, "person": 0.3, "dog": 0.25, "flower": 0.3,
                                     "fence": 0.25, "ball": 0.12, "kite": 0.25, "bird": 0.15, "sun": 0.2}),
    SceneType("beach", 0.11, True, {"umbrella": 0.5, "person": 0.35, "ball": 0.3, "boat": 0.4, "bird": 0.3,
                                    "dog": 0.15, "sun": 0.25, "kite": 0.15}),
    SceneType("lake", 0.09, True, {"boat": 0.75, "bird": 0.3, "tree": 0.35, "house": 0.15, "sun": 0.2, "person": 0.1}),
    SceneType("street", 0.12, True, {"car": 0.85, "person": 0.4, "tree": 0.2, "dog": 0.2, "bird": 0.1,
                                     "umbrella": 0.1, "house": 0.2}),
    SceneType("snowfield", 0.10, True, {"tree": 0.55, "person": 0.4, "house": 0.25, "dog": 0.2, "sun": 0.2,
                                        "bird": 0.1, "fence": 0.15}),
    SceneType("room", 0.14, False, {"chair": 0.65, "person": 0.3, "dog": 0.3, "ball": 0.3, "flower": 0.3, "umbrella": 0.1}),
    SceneType("garden", 0.08, False, {"flower": 0.5, "fence": 0.3, "dog": 0.3, "person": 0.3, "bird": 0.2,
                                      "ball": 0.15, "tree": 0.2, "chair": 0.1}),
    SceneType("closeup-grass", 0.066, False, {"flower": 0.5, "dog": 0.35, "ball": 0.3, "bird": 0.15, "person": 0.2}, True),
    SceneType("closeup-sand", 0.044, False, {"ball": 0.45, "umbrella": 0.4, "dog": 0.25, "bird": 0.2, "person": 0.2}, True),
    SceneType("closeup-snow", 0.033, False, {"person": 0.45, "dog": 0.35, "tree": 0.35, "ball": 0.1}, True),
    SceneType("closeup-water", 0.044, False, {"boat": 0.7, "bird": 0.4}, True),
    SceneType("closeup-road", 0.033, False, {"car": 0.8, "dog": 0.2, "person": 0.25}, True),
)


@dataclass
class ThingInstance:
    """One drawn thing: its concept, instance id on the canvas, box and the colour word of its main part."""

    name: str
    instance: int
    box: Box
    colour: str
    pixels: int = 0


@dataclass
class Scene:
    """A rendered scene: ``image`` [S,S,3] uint8 RGB, ``label`` [S,S] uint8 class indices, its things."""

    scene_type: str
    image: np.ndarray
    label: np.ndarray
    things: list[ThingInstance] = field(default_factory=list)


@dataclass
class _Layout:
    """Bands (top row, bottom row) where things of each placement may stand."""

    surfaces: dict[str, tuple[float, float]]


def _paint_stuff(canvas: Canvas, rng: np.random.Generator, name: str, region: Rows, mask: np.ndarray,
                 top: float, bottom: float) -> None:
    """Paint stuff ``name`` through ``mask`` (over ``region``'s rows) as a band spanning ``top``..``bottom``."""
    inst = canvas.new_instance(name)
    canvas.paint(mask, texture(name, rng, region, top, bottom), name, inst, region.window)


def _fill(canvas: Canvas, rng: np.random.Generator, name: str, top: float, bottom: float, stop: float | None = None) -> None:
    """Paint stuff ``name`` over every pixel of the rows above ``stop`` (default: the whole canvas)."""
    region = rows(canvas.grid, 0.0, stop)
    _paint_stuff(canvas, rng, name, region, np.ones((1, 1), dtype=bool), top, bottom)


def _below(canvas: Canvas, rng: np.random.Generator, name: str, edge: np.ndarray, top: float, bottom: float,
           stop: float | None = None) -> None:
    """Paint stuff ``name`` below the boundary ``edge`` ([1,S] row per column) down to ``stop`` (default: the
    bottom of the canvas; pass a row only where later layers cover everything below it)."""
    region = rows(canvas.grid, float(np.min(edge)), stop)
    _paint_stuff(canvas, rng, name, region, region.ys >= edge, top, bottom)


def _sky_and_clouds(canvas: Canvas, rng: np.random.Generator, horizon: np.ndarray, clouds: float) -> None:
    _fill(canvas, rng, "sky", 0.0, float(horizon.mean()))
    if rng.random() < clouds:
        region, mask = cloud_mask(rng, canvas.grid, horizon)
        if mask.any():
            _paint_stuff(canvas, rng, "cloud", region, mask, 0.0, float(horizon.mean()))


def _mountains(canvas: Canvas, rng: np.random.Generator, horizon: float) -> None:
    ridge, peak = mountain_top(rng, canvas.grid, horizon)
    _below(canvas, rng, "mountain", ridge, peak, horizon, stop=horizon + 0.1 * canvas.size)  # ground covers the rest


def _ground(canvas: Canvas, rng: np.random.Generator, name: str, y: float, amplitude: float) -> np.ndarray:
    edge = wavy_boundary(rng, canvas.grid, y, amplitude)
    _below(canvas, rng, name, edge, y, float(canvas.size))
    return edge


Backdrop = Callable[[float], None]


def _layout(kind: SceneType, canvas: Canvas, rng: np.random.Generator, back: Backdrop,
            back_over_mountains: bool = False) -> _Layout:
    """Paint the stuff of ``kind`` back to front; ``back`` draws the far sky things (the sun) behind the
    mountains, or in front of them with ``back_over_mountains``, always behind the ground."""
    s = float(canvas.size)
    g = canvas.grid
    flat = np.ones((1, canvas.size), dtype=np.float32)
    name = kind.name
    if name in ("meadow", "snowfield", "beach", "lake"):
        horizon = s * rng.uniform(*{"beach": (0.3, 0.45), "meadow": (0.3, 0.5)}.get(name, (0.35, 0.5)))
        _sky_and_clouds(canvas, rng, flat * horizon, 0.6)
        if not back_over_mountains:
            back(horizon)
        if rng.random() < {"meadow": 0.35, "snowfield": 0.85, "lake": 0.6}.get(name, 0.0):
            _mountains(canvas, rng, horizon + 1.0)
        if back_over_mountains:
            back(horizon)
        sky = (0.0, horizon)
        if name in ("meadow", "snowfield"):
            _ground(canvas, rng, "grass" if name == "meadow" else "snow", horizon, s * 0.02)
            return _Layout({"ground": (horizon, s), "sky": sky})
        _below(canvas, rng, "water", flat * horizon, horizon, s)
        if name == "beach":
            shore = horizon + (s - horizon) * rng.uniform(0.35, 0.6)
            _ground(canvas, rng, "sand", shore, s * 0.03)
            return _Layout({"water": (horizon, shore), "ground": (shore, s), "sky": sky})
        if rng.random() < 0.6:
            shore = s - (s - horizon) * rng.uniform(0.2, 0.35)
            _ground(canvas, rng, "grass", shore, s * 0.03)
            return _Layout({"water": (horizon, shore), "ground": (shore, s), "sky": sky})
        return _Layout({"water": (horizon, s), "ground": (horizon, s), "sky": sky})
    if name == "street":
        roofs = skyline(rng, g, s * 0.4, s * 0.15)
        _sky_and_clouds(canvas, rng, roofs, 0.5)
        back(float(roofs.min()))
        road_top = s * rng.uniform(0.55, 0.7)
        _below(canvas, rng, "wall", roofs, float(roofs.min()), road_top)
        _below(canvas, rng, "road", flat * road_top, road_top, s)
        return _Layout({"road": (road_top, s), "ground": (road_top - 0.02 * s, s), "sky": (0.0, float(roofs.min()))})
    if name in ("room", "garden"):
        line = s * (rng.uniform(0.55, 0.75) if name == "room" else rng.uniform(0.45, 0.7))
        _fill(canvas, rng, "wall", 0.0, line, stop=line + 1.0 if name == "room" else None)
        if name == "room":
            _below(canvas, rng, "floor", flat * line, line, s)
        else:
            _ground(canvas, rng, "grass", line, s * 0.02)
        return _Layout({"ground": (line, s), "sky": (0.0, line)})
    stuff_name = name.split("-", 1)[1]
    _fill(canvas, rng, stuff_name, 0.0, s)
    band = (0.3 * s, s)
    return _Layout({"ground": band, "water": band, "road": band, "sky": (0.0, 0.6 * s)})


def choose_things(kind: SceneType, rng: np.random.Generator) -> list[str]:
    names = list(kind.things)
    probs = np.array([kind.things[n] for n in names])
    chosen = [n for n, p in zip(names, probs) if rng.random() < p]
    if not chosen:
        chosen = [names[int(rng.choice(len(names), p=probs / probs.sum()))]]
    if len(chosen) > 3:
        chosen = [chosen[i] for i in sorted(rng.choice(len(chosen), 3, replace=False))]
    instances: list[str] = []
    for name in chosen:
        count = 1
        if name in _MULTI:
            count += int(rng.random() < 0.3) + int(rng.random() < 0.1)
            count = min(count, _MULTI[name])
        instances.extend([name] * count)
    return instances[:5]


def _overlap(a: Box, b: Box) -> float:
    """Intersection area over the smaller box's area."""
    w = max(0.0, min(a.x0 + a.w, b.x0 + b.w) - max(a.x0, b.x0))
    h = max(0.0, min(a.y0 + a.h, b.y0 + b.h) - max(a.y0, b.y0))
    return w * h / max(1e-6, min(a.w * a.h, b.w * b.h))


def _place(name: str, layout: _Layout, rng: np.random.Generator, size: int, scale: float,
           dominant: bool, placed: list[Box]) -> Box:
    """A box for thing ``name`` on its surface, sized with perspective, overlapping ``placed`` boxes little.

    A ``dominant`` thing stands near the viewer and the centre (or, in the sky, fully in frame).
    """
    c = concept(name)
    s = float(size)
    placement = c.placement if c.placement in layout.surfaces else "ground"
    top, bottom = layout.surfaces[placement]
    best: Box | None = None
    best_overlap = np.inf
    for _ in range(6):
        h0 = rng.uniform(*c.height) * s * scale
        aspect = rng.uniform(*c.aspect)
        if placement == "sky":
            h = h0
            top_cy = 0.5 * h + 0.03 * s if dominant else min(0.5 * h + 0.03 * s, bottom - 0.2 * h)
            cy = rng.uniform(top_cy, max(top_cy, bottom - 0.45 * h))  # a dominant thing stays in frame
            y0 = cy - 0.5 * h
        else:
            depth = rng.uniform(0.35, 1.0) if not dominant else rng.uniform(0.75, 0.95)
            base = top + depth * (bottom - top) + 0.05 * s * rng.random()
            h = h0 * (0.7 + 0.4 * depth)
            y0 = base - h
        if h > 0.85 * s:
            y0 += h - 0.85 * s
            h = 0.85 * s
        w = min(h * aspect, 1.1 * s)
        cx = (0.5 + rng.uniform(-0.1, 0.1)) * s if dominant else rng.uniform(0.25 * w, s - 0.25 * w)
        box = Box(float(cx - 0.5 * w), float(y0), float(w), float(h), bool(rng.random() < 0.5))
        worst = max((_overlap(box, other) for other in placed), default=0.0)
        if worst < best_overlap:
            best, best_overlap = box, worst
        if worst < 0.25:
            break
    assert best is not None
    return best


def compose_scene(rng: np.random.Generator, size: int, thing_scale: float = 1.0,
                  dominant: str | None = None) -> Scene:
    """Draw one random scene; with ``dominant`` set, a scene holding that thing alone, large and central."""
    if dominant is None:
        weights = np.array([k.weight for k in SCENE_TYPES])
        kind = SCENE_TYPES[int(rng.choice(len(SCENE_TYPES), p=weights / weights.sum()))]
        names = choose_things(kind, rng)
    else:
        hosts = [k for k in SCENE_TYPES if dominant in k.things]
        if not hosts:
            raise ValueError(f"{dominant!r} is not a thing of any scene type")
        weights = np.array([k.weight * k.things[dominant] for k in hosts])
        kind = hosts[int(rng.choice(len(hosts), p=weights / weights.sum()))]
        names = [dominant]
    canvas = Canvas(size)
    scale = thing_scale * (1.35 if kind.closeup else 1.0)
    if dominant is not None and concept(dominant).placement != "sky":
        scale *= 1.3
    things: list[ThingInstance] = []

    def draw(name: str, box: Box) -> None:
        inst = canvas.new_instance(name)
        colour = PAINTERS[name](canvas, rng, box, inst)
        things.append(ThingInstance(name, inst, box, colour_name(colour)))

    back = [n for n in names if n in _BACK_THINGS]
    front = [n for n in names if n in _FRONT_THINGS]
    middle = [n for n in names if n not in _BACK_THINGS and n not in _FRONT_THINGS]
    placed: list[Box] = []

    def backdrop(horizon: float) -> None:
        for name in back:
            box = _place(name, _Layout({"sky": (0.0, horizon)}), rng, size, scale, dominant is not None, placed)
            placed.append(box)
            draw(name, box)

    layout = _layout(kind, canvas, rng, backdrop, back_over_mountains=dominant in _BACK_THINGS)
    boxes = []
    for name in middle + front:
        box = _place(name, layout, rng, size, scale, dominant is not None, placed)
        placed.append(box)
        boxes.append((name, box))
    ordered = sorted(boxes[: len(middle)], key=lambda nb: nb[1].y0 + nb[1].h) + boxes[len(middle):]
    for name, box in ordered:
        draw(name, box)
    image, label, instance = canvas.render()
    counts = np.bincount(instance.ravel(), minlength=len(canvas.instance_concepts))
    for t in things:
        t.pixels = int(counts[t.instance])
    return Scene(kind.name, image, label, things)
