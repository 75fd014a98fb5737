"""`cocu eval-seg` end to end on tiny fixtures in each benchmark's exact layout, with a random-weight
groupvit-tiny model folder; saved predictions re-scored independently."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cocu.cli import main
from cocu.data.transforms import CLIP_MEAN, CLIP_STD
from cocu.evaluation.benchmarks import get_benchmark
from cocu.evaluation.datasets import open_dataset
from cocu.evaluation.encoders import ZeroShotModel
from cocu.evaluation.protocol import hard_groups
from cocu.evaluation.seg_eval import SegEvalOptions, evaluate_segmentation
from cocu.evaluation.segmenter import prepare_image
from cocu.models.bundle import load_bundle, save_bundle
from cocu.models.factory import build_groupvit
from cocu.text.prompts import imagenet_templates
from cocu.text.tokenizer import byte_level_tokenizer

FAST = ["--short-side", "32", "--crop", "48", "--templates", "simple", "--no-progress"]  # one crop per image


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    tokenizer = byte_level_tokenizer()
    model = build_groupvit("groupvit-tiny", tokenizer, seed=0)
    return save_bundle(model, tokenizer, tmp_path_factory.mktemp("models") / "groupvit-tiny", image_size=64)


def _image(path: Path, h: int, w: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def _label(path: Path, values: list[int], h: int, w: int, dtype=np.uint8) -> np.ndarray:
    """A label PNG whose pixels cycle through ``values`` (so each value appears)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.resize(np.asarray(values, dtype=dtype), h * w).reshape(h, w)
    Image.fromarray(arr).save(path)
    return arr


