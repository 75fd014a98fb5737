"""`cocu segment` on odd inputs: grey, RGBA, 1x1 px, 3000x200 px and an EXIF-rotated JPEG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cocu.cli import main
from cocu.evaluation.overlay import palette, render_overlay
from test_eval_seg import tiny_model_dir  # noqa: F401  (session fixture)

FAST = ["--short-side", "16", "--crop", "16", "--templates", "simple"]


def _grey(path: Path) -> tuple[int, int]:
    Image.fromarray(np.tile(np.arange(40, dtype=np.uint8) * 6, (30, 1)), mode="L").save(path)
    return 30, 40


def _rgba(path: Path) -> tuple[int, int]:
    arr = np.random.default_rng(0).integers(0, 256, (25, 35, 4), dtype=np.uint8)
    Image.fromarray(arr, mode="RGBA").save(path)
    return 25, 35


def _one_pixel(path: Path) -> tuple[int, int]:
    Image.new("RGB", (1, 1), (200, 30, 30)).save(path)
    return 1, 1


def _wide(path: Path) -> tuple[int, int]:
    ramp = np.linspace(0, 255, 3000).astype(np.uint8)
    Image.fromarray(np.stack([np.tile(ramp, (200, 1))] * 3, axis=-1)).save(path)
    return 200, 3000


def _exif_rotated(path: Path) -> tuple[int, int]:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 40 wide x 20 high, displayed rotated by 90 degrees
    Image.new("RGB", (40, 20), (10, 120, 200)).save(path, exif=exif)
    return 40, 20  # upright height, width


CASES = {
    "grey.png": _grey,
    "rgba.png": _rgba,
    "one_pixel.png": _one_pixel,
    "wide.jpg": _wide,
    "exif_rotated.jpg": _exif_rotated,
}


@pytest.mark.parametrize("name", list(CASES))
def test_segment_writes_overlay_with_legend_and_label_map_of_image_size(name, tiny_model_dir, tmp_path, capsys):  # noqa: F811
    image = tmp_path / name
    height, width = CASES[name](image)
    out = tmp_path / "out" / "overlay.png"
    argv = ["segment", str(image), "--model", str(tiny_model_dir), "--labels", "sky, grass,dog", "--out", str(out)]
    assert main([*argv, *FAST]) == 0
    labels = np.array(Image.open(tmp_path / "out" / "overlay_labels.png"))
    assert labels.shape == (height, width)
    assert set(np.unique(labels).tolist()) <= {1, 2, 3}  # no background without --bg-thresh
    overlay = Image.open(out)
    assert overlay.mode == "RGB"
    assert overlay.width == max(width, 240) and overlay.height > height  # legend below the image
    assert "wrote" in capsys.readouterr().out


def test_segment_with_background_threshold_labels_background_as_zero(tiny_model_dir, tmp_path):  # noqa: F811
    image = tmp_path / "grey.png"
    _grey(image)
    out = tmp_path / "o.png"
    argv = ["segment", str(image), "--model", str(tiny_model_dir), "--labels", "sky,grass", "--out", str(out)]
    assert main([*argv, *FAST, "--bg-thresh", "1.0"]) == 0
    labels = np.array(Image.open(tmp_path / "o_labels.png"))
    assert labels.shape == (30, 40)
    assert set(np.unique(labels).tolist()) <= {0, 1, 2}


def test_segment_bad_labels_or_image_are_clear_errors(tiny_model_dir, tmp_path, capsys):  # noqa: F811
    image = tmp_path / "grey.png"
    _grey(image)
    assert main(["segment", str(image), "--model", str(tiny_model_dir), "--labels", "sky,,dog"]) == 2
    assert "comma-separated" in capsys.readouterr().err
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    assert main(["segment", str(broken), "--model", str(tiny_model_dir), "--labels", "sky"]) == 2
    assert "cannot read image" in capsys.readouterr().err


def test_render_overlay_paints_labels_and_leaves_background():
    image = Image.new("RGB", (4, 2), (0, 0, 0))
    label_map = np.array([[0, 1, 1, 2], [0, 0, 2, 2]])
    out = render_overlay(image, label_map, ["a", "b"], alpha=1.0, background_name="background")
    colours = palette(2)
    assert out.getpixel((0, 0)) == (0, 0, 0)
    assert out.getpixel((1, 0)) == tuple(int(c) for c in colours[0])
    assert out.getpixel((3, 1)) == tuple(int(c) for c in colours[1])
    assert out.size[0] == 240 and out.size[1] > 2
