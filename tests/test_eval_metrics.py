"""Confusion-matrix mIoU against a hand-computed case, and the per-benchmark label decodings."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from cocu.evaluation.benchmarks import CLASSNAME_SETS, benchmark_names, load_classnames, unique_keys
from cocu.evaluation.datasets import IGNORE, decode_label, read_label
from cocu.evaluation.metrics import ConfusionMatrix, format_table, scores


def test_confusion_matrix_miou_matches_hand_computation():
    # 4 classes; class 3 is absent from ground truth and prediction -> undefined, not averaged.
    label = np.array([[0, 0, 1, 1], [2, 2, 2, IGNORE]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 3]])
    cm = ConfusionMatrix(4)
    cm.update(label, pred)
    # class 0: TP 1, FP 1 (gt 2 -> 0), FN 1 (gt 0 -> 1): IoU 1/3
    # class 1: TP 2, FP 1, FN 0: IoU 2/3;  class 2: TP 2, FP 0, FN 1: IoU 2/3
    # the ignored pixel's prediction (3) is not counted, so class 3 stays undefined
    iou = cm.per_class_iou()
    assert np.allclose(iou[:3], [1 / 3, 2 / 3, 2 / 3])
    assert math.isnan(iou[3])
    assert cm.miou() == pytest.approx((1 / 3 + 2 / 3 + 2 / 3) / 3)
    assert cm.pixel_accuracy() == pytest.approx(5 / 7)
    result = scores(cm, ["a", "b", "c", "d"])
    assert result.miou == pytest.approx(100 * 5 / 9, abs=1e-3)
    assert result.per_class_iou["d"] is None
    assert result.pixel_acc == pytest.approx(100 * 5 / 7, abs=1e-3)
    json.dumps(result.per_class_iou)  # None serialises as null
    table = format_table(result, "t")
    assert "mIoU" in table and "55.56" in table


def test_confusion_matrix_accumulates_over_images_and_rejects_bad_predictions():
    cm = ConfusionMatrix(2)
    cm.update(np.array([0, 1]), np.array([0, 1]))
    cm.update(np.array([1, 1]), np.array([0, 1]))
    assert cm.counts.tolist() == [[1, 0], [1, 2]]
    with pytest.raises(ValueError, match="prediction values"):
        cm.update(np.array([0]), np.array([2]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.array([0, 1]), np.array([0]))


def test_class_name_files_have_the_published_class_counts():
    counts = {name: len(load_classnames(name)) for name in CLASSNAME_SETS}
    assert counts == {
        "voc": 20,
        "context": 59,
        "coco-object": 80,
        "imagenet-s50": 50,
        "imagenet-s300": 300,
        "cityscapes": 19,
        "ade20k": 150,
        "coco-stuff": 171,
        "imagenet": 1000,
    }
    assert load_classnames("coco-stuff")[:80] == load_classnames("coco-object")
    assert load_classnames("imagenet")[0] == "tench" and load_classnames("imagenet")[999] == "toilet paper"
    assert all("background" not in load_classnames(n) for n in CLASSNAME_SETS)
    assert set(benchmark_names()) == {
        "voc", "context", "coco-object", "imagenet-s50", "imagenet-s300", "cityscapes", "ade20k", "coco-stuff",
        "folder",
    }
    keys = unique_keys(load_classnames("imagenet"))
    assert len(set(keys)) == 1000


def test_index_decoding_maps_255_to_ignore():
    out = decode_label(np.array([[0, 20, 255]], dtype=np.uint8), "index")
    assert out.tolist() == [[0, 20, IGNORE]]


def test_ade_decoding_shifts_by_one_and_ignores_zero():
    out = decode_label(np.array([[0, 1, 150]], dtype=np.uint8), "ade_shift")
    assert out.tolist() == [[IGNORE, 0, 149]]


def test_cityscapes_label_ids_map_to_train_ids():
    raw = np.array([[7, 8, 26, 33, 0, 6, 255]], dtype=np.uint8)
    assert decode_label(raw, "cityscapes_label_ids").tolist() == [[0, 1, 13, 18, IGNORE, IGNORE, IGNORE]]


def test_coco_stuff_raw_ids_map_to_171_classes_and_coco_object_keeps_things_with_unlabeled_as_background():
    raw = np.array([[0, 10, 12, 11, 90, 91, 181, 255]], dtype=np.uint8)
    stuff = decode_label(raw, "coco_stuff_raw")
    assert stuff.tolist() == [[0, 10, 11, IGNORE, IGNORE, 80, 170, IGNORE]]
    obj = decode_label(raw, "coco_object_raw")
    assert obj.tolist() == [[1, 11, 12, IGNORE, IGNORE, 0, 0, 0]]  # 255 (unlabeled) -> background, as the reference converter


def test_imagenet_s_rgb_ids_and_ignore_1000():
    rgb = np.zeros((1, 4, 3), dtype=np.uint8)
    rgb[0, 1] = (44, 1, 0)  # 300
    rgb[0, 2] = (232, 3, 0)  # 1000 = ignore
    rgb[0, 3] = (50, 0, 0)
    assert decode_label(rgb, "imagenet_s_rgb").tolist() == [[0, 300, IGNORE, 50]]


def test_read_label_rejects_values_beyond_the_class_count(tmp_path):
    path = tmp_path / "bad.png"
    Image.fromarray(np.array([[0, 21]], dtype=np.uint8), mode="L").save(path)
    with pytest.raises(ValueError, match=r"bad.png: label value 21 .* 21 classes"):
        read_label(path, "index", 21)
    rgb = tmp_path / "rgb.png"
    Image.new("RGB", (2, 2)).save(rgb)
    with pytest.raises(ValueError, match="colour image"):
        read_label(rgb, "index", 21)