def _rgb_ids(path: Path, ids: list[int], h: int, w: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = np.resize(np.asarray(ids), h * w).reshape(h, w)
    rgb = np.stack([flat % 256, flat // 256, np.zeros_like(flat)], axis=-1).astype(np.uint8)
    Image.fromarray(rgb, mode="RGB").save(path)


def _expected(arr: np.ndarray, mapping) -> np.ndarray:
    return np.vectorize(mapping, otypes=[np.int64])(arr)


def make_voc(root: Path) -> dict[str, np.ndarray]:
    base = root / "VOCdevkit" / "VOC2012"
    gts = {}
    for i, values in enumerate([[0, 20, 255], [15, 1, 0]]):
        _image(base / "JPEGImages" / f"2007_00000{i}.jpg", 24, 30, i)
        arr = _label(base / "SegmentationClass" / f"2007_00000{i}.png", values, 24, 30)
        gts[f"2007_00000{i}"] = _expected(arr, lambda v: -1 if v == 255 else v)
    split = base / "ImageSets" / "Segmentation" / "val.txt"
    split.parent.mkdir(parents=True)
    split.write_text("".join(f"{k}\n" for k in gts))
    return gts


def make_context(root: Path) -> dict[str, np.ndarray]:
    base = root / "VOCdevkit" / "VOC2010"
    _image(base / "JPEGImages" / "2008_000002.jpg", 30, 22, 3)
    arr = _label(base / "SegmentationClassContext" / "2008_000002.png", [0, 59, 255, 30], 30, 22)
    (base / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    (base / "ImageSets" / "SegmentationContext" / "val.txt").write_text("2008_000002\n")
    return {"2008_000002": _expected(arr, lambda v: -1 if v == 255 else v)}


def make_coco_object(root: Path) -> dict[str, np.ndarray]:
    base = root / "coco"
    _image(base / "images" / "val2017" / "000000000139.jpg", 26, 32, 4)
    a = _label(base / "annotations" / "val2017" / "000000000139_instanceTrainIds.png", [0, 80, 255], 26, 32)
    _image(base / "images" / "val2017" / "000000000285.jpg", 28, 24, 5)
    # raw COCO-Stuff ids: 0 person -> 1, 90 (unused) -> ignore, 91 stuff and 255 unlabeled -> background 0
    b = _label(base / "annotations" / "val2017" / "000000000285.png", [0, 90, 91, 255, 89], 28, 24)
    raw_to_object = {0: 1, 90: -1, 91: 0, 255: 0, 89: 80}
    return {
        "000000000139": _expected(a, lambda v: -1 if v == 255 else v),
        "000000000285": _expected(b, raw_to_object.get),
    }


def make_imagenet_s(root: Path, split: int) -> dict[str, np.ndarray]:
    base = root / "ImageNetS" / f"ImageNetS{split}"
    gts = {}
    for i, wnid in enumerate(["n01443537", "n01491361"][: 2 if split == 50 else 1]):
        stem = f"ILSVRC2012_val_0000000{i + 1}"
        _image(base / "validation" / wnid / f"{stem}.JPEG", 25, 31, 6 + i)
        ids = [0, split, 1000, 1]
        _rgb_ids(base / "validation-segmentation" / wnid / f"{stem}.png", ids, 25, 31)
        flat = np.resize(np.asarray(ids), 25 * 31).reshape(25, 31)
        gts[f"{wnid}/{stem}"] = np.where(flat == 1000, -1, flat)
    return gts


def make_cityscapes(root: Path) -> dict[str, np.ndarray]:
    base = root / "cityscapes"
    a_name, b_name = "frankfurt_000000_000294", "lindau_000000_000019"
    _image(base / "leftImg8bit" / "val" / "frankfurt" / f"{a_name}_leftImg8bit.png", 20, 40, 8)
    a = _label(base / "gtFine" / "val" / "frankfurt" / f"{a_name}_gtFine_labelIds.png", [7, 33, 0, 26], 20, 40)
    _image(base / "leftImg8bit" / "val" / "lindau" / f"{b_name}_leftImg8bit.png", 20, 40, 9)
    b = _label(base / "gtFine" / "val" / "lindau" / f"{b_name}_gtFine_labelTrainIds.png", [0, 18, 255], 20, 40)
    ids = {7: 0, 33: 18, 0: -1, 26: 13}
    return {a_name: _expected(a, ids.get), b_name: _expected(b, lambda v: -1 if v == 255 else v)}


def make_ade(root: Path) -> dict[str, np.ndarray]:
    base = root / "ADEChallengeData2016"
    _image(base / "images" / "validation" / "ADE_val_00000001.jpg", 24, 36, 10)
    arr = _label(base / "annotations" / "validation" / "ADE_val_00000001.png", [0, 1, 150, 75], 24, 36)
    return {"ADE_val_00000001": _expected(arr, lambda v: -1 if v == 0 else v - 1)}


def make_coco_stuff(root: Path) -> dict[str, np.ndarray]:
    base = root / "coco_stuff164k"
    _image(base / "images" / "val2017" / "000000000139.jpg", 26, 30, 11)
    a = _label(base / "annotations" / "val2017" / "000000000139_labelTrainIds.png", [0, 170, 255], 26, 30)
    _image(base / "images" / "val2017" / "000000000632.jpg", 30, 26, 12)
    b = _label(base / "annotations" / "val2017" / "000000000632.png", [0, 181, 255, 12, 11], 30, 26)
    raw = {0: 0, 181: 170, 255: -1, 12: 11, 11: -1}
    return {
        "000000000139": _expected(a, lambda v: -1 if v == 255 else v),
        "000000000632": _expected(b, raw.get),
    }


def make_folder(root: Path) -> dict[str, np.ndarray]:
    base = root / "val"
    gts = {}
    for i in range(2):
        _image(base / "JPEGImages" / f"val_{i:05d}.jpg", 32, 32, 20 + i)
        arr = _label(base / "SegmentationClass" / f"val_{i:05d}.png", [0, 1, 2, 255], 32, 32)
        gts[f"val_{i:05d}"] = _expected(arr, lambda v: -1 if v == 255 else v)
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("".join(f"{k}\n" for k in gts))
    (base / "classes.txt").write_text("sky\ngrass\nred square\n")
    return gts


BENCHMARKS = {
    "voc": (make_voc, 21),
    "context": (make_context, 60),
    "coco-object": (make_coco_object, 81),
    "imagenet-s50": (lambda r: make_imagenet_s(r, 50), 51),
    "imagenet-s300": (lambda r: make_imagenet_s(r, 300), 301),
    "cityscapes": (make_cityscapes, 19),
    "ade20k": (make_ade, 150),
    "coco-stuff": (make_coco_stuff, 171),
}


def rescore(pred_dir: Path, gts: dict[str, np.ndarray], num_classes: int) -> float:
    """mIoU recomputed from the saved prediction PNGs, independently of cocu.evaluation.metrics."""
    inter = np.zeros(num_classes)
    union = np.zeros(num_classes)
    for name, gt in gts.items():
        pred = np.array(Image.open(pred_dir / f"{name}.png")).astype(np.int64)
        assert pred.shape == gt.shape
        valid = gt >= 0
        for c in range(num_classes):
            p, g = (pred == c) & valid, (gt == c) & valid
            inter[c] += (p & g).sum()
            union[c] += (p | g).sum()
    present = union > 0
    return float(100 * (inter[present] / union[present]).mean())


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_eval_seg_reads_each_benchmark_layout_and_its_saved_predictions_rescore_to_the_same_miou(
    name, tiny_model_dir, tmp_path
):
    make, num_classes = BENCHMARKS[name]
    gts = make(tmp_path / "data")
    out = tmp_path / "scores.json"
    preds = tmp_path / "preds"
    argv = ["eval-seg", "--model", str(tiny_model_dir), "--dataset", name, "--root", str(tmp_path / "data")]
    assert main([*argv, *FAST, "--out", str(out), "--save-predictions", str(preds)]) == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == name
    assert result["num_images"] == len(gts)
    assert result["num_classes"] == num_classes == len(result["per_class_iou"])
    assert result["protocol"]["short_side"] == 32 and result["protocol"]["num_templates"] == 1
    assert 0.0 <= result["pixel_acc"] <= 100.0
    assert result["miou"] == pytest.approx(rescore(preds, gts, num_classes), abs=1e-3)


def test_eval_seg_folder_with_80_templates_and_diagnostics(tiny_model_dir, tmp_path, capsys):
    gts = make_folder(tmp_path)
    out = tmp_path / "scores.json"
    preds = tmp_path / "preds"
    argv = ["eval-seg", "--model", str(tiny_model_dir), "--dataset", "folder", "--root", str(tmp_path / "val")]
    extra = ["--templates", "imagenet80", "--diagnostics", "--no-progress"]
    assert main([*argv, "--out", str(out), "--save-predictions", str(preds), *extra]) == 0
    result = json.loads(out.read_text())
    assert list(result["per_class_iou"]) == ["sky", "grass", "red square"]
    protocol = result["protocol"]
    assert protocol["templates"] == list(imagenet_templates())
    assert {k: v for k, v in protocol.items() if k != "templates"} == {
        "short_side": 64, "max_long_side": None, "crop": 64, "stride": 32, "bg_thresh": None, "top_k": 5,
        "num_templates": 80, "local_consistency": False, "resize": "bilinear-no-antialias",
        "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
    }
    assert result["miou"] == pytest.approx(rescore(preds, gts, 3), abs=1e-3)
    for key in ("miou_whole_image", "miou_group_bound"):
        assert 0.0 <= result[key] <= 100.0
    assert 1.0 <= result["groups_per_image"] <= 8.0
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "miou_group_bound" in printed


def test_group_bound_is_perfect_when_labels_follow_the_groups(tiny_model_dir, tmp_path):
    """Labels made from the model's own argmax groups: painting each group with its majority label
    reproduces them, so miou_group_bound is 100 whatever the text side does."""
    make_folder(tmp_path)
    zs = ZeroShotModel(load_bundle(tiny_model_dir), "cpu")
    spec = get_benchmark("folder")
    proto = spec.protocol(zs.image_size, short_side=32, crop=32)
    base = tmp_path / "val"
    for name in ("val_00000", "val_00001"):
        image = Image.open(base / "JPEGImages" / f"{name}.jpg").convert("RGB")
        x = prepare_image(image, proto, zs.mean, zs.std)[None]  # one 32x32 crop
        groups = hard_groups(zs.encode_crops(x).assignment)[0].numpy() % 3
        Image.fromarray(groups.astype(np.uint8)).save(base / "SegmentationClass" / f"{name}.png")
    options = SegEvalOptions(diagnostics=True, templates=["a photo of a {}."], progress=False)
    result = evaluate_segmentation(zs, open_dataset(spec, base), proto, options)
    assert result.miou_group_bound == pytest.approx(100.0)


def test_eval_seg_limit_and_missing_image_is_a_counted_skip(tiny_model_dir, tmp_path):
    make_voc(tmp_path)
    split = tmp_path / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt"
    split.write_text("2007_000000\nmissing_one\n2007_000001\n")
    out = tmp_path / "s.json"
    argv = ["eval-seg", "--model", str(tiny_model_dir), "--dataset", "voc", "--root", str(tmp_path / "VOCdevkit")]
    assert main([*argv, *FAST, "--out", str(out), "--limit", "1"]) == 0
    result = json.loads(out.read_text())
    assert result["num_images"] == 1
    assert result["skipped"] == {"missing_image": 1, "total": 1}


def test_eval_seg_label_beyond_class_count_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    make_voc(tmp_path)
    _label(tmp_path / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000001.png", [0, 21], 24, 30)
    argv = ["eval-seg", "--model", str(tiny_model_dir), "--dataset", "voc", "--root", str(tmp_path)]
    assert main([*argv, *FAST]) == 2
    err = capsys.readouterr().err
    assert "2007_000001.png: label value 21" in err and "21 classes" in err


def test_eval_seg_wrong_layout_or_option_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    make_voc(tmp_path)
    argv = ["eval-seg", "--model", str(tiny_model_dir), "--root", str(tmp_path)]
    assert main([*argv, "--dataset", "ade20k", *FAST]) == 3  # not found under --root: its own exit status
    assert "no annotations/validation/ folder" in capsys.readouterr().err
    make_ade(tmp_path)
    assert main([*argv, "--dataset", "ade20k", "--bg-thresh", "0.5", *FAST]) == 2
    assert "no background class" in capsys.readouterr().err
