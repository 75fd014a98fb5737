"""Zero-shot semantic segmentation evaluation over a benchmark: mIoU from an accumulated confusion
matrix, optional saved predictions, optional diagnostics.

Diagnostics (``diagnostics=True``):

- ``miou_whole_image``: mIoU when every image is painted with its single top class by whole-image
  similarity (a classification-only baseline);
- ``miou_group_bound``: mIoU when each final group of each crop is given the majority ground-truth label
  of its pixels (the best any group-to-class assignment could do with these groups; a low value means
  grouping failures, a high value with a low ``miou`` means alignment failures);
- ``groups_per_image``: mean over images of the mean number of distinct argmax groups per crop.

A label map whose size differs from its image is a counted skip (``size_mismatch``), or an error with
``strict``. Saved predictions are checked before any image is segmented: the folder may not lie in the
data set, no path may leave it, and no existing file that cocu did not write is replaced (unless ``force``).
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
from cocu.evaluation.benchmarks import SEG_TEMPLATES, Protocol, prompt_templates
from cocu.evaluation.datasets import SegDataset, SegItem, load_item_image
from cocu.evaluation.encoders import ZeroShotModel
from cocu.evaluation.metrics import ConfusionMatrix, SegScores, format_table, scores
from cocu.evaluation.outputs import check_not_input, check_overwrite, contained_path, png_info
from cocu.evaluation.segmenter import RESIZE, segment_image
from cocu.utils.atomic import atomic_path

logger = logging.getLogger(__name__)

SIZE_MISMATCH = "size_mismatch"


@dataclass
class SegEvalOptions:
    """``templates``: the published protocol's single template by default; ``strict``: a label of
    another size than its image stops the run instead of being skipped; ``force``: saved predictions
    may replace files cocu did not write."""

    limit: int | None = None
    save_predictions: Path | None = None
    diagnostics: bool = False
    templates: Sequence[str] = field(default_factory=lambda: prompt_templates(SEG_TEMPLATES))
    progress: bool = True
    strict: bool = False
    force: bool = False


@dataclass
class SegEvalResult:
    benchmark: str
    label_names: list[str]
    protocol: Protocol
    num_images: int
    scores: SegScores
    skips: dict[str, int]
    templates: list[str]
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
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
            "protocol": protocol_block(self.protocol, self.templates, self.image_mean, self.image_std),
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


def protocol_block(
    proto: Protocol, templates: Sequence[str], image_mean: Sequence[float], image_std: Sequence[float]
) -> dict:
    """Everything that decides a segmentation number, as the JSON's ``protocol`` records it."""
    return {
        **proto.as_dict(),
        "templates": list(templates),
        "num_templates": len(templates),
        "image_mean": [float(v) for v in image_mean],
        "image_std": [float(v) for v in image_std],
        "resize": RESIZE,
    }


def save_label_map(pred: np.ndarray, path: Path) -> None:
    """Write a label map as PNG: 8-bit grey when every value fits, else 16-bit grey (atomic, marked as
    written by cocu)."""
    if pred.min(initial=0) < 0 or pred.max(initial=0) > 65535:
        raise ValueError(f"label values {pred.min()}..{pred.max()} do not fit a 16-bit PNG")
    if pred.max(initial=0) <= 255:
        img = Image.fromarray(pred.astype(np.uint8), mode="L")
    else:
        img = Image.fromarray(pred.astype(np.uint16))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG", pnginfo=png_info())


def prediction_paths(dataset: SegDataset, items: Sequence[SegItem], folder: Path, force: bool) -> list[Path]:
    """Each item's saved-prediction path, checked before any work: the folder is not in the data set,
    no path leaves it (a split entry such as ``../../x``), none is an input, none is a foreign file."""
    spec = dataset.spec
    check_not_input(folder, input_dirs=[dataset.root, dataset.root / spec.images, dataset.root / spec.labels])
    paths = []
    for item in items:
        path = contained_path(folder, f"{item.name}.png")
        check_not_input(path, input_files=[item.image, item.label])
        check_overwrite(path, force)
        paths.append(path)
    return paths


def _size_ok(item: SegItem, label: np.ndarray, image: Image.Image, strict: bool, skips: SkipCounter) -> bool:
    if label.shape == (image.height, image.width):
        return True
    detail = f"label {label.shape[1]}x{label.shape[0]} but image {image.width}x{image.height} ({item.image})"
    if strict:
        raise ValueError(f"{item.label}: {detail}; labels must have their image's size")
    skips.add(SIZE_MISMATCH, item.name, str(item.label), detail)
    return False


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
    saved = None
    if options.save_predictions is not None:
        saved = prediction_paths(dataset, items, Path(options.save_predictions), options.force)
    names = dataset.label_names
    class_emb = zs.class_embeddings(dataset.class_names, list(options.templates), progress=options.progress)
    main = ConfusionMatrix(len(names))
    whole = ConfusionMatrix(len(names)) if options.diagnostics else None
    bound = ConfusionMatrix(len(names)) if options.diagnostics else None
    groups: list[float] = []
    done = 0
    for i, item in enumerate(tqdm(items, desc=dataset.spec.name, unit="img", disable=not options.progress)):
        label = dataset.read_label(item)
        image = load_item_image(item, skips)
        if image is None or not _size_ok(item, label, image, options.strict, skips):
            continue
        seg = segment_image(
            zs, image, class_emb, proto, out_hw=label.shape, label=label if options.diagnostics else None
        )
        main.update(label, seg.pred)
        if options.diagnostics:
            whole.update(label, np.full_like(label, seg.whole_image_label))
            bound.update(label, seg.oracle_pred)
            groups.append(seg.groups_per_crop)
        if saved is not None:
            save_label_map(seg.pred, saved[i])
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
        templates=list(options.templates),
        image_mean=tuple(zs.mean),
        image_std=tuple(zs.std),
    )
    if options.diagnostics:
        result.miou_whole_image = scores(whole, names).miou
        result.miou_group_bound = scores(bound, names).miou
        result.groups_per_image = round(float(np.mean(groups)), 4)
    logger.info("%s: mIoU %s over %d images", dataset.spec.name, result.scores.miou, done)
    return result
