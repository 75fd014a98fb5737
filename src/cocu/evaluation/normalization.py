"""Which image mean/std an evaluation feeds the model, and loading a model for zero-shot use with it.

GroupViT and CoCu train and evaluate with ImageNet's mean/std. The transformers-hub GroupViT checkpoints
(``nvidia/groupvit-gcc-yfcc``, ``nvidia/groupvit-gcc-redcaps``) ship a processor with CLIP's mean/std, so
"the folder's own preprocessing" would feed them inputs they were never trained on. Choices:

- ``auto`` (default): ImageNet statistics for those known checkpoints (recognised by name: a hub name, a
  hub-cache snapshot path, a ``--local-dir`` named after the checkpoint, or ``_name_or_path`` in its
  ``config.json``), else the folder's own ``preprocessor_config.json`` (cocu-trained folders record what
  they were trained with);
- ``imagenet`` / ``clip``: those statistics; ``model``: the folder's own, whatever it is.

Explicit ``image_mean``/``image_std`` replace the choice.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from cocu.data.transforms import NORMALIZATIONS
from cocu.evaluation.dense_clip import load_seg_model
from cocu.evaluation.encoders import ZeroShotModel

logger = logging.getLogger(__name__)

NORMALIZE_CHOICES = ("auto", "imagenet", "clip", "model")
KNOWN_IMAGENET_CHECKPOINTS = ("groupvit-gcc-yfcc", "groupvit-gcc-redcaps")
"""Published GroupViT checkpoints trained with ImageNet statistics whose hub processor says CLIP's."""


@dataclass(frozen=True)
class Normalization:
    """``mean``/``std`` per RGB channel (on 0..1 pixels) and a one-line account of where they come from."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    note: str


def _config_name(model_spec: str | Path) -> str:
    """``_name_or_path`` of a folder's config.json ("" when absent; an unreadable config.json is left to
    the model loader, which reports it)."""
    config = Path(model_spec) / "config.json"
    if not config.is_file():
        return ""
    try:
        raw = json.loads(config.read_text("utf-8"))
    except (OSError, ValueError) as err:
        logger.debug("%s: not read for its _name_or_path (%s)", config, err)
        return ""
    return str(raw.get("_name_or_path", "")) if isinstance(raw, dict) else ""


def known_imagenet_checkpoint(model_spec: str | Path) -> str | None:
    """The known NVIDIA GroupViT checkpoint that ``model_spec`` is, or None."""
    for name in (str(model_spec), _config_name(model_spec)):
        lowered = name.lower()
        for known in KNOWN_IMAGENET_CHECKPOINTS:
            if known in lowered:
                return known
    return None


def _triple(values: Sequence[float], what: str) -> tuple[float, float, float]:
    if len(values) != 3:
        raise ValueError(f"{what} needs 3 values (R G B), got {len(values)}")
    if what == "image std" and any(v <= 0 for v in values):
        raise ValueError(f"image std values must be positive, got {list(values)}")
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def choose_normalization(
    model_spec: str | Path,
    model_mean: Sequence[float],
    model_std: Sequence[float],
    choice: str = "auto",
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
) -> Normalization:
    """Resolve ``choice`` (see the module doc) for a model whose own preprocessor says ``model_mean/std``."""
    if (image_mean is None) != (image_std is None):
        raise ValueError("give --image-mean and --image-std together")
    if image_mean is not None:
        return Normalization(_triple(image_mean, "image mean"), _triple(image_std, "image std"), "given mean/std")
    if choice not in NORMALIZE_CHOICES:
        raise ValueError(f"unknown normalisation {choice!r}; known: {', '.join(NORMALIZE_CHOICES)}")
    if choice == "auto":
        known = known_imagenet_checkpoint(model_spec)
        if known is not None:
            mean, std = NORMALIZATIONS["imagenet"]
            note = (
                f"ImageNet mean/std: {known} was trained with them (its processor says otherwise; "
                "--normalize model to use the processor's)"
            )
            return Normalization(mean, std, note)
        choice = "model"
    if choice == "model":
        return Normalization(
            _triple(model_mean, "image mean"), _triple(model_std, "image std"), "the model folder's preprocessor_config.json"
        )
    mean, std = NORMALIZATIONS[choice]
    return Normalization(mean, std, f"{'ImageNet' if choice == 'imagenet' else 'CLIP'} mean/std (--normalize {choice})")


def load_zero_shot(
    model_spec: str | Path,
    device: str | torch.device | None = "auto",
    normalize: str = "auto",
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    method: str = "groupvit",
) -> tuple[ZeroShotModel, Normalization]:
    """Load a model folder (or cached hub name) for zero-shot use with the chosen normalisation;
    ``method``: ``groupvit`` or a dense CLIP read-out (:data:`cocu.evaluation.dense_clip.SEG_METHODS`)."""
    zs = load_seg_model(str(model_spec), method, device)
    norm = choose_normalization(model_spec, zs.mean, zs.std, normalize, image_mean, image_std)
    zs.set_normalization(norm.mean, norm.std)
    return zs, norm
