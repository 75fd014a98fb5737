"""Published zero-shot segmentation numbers (``resources/published.json``) and the comparison table that
``scripts/reproduce_groupvit.sh`` prints: benchmark, mIoU, published, difference.

The script leaves, per benchmark of :data:`SEGMENTATION_BENCHMARKS`, one of ``<name>.json`` (the
``eval-seg`` result), ``<name>.missing`` (not under the data root) or ``<name>.failed`` (the error) in a
folder; :func:`comparison_from_folder` turns that folder into the table.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from cocu.evaluation.benchmarks import get_benchmark
from cocu.evaluation.datasets import benchmark_present

SEGMENTATION_BENCHMARKS = (
    "voc", "context", "coco-object", "imagenet-s50", "imagenet-s300", "cityscapes", "ade20k", "coco-stuff",
)


@functools.lru_cache(maxsize=None)
def _published_raw() -> dict:
    text = resources.files("cocu.resources").joinpath("published.json").read_text("utf-8")
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def reference_names() -> list[str]:
    return list(_published_raw())


def present_benchmarks(root: str | Path) -> list[str]:
    """The benchmarks of :data:`SEGMENTATION_BENCHMARKS` whose layout is under ``root``."""
    return [name for name in SEGMENTATION_BENCHMARKS if benchmark_present(get_benchmark(name), root)]


def published_miou(reference: str, benchmark: str, local_consistency: bool = False) -> tuple[float, str] | None:
    """``(mIoU, source)`` published for ``reference`` on ``benchmark`` (the LC row when asked), or None."""
    raw = _published_raw()
    if reference not in raw:
        raise ValueError(f"unknown reference {reference!r}; known: {', '.join(raw)}")
    variant = raw[reference].get("local_consistency" if local_consistency else "plain", {})
    entry = variant.get(benchmark)
    return (float(entry[0]), str(entry[1])) if entry else None


@dataclass(frozen=True)
class Row:
    benchmark: str
    status: str  # "ok", "missing" or "failed"
    miou: float | None
    published: float | None
    source: str
    detail: str = ""

    @property
    def difference(self) -> float | None:
        return None if self.miou is None or self.published is None else round(self.miou - self.published, 2)


def read_rows(folder: str | Path, reference: str) -> list[Row]:
    """One row per benchmark from the script's result folder."""
    base = Path(folder)
    rows = []
    for name in SEGMENTATION_BENCHMARKS:
        result = base / f"{name}.json"
        if result.is_file():
            raw = json.loads(result.read_text("utf-8"))
            lc = bool(raw.get("protocol", {}).get("local_consistency", False))
            published = published_miou(reference, name, lc)
            miou = raw.get("miou")
            rows.append(Row(name, "ok", None if miou is None else float(miou), *(published or (None, ""))))
        elif (base / f"{name}.failed").is_file():
            detail = (base / f"{name}.failed").read_text("utf-8").strip()
            rows.append(Row(name, "failed", None, *(published_miou(reference, name) or (None, "")), detail))
        else:
            rows.append(Row(name, "missing", None, *(published_miou(reference, name) or (None, ""))))
    return rows


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def format_rows(rows: list[Row], reference: str) -> str:
    """The table: benchmark, mIoU (or missing / failed), published, difference, source of the number."""
    title = _published_raw()[reference]["title"]
    lines = [f"published: {title}", f"{'benchmark':<14} {'mIoU':>8} {'published':>10} {'diff':>7}  source"]
    for r in rows:
        miou = _num(r.miou) if r.status == "ok" else r.status
        lines.append(f"{r.benchmark:<14} {miou:>8} {_num(r.published):>10} {_num(r.difference, True):>7}  {r.source}")
        if r.detail:
            lines.append(f"{'':<14} {r.detail}")
    return "\n".join(lines)


def comparison_from_folder(folder: str | Path, reference: str) -> str:
    return format_rows(read_rows(folder, reference), reference)
