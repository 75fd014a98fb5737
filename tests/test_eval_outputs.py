"""Issue 13 points 6, 8, 9, 12: labels of another size, outputs that would overwrite inputs or foreign
files or leave their folder, and an image over the pixel limit."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from cocu.cli import main
from test_eval_seg import FAST, _image, make_voc, tiny_model_dir  # noqa: F401  (session fixture)


def _voc_argv(model: Path, root: Path) -> list[str]:
    return ["eval-seg", "--model", str(model), "--dataset", "voc", "--root", str(root), *FAST]


def _labels(root: Path) -> dict[str, bytes]:
    folder = root / "VOCdevkit" / "VOC2012" / "SegmentationClass"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_label_of_another_size_is_a_counted_skip_or_an_error_with_strict(tiny_model_dir, tmp_path, capsys):  # noqa: F811
    make_voc(tmp_path)
    label = tmp_path / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000001.png"
    Image.fromarray(np.zeros((12, 15), dtype=np.uint8)).save(label)  # its image is 30 x 24
    out = tmp_path / "s.json"
    assert main([*_voc_argv(tiny_model_dir, tmp_path), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["num_images"] == 1
    assert result["skipped"] == {"size_mismatch": 1, "total": 1}
    assert main([*_voc_argv(tiny_model_dir, tmp_path), "--strict"]) == 2
    err = capsys.readouterr().err
    assert "2007_000001.png: label 15x12 but image 30x24" in err


def test_save_predictions_into_the_label_folder_is_refused_and_labels_stay(tiny_model_dir, tmp_path, capsys):  # noqa: F811
    make_voc(tmp_path)
    before = _labels(tmp_path)
    labels = tmp_path / "VOCdevkit" / "VOC2012" / "SegmentationClass"
    for target in (labels, tmp_path / "VOCdevkit" / "VOC2012" / "preds"):
        assert main([*_voc_argv(tiny_model_dir, tmp_path), "--save-predictions", str(target)]) == 2
        assert "lies inside the input folder" in capsys.readouterr().err
    assert _labels(tmp_path) == before


def test_predictions_never_replace_a_foreign_file_without_force_but_replace_their_own(tiny_model_dir, tmp_path, capsys):  # noqa: F811
    make_voc(tmp_path / "data")
    preds = tmp_path / "preds"
    preds.mkdir()
    (preds / "2007_000001.png").write_bytes(b"my own notes")
    argv = [*_voc_argv(tiny_model_dir, tmp_path / "data"), "--save-predictions", str(preds)]
    assert main(argv) == 2
    assert "2007_000001.png: exists and was not written by cocu" in capsys.readouterr().err
    assert (preds / "2007_000001.png").read_bytes() == b"my own notes"
    assert not (preds / "2007_000000.png").exists()  # refused before any work
    assert main([*argv, "--force"]) == 0
    assert main(argv) == 0  # files cocu wrote may be replaced by a rerun
    json_out = tmp_path / "notes.json"
    json_out.write_text('{"mine": true}')
    assert main([*_voc_argv(tiny_model_dir, tmp_path / "data"), "--out", str(json_out)]) == 2
    assert json.loads(json_out.read_text()) == {"mine": True}


def test_split_entry_leaving_the_prediction_folder_is_refused_before_writing(tiny_model_dir, tmp_path, capsys):  # noqa: F811
    make_voc(tmp_path / "data")
    devkit = tmp_path / "data" / "VOCdevkit"
    _image(devkit / "x" / "val-000001.jpg", 24, 30, 0)  # JPEGImages/../../x/val-000001.jpg
    Image.fromarray(np.zeros((24, 30), dtype=np.uint8)).save(devkit / "x" / "val-000001.png")
    (devkit / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000000\n../../x/val-000001\n")
    preds = tmp_path / "out" / "preds"
    argv = [*_voc_argv(tiny_model_dir, tmp_path / "data"), "--save-predictions", str(preds)]
    assert main(argv) == 2
    assert "'../../x/val-000001.png': output path leaves the output folder" in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.glob("x/*")) == []
    assert not preds.exists() or not any(preds.iterdir())


def test_segment_refuses_to_write_over_its_input_or_a_foreign_file(tiny_model_dir, tmp_path, capsys):  # noqa: F811
    image = tmp_path / "photo.png"
    _image(image, 20, 30, 1)
    original = image.read_bytes()
    argv = ["segment", str(image), "--model", str(tiny_model_dir), "--labels", "sky,dog", "--short-side", "16", "--crop", "16"]
    assert main([*argv, "--out", str(image)]) == 2
    assert "is an input file" in capsys.readouterr().err
    assert image.read_bytes() == original
    foreign = tmp_path / "overlay.png"
    Image.new("RGB", (2, 2)).save(foreign)
    assert main([*argv, "--out", str(foreign)]) == 2
    assert "not written by cocu" in capsys.readouterr().err
    assert main([*argv, "--out", str(foreign), "--force"]) == 0
    assert main([*argv, "--out", str(foreign)]) == 0  # now cocu's own
    assert image.read_bytes() == original


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header announces ``width x height`` (no pixel data: nothing large is ever made)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_segment_on_a_huge_image_is_a_clear_error_naming_the_limit(tiny_model_dir, tmp_path, capsys):  # noqa: F811
    huge = tmp_path / "huge.png"
    _png_header_only(huge, 20000, 20000)
    argv = ["segment", str(huge), "--model", str(tiny_model_dir), "--labels", "sky", "--out", str(tmp_path / "o.png")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "20000 x 20000 = 400,000,000 pixels, above the limit of 89,478,485" in err
    assert "--max-pixels 400000000" in err
    small = tmp_path / "small.png"
    _image(small, 40, 50, 2)
    assert main(["segment", str(small), "--model", str(tiny_model_dir), "--labels", "sky", "--max-pixels", "1000",
                 "--out", str(tmp_path / "s.png")]) == 2
    assert "2,000 pixels, above the limit of 1,000" in capsys.readouterr().err


def test_eval_seg_counts_an_image_above_the_pixel_limit_as_a_skip(tiny_model_dir, tmp_path):  # noqa: F811
    make_voc(tmp_path)
    _png_header_only(tmp_path / "VOCdevkit" / "VOC2012" / "JPEGImages" / "2007_000001.jpg", 20000, 20000)
    out = tmp_path / "s.json"
    assert main([*_voc_argv(tiny_model_dir, tmp_path), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["num_images"] == 1 and result["skipped"] == {"corrupt_image": 1, "total": 1}
