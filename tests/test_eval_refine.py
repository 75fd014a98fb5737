"""PAMR local consistency (`cocu.evaluation.refine`): boundaries move onto colour edges; flat images and
flat scores give no colour-driven change."""

from __future__ import annotations

import numpy as np
import torch

from cocu.evaluation.refine import DILATIONS, affinity_weights, neighbour_offsets, refine_scores


def _disk_world(size: int = 64, block: int = 16) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
    """An image with a sharp-edged red disk on green, its true mask, and blocky scores: each 16-px block
    takes the block's majority label (what a coarse prediction looks like)."""
    yy, xx = np.mgrid[0:size, 0:size]
    truth = (yy - 29.5) ** 2 + (xx - 35.5) ** 2 < 19.0**2  # [H,W] bool
    image = np.where(truth[..., None], [200, 30, 40], [40, 160, 60]).astype(np.float32) / 255.0  # [H,W,3]
    blocks = truth.reshape(size // block, block, size // block, block).mean(axis=(1, 3)) > 0.5
    blocky = np.kron(blocks, np.ones((block, block), dtype=bool))  # [H,W]
    scores = torch.from_numpy(np.stack([~blocky, blocky]).astype(np.float32) * 0.6 + 0.2)  # [2,H,W]
    return torch.from_numpy(image).permute(2, 0, 1), truth, scores


def _iou(pred: np.ndarray, truth: np.ndarray) -> float:
    return float((pred & truth).sum() / (pred | truth).sum())


def test_pamr_moves_blocky_boundaries_onto_colour_edges():
    image, truth, scores = _disk_world()
    before = _iou(scores.argmax(0).numpy() == 1, truth)
    refined = refine_scores(image, scores)
    after = _iou(refined.argmax(0).numpy() == 1, truth)
    assert before < 0.85
    assert after > before + 0.1 and after > 0.95


def test_pamr_on_a_constant_image_leaves_constant_scores_and_a_straight_boundary_unchanged():
    image = torch.full((3, 40, 48), 0.3)
    flat = torch.rand(4, 1, 1).expand(4, 40, 48).contiguous()  # [4,H,W] the same scores everywhere
    assert torch.allclose(refine_scores(image, flat), flat, atol=1e-6)
    split = torch.zeros(2, 40, 48)
    split[0, :, :24] = 0.9
    split[1, :, 24:] = 0.9  # a straight vertical boundary in the middle
    refined = refine_scores(image, split)
    assert torch.equal(refined.argmax(0), split.argmax(0))  # no colour edge: nothing pulls it aside


def test_pamr_weights_cover_48_neighbours_sum_to_one_and_zero_channels_stay_zero():
    assert len(neighbour_offsets(DILATIONS)) == 48
    image, _, scores = _disk_world(32, 8)
    weights = affinity_weights(image)
    assert weights.shape == (48, 32, 32)
    assert torch.allclose(weights.sum(0), torch.ones(32, 32), atol=1e-5)
    padded = torch.cat([scores, torch.zeros(1, 32, 32)])  # a class outside the crop's top-k stays at 0
    out = refine_scores(image, padded)
    assert torch.equal(out[2], torch.zeros(32, 32))
    assert torch.allclose(out[:2], refine_scores(image, scores))
