"""Local consistency in mask prediction: pixel-adaptive mask refinement (PAMR).

The refinement of Araslanov & Roth (CVPR 2020, "Single-Stage Semantic Segmentation from Image Labels"),
written here from the paper's description and used as CoCu's table 1 "LC" rows use it: each pixel's class
scores are replaced, ``iterations`` times, by an affinity-weighted average of its neighbours' scores.
The neighbours of pixel i are the 8 outer pixels of a 3x3 window at each of several dilations
(1, 2, 4, 8, 12, 24: 48 neighbours); the affinity of neighbour j is

    k(i, j) = -|I_i - I_j| / (eps + scale * sigma_i)      per colour channel, then averaged over channels,

with ``sigma_i`` the standard deviation of that channel over the pixel and its neighbours, turned into
weights by a softmax over the neighbours. Colour edges thus block propagation, flat regions average.
Normalising by the local deviation makes the weights independent of the image's mean/std normalisation.
Image borders are padded by replication.

Zero score channels stay zero (the update is a weighted average), so only channels with a non-zero
score anywhere are propagated.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

DILATIONS: tuple[int, ...] = (1, 2, 4, 8, 12, 24)
ITERATIONS = 10
SIGMA_SCALE = 0.1
_RING = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))


def neighbour_offsets(dilations: Sequence[int] = DILATIONS) -> list[tuple[int, int]]:
    """``(dy, dx)`` of every neighbour: the 3x3 ring at each dilation."""
    if not dilations or any(int(d) <= 0 for d in dilations):
        raise ValueError(f"dilations must be positive integers, got {list(dilations)}")
    return [(dy * d, dx * d) for d in dilations for dy, dx in _RING]


def _shift(padded: torch.Tensor, pad: int, dy: int, dx: int, h: int, w: int) -> torch.Tensor:
    """``[C,H,W]`` view of the padded ``[C,H+2p,W+2p]`` map moved so pixel (y, x) holds (y+dy, x+dx)."""
    return padded[:, pad + dy : pad + dy + h, pad + dx : pad + dx + w]


def affinity_weights(
    image: torch.Tensor, dilations: Sequence[int] = DILATIONS, scale: float = SIGMA_SCALE, eps: float = 1e-8
) -> torch.Tensor:
    """``[N,H,W]`` weights of each pixel's N neighbours (summing to 1 over N) from ``image [C,H,W]``."""
    offsets = neighbour_offsets(dilations)
    _, h, w = image.shape
    pad = max(abs(dy) for dy, _ in offsets)
    img = image.float()
    padded = F.pad(img[None], (pad, pad, pad, pad), mode="replicate")[0]  # [C,H+2p,W+2p]
    total = img.clone()  # [C,H,W] running sums over the pixel and its neighbours
    total_sq = img * img
    for dy, dx in offsets:
        shifted = _shift(padded, pad, dy, dx, h, w)
        total += shifted
        total_sq += shifted * shifted
    count = len(offsets) + 1
    mean = total / count
    sigma = (total_sq / count - mean * mean).clamp_min(0).sqrt()  # [C,H,W]
    inv = (eps + scale * sigma).reciprocal_().div_(-img.shape[0])  # [C,H,W] -1 / (C * denominator)
    logits = torch.empty(len(offsets), h, w, dtype=img.dtype, device=img.device)  # [N,H,W]
    for n, (dy, dx) in enumerate(offsets):
        torch.sum(torch.sub(_shift(padded, pad, dy, dx, h, w), img).abs_().mul_(inv), dim=0, out=logits[n])
    return logits.softmax(dim=0)


def propagate(
    scores: torch.Tensor, weights: torch.Tensor, dilations: Sequence[int] = DILATIONS, iterations: int = ITERATIONS
) -> torch.Tensor:
    """``iterations`` rounds of ``s_i <- sum_j weights[j, i] * s_(i + offset_j)`` on ``scores [K,H,W]``."""
    offsets = neighbour_offsets(dilations)
    if weights.shape[0] != len(offsets) or weights.shape[1:] != scores.shape[1:]:
        raise ValueError(f"weights {tuple(weights.shape)} do not fit scores {tuple(scores.shape)}")
    _, h, w = scores.shape
    pad = max(abs(dy) for dy, _ in offsets)
    out = scores.float()
    for _ in range(iterations):
        padded = F.pad(out[None], (pad, pad, pad, pad), mode="replicate")[0]  # [K,H+2p,W+2p]
        nxt = torch.zeros_like(out)
        for n, (dy, dx) in enumerate(offsets):
            nxt.addcmul_(weights[n], _shift(padded, pad, dy, dx, h, w))
        out = nxt
    return out.to(scores.dtype)


@torch.inference_mode()
def refine_scores(
    image: torch.Tensor,
    scores: torch.Tensor,
    dilations: Sequence[int] = DILATIONS,
    iterations: int = ITERATIONS,
    scale: float = SIGMA_SCALE,
) -> torch.Tensor:
    """PAMR of class ``scores [K,H,W]`` guided by ``image [C,H,W]`` (same H, W); returns ``[K,H,W]``."""
    if image.shape[1:] != scores.shape[1:]:
        raise ValueError(f"image {tuple(image.shape)} and scores {tuple(scores.shape)} differ in size")
    active = scores.flatten(1).abs().amax(dim=1) > 0  # [K]
    if not bool(active.any()) or iterations == 0:
        return scores
    weights = affinity_weights(image.to(scores.device), dilations, scale)
    out = scores.clone()
    out[active] = propagate(scores[active], weights, dilations, iterations)
    return out
