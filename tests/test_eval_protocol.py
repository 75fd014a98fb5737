"""The zero-shot segmentation protocol pieces on constructed tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cocu.evaluation.benchmarks import Protocol, get_benchmark
from cocu.evaluation.protocol import (
    WindowAccumulator,
    crop_scores,
    group_class_probs,
    image_class_probs,
    iter_crops,
    majority_classes,
    nearest_resize,
    oracle_scores,
    pixel_group_assignment,
    resized_shape,
    upsample_argmax,
    window_boxes,
)


def test_resized_shape_sets_short_side_and_caps_long_side():
    assert resized_shape(500, 375, 448) == (597, 448)
    assert resized_shape(375, 500, 448) == (448, 597)
    # 3000x200 would become 6720x448; the 2048 cap wins: scale 2048/3000
    assert resized_shape(3000, 200, 448, 2048) == (2048, 137)
    assert resized_shape(1, 1, 64) == (64, 64)


def test_window_boxes_cover_image_with_last_window_shifted_to_border():
    boxes = window_boxes(10, 25, crop=10, stride=6)
    assert boxes == [(0, 10, 0, 10), (0, 10, 6, 16), (0, 10, 12, 22), (0, 10, 15, 25)]
    cover = np.zeros((10, 25), dtype=int)
    for y1, y2, x1, x2 in boxes:
        assert (y2 - y1, x2 - x1) == (10, 10)
        cover[y1:y2, x1:x2] += 1
    assert cover.min() == 1


def test_window_boxes_on_image_smaller_than_crop_is_one_window_of_image_size():
    assert window_boxes(5, 7, crop=16, stride=8) == [(0, 5, 0, 7)]


def test_iter_crops_batches_equal_size_crops():
    image = torch.arange(3 * 8 * 20, dtype=torch.float32).reshape(3, 8, 20)
    batches = list(iter_crops(image, crop=8, stride=4, batch_size=2))
    assert [len(b) for b, _ in batches] == [2, 2]
    boxes, crops = batches[1]
    assert crops.shape == (2, 3, 8, 8)
    y1, y2, x1, x2 = boxes[1]
    assert torch.equal(crops[1], image[:, y1:y2, x1:x2])


def test_window_accumulator_averages_overlapping_windows():
    acc = WindowAccumulator(channels=2, height=4, width=6)
    acc.add((0, 4, 0, 4), torch.ones(2, 4, 4))
    acc.add((0, 4, 2, 6), torch.full((2, 4, 4), 3.0))
    mean = acc.mean()
    assert torch.equal(mean[:, :, :2], torch.ones(2, 4, 2))
    assert torch.equal(mean[:, :, 2:4], torch.full((2, 4, 2), 2.0))
    assert torch.equal(mean[:, :, 4:], torch.full((2, 4, 2), 3.0))


def test_window_accumulator_refuses_uncovered_pixels_and_misfit_scores():
    acc = WindowAccumulator(channels=1, height=4, width=6)
    acc.add((0, 4, 0, 4), torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match="no window"):
        acc.mean()
    with pytest.raises(ValueError, match="do not fit"):
        acc.add((0, 4, 0, 4), torch.ones(1, 3, 4))


def test_pixel_group_assignment_multiplies_stage_assignments():
    # stage 0: 4 patches (2x2 grid) -> 3 groups; stage 1: 3 groups -> 2 groups (columns sum to 1)
    a0 = torch.tensor([[1.0, 0.0, 0.5, 0.0], [0.0, 1.0, 0.5, 0.0], [0.0, 0.0, 0.0, 1.0]])[None]  # [1,3,4]
    a1 = torch.tensor([[1.0, 0.25, 0.0], [0.0, 0.75, 1.0]])[None]  # [1,2,3]
    out = pixel_group_assignment([a0, a1], grid_hw=(2, 2), out_hw=(2, 2))
    expected = (a0[0].T @ a1[0].T).T.reshape(2, 2, 2)  # [G=2, 2, 2]
    assert out.shape == (1, 2, 2, 2)
    assert torch.allclose(out[0], expected)
    assert torch.allclose(out.sum(dim=1), torch.ones(1, 2, 2))
    up = pixel_group_assignment([a0, a1], grid_hw=(2, 2), out_hw=(8, 8))
    assert up.shape == (1, 2, 8, 8)
    assert torch.allclose(up[0, :, 0, 0], expected[:, 0, 0])


def _unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_group_class_probs_restricts_to_top5_by_whole_image_similarity():
    torch.manual_seed(0)
    classes = torch.eye(8, 16)  # K = 8 orthonormal class embeddings
    image = F.normalize(torch.tensor([[5.0, 4, 3, 2, 1, 0.5, 0.2, 0.1] + [0.0] * 8]), dim=-1)  # top-5 = 0..4
    groups = F.normalize(torch.randn(1, 3, 16), dim=-1)
    scale = 10.0
    probs = group_class_probs(groups, image, classes, scale, top_k=5)
    top5 = image_class_probs(image, classes, scale)[0].topk(5).indices
    assert sorted(top5.tolist()) == [0, 1, 2, 3, 4]
    logits = scale * groups[0] @ classes.T  # [G,K]
    restricted = torch.zeros_like(logits)
    restricted[:, :5] = logits[:, :5].softmax(-1)
    expected = restricted * logits.softmax(-1)
    assert torch.allclose(probs[0], expected, atol=1e-6)
    assert torch.all(probs[0, :, 5:] == 0)


def test_group_class_probs_with_fewer_classes_than_top_k_keeps_all():
    classes = _unit([1, 0], [0, 1])
    probs = group_class_probs(_unit([1, 0], [0, 1])[None], _unit([1, 1]), classes, 5.0, top_k=5)
    logits = 5.0 * _unit([1, 0], [0, 1]) @ classes.T
    assert torch.allclose(probs[0], logits.softmax(-1) ** 2)


def test_crop_scores_paints_each_pixel_with_its_group_row_without_background():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8]])  # [G=2,K=2]
    group_map = torch.tensor([[0, 1], [1, 1]])
    out = crop_scores(group_map, probs, None)
    assert out.shape == (2, 2, 2)
    assert torch.equal(out[:, 0, 0], probs[0])
    assert torch.equal(out[:, 1, 1], probs[1])


def test_crop_scores_background_threshold_marks_low_confidence_pixels():
    probs = torch.tensor([[0.97, 0.01], [0.5, 0.3], [0.2, 0.6]])  # [G=3,K=2]
    group_map = torch.tensor([[0, 1, 2]])
    out = crop_scores(group_map, probs, bg_thresh=0.95)
    assert out.shape == (3, 1, 3)
    assert out[0, 0].tolist() == [0.0, 1.0, 1.0]  # only group 0 reaches 0.95
    assert torch.equal(out[1:, 0, 0], probs[0])


def test_crop_scores_threshold_never_exceeds_best_score_of_the_crop():
    probs = torch.tensor([[0.4, 0.1], [0.3, 0.2]])  # max 0.4 < bg_thresh 0.95
    out = crop_scores(torch.tensor([[0, 1]]), probs, bg_thresh=0.95)
    assert out[0, 0].tolist() == [0.0, 1.0]  # the best group stays foreground


def test_upsample_argmax_matches_bilinear_interpolate_in_bands():
    torch.manual_seed(1)
    scores = torch.randn(5, 7, 9)
    expected = F.interpolate(scores[None], size=(23, 31), mode="bilinear", align_corners=False)[0].argmax(0)
    assert torch.equal(upsample_argmax(scores, (23, 31), max_elements=5 * 31 * 3), expected)
    down = F.interpolate(scores[None], size=(4, 5), mode="bilinear", align_corners=False)[0].argmax(0)
    assert torch.equal(upsample_argmax(scores, (4, 5)), down)
    assert torch.equal(upsample_argmax(scores, (7, 9)), scores.argmax(0))


def test_nearest_resize_picks_pixel_centres():
    label = np.array([[0, 1], [2, 3]])
    assert nearest_resize(label, (4, 4)).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    assert nearest_resize(np.arange(16).reshape(4, 4), (2, 2)).tolist() == [[5, 7], [13, 15]]


def test_majority_classes_and_oracle_paint_groups_with_their_majority_label():
    group_map = torch.tensor([[0, 0, 1], [0, 1, 2]])
    label = torch.tensor([[3, 3, 1], [1, 1, -1]])
    majority = majority_classes(group_map, label, num_groups=4, num_classes=4)
    assert majority.tolist() == [3, 1, -1, -1]
    oracle = oracle_scores(group_map, majority, num_classes=4)
    assert oracle.argmax(0).tolist() == [[3, 3, 1], [3, 1, 0]]
    assert oracle[:, 1, 2].sum() == 0


def test_benchmark_defaults_and_overrides():
    voc = get_benchmark("voc").protocol(224)
    assert (voc.short_side, voc.crop, voc.stride, voc.bg_thresh, voc.max_long_side) == (448, 448, 224, 0.95, 2048)
    ade = get_benchmark("ade20k").protocol(224)
    assert (ade.short_side, ade.crop, ade.stride, ade.bg_thresh) == (512, 224, 112, None)
    city = get_benchmark("cityscapes").protocol(224)
    assert (city.short_side, city.crop, city.stride) == (1024, 448, 224)
    assert get_benchmark("context").protocol(224).bg_thresh == 0.35
    folder = get_benchmark("folder").protocol(64)
    assert (folder.short_side, folder.crop, folder.stride, folder.bg_thresh) == (64, 64, 32, None)
    small = get_benchmark("voc").protocol(224, short_side=64, crop=48, bg_thresh=0.5)
    assert (small.short_side, small.crop, small.stride, small.bg_thresh) == (64, 48, 24, 0.5)
    with pytest.raises(ValueError, match="no background"):
        get_benchmark("ade20k").protocol(224, bg_thresh=0.5)
    with pytest.raises(ValueError, match="larger than crop"):
        Protocol(short_side=64, crop=32, stride=48)
