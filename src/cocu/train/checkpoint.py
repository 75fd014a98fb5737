"""Atomic training checkpoints: ``OUT/checkpoints/step-{step:08d}/`` with

- ``weights.safetensors``: the state of the trained module (model and loss temperatures);
- ``state.pt``: optimizer and scheduler state, step and epoch (ints), and the RNG states of all
  data-parallel ranks (uint8 tensors ``[world, n]``: torch's CPU generator, and CUDA's when training on
  GPU), loadable with ``torch.load(weights_only=True)``;
- ``SHA256SUMS``: the SHA-256 of both files as ``sha256sum`` writes it (``sha256sum -c SHA256SUMS`` checks
  it), hashed from the files as written to disk.

A checkpoint is written into a temporary folder beside the others and renamed into place, so a run
killed while saving leaves either the complete checkpoint or none. Older checkpoints beyond
``keep`` are removed after a new one is in place. :func:`damage` re-hashes a checkpoint's files
against its ``SHA256SUMS``; :func:`latest_intact_checkpoint` is the newest checkpoint that passes (a
truncated or bit-flipped newest checkpoint is skipped with a warning), and :func:`load_checkpoint`
refuses a damaged one with :class:`CheckpointDamaged`. Checkpoints from before checksums were written
are accepted with a warning that they cannot be verified.
"""

from __future__ import annotations

import hashlib
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
SUMS_FILE = "SHA256SUMS"
_CHUNK = 1 << 20


class CheckpointDamaged(ValueError):
    """A checkpoint whose files do not match the checksums written beside them."""


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
    """The newest complete checkpoint folder, not verified (see :func:`latest_intact_checkpoint`)."""
    found = checkpoint_dirs(root)
    return found[-1] if found else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write_sums(folder: Path) -> None:
    lines = [f"{_sha256(folder / name)}  {name}\n" for name in (WEIGHTS_FILE, STATE_FILE)]
    (folder / SUMS_FILE).write_text("".join(lines), "ascii")


def damage(path: str | Path) -> str | None:
    """What is wrong with checkpoint ``path`` (a missing file or a checksum mismatch), or ``None`` if its
    files match ``SHA256SUMS`` (or it predates checksums: then a warning is logged)."""
    folder = Path(path)
    for name in (WEIGHTS_FILE, STATE_FILE):
        if not (folder / name).is_file():
            return f"{name} is missing"
    sums = folder / SUMS_FILE
    if not sums.is_file():
        logger.warning("%s has no %s (written by an older cocu): it cannot be verified", folder, SUMS_FILE)
        return None
    expected = {}
    for line in sums.read_text("ascii", errors="replace").splitlines():
        digest, _, name = line.partition("  ")
        expected[name] = digest
    for name in (WEIGHTS_FILE, STATE_FILE):
        if name not in expected:
            return f"{SUMS_FILE} has no checksum for {name}"
        if _sha256(folder / name) != expected[name]:
            return f"{name} does not match its SHA-256 in {SUMS_FILE} (truncated or corrupted)"
    return None


def latest_intact_checkpoint(root: str | Path) -> Path | None:
    """The newest checkpoint under ``root`` whose files match their checksums; each newer damaged one is
    skipped with a warning naming it and what is wrong."""
    for path in reversed(checkpoint_dirs(root)):
        problem = damage(path)
        if problem is None:
            return path
        logger.warning("skipping damaged checkpoint %s: %s; falling back to an older one", path, problem)
    return None


def remove_partial_checkpoints(root: str | Path) -> int:
    """Remove the temporary folders that a run killed while saving left under ``root``; returns how many.
    Call it only while holding the run folder's lock (another run's save may be in flight otherwise)."""
    folder = Path(root)
    if not folder.is_dir():
        return 0
    stale = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(".step-")]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
        logger.info("removed the partial checkpoint %s (a run stopped while saving it)", path)
    return len(stale)


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
        _write_sums(tmp)
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
    verify: bool = True,
) -> CheckpointState:
    """Restore module weights, optimizer and scheduler; the step, epoch and saved RNG states are returned.
    With ``verify`` (skip it only for a checkpoint just checked by :func:`damage`), one whose files do not
    match their checksums raises :class:`CheckpointDamaged`."""
    path = Path(path)
    if not (path / WEIGHTS_FILE).is_file() or not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint folder (expected {WEIGHTS_FILE} and {STATE_FILE})")
    problem = damage(path) if verify else None
    if problem is not None:
        raise CheckpointDamaged(f"checkpoint {path} is damaged: {problem}; resume from another checkpoint")
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
