"""Training-free dense CLIP (MaskCLIP, SCLIP, NACLIP) on a random-weight clip-tiny: the read-outs'
shapes and values, and `cocu eval-seg` / `cocu segment --method ...` end to end on a tiny VOC layout."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cocu.cli import main
from cocu.evaluation.dense_clip import (
    DENSE_METHODS,
    DenseClipModel,
    gaussian_prior,
    load_seg_model,
    patch_assignment,
)
from cocu.evaluation.protocol import group_class_probs
from cocu.models.bundle import load_bundle, save_bundle
from cocu.models.factory import build_clip, build_groupvit
from cocu.models.features import pooled_features
from cocu.text.tokenizer import byte_level_tokenizer

CLASSES = ["sky", "grass", "dog"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    tokenizer = byte_level_tokenizer()
    model = build_clip("clip-tiny", tokenizer, seed=0)
    return save_bundle(model, tokenizer, tmp_path_factory.mktemp("models") / "clip-tiny", image_size=64)


def _pixels(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", DENSE_METHODS)
def test_dense_crop_encoding_has_one_group_per_patch_and_clip_image_embedding(clip_dir, method):
    zs = load_seg_model(str(clip_dir), method, "cpu")
    pixels = _pixels(2, 64, 64)
    enc = zs.encode_crops(pixels)
    assert enc.assignment.shape == (2, 64, 64, 64)  # 8x8 patches of 8 px
    assert enc.group_emb.shape == (2, 64, 128)
    assert torch.allclose(enc.group_emb.norm(dim=-1), torch.ones(2, 64), atol=1e-5)
    # the whole-image embedding is the unchanged CLIP's
    expected = F.normalize(pooled_features(zs.model.get_image_features(pixel_values=pixels)), dim=-1)
    assert torch.allclose(enc.image_emb, expected, atol=1e-5)


def test_dense_crop_of_another_size_interpolates_position_embeddings(clip_dir):
    zs = load_seg_model(str(clip_dir), "naclip", "cpu")
    enc = zs.encode_crops(_pixels(1, 44, 36))  # 5x4 whole patches, 4 px left over each way
    assert enc.assignment.shape == (1, 20, 44, 36)
    assert enc.group_emb.shape == (1, 20, 128)


def test_maskclip_patch_scores_equal_the_last_blocks_value_path(clip_dir):
    zs = load_seg_model(str(clip_dir), "maskclip", "cpu")
    model = zs.model
    pixels = _pixels(2, 64, 64, seed=3)
    class_emb = zs.class_embeddings(CLASSES, ["a photo of a {}."])
    with torch.no_grad():
        hidden = model.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]  # [2,65,128]
        last = model.vision_model.encoder.layers[-1]
        value = last.self_attn.out_proj(last.self_attn.v_proj(last.layer_norm1(hidden)))[:, 1:]  # [2,64,128]
        direct = F.normalize(model.visual_projection(model.vision_model.post_layernorm(value)), dim=-1)
    enc = zs.encode_crops(pixels)
    assert torch.allclose(enc.group_emb @ class_emb.T, direct @ class_emb.T, atol=1e-5)


def test_sclip_and_naclip_differ_from_maskclip_and_from_each_other(clip_dir):
    pixels = _pixels(1, 64, 64, seed=5)
    emb = {m: load_seg_model(str(clip_dir), m, "cpu").encode_crops(pixels).group_emb for m in DENSE_METHODS}
    assert not torch.allclose(emb["sclip"], emb["maskclip"], atol=1e-3)
    assert not torch.allclose(emb["naclip"], emb["maskclip"], atol=1e-3)
    assert not torch.allclose(emb["naclip"], emb["sclip"], atol=1e-3)


def test_patch_assignment_maps_each_pixel_to_its_patch_and_leftovers_to_the_last():
    a = patch_assignment((2, 3), 4, (9, 13))  # 1 row and 1 column of pixels past the whole patches
    assert a.shape == (6, 9, 13)
    assert torch.equal(a.sum(dim=0), torch.ones(9, 13))
    index = a.argmax(dim=0)
    assert index[0, 0] == 0 and index[3, 4] == 1 and index[4, 0] == 3 and index[8, 12] == 5 and index[0, 12] == 2


def test_gaussian_prior_is_minus_squared_grid_distance_over_two_sigma_squared():
    prior = gaussian_prior((2, 3), sigma=2.0)
    assert prior.shape == (6, 6)
    assert prior[0, 0] == 0.0
    assert math.isclose(float(prior[0, 5]), -(1 + 4) / 8.0)  # (0,0) to (1,2)


def test_dense_method_refuses_a_groupvit_model(tmp_path):
    tokenizer = byte_level_tokenizer()
    folder = save_bundle(build_groupvit("groupvit-tiny", tokenizer, seed=0), tokenizer, tmp_path / "gv", image_size=64)
    with pytest.raises(ValueError, match="reads a CLIP densely"):
        DenseClipModel(load_bundle(folder), "maskclip", "cpu")


def test_dense_group_scores_follow_the_top5_restriction(clip_dir):
    zs = load_seg_model(str(clip_dir), "sclip", "cpu")
    names = [f"class {i}" for i in range(8)]
    class_emb = zs.class_embeddings(names, ["{}"])
    enc = zs.encode_crops(_pixels(1, 64, 64))
    probs = group_class_probs(enc.group_emb, enc.image_emb, class_emb, zs.logit_scale, top_k=5)  # [1,64,8]
    assert int((probs[0].sum(dim=0) > 0).sum()) == 5


def _voc(root: Path) -> None:
    base = root / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(0)
    for i in range(2):
        (base / "JPEGImages").mkdir(parents=True, exist_ok=True)
        (base / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(base / "JPEGImages" / f"2007_{i}.jpg")
        label = np.resize(np.asarray([0, 12, 255, 20], dtype=np.uint8), 40 * 52).reshape(40, 52)
        Image.fromarray(label).save(base / "SegmentationClass" / f"2007_{i}.png")
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_0\n2007_1\n")


@pytest.mark.parametrize("method", DENSE_METHODS)
def test_eval_seg_method_writes_voc_scores_and_predictions_in_label_space(clip_dir, tmp_path, method):
    _voc(tmp_path / "voc")
    out = tmp_path / "scores.json"
    preds = tmp_path / "preds"
    argv = ["eval-seg", "--model", str(clip_dir), "--method", method, "--dataset", "voc", "--root"]
    argv += [str(tmp_path / "voc"), "--short-side", "64", "--templates", "simple", "--no-progress"]
    argv += ["--out", str(out), "--save-predictions", str(preds), "--diagnostics"]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["method"] == method
    assert result["protocol"]["crop"] == 64 and result["protocol"]["stride"] == 32  # the CLIP's own size
    assert result["num_images"] == 2
    assert result["num_classes"] == 21 and list(result["per_class_iou"])[0] == "background"
    assert result["groups_per_image"] <= 64
    for name in ("2007_0", "2007_1"):
        pred = np.asarray(Image.open(preds / f"{name}.png"))
        assert pred.shape == (40, 52)
        assert pred.min() >= 0 and pred.max() <= 20


def test_segment_method_naclip_writes_overlay_and_labels(clip_dir, tmp_path):
    image = tmp_path / "cat.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 45, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "cat_overlay.png"
    argv = ["segment", str(image), "--model", str(clip_dir), "--method", "naclip", "--labels", "sky,grass,dog"]
    assert main([*argv, "--templates", "simple", "--out", str(out)]) == 0
    labels = np.asarray(Image.open(tmp_path / "cat_overlay_labels.png"))
    assert labels.shape == (30, 45)
    assert labels.min() >= 1 and labels.max() <= 3  # no background threshold: every pixel gets a label


def test_eval_seg_refuses_a_dense_method_on_a_groupvit_folder(tmp_path, capsys):
    tokenizer = byte_level_tokenizer()
    folder = save_bundle(build_groupvit("groupvit-tiny", tokenizer, seed=0), tokenizer, tmp_path / "gv", image_size=64)
    _voc(tmp_path / "voc")
    argv = ["eval-seg", "--model", str(folder), "--method", "sclip", "--dataset", "voc"]
    argv += ["--root", str(tmp_path / "voc")]
    assert main(argv) == 2
    assert "reads a CLIP densely" in capsys.readouterr().err
