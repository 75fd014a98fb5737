"""AdamW with GroupViT's weight-decay groups, and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from cocu.train.config import OptimConfig

NO_DECAY_NAMES: tuple[str, ...] = ("position_embedding", "group_token", "class_embedding", "logit_scale")
"""Parameters whose name contains one of these get no weight decay (as all 1-d parameters: biases, norms)."""


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed weight matrices, and everything 1-d or listed in :data:`NO_DECAY_NAMES`."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or any(tag in name for tag in NO_DECAY_NAMES):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class WarmupCosine:
    """Learning-rate factor of step ``s`` (multiplies ``lr``): linear from ``warmup_lr`` to ``lr`` over
    ``warmup_steps`` steps, then cosine from ``lr`` to ``min_lr`` at ``total_steps``. Plain floats, so
    ``LambdaLR.state_dict`` stores it without pickling code."""

    lr: float
    warmup_lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int

    def rate(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_lr + (self.lr - self.warmup_lr) * step / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def __call__(self, step: int) -> float:
        return self.rate(step) / self.lr


def warmup_steps(cfg: OptimConfig, total_steps: int, steps_per_epoch: int) -> int:
    if cfg.warmup_unit == "epochs":
        steps = cfg.warmup * steps_per_epoch
    elif cfg.warmup_unit == "steps":
        steps = cfg.warmup
    else:
        steps = cfg.warmup * total_steps
    return min(total_steps, int(round(steps)))


def build_optimizer(
    module: nn.Module, cfg: OptimConfig, total_steps: int, steps_per_epoch: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    optimizer = torch.optim.AdamW(
        param_groups(module, cfg.weight_decay), lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]), eps=cfg.eps
    )
    schedule = WarmupCosine(
        lr=cfg.lr,
        warmup_lr=cfg.warmup_lr,
        min_lr=cfg.min_lr,
        warmup_steps=warmup_steps(cfg, total_steps, steps_per_epoch),
        total_steps=total_steps,
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
