"""Pictures for the report, as PNG bytes ready to inline: upscaled samples, label overlays, loss curves,
the budget curve, per-concept gains and the teacher-strength ablation."""

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


def _save(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def budget_curve_png(points: Sequence[Mapping]) -> bytes:
    """mIoU (percent) against GroupViT training steps, one line per row, mean +- sample std over seeds as a
    band (``points``: the ``budget_curve`` points of ``results.json``)."""
    fig, ax = plt.subplots(figsize=(6.2, 3.8), dpi=110)
    try:
        cmap = plt.get_cmap("tab10")
        names = list(dict.fromkeys(p["row"] for p in points))
        for i, name in enumerate(names):
            pts = sorted((p for p in points if p["row"] == name and p.get("miou") is not None),
                         key=lambda p: p["steps"])
            if not pts:
                continue
            x = np.asarray([p["steps"] for p in pts], dtype=float)
            y = 100 * np.asarray([p["miou"] for p in pts])
            sd = 100 * np.asarray([(p.get("std") or {}).get("miou") or 0.0 for p in pts])
            ax.plot(x, y, marker="o", color=cmap(i % 10), linewidth=2.0, label=name)
            ax.fill_between(x, y - sd, y + sd, color=cmap(i % 10), alpha=0.18, linewidth=0)
        ax.set_xlabel("GroupViT training steps")
        ax.set_ylabel("zero-shot mIoU on val (%)")
        ax.set_title("Training budget: mean over seeds, band = \u00b1 1 std", fontsize=10)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        return _save(fig)
    finally:
        plt.close(fig)


def concept_gain_png(entries: Sequence[Mapping]) -> bytes:
    """IoU gain (CoCu - baseline, points) against caption mention rate (percent), one labelled point per
    class (``entries``: the ``per_concept`` list of ``results.json``; classes without both are left out)."""
    fig, ax = plt.subplots(figsize=(6.6, 4.2), dpi=110)
    try:
        colours = {"stuff": "#2a7ab0", "thing": "#d9622b"}
        for e in entries:
            rate, gain = e.get("caption_mention_rate"), e.get("gain")
            if rate is None or gain is None:
                continue
            ax.scatter([100 * rate], [100 * gain], color=colours.get(e.get("kind"), "#777777"), s=28)
            ax.annotate(str(e["name"]), (100 * rate, 100 * gain), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        ax.axhline(0.0, color="#888888", linewidth=0.8)
        for kind, colour in colours.items():
            ax.scatter([], [], color=colour, label=kind)
        ax.legend(fontsize=8)
        ax.set_xlabel("caption mention rate on pretrain (%)")
        ax.set_ylabel("IoU gain, CoCu - baseline (points)")
        ax.set_title("Per concept: does CoCu gain where captions are silent?", fontsize=10)
        ax.grid(True, alpha=0.3)
        return _save(fig)
    finally:
        plt.close(fig)


STRENGTH_PANELS = (("archive", "recall", "precision"), ("top-L", "top_l_recall", "top_l_precision"),
                   ("sampled per step", "sampled_recall", "sampled_precision"))


def teacher_strength_png(teachers: Sequence[Mapping]) -> bytes:
    """GT recall (solid) and precision (dashed) of each curated row against the teacher's training steps,
    one panel per stage of the curation (``teachers``: the ``teacher_strength`` list of ``results.json``)."""
    fig, axes = plt.subplots(1, len(STRENGTH_PANELS), figsize=(13.5, 3.8), dpi=110, squeeze=False)
    try:
        cmap = plt.get_cmap("tab10")
        ordered = sorted(teachers, key=lambda t: t["steps"])
        x = [t["steps"] for t in ordered]
        names = list(dict.fromkeys(n for t in ordered for n in t["rows"]))
        for ax, (title, rec, prec) in zip(axes[0], STRENGTH_PANELS):
            for i, name in enumerate(names):
                for key, style in ((rec, "-"), (prec, "--")):
                    y = [100 * v if (v := t["rows"].get(name, {}).get(key)) is not None else np.nan for t in ordered]
                    ax.plot(x, y, style, marker="o", color=cmap(i % 10),
                            label=f"{name} {'recall' if key == rec else 'precision'}")
            if len(x) > 1:
                ax.set_xscale("log")
                ax.set_xticks(x, [str(v) for v in x])
                ax.minorticks_off()
            ax.set_xlabel("teacher CLIP training steps")
            ax.set_ylabel("vs. true concepts (%)")
            ax.set_title(title, fontsize=10)
            ax.grid(True, alpha=0.3)
        axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
        return _save(fig)
    finally:
        plt.close(fig)
