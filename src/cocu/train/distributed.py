"""Data parallelism: torchrun's process group and torch's ``DistributedDataParallel``.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the trainer joins a process group (``nccl``
when training on CUDA, ``gloo`` on CPU) and wraps its module in ``DistributedDataParallel``
(:func:`wrap_data_parallel`): gradients are all-reduced in buckets while backward is still running, and
DDP *averages* them over ranks. Every rank computes the loss of the whole global batch from gathered
features with gradients for its own shard only (``cocu.train.loss``), whose local gradient is scaled by
the world size, so the average is exactly the single-process gradient of the global batch. All ranks
then hold identical gradients, clip and step identically, and their parameters stay bit-identical.

BatchNorm (GroupViT's projection heads): in training mode each rank normalises with its own batch's
statistics (no SyncBatchNorm: it is CUDA-only and would change the training math). The running
statistics follow DDP's default ``broadcast_buffers=True``: at the start of every forward rank 0's
buffers are copied to all ranks, so the buffers that count (rank 0's, the ones saved in checkpoints and
the final model) are the running averages of rank 0's local batches. Other ranks' buffers differ only
between their own update and the next forward, and are never saved.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger(__name__)


@dataclass
class DistContext:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    owns_group: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(preference: str, local_rank: int) -> torch.device:
    """``auto``: CUDA (this rank's local GPU) when available, else CPU."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but CUDA is not available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def backend_for(device: torch.device) -> str:
    """The collective backend for ``device``: ``nccl`` on CUDA, ``gloo`` otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_distributed(preference: str) -> DistContext:
    """Join the ``torchrun`` process group if the environment describes one (or reuse an existing group)."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        return DistContext(rank, world, local_rank, resolve_device(preference, local_rank), owns_group=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(preference, local_rank)
    if world == 1:
        return DistContext(0, 1, 0, device, owns_group=False)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device))
    rank = dist.get_rank()
    logger.info("data-parallel rank %d of %d on %s", rank, world, device)
    return DistContext(rank, world, local_rank, device, owns_group=True)


def shutdown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.world > 1:
        dist.barrier()


def wrap_data_parallel(module: nn.Module, ctx: DistContext) -> nn.Module:
    """``module`` itself with one process; else ``DistributedDataParallel(module)`` on this rank's device
    (parameters and buffers are broadcast from rank 0 on construction; see the module docstring)."""
    if ctx.world == 1:
        return module
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)  # buffers: rank 0's, broadcast each forward


def all_true(flag: bool, ctx: DistContext) -> bool:
    """True only if ``flag`` holds on every rank."""
    if ctx.world == 1:
        return flag
    t = torch.tensor([0 if flag else 1], dtype=torch.int64, device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return int(t.item()) == 0


def broadcast_from_main(value: Any, ctx: DistContext) -> Any:
    """Rank 0's ``value`` (any picklable object) on every rank."""
    if ctx.world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=ctx.device if ctx.device.type == "cuda" else None)
    return box[0]


def gather_rows(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Stack this rank's CPU tensor ``t`` [n] with every other rank's: [world, n] on CPU (same on all ranks)."""
    if ctx.world == 1:
        return t.unsqueeze(0)
    local = t.to(ctx.device)
    parts = [torch.empty_like(local) for _ in range(ctx.world)]
    dist.all_gather(parts, local)
    return torch.stack(parts).cpu()
