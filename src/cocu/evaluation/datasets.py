"""Segmentation benchmark readers: each benchmark's standard folder layout and label decoding.

Every label map comes out as ``int64 [H,W]`` in the benchmark's label space: classes ``0..K-1`` (with
a background class it is label 0) and :data:`IGNORE` (-1) for pixels that do not count. Decodings:

- ``index``: the PNG stores class indices (VOC, Context, ``folder``, converted TrainIds files); 255 = ignore.
- ``ade_shift``: ADE20K, 0 = "other" -> ignore, ``v`` -> ``v - 1``.
- ``cityscapes_label_ids``: gtFine ``*_labelIds.png`` -> the 19 train ids, everything else ignored.
- ``coco_stuff_raw``: COCO-Stuff-164k raw ids 0..181 (11 unused thing ids) -> 171 classes; 255 = ignore.
- ``coco_object_raw``: the same raw maps -> COCO-Object as the reference converter makes it: things ->
  1..80, stuff and 255 (unlabeled) -> 0 (background).
- ``imagenet_s_rgb``: ImageNet-S RGB masks, id = R + 256 * G; 0 = other (background), 1000 = ignore.

A value that is neither a class nor the ignore value raises a clear error naming the file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cocu.data.skips import CORRUPT_IMAGE, MISSING_IMAGE, SkipCounter
from cocu.data.transforms import to_rgb
from cocu.evaluation.benchmarks import BACKGROUND, BenchmarkSpec, load_classnames, read_classnames_file

logger = logging.getLogger(__name__)

class BenchmarkNotFoundError(FileNotFoundError):
    """The benchmark's layout is not under the given root (as opposed to a damaged one)."""


IGNORE = -1
MISSING_LABEL = "missing_label"
IMAGE_EXTS = (".jpg", ".jpeg", ".JPEG", ".JPG", ".png", ".PNG")

# COCO-Stuff raw ids of the 11 COCO thing ids that have no annotations (12, 26, 29, ... minus one).
_COCO_UNUSED_RAW = frozenset({11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90})
_COCO_RAW_IDS = [i for i in range(182) if i not in _COCO_UNUSED_RAW]  # 171 ids in class order
_COCO_NUM_THINGS = 80
# Cityscapes labelIds of the 19 evaluated classes, in train-id order.
_CITYSCAPES_EVAL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)


def _lut(pairs: dict[int, int], size: int = 256) -> np.ndarray:
    table = np.full(size, IGNORE, dtype=np.int64)
    for src, dst in pairs.items():
        table[src] = dst
    return table


_LUTS = {
    "coco_stuff_raw": _lut({raw: i for i, raw in enumerate(_COCO_RAW_IDS)}),
    "coco_object_raw": _lut(
        {raw: (i + 1 if i < _COCO_NUM_THINGS else 0) for i, raw in enumerate(_COCO_RAW_IDS)} | {255: 0}
    ),
    "cityscapes_label_ids": _lut({lid: i for i, lid in enumerate(_CITYSCAPES_EVAL_IDS)}),
}
DECODINGS = ("index", "ade_shift", "imagenet_s_rgb", *_LUTS)


def decode_label(raw: np.ndarray, decoding: str) -> np.ndarray:
    """Raw label array (``[H,W]``, or ``[H,W,3+]`` for ``imagenet_s_rgb``) -> ``int64 [H,W]`` with IGNORE."""
    if decoding == "imagenet_s_rgb":
        if raw.ndim != 3 or raw.shape[2] < 2:
            raise ValueError("ImageNet-S masks are RGB (id = R + 256 * G)")
        ids = raw[..., 0].astype(np.int64) + 256 * raw[..., 1].astype(np.int64)  # [H,W]
        ids[ids == 1000] = IGNORE
        return ids
    if raw.ndim != 2:
        raise ValueError(f"expected a single-channel label map of class indices, got shape {raw.shape}")
    values = raw.astype(np.int64)  # [H,W]
    if decoding == "index":
        values[values == 255] = IGNORE
        return values
    if decoding == "ade_shift":
        return np.where(values == 0, IGNORE, values - 1)
    if decoding in _LUTS:
        if values.min(initial=0) < 0 or values.max(initial=0) > 255:
            raise ValueError(f"{decoding} labels must be 8-bit, got values up to {values.max()}")
        return _LUTS[decoding][values]
    raise ValueError(f"unknown label decoding {decoding!r}; known: {', '.join(DECODINGS)}")


