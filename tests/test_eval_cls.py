"""`cocu eval-cls` end to end: class-name folders with classes.txt, ImageNet wnid folders, a CLIP model, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cocu.cli import main
from cocu.evaluation.cls_eval import open_image_folder
from cocu.models.bundle import save_bundle
from cocu.models.factory import build_clip, get_model_spec
from cocu.text.tokenizer import byte_level_tokenizer
from test_eval_seg import tiny_model_dir  # noqa: F401  (session fixture)


def _folder(root: Path, classes: dict[str, int], classes_txt: list[str] | None = None) -> None:
    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)).save(root / name / f"{i}.jpg")
    if classes_txt is not None:
        (root / "classes.txt").write_text("".join(f"{n}\n" for n in classes_txt))


def test_eval_cls_on_class_named_folders_reports_top1_top5_and_per_class(tiny_model_dir, tmp_path):  # noqa: F811
    names = ["red square", "blue circle", "cat"]
    _folder(tmp_path / "classify", {n: 2 for n in names}, classes_txt=names)
    (tmp_path / "classify" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "cls.json"
    argv = ["eval-cls", "--model", str(tiny_model_dir), "--root", str(tmp_path / "classify"), "--out", str(out)]
    assert main([*argv, "--templates", "simple", "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert result["n"] == 6
    assert result["top5_k"] == 3 and result["top5"] == 100.0  # 3 classes: the top-3 always holds the truth
    assert 0.0 <= result["top1"] <= 100.0
    assert list(result["per_class_accuracy"]) == names
    assert sum(v * 2 / 100 for v in result["per_class_accuracy"].values()) == pytest.approx(result["top1"] * 6 / 100, abs=1e-3)
    assert result["skipped"] == {"corrupt_image": 1, "total": 1}


def test_eval_cls_limit_spreads_over_classes(tiny_model_dir, tmp_path):  # noqa: F811
    _folder(tmp_path / "classify", {"a": 3, "b": 3, "c": 1}, classes_txt=["a", "b", "c"])
    folder = open_image_folder(tmp_path / "classify")
    assert folder.class_names == ["a", "b", "c"]
    assert [it.target for it in folder.items][:4] == [0, 1, 2, 0]
    out = tmp_path / "cls.json"
    argv = ["eval-cls", "--model", str(tiny_model_dir), "--root", str(tmp_path / "classify"), "--out", str(out)]
    assert main([*argv, "--limit", "3", "--templates", "simple", "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert result["n"] == 3  # the limit: the first image of each class, not three images of class a
    assert all(v is not None for v in result["per_class_accuracy"].values())


def test_wnid_folders_map_to_imagenet_names_only_for_all_1000(tmp_path):
    _folder(tmp_path / "sub", {"n01440764": 1, "n01443537": 1})
    with pytest.raises(ValueError, match="1000"):
        open_image_folder(tmp_path / "sub")
    named = open_image_folder(tmp_path / "sub", classnames=["tench", "goldfish"])
    assert named.class_names == ["tench", "goldfish"]
    full = tmp_path / "full"
    for i in range(1000):
        (full / f"n{i:08d}").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(full / "n00000999" / "x.JPEG")
    imagenet = open_image_folder(full)
    assert len(imagenet.class_names) == 1000
    assert imagenet.items[0].target == 999 and imagenet.class_names[999] == "toilet paper"


def test_eval_cls_wnid_subset_without_names_is_a_clear_error(tiny_model_dir, tmp_path, capsys):  # noqa: F811
    _folder(tmp_path, {"n01440764": 1, "n01443537": 1})
    assert main(["eval-cls", "--model", str(tiny_model_dir), "--root", str(tmp_path)]) == 2
    assert "wnid folders" in capsys.readouterr().err


@pytest.fixture(scope="module")
def clip_model_dir(tmp_path_factory) -> Path:
    tokenizer = byte_level_tokenizer()
    model = build_clip("clip-tiny", tokenizer, seed=0)
    size = get_model_spec("clip-tiny").image_size
    return save_bundle(model, tokenizer, tmp_path_factory.mktemp("models") / "clip-tiny", image_size=size)


def test_eval_cls_runs_a_clip_model_but_eval_seg_refuses_it(clip_model_dir, tmp_path, capsys):
    _folder(tmp_path / "classify", {"a": 1, "b": 1})
    out = tmp_path / "cls.json"
    argv = ["eval-cls", "--model", str(clip_model_dir), "--root", str(tmp_path / "classify"), "--out", str(out)]
    assert main([*argv, "--templates", "simple", "--no-progress"]) == 0
    assert json.loads(out.read_text())["n"] == 2
    image = tmp_path / "classify" / "a" / "0.jpg"
    assert main(["segment", str(image), "--model", str(clip_model_dir), "--labels", "a,b"]) == 2
    assert "needs a GroupViT" in capsys.readouterr().err
