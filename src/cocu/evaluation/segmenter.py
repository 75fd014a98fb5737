"""Zero-shot segmentation of one image with a GroupViT: resize, slide, score, average, upsample.

:func:`segment_image` runs the protocol of :mod:`cocu.evaluation.protocol` on a PIL image and returns
the label map at the requested output size (the label size; the image size by default) plus, when a
ground-truth label is given and ``diagnostics`` is on, the inputs of the diagnostic scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

import torch.nn.functional as F

from cocu.evaluation.benchmarks import Protocol
from cocu.evaluation.encoders import ZeroShotModel
from cocu.evaluation.protocol import (
    WindowAccumulator,
    add_background,
    group_class_probs,
    hard_groups,
    image_class_probs,
    iter_crops,
    majority_classes,
    nearest_resize,
    oracle_scores,
    pixel_scores,
    resized_shape,
    upsample_argmax,
)
from cocu.evaluation.refine import refine_scores

RESIZE = "bilinear-no-antialias"
"""How evaluation inputs are resized: bilinear without anti-aliasing (OpenCV's / mmcv's ``INTER_LINEAR``,
as the reference evaluation resizes), on float pixels."""


@dataclass
class ImageSegmentation:
    """``pred [H,W]`` int64 in label space (background = 0 when the protocol has one, class i = i + 1;
    without background class i = i). ``whole_image_label``: the label of the top class by whole-image
    similarity (averaged over crops). ``groups_per_crop``: mean number of distinct argmax groups per crop.
    ``oracle_pred``: each crop's groups painted with their majority ground-truth label (diagnostics only)."""

    pred: np.ndarray
    whole_image_label: int
    groups_per_crop: float
    oracle_pred: np.ndarray | None = None


def prepare_image(image: Image.Image, proto: Protocol, mean, std) -> torch.Tensor:
    """``[3,H',W']`` normalised tensor of the RGB image resized by the protocol: bilinear, no
    anti-aliasing (``F.interpolate(..., align_corners=False, antialias=False)``, like mmcv's OpenCV resize)."""
    size = resized_shape(image.width, image.height, proto.short_side, proto.max_long_side)
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)  # [3,H,W]
    x = x.float().div_(255.0)
    if size != image.size:
        x = F.interpolate(x[None], size=(size[1], size[0]), mode="bilinear", align_corners=False, antialias=False)[0]
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (x - mean_t) / std_t  # [3,H',W']


@torch.inference_mode()
def segment_image(
    zs: ZeroShotModel,
    image: Image.Image,
    class_emb: torch.Tensor,
    proto: Protocol,
    out_hw: tuple[int, int] | None = None,
    label: np.ndarray | None = None,
) -> ImageSegmentation:
    """Segment an RGB ``image`` into the classes of ``class_emb [K,D]``.

    ``out_hw`` defaults to the image size. With ``label`` (``[H,W]`` ints in label space, negative =
    ignore, same size as ``out_hw``) the group-bound oracle prediction is computed too.
    """
    out_hw = out_hw or (image.height, image.width)
    x = prepare_image(image, proto, zs.mean, zs.std).to(zs.device)  # [3,H',W']
    _, h, w = x.shape
    offset = 1 if proto.with_background else 0
    num_labels = class_emb.shape[0] + offset
    class_emb = class_emb.to(zs.device)
    scale = zs.logit_scale
    acc = WindowAccumulator(num_labels, h, w, zs.device)
    oracle = None
    label_r = None
    if label is not None:
        oracle = WindowAccumulator(num_labels, h, w, zs.device)
        label_r = torch.from_numpy(nearest_resize(label, (h, w))).to(zs.device)  # [H',W']
    image_probs = torch.zeros(class_emb.shape[0], device=zs.device)  # [K]
    group_counts = []
    for boxes, crops in iter_crops(x, proto.crop, proto.stride, proto.batch_size):
        enc = zs.encode_crops(crops)
        probs = group_class_probs(enc.group_emb, enc.image_emb, class_emb, scale, proto.top_k)  # [b,G,K]
        image_probs += image_class_probs(enc.image_emb, class_emb, scale).sum(dim=0)
        groups = hard_groups(enc.assignment)  # [b,h,w]
        num_groups = enc.assignment.shape[1]
        for j, box in enumerate(boxes):
            fg = pixel_scores(groups[j], probs[j])  # [K,h,w]
            if proto.local_consistency:
                fg = refine_scores(crops[j], fg)
            acc.add(box, add_background(fg, proto.bg_thresh, float(probs[j].max())))
            group_counts.append(int(torch.unique(groups[j]).numel()))
            if oracle is not None:
                y1, y2, x1, x2 = box
                majority = majority_classes(groups[j], label_r[y1:y2, x1:x2], num_groups, num_labels)
                oracle.add(box, oracle_scores(groups[j], majority, num_labels))
    pred = upsample_argmax(acc.mean(), out_hw).cpu().numpy()
    oracle_pred = upsample_argmax(oracle.mean(), out_hw).cpu().numpy() if oracle is not None else None
    return ImageSegmentation(
        pred=pred,
        whole_image_label=int(image_probs.argmax()) + offset,
        groups_per_crop=float(np.mean(group_counts)),
        oracle_pred=oracle_pred,
    )


def user_protocol(
    model_image_size: int,
    short_side: int | None = None,
    crop: int | None = None,
    stride: int | None = None,
    bg_thresh: float | None = None,
    local_consistency: bool = False,
) -> Protocol:
    """Protocol for an arbitrary image: by default short side = crop = twice the model's image size and
    stride = the image size (the VOC setting 448/448/224 for a 224 px model), no long-side cap."""
    crop = crop or 2 * model_image_size
    return Protocol(
        short_side=short_side or 2 * model_image_size,
        crop=crop,
        stride=stride or max(1, crop // 2),
        bg_thresh=bg_thresh,
        local_consistency=local_consistency,
    )


def segment_with_labels(
    zs: ZeroShotModel, image: Image.Image, labels: list[str], proto: Protocol, templates: list[str]
) -> np.ndarray:
    """Label map ``[H,W]`` (image size) of free-form ``labels``: 0 = background (only with a background
    threshold), ``i`` = ``labels[i - 1]``."""
    if not labels:
        raise ValueError("no labels given")
    zs.require_groupvit()
    class_emb = zs.class_embeddings(labels, templates)
    pred = segment_image(zs, image, class_emb, proto).pred
    return pred if proto.with_background else pred + 1
