"""A saved model folder: transformers weights (safetensors), its tokenizer and its image preprocessing.

Our trainer writes these folders and every stage that needs a model reads them, so a checkpoint
trained here, a published one (``nvidia/groupvit-gcc-yfcc``, ``openai/clip-vit-base-patch16``) and a
folder made by transformers' own ``save_pretrained`` all load the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import torch
from torch import nn
from transformers import AutoConfig, CLIPModel, GroupViTModel, PreTrainedTokenizerBase

from cocu.data.transforms import CLIP_MEAN, CLIP_STD, Preprocess
from cocu.text.tokenizer import load_tokenizer, save_tokenizer

PREPROCESSOR_FILE = "preprocessor_config.json"
FAMILIES = {"groupvit": GroupViTModel, "clip": CLIPModel}


@dataclass
class ModelBundle:
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    preprocess: Preprocess
    family: str


def _preprocess_from(path: str, image_size: int) -> Preprocess:
    """Read CLIPImageProcessor-style settings (shortest-edge resize, centre crop, mean/std) if present."""
    local = Path(path) / PREPROCESSOR_FILE
    if local.is_file():
        raw = json.loads(local.read_text("utf-8"))
    elif Path(path).is_dir():
        raw = {}
    else:
        from transformers import AutoImageProcessor

        raw = AutoImageProcessor.from_pretrained(path).to_dict()
    crop = raw.get("crop_size", image_size)
    size = crop.get("height", image_size) if isinstance(crop, dict) else int(crop)
    return Preprocess(
        size=int(size),
        mean=tuple(raw.get("image_mean", CLIP_MEAN)),
        std=tuple(raw.get("image_std", CLIP_STD)),
        crop=bool(raw.get("do_center_crop", True)),
    )


_TRUE = {"1", "on", "yes", "true"}


def hub_offline() -> bool:
    """Whether the Hugging Face hub is off (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE), read now."""
    from huggingface_hub import constants

    env = (os.environ.get(v, "").strip().lower() for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return bool(constants.HF_HUB_OFFLINE) or any(v in _TRUE for v in env)


def looks_like_path(spec: str) -> bool:
    """A model spec that can only be a local path: absolute, relative (``.``), home (``~``), more than one
    ``/`` or a backslash (hub names are ``name`` or ``org/name``), or ``dir/name`` whose ``dir`` exists here."""
    if spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or "\\" in spec:
        return True
    parent = Path(spec).parent
    return parent != Path(".") and parent.is_dir()


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub endpoint opens within ``timeout`` seconds (assumed yes behind an
    HTTPS proxy, which this check cannot see through). transformers itself retries an unreachable hub for
    about 25 s before it gives up."""
    from huggingface_hub import constants

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def cached_snapshot(spec: str) -> Path | None:
    """The local snapshot folder of hub model ``spec`` if its config.json is in the Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(spec, "config.json")
    except ValueError:  # not a valid repo id
        return None
    return Path(found).parent if isinstance(found, str) else None


def resolve_model_path(spec: str | Path) -> str:
    """Check a model spec before any hub lookup: a local folder must exist and hold config.json; a spec
    that looks like a path (:func:`looks_like_path`) and is not a folder fails at once, as does a hub name
    missing from the local cache while the hub is off or unreachable; a cached one then loads from its
    snapshot folder, without hub lookups. Returns what transformers should load."""
    text = str(spec)
    folder = Path(os.path.expanduser(text))
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"{text}: this folder has no config.json; a model folder holds config.json, weights and tokenizer "
                "files as written by `cocu train` or transformers' save_pretrained"
            )
        return str(folder)
    if looks_like_path(text) or folder.exists():
        raise FileNotFoundError(f"{text}: no such model folder ({folder.absolute()} does not exist or is not a folder)")
    if hub_offline():
        why = "the hub is off (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)"
    elif not hub_reachable():
        why = "the hub cannot be reached"
    else:
        return text
    snapshot = cached_snapshot(text)
    if snapshot is None:
        raise FileNotFoundError(
            f"{text}: not a local folder, and not in the local Hugging Face cache while {why}; pass a model "
            "folder, or fetch the model once with the hub reachable"
        )
    return str(snapshot)


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> ModelBundle:
    """Load a GroupViT or CLIP folder (or hub name) with its tokenizer and preprocessing, in eval mode;
    a missing local folder fails before any hub lookup (:func:`resolve_model_path`)."""
    path = resolve_model_path(path)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"{path}: not a model folder or a cached hub name ({err}); expected config.json, weights and tokenizer "
            "files as written by `cocu train` or transformers' save_pretrained"
        ) from err
    family = config.model_type
    if family not in FAMILIES:
        raise ValueError(f"{path}: model type {family!r} is neither groupvit nor clip")
    model = FAMILIES[family].from_pretrained(path).to(device).eval()
    tokenizer = load_tokenizer(path)
    image_size = int(config.vision_config.image_size)
    return ModelBundle(model=model, tokenizer=tokenizer, preprocess=_preprocess_from(path, image_size), family=family)


def save_bundle(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    image_size: int,
    mean: tuple[float, float, float] = CLIP_MEAN,
    std: tuple[float, float, float] = CLIP_STD,
) -> Path:
    """Write model (safetensors), tokenizer and preprocessing into a temporary folder, then swap it in."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(tokenizer, tmp)
        processor = {
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": True,
            "size": {"shortest_edge": image_size},
            "do_center_crop": True,
            "crop_size": {"height": image_size, "width": image_size},
            "do_normalize": True,
            "image_mean": list(mean),
            "image_std": list(std),
            "do_convert_rgb": True,
        }
        (tmp / PREPROCESSOR_FILE).write_text(json.dumps(processor, indent=2) + "\n", "utf-8")
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
