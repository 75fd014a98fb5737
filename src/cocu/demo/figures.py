"""Pictures for the report, as PNG bytes ready to inline: upscaled samples, label overlays, loss curves."""

from __future__ import annotations

import base64
import io
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

IGNORE_LABEL = 255
_IGNORE_RGB = np.array([40, 40, 40], dtype=np.uint8)


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for an ``<img src>``."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def png_bytes(image: Image.Image | np.ndarray) -> bytes:
    """Encode a PIL image or a uint8 array ([H,W] or [H,W,3]) as PNG."""
    img = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def upscale(image: Image.Image | np.ndarray, side: int) -> Image.Image:
    """Nearest-neighbour upscale so the longer side is ``side`` px (pixels stay crisp squares)."""
    img = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    w, h = img.size
    scale = max(1, side // max(w, h))
    return img.resize((w * scale, h * scale), Image.Resampling.NEAREST)


def palette(n: int) -> np.ndarray:
    """uint8 [n, 3]: distinct colours, tab20 first, then evenly spaced hues."""
    base = (np.asarray(plt.get_cmap("tab20").colors) * 255).round().astype(np.uint8)
    if n <= len(base):
        return base[:n].copy()
    hues = plt.get_cmap("hsv")(np.linspace(0.0, 1.0, n - len(base), endpoint=False))[:, :3]
    return np.concatenate([base, (hues * 255).round().astype(np.uint8)])


def colorize(label: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Label map int [H,W] -> RGB uint8 [H,W,3]; ignore (255) and out-of-range labels are dark grey."""
    out = np.empty(label.shape + (3,), dtype=np.uint8)
    out[...] = _IGNORE_RGB
    valid = (label >= 0) & (label < len(colours)) & (label != IGNORE_LABEL)
    out[valid] = colours[label[valid]]
    return out


def overlay(image: np.ndarray, label: np.ndarray, colours: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Blend a label map's colours over an RGB image (uint8 [H,W,3], same H,W)."""
    if image.shape[:2] != label.shape:
        raise ValueError(f"image {image.shape[:2]} and label {label.shape} differ in size")
    mixed = (1.0 - alpha) * image.astype(np.float32) + alpha * colorize(label, colours).astype(np.float32)
    return mixed.round().clip(0, 255).astype(np.uint8)


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average (the first points average what is there so far)."""
    x = np.asarray(values, dtype=np.float64)
    if window <= 1 or x.size == 0:
        return x
    csum = np.cumsum(np.insert(x, 0, 0.0))
    idx = np.arange(1, x.size + 1)
    lo = np.maximum(0, idx - window)
    return (csum[idx] - csum[lo]) / (idx - lo)


def loss_curves_png(panels: Mapping[str, Mapping[str, tuple[Sequence[int], Sequence[float]]]], title: str) -> bytes:
    """One panel per entry of ``panels`` (panel title -> run name -> (steps, losses)), side by side: each run's
    loss against the step, raw values faint and a moving average solid. Returns PNG bytes."""
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.2 * max(1, len(panels)), 3.6), dpi=110, squeeze=False)
    try:
        cmap = plt.get_cmap("tab10")
        for ax, (panel, curves) in zip(axes[0], panels.items()):
            for i, (name, (steps, losses)) in enumerate(curves.items()):
                if not steps:
                    continue
                colour = cmap(i % 10)
                window = max(1, len(losses) // 20)
                ax.plot(steps, losses, color=colour, alpha=0.25, linewidth=0.8)
                ax.plot(steps, smooth(losses, window), color=colour, linewidth=2.0, label=name)
            ax.set_xlabel("training step")
            ax.set_ylabel("loss")
            ax.set_title(panel, fontsize=10)
            ax.grid(True, alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
        fig.suptitle(title, fontsize=11)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)
