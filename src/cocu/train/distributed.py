"""Data parallelism by hand: gradients summed with one all-reduce per step, BatchNorm buffers averaged.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the trainer joins a process group (``nccl``
when training on CUDA, ``gloo`` on CPU). Every rank computes the loss of the whole global batch from
gathered features with gradients for its own shard only (``cocu.train.loss``), so the *sum* of the
ranks' parameter gradients is the single-process gradient; :func:`all_reduce_grads` sums them in one
flat buffer. All ranks then hold identical gradients, clip and step identically, and stay bit-identical.
BatchNorm running statistics are computed from each rank's local batch; :func:`average_buffers` averages
them after each step so that the ranks' (and the saved) buffers agree.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

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
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank()
    logger.info("data-parallel rank %d of %d on %s", rank, world, device)
    return DistContext(rank, world, local_rank, device, owns_group=True)


def shutdown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.world > 1:
        dist.barrier()


def all_reduce_grads(params: list[nn.Parameter], ctx: DistContext) -> None:
    """Sum the gradients of ``params`` over ranks (one flat all-reduce; parameters without grad skipped)."""
    if ctx.world == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])  # [total]
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def average_buffers(module: nn.Module, ctx: DistContext) -> None:
    """Average the floating-point buffers (BatchNorm running mean/var) over ranks."""
    if ctx.world == 1:
        return
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1) for b in buffers])
    dist.all_reduce(flat)
    flat /= ctx.world
    offset = 0
    for b in buffers:
        b.copy_(flat[offset : offset + b.numel()].view_as(b))
        offset += b.numel()


def all_true(flag: bool, ctx: DistContext) -> bool:
    """True only if ``flag`` holds on every rank."""
    if ctx.world == 1:
        return flag
    t = torch.tensor([0 if flag else 1], dtype=torch.int64, device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return int(t.item()) == 0


def gather_rows(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Stack this rank's CPU tensor ``t`` [n] with every other rank's: [world, n] on CPU (same on all ranks)."""
    if ctx.world == 1:
        return t.unsqueeze(0)
    local = t.to(ctx.device)
    parts = [torch.empty_like(local) for _ in range(ctx.world)]
    dist.all_gather(parts, local)
    return torch.stack(parts).cpu()