def read_label(path: Path, decoding: str, num_classes: int) -> np.ndarray:
    """Read, decode and check one label file: every value must be a class index or ignore."""
    try:
        with Image.open(path) as img:
            mode = img.mode
            raw = np.asarray(img)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise ValueError(f"{path}: unreadable label file ({err})") from err
    if decoding != "imagenet_s_rgb" and mode in ("RGB", "RGBA"):
        raise ValueError(
            f"{path}: label is an {mode} colour image; expected a single-channel PNG of class indices "
            "(a palette PNG such as VOC's is fine)"
        )
    try:
        label = decode_label(raw, decoding)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    bad = (label != IGNORE) & ((label < 0) | (label >= num_classes))
    if bad.any():
        value = int(label[bad].max())
        raise ValueError(
            f"{path}: label value {value} (after {decoding} decoding) is not one of the {num_classes} classes "
            "and not the ignore label; wrong --dataset, class list or label files?"
        )
    return label


def load_image(path: Path) -> Image.Image:
    """Decode to RGB as stored (no EXIF rotation: benchmark labels follow the stored pixel grid)."""
    with Image.open(path) as img:
        img.load()
        return to_rgb(img)


@dataclass(frozen=True)
class SegItem:
    """One evaluation image: ``name`` is unique and names its saved prediction (``name + ".png"``)."""

    name: str
    image: Path
    label: Path
    decoding: str


@dataclass
class SegDataset:
    spec: BenchmarkSpec
    root: Path
    class_names: list[str]
    items: list[SegItem]

    @property
    def with_background(self) -> bool:
        return self.spec.with_background

    @property
    def label_names(self) -> list[str]:
        """Names of labels ``0..K-1`` (background first when the benchmark has one)."""
        return ([BACKGROUND] if self.with_background else []) + list(self.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def read_label(self, item: SegItem) -> np.ndarray:
        return read_label(item.label, item.decoding, self.num_classes)


def _layout_root(spec: BenchmarkSpec, root: Path) -> Path:
    for sub in spec.roots:
        candidate = root / sub if sub else root
        if (candidate / spec.labels).is_dir():
            return candidate
    tried = ", ".join(str(root / s) if s else str(root) for s in spec.roots)
    raise BenchmarkNotFoundError(
        f"{spec.name}: no {spec.labels}/ folder under {tried}; expected {spec.title} in its standard layout "
        f"(images in {spec.images}/, labels in {spec.labels}/; see docs/benchmarks.md)"
    )


def benchmark_present(spec: BenchmarkSpec, root: str | Path) -> bool:
    """Whether the benchmark's layout (its label folder) is under ``root``, as :func:`open_dataset` looks."""
    try:
        _layout_root(spec, Path(root))
    except BenchmarkNotFoundError:
        return False
    return True


def _find_image(folder: Path, stem: str, preferred: str) -> Path | None:
    for ext in (preferred, *IMAGE_EXTS):
        candidate = folder / f"{stem}{ext}"
        if candidate.is_file():
            return candidate
    return None


def _find_label(folder: Path, stem: str, spec: BenchmarkSpec) -> tuple[Path, str] | None:
    for suffix, decoding in spec.label_suffixes:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate, decoding
    return None


def _pair(
    name: str, image: Path | None, label: tuple[Path, str] | None, skips: SkipCounter, source: str
) -> SegItem | None:
    if image is None:
        skips.add(MISSING_IMAGE, name, source, "no image file for this label")
        return None
    if label is None:
        skips.add(MISSING_LABEL, name, source, "no label file for this image")
        return None
    return SegItem(name=name, image=image, label=label[0], decoding=label[1])


def _list_layout(spec: BenchmarkSpec, root: Path, skips: SkipCounter) -> list[SegItem]:
    split = root / spec.split
    if not split.is_file():
        raise FileNotFoundError(f"{spec.name}: split file {split} not found (one image name a line)")
    names = [line.strip() for line in split.read_text("utf-8").splitlines() if line.strip()]
    items = []
    for name in names:
        image = _find_image(root / spec.images, name, spec.image_ext)
        item = _pair(name, image, _find_label(root / spec.labels, name, spec), skips, str(split))
        if item is not None:
            items.append(item)
    return items


def _paired_layout(spec: BenchmarkSpec, root: Path, skips: SkipCounter) -> list[SegItem]:
    folder = root / spec.images
    if not folder.is_dir():
        raise FileNotFoundError(f"{spec.name}: image folder {folder} not found")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in IMAGE_EXTS)
    items = []
    for image in images:
        item = _pair(image.stem, image, _find_label(root / spec.labels, image.stem, spec), skips, str(folder))
        if item is not None:
            items.append(item)
    return items


