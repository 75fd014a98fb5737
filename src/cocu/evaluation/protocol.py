"""The GroupViT zero-shot segmentation protocol as pure tensor functions (no model inside).

Per crop: the soft assignment maps of the grouping stages are multiplied into a pixel-to-final-group
assignment (:func:`pixel_group_assignment`), each pixel takes its argmax group; each group is scored
against the class embeddings (:func:`group_class_probs`: softmax over the top-k classes by whole-image
similarity times the softmax over all classes); a pixel's class scores are its group's
(:func:`crop_scores`), with a background channel where the best score is under the threshold. Crops
come from a sliding window (:func:`window_boxes`), overlapping scores are averaged
(:class:`WindowAccumulator`) and the average is upsampled bilinearly to the label size before the
argmax (:func:`upsample_argmax`, in row bands to bound memory).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def resized_shape(width: int, height: int, short_side: int, max_long_side: int | None = None) -> tuple[int, int]:
    """Keep-ratio size ``(w, h)`` with short side ``short_side``, scaled down further if the long side would
    exceed ``max_long_side`` (mmseg's ``Resize(img_scale=(max_long, short), keep_ratio=True)``)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    scale = short_side / min(width, height)
    if max_long_side is not None:
        scale = min(scale, max_long_side / max(width, height))
    return max(1, int(width * scale + 0.5)), max(1, int(height * scale + 0.5))


def window_boxes(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Sliding-window boxes ``(y1, y2, x1, x2)`` covering the image, mmseg's ``slide`` scheme: a grid with
    step ``stride``, the last window in each direction shifted back to end at the border; windows are
    ``min(crop, H) x min(crop, W)`` so all have the same size."""
    if crop <= 0 or stride <= 0:
        raise ValueError(f"crop and stride must be positive, got {crop}, {stride}")
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y2 = min(r * stride + crop, height)
            x2 = min(c * stride + crop, width)
            boxes.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return boxes


def iter_crops(
    image: torch.Tensor, crop: int, stride: int, batch_size: int
) -> Iterator[tuple[list[tuple[int, int, int, int]], torch.Tensor]]:
    """Batches of ``(boxes, crops [b,3,h,w])`` from ``image [3,H,W]``."""
    boxes = window_boxes(image.shape[1], image.shape[2], crop, stride)
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i : i + batch_size]
        yield chunk, torch.stack([image[:, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])


class WindowAccumulator:
    """Sums per-crop scores ``[C,h,w]`` into a ``[C,H,W]`` canvas and counts the windows on each pixel."""

    def __init__(self, channels: int, height: int, width: int, device: torch.device | str = "cpu") -> None:
        self.sums = torch.zeros(channels, height, width, device=device)  # [C,H,W]
        self.count = torch.zeros(height, width, device=device)  # [H,W]

    def add(self, box: tuple[int, int, int, int], scores: torch.Tensor) -> None:
        y1, y2, x1, x2 = box
        if scores.shape != (self.sums.shape[0], y2 - y1, x2 - x1):
            raise ValueError(f"scores of shape {tuple(scores.shape)} do not fit box {box}")
        self.sums[:, y1:y2, x1:x2] += scores
        self.count[y1:y2, x1:x2] += 1

    def mean(self) -> torch.Tensor:
        """``[C,H,W]`` average over the windows covering each pixel (every pixel must be covered)."""
        if bool((self.count == 0).any()):
            raise ValueError("some pixels are covered by no window")
        return self.sums / self.count


def pixel_group_assignment(
    attentions: Sequence[torch.Tensor], grid_hw: tuple[int, int], out_hw: tuple[int, int]
) -> torch.Tensor:
    """Soft pixel-to-final-group assignment ``[B,G,H,W]``.

    ``attentions[i]`` is stage i's soft assignment ``[B, G_i, N_i]`` (groups x inputs, each input's column
    summing to 1; N_0 = patches, N_i = G_{i-1}); their product maps patches to the last groups. The
    patch grid ``grid_hw`` is resized bilinearly (align_corners=False) to ``out_hw``.
    """
    if not attentions:
        raise ValueError("no grouping stage attentions (is this a GroupViT with group tokens?)")
    chained = attentions[0].transpose(1, 2)  # [B,N,G0]
    for stage in attentions[1:]:
        chained = chained @ stage.transpose(1, 2)  # [B,N,G_i]
    b, n, g = chained.shape
    gh, gw = grid_hw
    if n != gh * gw:
        raise ValueError(f"{n} patches do not form a {gh}x{gw} grid")
    maps = chained.transpose(1, 2).reshape(b, g, gh, gw)  # [B,G,gh,gw]
    return F.interpolate(maps, size=out_hw, mode="bilinear", align_corners=False)  # [B,G,H,W]


def image_class_probs(image_emb: torch.Tensor, class_emb: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """``[B,K]`` softmax over classes of the whole-image similarity (embeddings are L2-normalised here)."""
    image = F.normalize(image_emb, dim=-1)  # [B,D]
    return (logit_scale * image @ F.normalize(class_emb, dim=-1).T).softmax(dim=-1)


def group_class_probs(
    group_emb: torch.Tensor, image_emb: torch.Tensor, class_emb: torch.Tensor, logit_scale: float, top_k: int = 5
) -> torch.Tensor:
    """``[B,G,K]`` group-to-class scores: the softmax restricted to the ``top_k`` classes of highest
    whole-image similarity, times the softmax over all classes (zero outside the top-k)."""
    classes = F.normalize(class_emb, dim=-1)  # [K,D]
    logits = logit_scale * F.normalize(group_emb, dim=-1) @ classes.T  # [B,G,K]
    full = logits.softmax(dim=-1)
    image = image_class_probs(image_emb, classes, logit_scale)  # [B,K]
    keep = torch.zeros_like(image, dtype=torch.bool)
    keep.scatter_(1, image.topk(min(top_k, classes.shape[0]), dim=-1).indices, True)  # [B,K]
    restricted = logits.masked_fill(~keep[:, None, :], float("-inf")).softmax(dim=-1)  # [B,G,K]
    return restricted * full


def hard_groups(assignment: torch.Tensor) -> torch.Tensor:
    """``[B,H,W]`` index of each pixel's most-assigned group from ``[B,G,H,W]``."""
    return assignment.argmax(dim=1)


def pixel_scores(group_map: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """``[K,H,W]`` class scores of each pixel: its group's row of ``probs [G,K]`` (``group_map [H,W]``)."""
    return probs[group_map].permute(2, 0, 1)


def add_background(fg: torch.Tensor, bg_thresh: float | None, best: float) -> torch.Tensor:
    """``fg [K,H,W]`` unchanged without a threshold, else ``[1+K,H,W]`` with a background channel 0 that
    is 1 where a pixel's best class score is below ``min(bg_thresh, best)`` (``best``: the crop's best
    group score) and 0 elsewhere."""
    if bg_thresh is None:
        return fg
    thresh = min(float(bg_thresh), float(best))
    bg = (fg.max(dim=0).values < thresh).to(fg.dtype)  # [H,W]
    return torch.cat([bg[None], fg], dim=0)


def crop_scores(group_map: torch.Tensor, probs: torch.Tensor, bg_thresh: float | None) -> torch.Tensor:
    """Per-pixel class scores of one crop: ``[K,H,W]``, or ``[1+K,H,W]`` with a background channel 0.

    ``group_map [H,W]`` holds each pixel's group, ``probs [G,K]`` the group-to-class scores. Background
    is 1 where a pixel's best class score is below ``min(bg_thresh, probs.max())`` and 0 elsewhere.
    """
    return add_background(pixel_scores(group_map, probs), bg_thresh, float(probs.max()))


def majority_classes(group_map: torch.Tensor, label: torch.Tensor, num_groups: int, num_classes: int) -> torch.Tensor:
    """``[G]`` the most frequent valid label under each group (-1 for a group with no valid pixel);
    ``label`` values outside ``[0, num_classes)`` are ignored."""
    valid = (label >= 0) & (label < num_classes)
    flat = group_map[valid] * num_classes + label[valid]
    hist = torch.bincount(flat, minlength=num_groups * num_classes).reshape(num_groups, num_classes)
    best = hist.argmax(dim=1)
    return torch.where(hist.sum(dim=1) > 0, best, torch.full_like(best, -1))


def oracle_scores(group_map: torch.Tensor, majority: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[K,H,W]`` one-hot scores painting each group with its majority class (all-zero for -1)."""
    table = torch.zeros(majority.shape[0], num_classes, device=group_map.device)  # [G,K]
    hit = majority >= 0
    table[hit.nonzero(as_tuple=True)[0], majority[hit]] = 1.0
    return table[group_map].permute(2, 0, 1)


def linear_weights(n_in: int, n_out: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[n_out, n_in]`` weights of 1-D linear resizing with align_corners=False (as ``F.interpolate``)."""
    eye = torch.eye(n_in, device=device)[None]  # [1,n_in(channels),n_in]
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T.contiguous()


def upsample_argmax(scores: torch.Tensor, out_hw: tuple[int, int], max_elements: int = 1 << 24) -> torch.Tensor:
    """Bilinear resize of ``scores [C,h,w]`` to ``out_hw`` then argmax over C: ``[H,W]`` int64.

    Equal to ``F.interpolate(scores[None], out_hw, mode="bilinear").argmax(1)`` but computed in bands of
    output rows with at most ``max_elements`` floats at a time.
    """
    c, h, w = scores.shape
    out_h, out_w = out_hw
    if (h, w) == (out_h, out_w):
        return scores.argmax(dim=0)
    wy = linear_weights(h, out_h, scores.device)  # [H,h]
    wx = linear_weights(w, out_w, scores.device)  # [W,w]
    band = max(1, max_elements // max(1, c * max(out_w, w)))
    out = torch.empty(out_h, out_w, dtype=torch.long, device=scores.device)
    for y in range(0, out_h, band):
        rows = torch.einsum("oh,chw->cow", wy[y : y + band], scores)  # [C,b,w]
        out[y : y + band] = (rows @ wx.T).argmax(dim=0)  # [b,W]
    return out


def nearest_resize(label: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an integer map (pixel centres), e.g. labels onto the resized image."""
    h, w = label.shape
    out_h, out_w = out_hw
    rows = np.minimum(((np.arange(out_h) + 0.5) * h / out_h).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(out_w) + 0.5) * w / out_w).astype(np.int64), w - 1)
    return label[rows[:, None], cols[None, :]]
