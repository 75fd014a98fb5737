"""Zero-shot semantic segmentation evaluation over a benchmark: mIoU from an accumulated confusion
matrix, optional saved predictions, optional diagnostics.

Diagnostics (``diagnostics=True``):

- ``miou_whole_image``: mIoU when every image is painted with its single top class by whole-image
  similarity (a classification-only baseline);
- ``miou_group_bound``: mIoU when each final group of each crop is given the majority ground-truth label
  of its pixels (the best any group-to-class assignment could do with these groups; a low value means
  grouping failures, a high value with a low ``miou`` means alignment failures);
- ``groups_per_image``: mean over images of the mean number of distinct argmax groups per crop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from cocu.data.skips import SkipCounter
from cocu.evaluation.benchmarks import Protocol, prompt_templates
from cocu.evaluation.datasets import SegDataset, load_item_image
from cocu.evaluation.encoders import ZeroShotModel
from cocu.evaluation.metrics import ConfusionMatrix, SegScores, format_table, scores
from cocu.evaluation.segmenter import segment_image
from cocu.utils.atomic import atomic_path

logger = logging.getLogger(__name__)


@dataclass
class SegEvalOptions:
    limit: int | None = None
    save_predictions: Path | None = None
    diagnostics: bool = False
    templates: Sequence[str] = field(default_factory=lambda: prompt_templates("imagenet80"))
    progress: bool = True


@dataclass
class SegEvalResult:
    benchmark: str
    label_names: list[str]
    protocol: Protocol
    num_images: int
    scores: SegScores
    skips: dict[str, int]
    num_templates: int
    miou_whole_image: float | None = None
    miou_group_bound: float | None = None
    groups_per_image: float | None = None

    def to_json(self) -> dict:
        out = {
            "benchmark": self.benchmark,
            "miou": self.scores.miou,
            "pixel_acc": self.scores.pixel_acc,
            "per_class_iou": self.scores.per_class_iou,
            "num_images": self.num_images,
            "num_classes": len(self.label_names),
            "protocol": {**self.protocol.as_dict(), "num_templates": self.num_templates},
            "skipped": self.skips,
        }
        if self.groups_per_image is not None:
            out.update(
                miou_whole_image=self.miou_whole_image,
                miou_group_bound=self.miou_group_bound,
                groups_per_image=self.groups_per_image,
            )
        return out

    def format(self) -> str:
        lines = [format_table(self.scores, f"{self.benchmark}: {self.num_images} images")]
        if self.groups_per_image is not None:
            for name in ("miou_whole_image", "miou_group_bound", "groups_per_image"):
                value = getattr(self, name)
                lines.append(f"{name}: {'-' if value is None else f'{value:.2f}'}")
        if self.skips.get("total"):
            lines.append(f"skipped: {self.skips}")
        return "\n".join(lines)


def save_label_map(pred: np.ndarray, path: Path) -> None:
    """Write a label map as PNG: 8-bit grey when every value fits, else 16-bit grey (atomic)."""
    if pred.min(initial=0) < 0 or pred.max(initial=0) > 65535:
        raise ValueError(f"label values {pred.min()}..{pred.max()} do not fit a 16-bit PNG")
    if pred.max(initial=0) <= 255:
        img = Image.fromarray(pred.astype(np.uint8), mode="L")
    else:
        img = Image.fromarray(pred.astype(np.uint16))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def evaluate_segmentation(
    zs: ZeroShotModel,
    dataset: SegDataset,
    proto: Protocol,
    options: SegEvalOptions | None = None,
    skips: SkipCounter | None = None,
) -> SegEvalResult:
    """Run the zero-shot protocol on the dataset's images (the first ``limit``) and score them.

    Undecodable images are counted in ``skips`` (created if not given; pass the one used by
    :func:`cocu.evaluation.datasets.open_dataset` to report its skips too)."""
    zs.require_groupvit()
    options = options or SegEvalOptions()
    skips = skips if skips is not None else SkipCounter()
    if proto.with_background != dataset.with_background:
        raise ValueError(f"{dataset.spec.name}: the protocol's background setting does not match the benchmark")
    items = dataset.items[: options.limit] if options.limit is not None else dataset.items
    names = dataset.label_names
    class_emb = zs.class_embeddings(dataset.class_names, list(options.templates), progress=options.progress)
    main = ConfusionMatrix(len(names))
    whole = ConfusionMatrix(len(names)) if options.diagnostics else None
    bound = ConfusionMatrix(len(names)) if options.diagnostics else None
    groups: list[float] = []
    done = 0
    for item in tqdm(items, desc=dataset.spec.name, unit="img", disable=not options.progress):
        label = dataset.read_label(item)
        image = load_item_image(item, skips)
        if image is None:
            continue
        seg = segment_image(
            zs, image, class_emb, proto, out_hw=label.shape, label=label if options.diagnostics else None
        )
        main.update(label, seg.pred)
        if options.diagnostics:
            whole.update(label, np.full_like(label, seg.whole_image_label))
            bound.update(label, seg.oracle_pred)
            groups.append(seg.groups_per_crop)
        if options.save_predictions is not None:
            save_label_map(seg.pred, Path(options.save_predictions) / f"{item.name}.png")
        done += 1
    if done == 0:
        raise ValueError(f"{dataset.spec.name}: no image could be evaluated ({skips.as_dict()})")
    result = SegEvalResult(
        benchmark=dataset.spec.name,
        label_names=names,
        protocol=proto,
        num_images=done,
        scores=scores(main, names),
        skips=skips.as_dict(),
        num_templates=len(options.templates),
    )
    if options.diagnostics:
        result.miou_whole_image = scores(whole, names).miou
        result.miou_group_bound = scores(bound, names).miou
        result.groups_per_image = round(float(np.mean(groups)), 4)
    logger.info("%s: mIoU %s over %d images", dataset.spec.name, result.scores.miou, done)
    return result
