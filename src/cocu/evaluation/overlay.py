"""Pictures of a segmentation: a coloured mask blended over the image with a legend of the labels."""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LEGEND_MIN_WIDTH = 240
_PAD = 6
_SWATCH = 14


def palette(n: int) -> np.ndarray:
    """``uint8 [n,3]`` distinct, deterministic colours (hues spaced by the golden ratio)."""
    colours = [colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.7, 0.95) for i in range(n)]
    return (np.asarray(colours, dtype=np.float64).reshape(n, 3) * 255).round().astype(np.uint8)


def blend_mask(image: Image.Image, label_map: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """Blend ``colours[label - 1]`` over the RGB image where ``label_map [H,W] > 0`` (0 = left as is)."""
    if label_map.shape != (image.height, image.width):
        raise ValueError(f"label map {label_map.shape} does not match image {image.height}x{image.width}")
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)  # [H,W,3]
    table = np.concatenate([np.zeros((1, 3), np.float32), colours.astype(np.float32)])  # [1+n,3]
    painted = table[label_map]  # [H,W,3]
    mask = (label_map > 0)[..., None]
    out = np.where(mask, (1 - alpha) * rgb + alpha * painted, rgb)
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8), mode="RGB")


def _legend_rows(names: list[str], draw: ImageDraw.ImageDraw, font, width: int) -> list[list[tuple[int, str, int]]]:
    """Entries ``(index, name, entry width)`` wrapped into rows no wider than ``width``."""
    rows: list[list[tuple[int, str, int]]] = [[]]
    used = _PAD
    for i, name in enumerate(names):
        box = draw.textbbox((0, 0), name, font=font)
        entry = _SWATCH + 4 + (box[2] - box[0]) + 2 * _PAD
        if rows[-1] and used + entry > width:
            rows.append([])
            used = _PAD
        rows[-1].append((i, name, entry))
        used += entry
    return rows


def render_overlay(
    image: Image.Image,
    label_map: np.ndarray,
    names: list[str],
    alpha: float = 0.5,
    background_name: str | None = None,
) -> Image.Image:
    """The image with label ``i`` (1-based, ``names[i-1]``) painted in colour ``i`` and a legend below it.

    Label 0 is left unpainted; ``background_name`` adds it to the legend as an empty swatch.
    """
    colours = palette(len(names))
    blended = blend_mask(image, label_map, colours, alpha)
    font = ImageFont.load_default()
    width = max(blended.width, LEGEND_MIN_WIDTH)
    entries = ([background_name] if background_name else []) + list(names)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    rows = _legend_rows(entries, probe, font, width)
    text_h = max(probe.textbbox((0, 0), "Ag", font=font)[3], _SWATCH)
    row_h = text_h + _PAD
    canvas = Image.new("RGB", (width, blended.height + len(rows) * row_h + _PAD), (255, 255, 255))
    canvas.paste(blended, (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = blended.height + _PAD
    offset = 1 if background_name else 0
    for row in rows:
        x = _PAD
        for index, name, entry in row:
            swatch = (x, y, x + _SWATCH, y + _SWATCH)
            if index < offset:
                draw.rectangle(swatch, outline=(0, 0, 0), fill=(255, 255, 255))
            else:
                draw.rectangle(swatch, outline=(0, 0, 0), fill=tuple(int(c) for c in colours[index - offset]))
            draw.text((x + _SWATCH + 4, y), name, fill=(0, 0, 0), font=font)
            x += entry
        y += row_h
    return canvas
