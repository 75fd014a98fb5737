"""The pre-training objective of GroupViT / CoCu (paper eq. 1-5), gathered over data-parallel ranks.

Features are L2-normalised embeddings. With ``B`` images in the (global) batch, ``z_i`` the image and
``t_i`` the caption of sample ``i``, ``t_il`` its ``l``-th of ``L`` prompt texts, and ``s`` the clamped
logit scale (``1 / tau``):

- eq. 1, image -> caption: ``-1/B sum_i log( exp(s z_i.t_i) / sum_j exp(s z_i.t_j) )``
- eq. 2, caption -> image: the same with the roles swapped.
- eq. 3, image -> prompts: ``-1/B sum_i log( sum_l exp(s z_i.t_il) / sum_l sum_j exp(s z_i.t_jl) )``:
  the numerator sums the ``L`` positives of image ``i`` over a softmax across all ``B*L`` prompt texts
  (the target puts mass ``1/L`` on each positive; the loss is that of their summed probability).
- eq. 4, prompts -> image: ``-1/(LB) sum_l sum_i log( exp(s t_il.z_i) / sum_j exp(s t_il.z_j) )``.

As in GroupViT, each symmetric pair is averaged: ``loss_caption = (eq1 + eq2) / 2``,
``loss_multilabel = (eq3 + eq4) / 2``, and eq. 5 is their sum. The two losses have separate learnable
temperatures (initialised at 0.07, stored as ``log(1/tau)``; the scale ``exp(.)`` is clamped at 100).

Data parallelism: every rank gathers all ranks' features (``gather_with_local_grad``: the local shard
keeps its autograd graph, the others are constants) and computes the loss of the whole global batch,
so its value equals the single-process loss on every rank. Gradients reach only the rank's own
features; ``DistributedDataParallel`` then *averages* the parameter gradients over ranks, so the local
shard's gradient is multiplied by the world size on its way back (value unchanged): the average of the
ranks' feature-path gradients is then their sum, exactly the single-process gradient. The logit scales
enter every rank's loss directly and get the same full gradient on every rank, which the average keeps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

INIT_TEMPERATURE = 0.07
MAX_LOGIT_SCALE = 100.0


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_local_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` ([b, ...], equal ``b`` on every rank) over ranks in rank order: [world*b, ...].

    The slice of this rank is ``x`` itself, with its gradient multiplied by the world size (see the
    module docstring: DDP's average of the ranks' gradients is then their sum); the other slices carry
    no gradient. With one process this returns ``x``.
    """
    rank, world = _world()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank] = parts[rank] + (x - x.detach()) * world  # value: x exactly; gradient: world
    return torch.cat(parts, dim=0)


def clamped_scale(log_scale: torch.Tensor) -> torch.Tensor:
    """``exp(log_scale)`` clamped at :data:`MAX_LOGIT_SCALE` (the gradient is 0 above the clamp)."""
    return log_scale.exp().clamp(max=MAX_LOGIT_SCALE)


def infonce_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1 and eq. 2 for normalised ``image`` [B,d] and ``text`` [B,d]; returns ``(i2t, t2i)``."""
    logits = scale * image @ text.t()  # [B,B], row i = image i against all captions
    target = torch.arange(image.shape[0], device=image.device)
    return F.cross_entropy(logits, target), F.cross_entropy(logits.t(), target)


def multilabel_loss(
    image: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 3 and eq. 4 for normalised ``image`` [B,d] and prompt texts ``labels`` [B,L,d]; ``(i2p, p2i)``."""
    b, num_labels, d = labels.shape
    flat = labels.reshape(b * num_labels, d)  # [B*L,d], row j*L+l = text l of sample j
    logits = scale * image @ flat.t()  # [B,B*L]
    positive = torch.eye(b, dtype=torch.bool, device=image.device).repeat_interleave(num_labels, dim=1)  # [B,B*L]
    log_all = torch.logsumexp(logits, dim=1)  # [B]
    log_pos = torch.logsumexp(logits.masked_fill(~positive, -math.inf), dim=1)  # [B]
    i2p = (log_all - log_pos).mean()
    target = torch.arange(b, device=image.device).repeat_interleave(num_labels)  # [B*L]
    p2i = F.cross_entropy(logits.t(), target)  # rows: the B*L prompt texts against all B images
    return i2p, p2i


@dataclass
class LossOutput:
    """``total`` = ``caption`` + ``multilabel`` (eq. 5); ``multilabel`` is ``None`` without prompt texts."""

    total: torch.Tensor
    caption: torch.Tensor
    multilabel: torch.Tensor | None


def _normalized(x: torch.Tensor) -> torch.Tensor:
    """L2-normalised along the last dim, in float32 at least (bf16/fp16 features from autocast are upcast)."""
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    return F.normalize(x, dim=-1)


def initial_log_scale() -> float:
    return math.log(1.0 / INIT_TEMPERATURE)


class CocuLoss(nn.Module):
    """Eq. 5 over the global batch. Holds the multi-label loss's own temperature; the caption loss uses
    the model's ``logit_scale`` (passed in), so that the saved model keeps it."""

    def __init__(self, multilabel: bool) -> None:
        super().__init__()
        self.multilabel_logit_scale = nn.Parameter(torch.tensor(initial_log_scale())) if multilabel else None

    def forward(
        self,
        image: torch.Tensor,
        caption: torch.Tensor,
        labels: torch.Tensor | None,
        caption_log_scale: torch.Tensor,
    ) -> LossOutput:
        """Local (this rank's) features: ``image`` [b,d], ``caption`` [b,d], ``labels`` [b,L,d] or ``None``;
        not yet normalised. Returns the loss of the global batch."""
        image = gather_with_local_grad(_normalized(image))  # [B,d]
        caption = gather_with_local_grad(_normalized(caption))  # [B,d]
        i2t, t2i = infonce_loss(image, caption, clamped_scale(caption_log_scale))
        loss_caption = (i2t + t2i) / 2
        if labels is None or self.multilabel_logit_scale is None:
            return LossOutput(total=loss_caption, caption=loss_caption, multilabel=None)
        labels = gather_with_local_grad(_normalized(labels))  # [B,L,d]
        i2p, p2i = multilabel_loss(image, labels, clamped_scale(self.multilabel_logit_scale))
        loss_multilabel = (i2p + p2i) / 2
        return LossOutput(total=loss_caption + loss_multilabel, caption=loss_caption, multilabel=loss_multilabel)
