"""The evaluation defaults are the published GroupViT / CoCu protocol (issue 11 points 1-7): one
segmentation template, the 7-template classification subset, ImageNet mean/std for the NVIDIA hub
checkpoints and the paper configs, ImageNet-S300 bg 0.75, COCO-Object 255 -> background, a bilinear
resize without anti-aliasing, and a JSON protocol block that says all of it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cocu.cli import main
from cocu.data.transforms import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from cocu.evaluation.benchmarks import Protocol, get_benchmark
from cocu.evaluation.datasets import decode_label
from cocu.evaluation.normalization import choose_normalization
from cocu.evaluation.seg_eval import SegEvalOptions
from cocu.evaluation import segmenter
from cocu.evaluation.segmenter import prepare_image
from cocu.models.bundle import load_bundle, save_bundle
from cocu.models.factory import build_groupvit
from cocu.text.tokenizer import byte_level_tokenizer
from cocu.train.config import load_config
from cocu.train.data import make_augment
from cocu.train.trainer import save_final_model
from test_eval_cls import _folder
from test_eval_seg import FAST, make_imagenet_s, make_voc, tiny_model_dir  # noqa: F401  (session fixture)

SUBSET = [
    "itap of a {}.",
    "a bad photo of a {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
]
PROTOCOL_KEYS = {
    "templates", "image_mean", "image_std", "short_side", "crop", "stride", "bg_thresh", "resize", "local_consistency",
}
PAPER_OVERRIDES = ["output=/tmp/x", "data.train=/data/c3-{00000..00001}.tar", "data.archive=/tmp/run"]


def _fast_without_templates() -> list[str]:
    return [a for a in FAST if a not in ("--templates", "simple")]


def _eval_voc(model: Path, tmp_path: Path, *extra: str) -> dict:
    make_voc(tmp_path / "data")
    out = tmp_path / "scores.json"
    argv = ["eval-seg", "--model", str(model), "--dataset", "voc", "--root", str(tmp_path / "data"), "--out", str(out)]
    assert main([*argv, *_fast_without_templates(), *extra]) == 0
    return json.loads(out.read_text())


def test_segmentation_default_is_the_single_published_template(tiny_model_dir, tmp_path):  # noqa: F811
    assert list(SegEvalOptions().templates) == ["a photo of a {}."]
    result = _eval_voc(tiny_model_dir, tmp_path)
    assert result["protocol"]["templates"] == ["a photo of a {}."]
    assert PROTOCOL_KEYS <= set(result["protocol"])
    assert result["protocol"]["resize"] == "bilinear-no-antialias"
    assert result["protocol"]["local_consistency"] is False
    assert (result["protocol"]["short_side"], result["protocol"]["bg_thresh"]) == (32, 0.95)


def test_classification_default_is_the_7_template_subset_with_a_protocol_block(tiny_model_dir, tmp_path):  # noqa: F811
    _folder(tmp_path / "classify", {"cat": 1, "dog": 1}, classes_txt=["cat", "dog"])
    out = tmp_path / "cls.json"
    argv = ["eval-cls", "--model", str(tiny_model_dir), "--root", str(tmp_path / "classify"), "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    protocol = json.loads(out.read_text())["protocol"]
    assert protocol["templates"] == SUBSET
    assert PROTOCOL_KEYS <= set(protocol)
    assert protocol["image_mean"] == list(CLIP_MEAN)  # a folder of ours: its own preprocessor
    assert main([*argv, "--no-progress", "--templates", "subset", "--normalize", "imagenet"]) == 0
    assert json.loads(out.read_text())["protocol"]["image_std"] == list(IMAGENET_STD)


@pytest.fixture(scope="module")
def nvidia_named_dir(tmp_path_factory) -> Path:
    """A random GroupViT saved the way the hub checkpoint is: a folder named after it, CLIP mean/std."""
    tokenizer = byte_level_tokenizer()
    model = build_groupvit("groupvit-tiny", tokenizer, seed=0)
    return save_bundle(model, tokenizer, tmp_path_factory.mktemp("hub") / "groupvit-gcc-yfcc", image_size=64)


def test_nvidia_checkpoint_gets_imagenet_statistics_by_default_and_says_so(nvidia_named_dir, tmp_path, capsys):
    result = _eval_voc(nvidia_named_dir, tmp_path)
    assert result["protocol"]["image_mean"] == list(IMAGENET_MEAN)
    assert result["protocol"]["image_std"] == list(IMAGENET_STD)
    assert "ImageNet mean/std: groupvit-gcc-yfcc was trained with them" in capsys.readouterr().out
    again = _eval_voc(nvidia_named_dir, tmp_path / "b", "--normalize", "model")
    assert again["protocol"]["image_mean"] == list(CLIP_MEAN)
    given = _eval_voc(nvidia_named_dir, tmp_path / "c", "--image-mean", "0.5", "0.5", "0.5", "--image-std", "1", "1", "1")
    assert given["protocol"]["image_mean"] == [0.5, 0.5, 0.5] and given["protocol"]["image_std"] == [1.0, 1.0, 1.0]


def test_normalization_choices_resolve_by_name_and_reject_half_given_statistics():
    hub = choose_normalization("nvidia/groupvit-gcc-redcaps", CLIP_MEAN, CLIP_STD)
    assert (hub.mean, hub.std) == (IMAGENET_MEAN, IMAGENET_STD)
    cache = "/root/.cache/huggingface/hub/models--nvidia--groupvit-gcc-yfcc/snapshots/abc"
    assert choose_normalization(cache, CLIP_MEAN, CLIP_STD).mean == IMAGENET_MEAN
    assert choose_normalization("runs/c3/cocu", CLIP_MEAN, CLIP_STD).mean == CLIP_MEAN
    assert choose_normalization("runs/c3/cocu", CLIP_MEAN, CLIP_STD, "imagenet").std == IMAGENET_STD
    with pytest.raises(ValueError, match="together"):
        choose_normalization("x", CLIP_MEAN, CLIP_STD, image_mean=[0.5, 0.5, 0.5])


def test_paper_configs_train_with_imagenet_statistics_and_write_them_into_the_model_folder(tmp_path):
    for name in ("groupvit_c3.yaml", "cocu_c3.yaml"):
        cfg = load_config(name, PAPER_OVERRIDES)
        assert cfg.data.normalize == "imagenet"
        augment = make_augment(cfg, 224)
        assert (augment.mean, augment.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert load_config(None, PAPER_OVERRIDES).data.normalize == "clip"  # other configs keep what they use
    tokenizer = byte_level_tokenizer()
    out = tmp_path / "model"
    out.mkdir()
    save_final_model(build_groupvit("groupvit-tiny", tokenizer, seed=0), tokenizer, out, 64, "imagenet")
    saved = json.loads((out / "preprocessor_config.json").read_text())
    assert saved["image_mean"] == list(IMAGENET_MEAN) and saved["image_std"] == list(IMAGENET_STD)
    assert load_bundle(out).preprocess.mean == IMAGENET_MEAN


def test_imagenet_s300_uses_background_threshold_075_and_s50_keeps_095(tiny_model_dir, tmp_path):  # noqa: F811
    assert get_benchmark("imagenet-s300").protocol(224).bg_thresh == 0.75
    assert get_benchmark("imagenet-s50").protocol(224).bg_thresh == 0.95
    make_imagenet_s(tmp_path / "data", 300)
    out = tmp_path / "s.json"
    argv = ["eval-seg", "--model", str(tiny_model_dir), "--dataset", "imagenet-s300", "--root", str(tmp_path / "data")]
    assert main([*argv, *FAST, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["protocol"]["bg_thresh"] == 0.75


def test_raw_coco_stuff_unlabeled_255_is_coco_object_background():
    raw = np.array([[255, 0, 91]], dtype=np.uint8)
    assert decode_label(raw, "coco_object_raw").tolist() == [[0, 1, 0]]
    assert decode_label(raw, "coco_stuff_raw").tolist()[0][0] == -1  # COCO-Stuff itself still ignores 255


def test_resize_of_a_640px_image_is_bilinear_without_antialiasing():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    proto = Protocol(short_side=224, crop=224, stride=112)
    got = prepare_image(Image.fromarray(pixels), proto, IMAGENET_MEAN, IMAGENET_STD)  # [3,224,299]
    x = torch.from_numpy(pixels).permute(2, 0, 1).float()[None] / 255.0  # [1,3,480,640]
    plain = F.interpolate(x, size=(224, 299), mode="bilinear", align_corners=False, antialias=False)[0]
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    assert got.shape == (3, 224, 299)
    assert torch.allclose(got, (plain - mean) / std, atol=1e-5, rtol=0)
    smoothed = F.interpolate(x, size=(224, 299), mode="bilinear", align_corners=False, antialias=True)[0]
    assert (smoothed - plain).abs().max() > 0.05  # an anti-aliased resize (PIL's) would differ visibly


def test_local_consistency_flag_refines_each_windows_class_scores_before_the_background_rule(
    tiny_model_dir, tmp_path, monkeypatch  # noqa: F811
):
    calls = []

    def spy(crop, scores):
        calls.append((tuple(crop.shape), tuple(scores.shape)))
        return torch.zeros_like(scores)  # every score 0: the background rule then paints all background

    monkeypatch.setattr(segmenter, "refine_scores", spy)
    plain = _eval_voc(tiny_model_dir, tmp_path / "a")
    assert plain["protocol"]["local_consistency"] is False and not calls
    refined = _eval_voc(tiny_model_dir, tmp_path / "b", "--local-consistency", "--save-predictions", str(tmp_path / "p"))
    assert refined["protocol"]["local_consistency"] is True
    assert calls and all(c[0] == (3, 32, 40) and c[1] == (20, 32, 40) for c in calls)  # 20 classes, no bg yet
    assert np.array(Image.open(tmp_path / "p" / "2007_000000.png")).max() == 0
