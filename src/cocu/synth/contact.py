"""Contact sheet: a grid of synthetic images, each beside its true mask in class colours, with a legend."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cocu.synth.concepts import CONCEPTS

# One distinct colour per class (index = label value), chosen to be told apart at a glance.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (135, 206, 250), (245, 245, 245), (60, 179, 60), (0, 70, 200), (238, 214, 140), (200, 255, 255),
    (90, 90, 90), (178, 34, 34), (120, 100, 150), (160, 110, 60), (0, 100, 0), (255, 140, 0),
    (220, 20, 60), (0, 206, 209), (255, 0, 255), (139, 69, 19), (30, 30, 30), (255, 105, 180),
    (210, 180, 140), (255, 255, 0), (75, 0, 130), (127, 255, 0), (65, 105, 225), (255, 69, 0),
)
if len(PALETTE) < len(CONCEPTS):
    raise RuntimeError("contact-sheet palette has fewer colours than the world has concepts")


def colour_mask(label: np.ndarray) -> np.ndarray:
    """[H,W] class indices -> [H,W,3] uint8 palette colours."""
    return np.asarray(PALETTE, dtype=np.uint8)[label]


def contact_sheet(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], columns: int = 6,
                  cell: int = 128) -> Image.Image:
    """Tile ``images`` ([S,S,3] uint8) each followed by its coloured ``labels`` ([S,S]) mask.

    Each image and mask is scaled to ``cell`` px with nearest-neighbour sampling (so the true pixels
    stay visible); a legend of class colours follows the grid.
    """
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} label maps")
    gap = 4
    rows = max(1, -(-len(images) // columns))
    font = ImageFont.load_default()
    legend_rows = -(-len(CONCEPTS) // 6)
    width = columns * (2 * cell + 3 * gap)
    height = rows * (cell + gap) + gap + legend_rows * 18 + gap
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    for i, (img, lab) in enumerate(zip(images, labels)):
        r, c = divmod(i, columns)
        x = c * (2 * cell + 3 * gap) + gap
        y = r * (cell + gap) + gap
        sheet.paste(Image.fromarray(img).resize((cell, cell), Image.NEAREST), (x, y))
        sheet.paste(Image.fromarray(colour_mask(lab)).resize((cell, cell), Image.NEAREST), (x + cell + gap, y))
    draw = ImageDraw.Draw(sheet)
    top = rows * (cell + gap) + gap
    slot = width // 6
    for i, c in enumerate(CONCEPTS):
        r, col = divmod(i, 6)
        x, y = col * slot + gap, top + r * 18
        draw.rectangle((x, y + 2, x + 14, y + 14), fill=PALETTE[i], outline=(0, 0, 0))
        draw.text((x + 20, y + 2), f"{i} {c.name} ({c.kind})", fill=(0, 0, 0), font=font)
    return sheet
