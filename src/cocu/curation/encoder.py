"""The frozen CLIP that curation embeds images, captions and concept prompts with.

An encoder spec names it:

- a transformers CLIP checkpoint by hub name (``openai/clip-vit-base-patch16``, the paper's ViT-B/16; it
  must already be in the local Hugging Face cache, nothing is downloaded by default) or a local folder
  (``config.json`` + weights + tokenizer, e.g. a CLIP that ``cocu train`` wrote), loaded with
  :func:`cocu.models.bundle.load_bundle`, with the checkpoint's own image preprocessing;
- ``random:NAME`` or ``random:NAME@SEED``: a CLIP built from the named config in
  ``cocu/models/configs`` with seeded random weights (seed 0 by default) and the byte-level tokenizer.
  For tests and plumbing only: its embeddings carry no meaning.

Device ``auto`` (the default) is CUDA when present (under torchrun this rank's ``LOCAL_RANK`` GPU), else the
CPU. On CUDA the towers run under float16 or bfloat16 autocast (``precision``; default ``bf16`` on CUDA,
``fp32`` on the CPU); the returned rows are always float32.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from cocu.data.transforms import CLIP_MEAN, CLIP_STD, Preprocess
from cocu.models.bundle import cached_snapshot, looks_like_path
from cocu.models.factory import build_clip, get_model_spec, model_config_names
from cocu.models.features import pooled_features as _features

logger = logging.getLogger(__name__)

RANDOM_PREFIX = "random:"
DEFAULT_BATCH_SIZE = 64
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU; ``auto`` and a bare ``cuda`` pick this process's GPU
    (``LOCAL_RANK`` under torchrun); anything else is passed to ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    if device == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if device in ("auto", "cuda"):
        if not torch.cuda.is_available():
            raise ValueError("device cuda was asked for but CUDA is not available; use --device cpu or auto")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(device)


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """``None``: ``bf16`` on CUDA, ``fp32`` elsewhere; otherwise checked against :data:`PRECISIONS`."""
    if precision is None:
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def _normalised(x: torch.Tensor) -> np.ndarray:
    x = x.float()  # [n,d]
    return torch.nn.functional.normalize(x, dim=-1).cpu().numpy().astype(np.float32, copy=False)


@dataclass
class FrozenClip:
    """A CLIP in eval mode with its tokenizer and image preprocessing; all encoding runs under
    ``torch.inference_mode`` (and autocast to ``precision`` unless ``fp32``) in batches of ``batch_size``
    and returns float32 L2-normalised rows."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    preprocess: Preprocess
    spec: str
    device: torch.device
    max_text_length: int
    batch_size: int = DEFAULT_BATCH_SIZE
    precision: str = "fp32"

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Preprocessed images ``[n,3,H,W]`` -> ``[n,d]`` float32, L2-normalised."""
        out = np.empty((pixels.shape[0], self.dim), dtype=np.float32)
        with torch.inference_mode(), self._autocast():
            for start in range(0, pixels.shape[0], self.batch_size):
                batch = pixels[start : start + self.batch_size].to(self.device, non_blocking=True)  # [b,3,H,W]
                feats = self.model.get_image_features(pixel_values=batch)
                out[start : start + batch.shape[0]] = _normalised(_features(feats))
        return out

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """PIL images (any mode, any size) -> ``[n,d]`` float32, L2-normalised."""
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            pixels = torch.stack([self.preprocess(img) for img in chunk])  # [b,3,S,S]
            out[start : start + len(chunk)] = self.encode_pixels(pixels)
        return out

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> ``[n,d]`` float32, L2-normalised; texts longer than the context are truncated."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(texts), self.batch_size):
                chunk = list(texts[start : start + self.batch_size])
                tokens = self.tokenizer(
                    chunk,
                    padding=True,
                    truncation=True,
                    max_length=self.max_text_length,
                    return_tensors="pt",
                )
                feats = self.model.get_text_features(
                    input_ids=tokens["input_ids"].to(self.device, non_blocking=True),  # [b,L]
                    attention_mask=tokens["attention_mask"].to(self.device, non_blocking=True),  # [b,L]
                )
                out[start : start + len(chunk)] = _normalised(_features(feats))
        return out


def parse_random_spec(spec: str) -> tuple[str, int]:
    """``random:NAME`` -> ``(NAME, 0)``, ``random:NAME@SEED`` -> ``(NAME, SEED)``."""
    body = spec[len(RANDOM_PREFIX) :]
    name, _, seed_text = body.partition("@")
    known = [n for n in model_config_names() if get_model_spec(n).family == "clip"]
    if name not in known:
        raise ValueError(
            f"encoder spec {spec!r}: unknown CLIP config {name!r}; use random:NAME[@SEED] with NAME one of "
            f"{', '.join(known)}"
        )
    if seed_text == "":
        return name, 0
    try:
        return name, int(seed_text)
    except ValueError:
        raise ValueError(f"encoder spec {spec!r}: the seed after '@' must be an integer") from None


def _random_clip(spec: str, device: torch.device) -> FrozenClip:
    from cocu.text.tokenizer import byte_level_tokenizer

    name, seed = parse_random_spec(spec)
    config = get_model_spec(name)
    tokenizer = byte_level_tokenizer(config.max_text_length)
    model = build_clip(name, tokenizer, seed=seed).to(device).eval()
    preprocess = Preprocess(size=config.image_size, mean=CLIP_MEAN, std=CLIP_STD, crop=True)
    return FrozenClip(model, tokenizer, preprocess, spec, device, config.max_text_length)


def _unresolved(spec: str, why: str) -> ValueError:
    fetch = "" if looks_like_path(spec) else f" (fetch it once with `huggingface-cli download {spec}`)"
    return ValueError(
        f"encoder spec {spec!r} does not resolve: {why}. Fix: pass a local folder holding a transformers CLIP "
        "(config.json, weights, tokenizer files; e.g. one written by `cocu train` or save_pretrained), a hub "
        f"name already in the local Hugging Face cache{fetch}, or random:clip-tiny[@SEED] for plumbing tests"
    )


def resolve_checkpoint(spec: str) -> Path:
    """The local folder of a CLIP checkpoint spec (folder path or cached hub name); never downloads."""
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise _unresolved(spec, f"{path} has no config.json")
        return path
    if looks_like_path(spec) or path.exists():
        raise _unresolved(spec, f"no such folder {path}")
    snapshot = cached_snapshot(spec)
    if snapshot is None:
        raise _unresolved(spec, "not a local folder and not in the local Hugging Face cache")
    return snapshot


def load_encoder(
    spec: str,
    device: str | torch.device = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    precision: str | None = None,
) -> FrozenClip:
    """Load the frozen CLIP named by ``spec`` (see the module docstring) in eval mode on ``device``
    (:func:`resolve_device`), encoding at ``precision`` (:func:`resolve_precision`)."""
    dev = resolve_device(device)
    chosen = resolve_precision(precision, dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # pinned batches and kernels land on this rank's GPU, not GPU 0
    if spec.startswith(RANDOM_PREFIX):
        encoder = _random_clip(spec, dev)
    else:
        from cocu.models.bundle import load_bundle

        folder = resolve_checkpoint(spec)
        try:
            bundle = load_bundle(folder, device=dev)
        except (OSError, ValueError) as err:
            raise _unresolved(spec, str(err)) from err
        if bundle.family != "clip":
            raise ValueError(
                f"encoder spec {spec!r} is a {bundle.family} model; curation needs a CLIP (image and text "
                "towers with projections), e.g. openai/clip-vit-base-patch16 or random:clip-tiny"
            )
        max_len = int(bundle.model.config.text_config.max_position_embeddings)
        encoder = FrozenClip(bundle.model, bundle.tokenizer, bundle.preprocess, spec, dev, max_len)
    encoder.batch_size = batch_size
    encoder.precision = chosen
    for param in encoder.model.parameters():
        param.requires_grad_(False)
    logger.info(
        "encoder %s: dim %d, image size %d, on %s (%s)", spec, encoder.dim, encoder.preprocess.size, dev, chosen
    )
    return encoder
