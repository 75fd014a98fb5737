"""Segmentation metrics from an accumulated confusion matrix (rows = ground truth, columns = prediction).

IoU of class c = TP / (TP + FP + FN); a class absent from both ground truth and prediction has an
undefined IoU (NaN) and is left out of the mean, as mmsegmentation does. Ignored pixels never enter
the matrix. Percentages are what the papers report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cocu.evaluation.benchmarks import unique_keys


class ConfusionMatrix:
    """``counts[g, p]`` = number of valid pixels with ground truth ``g`` predicted as ``p``."""

    def __init__(self, num_classes: int) -> None:
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.counts = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, label: np.ndarray, pred: np.ndarray) -> None:
        """Add one image: ``label`` and ``pred`` are same-shape integer maps; label values outside
        ``[0, K)`` (the ignore value) are skipped; predictions must be in ``[0, K)``."""
        if label.shape != pred.shape:
            raise ValueError(f"label shape {label.shape} != prediction shape {pred.shape}")
        k = self.num_classes
        valid = (label >= 0) & (label < k)
        p = pred[valid].astype(np.int64)
        if p.size and (p.min() < 0 or p.max() >= k):
            raise ValueError(f"prediction values must be in [0, {k}), got {p.min()}..{p.max()}")
        flat = label[valid].astype(np.int64) * k + p
        self.counts += np.bincount(flat, minlength=k * k).reshape(k, k)

    def per_class_iou(self) -> np.ndarray:
        """``float64 [K]`` IoU in [0, 1], NaN where the class is absent from ground truth and prediction."""
        tp = np.diag(self.counts).astype(np.float64)
        union = self.counts.sum(0) + self.counts.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def miou(self) -> float:
        iou = self.per_class_iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else math.nan

    def pixel_accuracy(self) -> float:
        total = self.counts.sum()
        return float(np.trace(self.counts) / total) if total else math.nan


@dataclass
class SegScores:
    """Scores in percent; ``per_class_iou`` maps class name -> IoU percent or None (undefined)."""

    miou: float | None
    pixel_acc: float | None
    per_class_iou: dict[str, float | None]


def _pct(x: float) -> float | None:
    return None if math.isnan(x) else round(100.0 * x, 4)


def scores(matrix: ConfusionMatrix, names: list[str]) -> SegScores:
    if len(names) != matrix.num_classes:
        raise ValueError(f"{len(names)} names for {matrix.num_classes} classes")
    iou = matrix.per_class_iou()
    return SegScores(
        miou=_pct(matrix.miou()),
        pixel_acc=_pct(matrix.pixel_accuracy()),
        per_class_iou={name: _pct(float(v)) for name, v in zip(unique_keys(names), iou)},
    )


def format_table(result: SegScores, title: str = "") -> str:
    """A plain-text table: one row per class (IoU %, '-' when undefined), then mIoU and pixel accuracy."""
    width = max([len(n) for n in result.per_class_iou] + [len("pixel accuracy")])
    lines = [title] if title else []
    lines.append(f"{'class':<{width}}  IoU %")
    lines.append("-" * (width + 8))
    for name, value in result.per_class_iou.items():
        lines.append(f"{name:<{width}}  {'-' if value is None else f'{value:6.2f}'}")
    lines.append("-" * (width + 8))
    for label, value in (("mIoU", result.miou), ("pixel accuracy", result.pixel_acc)):
        lines.append(f"{label:<{width}}  {'-' if value is None else f'{value:6.2f}'}")
    return "\n".join(lines)
