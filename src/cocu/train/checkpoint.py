"""Atomic training checkpoints: ``OUT/checkpoints/step-{step:08d}/`` with

- ``weights.safetensors``: the state of the trained module (model and loss temperatures);
- ``state.pt``: optimizer and scheduler state, step and epoch (ints), and the RNG states of all
  data-parallel ranks (uint8 tensors ``[world, n]``: torch's CPU generator, and CUDA's when training on
  GPU), loadable with ``torch.load(weights_only=True)``.

A checkpoint is written into a temporary folder beside the others and renamed into place, so a run
killed while saving leaves either the complete checkpoint or none. Older checkpoints beyond
``keep`` are removed after a new one is in place.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from torch import nn

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d{8})$")
WEIGHTS_FILE = "weights.safetensors"
STATE_FILE = "state.pt"


@dataclass
class CheckpointState:
    step: int
    epoch: int
    rng: dict[str, torch.Tensor]


def checkpoint_dirs(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root`` in step order."""
    folder = Path(root)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m and (p / WEIGHTS_FILE).is_file() and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | Path) -> Path | None:
    found = checkpoint_dirs(root)
    return found[-1] if found else None


def save_checkpoint(
    root: str | Path,
    step: int,
    epoch: int,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    rng: dict[str, torch.Tensor],
    keep: int,
) -> Path:
    """Write checkpoint ``step`` atomically and prune to the newest ``keep``; returns its folder."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        save_model(module, str(tmp / WEIGHTS_FILE))
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "step": int(step),
                "epoch": int(epoch),
                "rng": rng,
            },
            tmp / STATE_FILE,
        )
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in checkpoint_dirs(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("checkpoint %s", final)
    return final


def load_checkpoint(
    path: str | Path,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
) -> CheckpointState:
    """Restore module weights, optimizer and scheduler; the step, epoch and saved RNG states are returned."""
    path = Path(path)
    if not (path / WEIGHTS_FILE).is_file() or not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint folder (expected {WEIGHTS_FILE} and {STATE_FILE})")
    missing, unexpected = load_model(module, str(path / WEIGHTS_FILE), strict=False, device=str(device))
    if missing or unexpected:
        raise ValueError(
            f"{path}: the checkpoint does not fit this model (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}); was it written with another model config?"
        )
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return CheckpointState(step=int(state["step"]), epoch=int(state["epoch"]), rng=dict(state["rng"]))
