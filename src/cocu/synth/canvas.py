"""Vectorised drawing primitives: coordinate grids, cheap smooth noise, colours and a labelled canvas.

All shapes are boolean masks computed from coordinate grids; textures are brightness fields built from
low-resolution random grids upsampled by two small matrix products. Nothing loops over pixels.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from cocu.synth.concepts import CONCEPT_INDEX, HSVRange


def _interp_matrix(size: int, cells: int) -> np.ndarray:
    """[size, cells+1] bilinear weights mapping a grid of ``cells+1`` knots onto ``size`` pixel centres."""
    pos = (np.arange(size, dtype=np.float64) + 0.5) / size * cells
    lo = np.clip(np.floor(pos).astype(np.int64), 0, cells - 1)
    frac = pos - lo
    frac = frac * frac * (3.0 - 2.0 * frac)  # smoothstep: no visible grid creases
    m = np.zeros((size, cells + 1), dtype=np.float32)
    m[np.arange(size), lo] = 1.0 - frac
    m[np.arange(size), lo + 1] += frac
    return m


@dataclass(frozen=True)
class Grid:
    """Pixel-centre coordinates of a ``size`` x ``size`` image in pixels: ``ys`` [S,1], ``xs`` [1,S]."""

    size: int
    ys: np.ndarray
    xs: np.ndarray

    def interp(self, cells: int) -> np.ndarray:
        return _cached_interp(self.size, cells)


@lru_cache(maxsize=64)
def _cached_interp(size: int, cells: int) -> np.ndarray:
    return _interp_matrix(size, cells)


@lru_cache(maxsize=16)
def grid(size: int) -> Grid:
    if size < 16:
        raise ValueError(f"image size must be at least 16 px, got {size}")
    c = np.arange(size, dtype=np.float32) + 0.5
    return Grid(size, c[:, None], c[None, :])


Window = tuple[slice, slice]
FULL: Window = (slice(None), slice(None))


def noise(rng: np.random.Generator, g: Grid, cells_y: int, cells_x: int, window: Window = FULL) -> np.ndarray:
    """Smooth value noise in [0,1] with ``cells_y`` x ``cells_x`` features across the whole image.

    Returns float32 [S,S], or only the rows/columns of ``window`` (the same values either way).
    """
    knots = rng.random((cells_y + 1, cells_x + 1), dtype=np.float32)
    return g.interp(cells_y)[window[0]] @ knots @ g.interp(cells_x)[window[1]].T


@dataclass(frozen=True)
class Rows:
    """Full-width rows ``r0:r1`` of a grid: where a stuff texture is computed and painted."""

    grid: Grid
    r0: int
    r1: int

    @property
    def window(self) -> Window:
        return (slice(self.r0, self.r1), slice(None))

    @property
    def ys(self) -> np.ndarray:
        """[h,1] pixel-centre rows."""
        return self.grid.ys[self.r0:self.r1]

    @property
    def xs(self) -> np.ndarray:
        """[1,S] pixel-centre columns."""
        return self.grid.xs

    @property
    def size(self) -> int:
        return self.grid.size

    @property
    def shape(self) -> tuple[int, int]:
        return (self.r1 - self.r0, self.grid.size)

    def noise(self, rng: np.random.Generator, cells_y: int, cells_x: int) -> np.ndarray:
        """[h,S] these rows of a whole-image smooth noise (see :func:`noise`)."""
        return noise(rng, self.grid, cells_y, cells_x, self.window)

    def speckle(self, rng: np.random.Generator) -> np.ndarray:
        """[h,S] float32 per-pixel uniform noise in [0,1]."""
        return rng.random(self.shape, dtype=np.float32)


def rows(g: Grid, start: float = 0.0, stop: float | None = None) -> Rows:
    """The rows whose pixel centres may lie in [start, stop) (default: to the bottom), clipped."""
    end = g.size if stop is None else min(g.size, max(0, int(np.ceil(stop))))
    begin = min(max(0, int(np.floor(start))), end)
    return Rows(g, begin, end)


def sample_hsv(rng: np.random.Generator, ranges: tuple[HSVRange, ...]) -> np.ndarray:
    """Draw one colour from weighted HSV boxes; returns [3] float32 RGB in [0,1]."""
    pick = rng.random() * sum(r.weight for r in ranges)
    r = ranges[-1]
    for candidate in ranges:
        if pick < candidate.weight:
            r = candidate
            break
        pick -= candidate.weight
    span = (r.hue_hi - r.hue_lo) % 360.0 if r.hue_hi != r.hue_lo + 360.0 else 360.0
    hue = ((r.hue_lo + rng.random() * span) % 360.0) / 360.0
    sat = r.sat_lo + rng.random() * (r.sat_hi - r.sat_lo)
    val = r.val_lo + rng.random() * (r.val_hi - r.val_lo)
    return np.array(colorsys.hsv_to_rgb(hue, sat, val), dtype=np.float32)


def colour_name(rgb: np.ndarray) -> str:
    """A plain English colour word for an RGB colour in [0,1]."""
    h, s, v = colorsys.rgb_to_hsv(float(rgb[0]), float(rgb[1]), float(rgb[2]))
    hue = h * 360.0
    if v < 0.2:
        return "black"
    if s < 0.15:
        return "white" if v > 0.8 else "grey"
    if 15 <= hue < 45 and (v < 0.65 or s < 0.45):
        return "brown"
    for limit, name in ((15, "red"), (42, "orange"), (70, "yellow"), (165, "green"), (255, "blue"),
                        (290, "purple"), (345, "pink")):
        if hue < limit:
            return name
    return "red"


def shade(base: np.ndarray, field: np.ndarray) -> np.ndarray:
    """[h,w,3] colour field: ``base`` [3] RGB scaled by a brightness ``field`` [h,w] (1 = unchanged).

    Values may exceed 1; :meth:`Canvas.render` clips once at the end.
    """
    return field[:, :, None] * base[None, None, :]


class Canvas:
    """An image being drawn back to front, with its class label map and instance map.

    Painting only records, per pixel, which paint call covers it last (``layer`` [S,S] int32); the
    colours are gathered once at the end (:meth:`render`), so a paint call costs one masked write.
    A paint call may cover only a window (row slice, column slice) of the canvas, with a mask and a
    colour field of the window's shape. Stuff regions and thing instances each get an instance id
    (:meth:`new_instance`).
    """

    def __init__(self, size: int):
        self.grid = grid(size)
        self.size = size
        self.layer = np.full((size, size), -1, dtype=np.int32)
        self._fills: list[np.ndarray] = []
        self._windows: list[Window] = []
        self._layer_concept: list[int] = []
        self._layer_instance: list[int] = []
        self.instance_concepts: list[str] = []

    def new_instance(self, name: str) -> int:
        self.instance_concepts.append(name)
        return len(self.instance_concepts) - 1

    def paint(self, mask: np.ndarray, colour: np.ndarray, name: str, instance: int, window: Window = FULL) -> None:
        """Paint ``mask`` (bool, broadcastable to the window's [h,w]) with ``colour`` ([3] or [h,w,3])."""
        target = self.layer[window]
        if mask.shape != target.shape:
            mask = np.broadcast_to(mask, target.shape)
        np.putmask(target, mask, len(self._fills))
        if colour.ndim == 3 and colour.shape[:2] != target.shape:
            colour = np.broadcast_to(colour, target.shape + (3,))
        self._fills.append(colour)
        self._windows.append(window)
        self._layer_concept.append(CONCEPT_INDEX[name])
        self._layer_instance.append(instance)

    def render(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image [S,S,3] uint8 RGB, label [S,S] uint8 class indices, instance [S,S] int32 ids."""
        if (self.layer < 0).any():
            raise RuntimeError("scene left pixels unpainted: every pixel must belong to a concept")
        n = len(self._fills)
        palette = np.zeros((3, n), dtype=np.float32)
        textured = []
        for k, fill in enumerate(self._fills):
            if fill.ndim == 1:
                palette[:, k] = fill
            else:
                textured.append(k)
        planes = [np.take(palette[c], self.layer) for c in range(3)]  # 3 x [S,S]
        used = np.bincount(self.layer.ravel(), minlength=n)
        for k in textured:
            if used[k]:
                window = self._windows[k]
                sel = self.layer[window] == k
                for c in range(3):
                    np.copyto(planes[c][window], self._fills[k][:, :, c], where=sel)
        rgb = np.stack(planes, axis=-1)
        image = (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        label = np.take(np.asarray(self._layer_concept, dtype=np.uint8), self.layer)
        instance = np.take(np.asarray(self._layer_instance, dtype=np.int32), self.layer)
        return image, label, instance