def _cityscapes_layout(spec: BenchmarkSpec, root: Path, skips: SkipCounter) -> list[SegItem]:
    folder = root / spec.images
    if not folder.is_dir():
        raise FileNotFoundError(f"{spec.name}: image folder {folder} not found (leftImg8bit/val/<city>/)")
    items = []
    for image in sorted(folder.glob(f"*/*{spec.image_ext}")):
        base = image.name[: -len(spec.image_ext)]
        label = _find_label(root / spec.labels / image.parent.name, base, spec)
        item = _pair(base, image, label, skips, str(folder))
        if item is not None:
            items.append(item)
    return items


def _imagenet_s_layout(spec: BenchmarkSpec, root: Path, skips: SkipCounter) -> list[SegItem]:
    items = []
    for label in sorted((root / spec.labels).glob("*/*.png")):
        wnid = label.parent.name
        image = _find_image(root / spec.images / wnid, label.stem, spec.image_ext)
        decoding = dict(spec.label_suffixes)[".png"]
        item = _pair(f"{wnid}/{label.stem}", image, (label, decoding), skips, str(root / spec.labels))
        if item is not None:
            items.append(item)
    return items


_LAYOUTS = {
    "list": _list_layout,
    "paired": _paired_layout,
    "cityscapes": _cityscapes_layout,
    "imagenet-s": _imagenet_s_layout,
}


def open_dataset(spec: BenchmarkSpec, root: str | Path, skips: SkipCounter | None = None) -> SegDataset:
    """Find the layout under ``root``, its class names and its (image, label) pairs.

    Pairs with a missing image or label are counted in ``skips`` (reasons ``missing_image`` and
    ``missing_label``); a layout with no usable pair at all is an error.
    """
    skips = skips if skips is not None else SkipCounter()
    base = Path(root)
    if not base.is_dir():
        raise BenchmarkNotFoundError(f"{spec.name}: dataset root {base} is not a folder")
    layout_root = _layout_root(spec, base)
    if spec.classnames is None:
        class_names = read_classnames_file(layout_root / "classes.txt")
    else:
        class_names = load_classnames(spec.classnames)
    if spec.layout not in _LAYOUTS:
        raise ValueError(f"{spec.name}: unknown layout {spec.layout!r}")
    items = _LAYOUTS[spec.layout](spec, layout_root, skips)
    if not items:
        raise FileNotFoundError(
            f"{spec.name}: no image/label pairs found under {layout_root} "
            f"(images {spec.images}/*{spec.image_ext}, labels {spec.labels}/)"
        )
    logger.info("%s: %d images under %s", spec.name, len(items), layout_root)
    return SegDataset(spec=spec, root=layout_root, class_names=class_names, items=items)


def load_item_image(item: SegItem, skips: SkipCounter) -> Image.Image | None:
    """The item's RGB image, or None (counted as ``corrupt_image``) when it cannot be decoded or is above
    PIL's decompression-bomb limit."""
    try:
        return load_image(item.image)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
        skips.add(CORRUPT_IMAGE, item.name, str(item.image), str(err))
        return None
