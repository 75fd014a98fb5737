"""Training logs: ``metrics.jsonl`` (one JSON object per logged step), TensorBoard, and a loss-curve PNG.

Each JSONL record has ``step``, ``epoch``, ``loss``, ``loss_caption``, ``loss_multilabel`` (``null``
without prompt texts; losses are means over the steps since the previous record), ``lr``,
``logit_scale_caption``, ``logit_scale_multilabel`` (the clamped ``1 / tau``), ``img_per_s`` (global
images per second over those steps), ``data_wait_s`` (mean seconds per step the training loop waited
for the data loader; near 0 when loading keeps up) and ``time_s`` (seconds since the run, or its
resumption, started).
A resumed run first drops the records after its checkpoint's step, so the file reads as one run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from cocu.utils.atomic import atomic_path, atomic_write_text

METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"
TENSORBOARD_DIR = "tensorboard"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics file (a torn last line from a killed run is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text("utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_metrics(path: str | Path, last_step: int) -> None:
    """Keep only the records with ``step <= last_step`` (rewritten atomically)."""
    path = Path(path)
    if not path.is_file():
        return
    kept = [r for r in read_metrics(path) if int(r.get("step", 0)) <= last_step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


class MetricsLogger:
    """Appends records to ``metrics.jsonl`` and mirrors the numbers to TensorBoard (rank 0 only)."""

    def __init__(self, out_dir: str | Path, resume_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        out = Path(out_dir)
        self.path = out / METRICS_FILE
        if resume_step is None:
            atomic_write_text(self.path, "")
        else:
            truncate_metrics(self.path, resume_step)
        self.handle = open(self.path, "a", encoding="utf-8")
        self.tb = SummaryWriter(log_dir=str(out / TENSORBOARD_DIR), purge_step=resume_step)

    def log(self, record: dict[str, Any]) -> None:
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()
        step = int(record["step"])
        for name, value in record.items():
            if name not in ("step", "epoch") and isinstance(value, (int, float)) and math.isfinite(value):
                self.tb.add_scalar(f"train/{name}", value, step)

    def close(self) -> None:
        self.handle.close()
        self.tb.close()


def plot_loss_curve(metrics_path: str | Path, png_path: str | Path) -> Path | None:
    """Plot the losses of ``metrics.jsonl`` against the step; ``None`` if there is nothing to plot."""
    records = read_metrics(metrics_path)
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    curves = (("loss", "total (eq. 5)"), ("loss_caption", "image-caption"), ("loss_multilabel", "multi-label"))
    for name, label in curves:
        pairs = [(s, r[name]) for s, r in zip(steps, records) if isinstance(r.get(name), (int, float))]
        if pairs:
            ax.plot([p[0] for p in pairs], [p[1] for p in pairs], label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return png_path
