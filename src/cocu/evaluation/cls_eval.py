"""Zero-shot image classification on an image-folder data set: top-1 / top-5 accuracy.

Folder layout ``ROOT/<class folder>/<image>``. Class names and order:

- ``ROOT/classes.txt`` if present (one name a line, index = line number; folder name = class name), as
  the synthetic world's ``classify/`` has;
- otherwise, if the folders are ImageNet WordNet ids (``n01440764`` ...): all 1000 of them sorted are
  the ImageNet-1k index order, named by ``classnames/imagenet.txt``; a subset needs an explicit
  ``classnames`` list (one name per folder, in sorted folder order);
- otherwise the folder names themselves, sorted.

Every class of the list is a candidate for every image (1000-way for ImageNet).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from cocu.data.skips import CORRUPT_IMAGE, SkipCounter
from cocu.data.transforms import Preprocess, exif_to_rgb
from cocu.evaluation.benchmarks import load_classnames, read_classnames_file, unique_keys
from cocu.evaluation.encoders import ZeroShotModel

logger = logging.getLogger(__name__)

WNID = re.compile(r"^n\d{8}$")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class ClsItem:
    path: Path
    target: int


@dataclass
class ImageFolder:
    class_names: list[str]
    items: list[ClsItem]


def _class_folders(root: Path) -> list[Path]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise FileNotFoundError(f"{root}: no class folders (expected ROOT/<class>/<image>)")
    return folders


def _names_for(root: Path, folders: list[Path], classnames: Sequence[str] | None) -> tuple[list[str], dict[str, int]]:
    """Class names and folder name -> class index."""
    listed = root / "classes.txt"
    if classnames is None and listed.is_file():
        names = read_classnames_file(listed)
        index = {n: i for i, n in enumerate(names)}
        unknown = [f.name for f in folders if f.name not in index]
        if unknown:
            raise ValueError(f"{root}: folders not in classes.txt: {', '.join(unknown[:5])}")
        return names, index
    folder_names = [f.name for f in folders]
    if classnames is not None:
        if len(classnames) != len(folders):
            raise ValueError(f"{root}: {len(classnames)} class names for {len(folders)} class folders")
        return list(classnames), {f: i for i, f in enumerate(folder_names)}
    if all(WNID.match(f) for f in folder_names):
        if len(folders) != IMAGENET_CLASSES:
            raise ValueError(
                f"{root}: {len(folders)} ImageNet wnid folders; their names can only be looked up for the full "
                "1000 (sorted wnids = class index order). Pass a class-name list for a subset."
            )
        return load_classnames("imagenet"), {f: i for i, f in enumerate(folder_names)}
    return folder_names, {f: i for i, f in enumerate(folder_names)}


def open_image_folder(root: str | Path, classnames: Sequence[str] | None = None) -> ImageFolder:
    """List the images; the order interleaves classes (first image of every class, then the second...)
    so that a ``limit`` still covers many classes."""
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: not a folder")
    folders = _class_folders(base)
    names, index = _names_for(base, folders, classnames)
    per_class = [
        [ClsItem(p, index[f.name]) for p in sorted(f.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        for f in folders
    ]
    items = [group[i] for i in range(max(len(g) for g in per_class)) for group in per_class if i < len(group)]
    if not items:
        raise FileNotFoundError(f"{base}: no images in the class folders")
    logger.info("%s: %d images in %d class folders, %d classes", base, len(items), len(folders), len(names))
    return ImageFolder(class_names=names, items=items)


@dataclass
class ClsEvalResult:
    top1: float
    top5: float
    k: int
    n: int
    per_class_accuracy: dict[str, float | None]
    skips: dict[str, int]
    protocol: dict

    def to_json(self) -> dict:
        return {
            "top1": self.top1,
            "top5": self.top5,
            "top5_k": self.k,
            "n": self.n,
            "num_classes": len(self.per_class_accuracy),
            "per_class_accuracy": self.per_class_accuracy,
            "protocol": self.protocol,
            "skipped": self.skips,
        }

    def format(self) -> str:
        lines = [f"zero-shot classification: {self.n} images, {len(self.per_class_accuracy)} classes"]
        lines.append(f"top-1 {self.top1:.2f}%  top-{self.k} {self.top5:.2f}%")
        if self.skips.get("total"):
            lines.append(f"skipped: {self.skips}")
        return "\n".join(lines)


def _load(path: Path, skips: SkipCounter) -> Image.Image | None:
    try:
        with Image.open(path) as img:
            img.load()
            return exif_to_rgb(img)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
        skips.add(CORRUPT_IMAGE, path.name, str(path), str(err))
        return None


def classification_protocol(preprocess: Preprocess, templates: Sequence[str]) -> dict:
    """The ``protocol`` block of a classification JSON (same keys as segmentation's; no window, no
    background, no refinement)."""
    return {
        "templates": list(templates),
        "num_templates": len(templates),
        "image_mean": [float(v) for v in preprocess.mean],
        "image_std": [float(v) for v in preprocess.std],
        "short_side": preprocess.size,
        "crop": preprocess.size if preprocess.crop else None,
        "stride": None,
        "bg_thresh": None,
        "resize": f"{preprocess.interpolation}-pil",
        "local_consistency": False,
    }


@torch.inference_mode()
def evaluate_classification(
    zs: ZeroShotModel,
    folder: ImageFolder,
    templates: Sequence[str],
    limit: int | None = None,
    batch_size: int = 32,
    progress: bool = True,
    skips: SkipCounter | None = None,
) -> ClsEvalResult:
    """Top-1 and top-5 (top-min(5, K)) accuracy in percent, and per-class top-1 accuracy."""
    skips = skips if skips is not None else SkipCounter()
    items = folder.items[:limit] if limit is not None else folder.items
    class_emb = zs.class_embeddings(folder.class_names, list(templates), progress=progress).to(zs.device)  # [K,D]
    k = min(5, len(folder.class_names))
    num = len(folder.class_names)
    hits1 = torch.zeros(num, dtype=torch.long)
    seen = torch.zeros(num, dtype=torch.long)
    hits5 = 0
    for i in tqdm(range(0, len(items), batch_size), desc="classify", unit="batch", disable=not progress):
        batch = [(it, _load(it.path, skips)) for it in items[i : i + batch_size]]
        batch = [(it, img) for it, img in batch if img is not None]
        if not batch:
            continue
        pixels = torch.stack([zs.preprocess(img) for _, img in batch])  # [b,3,S,S]
        logits = zs.encode_images(pixels) @ class_emb.T  # [b,K]
        top = logits.topk(k, dim=-1).indices.cpu()  # [b,k]
        targets = torch.tensor([it.target for it, _ in batch])
        seen += torch.bincount(targets, minlength=num)
        hits1 += torch.bincount(targets[top[:, 0] == targets], minlength=num)
        hits5 += int((top == targets[:, None]).any(dim=1).sum())
    n = int(seen.sum())
    if n == 0:
        raise ValueError(f"no image could be classified ({skips.as_dict()})")
    per_class = {
        name: (round(100.0 * int(h) / int(s), 4) if s else None)
        for name, h, s in zip(unique_keys(folder.class_names), hits1, seen)
    }
    return ClsEvalResult(
        top1=round(100.0 * int(hits1.sum()) / n, 4),
        top5=round(100.0 * hits5 / n, 4),
        k=k,
        n=n,
        per_class_accuracy=per_class,
        skips=skips.as_dict(),
        protocol=classification_protocol(zs.preprocess, templates),
    )
