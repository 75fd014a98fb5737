"""cocu.data.transforms: geometry, normalisation, seeded augmentation and mode/EXIF conversion."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from cocu.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    Preprocess,
    TrainAugment,
    center_crop,
    color_jitter,
    exif_to_rgb,
    random_resized_crop_box,
    resize_short_side,
    to_rgb,
    to_tensor,
)
from cocu.data.transforms import _hsv_to_rgb, _rgb_to_hsv


def _noise_image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_clip_constants():
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert CLIP_STD == (0.26862954, 0.26130258, 0.27577711)


def test_to_tensor_normalisation_is_exact_on_a_constant_image():
    img = Image.new("RGB", (5, 3), (255, 0, 51))
    half = to_tensor(img, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert half.shape == (3, 3, 5) and half.dtype == torch.float32
    assert torch.equal(half[0], torch.full((3, 5), 1.0))
    assert torch.equal(half[1], torch.full((3, 5), -1.0))
    assert torch.allclose(half[2], torch.full((3, 5), (0.2 - 0.5) / 0.5), atol=1e-7)
    clip = to_tensor(img)
    expected = [(v / 255.0 - m) / s for v, m, s in zip((255, 0, 51), CLIP_MEAN, CLIP_STD)]
    for channel, value in enumerate(expected):
        assert torch.allclose(clip[channel], torch.full((3, 5), value), atol=1e-6)


def test_to_tensor_rejects_non_rgb():
    with pytest.raises(ValueError, match="expected an RGB image"):
        to_tensor(Image.new("L", (2, 2)))


@pytest.mark.parametrize(
    ("size", "short", "expected"),
    [((100, 50), 20, (40, 20)), ((50, 100), 20, (20, 40)), ((33, 77), 10, (10, 23)), ((30, 30), 30, (30, 30))],
)
def test_resize_short_side_keeps_aspect(size, short, expected):
    assert resize_short_side(Image.new("RGB", size), short).size == expected


def test_center_crop_takes_the_middle_and_pads_small_images_black():
    arr = np.arange(6 * 8, dtype=np.uint8).reshape(6, 8)
    img = Image.fromarray(np.stack([arr] * 3, axis=-1))
    crop = np.asarray(center_crop(img, (2, 4)))[..., 0]
    assert np.array_equal(crop, arr[2:4, 2:6])
    padded = np.asarray(center_crop(Image.new("RGB", (2, 2), (9, 9, 9)), 4))[..., 0]
    assert padded.shape == (4, 4)
    assert np.array_equal(padded[1:3, 1:3], np.full((2, 2), 9)) and padded.sum() == 4 * 9


def test_preprocess_shapes_and_values():
    img = _noise_image(64, 48)
    assert Preprocess(32)(img).shape == (3, 32, 32)
    assert Preprocess(32, crop=False)(img).shape == (3, 32, 42)
    grey = Preprocess(4, (0.5,) * 3, (0.5,) * 3)(Image.new("L", (8, 8), 255))
    assert torch.equal(grey, torch.ones(3, 4, 4))


def test_train_augment_shape_and_determinism_from_the_generator():
    img = _noise_image(40, 30)
    aug = TrainAugment(16, hue=0.1)
    a = aug(img, _gen(7))
    b = aug(img, _gen(7))
    c = aug(img, _gen(8))
    assert a.shape == (3, 16, 16) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    g = _gen(7)
    assert not torch.equal(aug(img, g), aug(img, g))


def test_train_augment_without_randomness_is_plain_resize_and_normalise():
    img = _noise_image(20, 20)
    aug = TrainAugment(10, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False, color_jitter=0.0)
    expected = to_tensor(img.resize((10, 10), Image.Resampling.BICUBIC))
    assert torch.equal(aug(img, _gen(0)), expected)


def test_train_augment_flip_happens_for_some_seeds_and_not_others():
    img = _noise_image(12, 12)
    aug = TrainAugment(12, scale=(1.0, 1.0), ratio=(1.0, 1.0), color_jitter=0.0)
    plain = to_tensor(img)
    flipped = torch.flip(plain, dims=[2])
    outcomes = set()
    for seed in range(20):
        out = aug(img, _gen(seed))
        assert torch.equal(out, plain) or torch.equal(out, flipped)
        outcomes.add(torch.equal(out, flipped))
    assert outcomes == {True, False}


def test_random_resized_crop_box_stays_inside_and_respects_scale_and_ratio():
    for seed in range(50):
        top, left, h, w = random_resized_crop_box(64, 48, (0.08, 1.0), (3 / 4, 4 / 3), _gen(seed))
        assert 0 <= top and top + h <= 48 and 0 <= left and left + w <= 64
        assert 0.07 <= h * w / (64 * 48) <= 1.0
        assert 0.7 <= w / h <= 1.4


def test_random_resized_crop_box_falls_back_to_a_centred_crop():
    # a 100x10 strip cannot hold a 90-100% area crop with aspect ratio in [3/4, 4/3]
    assert random_resized_crop_box(100, 10, (0.9, 1.0), (3 / 4, 4 / 3), _gen(0)) == (0, 43, 10, 13)


def test_color_jitter_on_a_grey_image_only_scales_brightness():
    x = torch.full((3, 4, 4), 0.5)
    out = color_jitter(x, 0.4, 0.4, 0.4, 0.0, _gen(3))
    value = out[0, 0, 0].item()
    assert torch.allclose(out, torch.full((3, 4, 4), value), atol=1e-6)
    assert 0.5 * 0.6 - 1e-6 <= value <= 0.5 * 1.4 + 1e-6


def test_hsv_round_trip_is_identity():
    x = torch.rand(3, 6, 6, generator=_gen(1))
    assert torch.allclose(_hsv_to_rgb(_rgb_to_hsv(x)), x, atol=1e-6)


def test_invalid_augment_settings_are_rejected():
    with pytest.raises(ValueError, match="scale"):
        TrainAugment(8, scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="interpolation"):
        TrainAugment(8, interpolation="cubic-ish")


# --- mode and EXIF conversion ----------------------------------------------------------------------------


def _pixel(img: Image.Image) -> tuple[int, int, int]:
    assert img.mode == "RGB"
    return img.getpixel((0, 0))


def test_to_rgb_converts_every_mode():
    assert _pixel(to_rgb(Image.new("L", (2, 2), 77))) == (77, 77, 77)
    assert _pixel(to_rgb(Image.new("RGBA", (2, 2), (10, 20, 30, 0)))) == (255, 255, 255)
    assert _pixel(to_rgb(Image.new("RGBA", (2, 2), (10, 20, 30, 255)))) == (10, 20, 30)
    half = _pixel(to_rgb(Image.new("RGBA", (2, 2), (0, 0, 0, 128))))
    assert all(126 <= v <= 128 for v in half)
    assert _pixel(to_rgb(Image.new("LA", (2, 2), (40, 0)))) == (255, 255, 255)
    palette = Image.new("P", (2, 2), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    assert _pixel(to_rgb(palette)) == (200, 100, 50)
    palette.info["transparency"] = 1
    assert _pixel(to_rgb(palette)) == (255, 255, 255)
    assert _pixel(to_rgb(Image.new("CMYK", (2, 2), (0, 0, 0, 0)))) == (255, 255, 255)
    wide = Image.fromarray(np.array([[65535, 257 * 100], [0, 0]], dtype=np.uint16))
    assert wide.mode.startswith("I;16")
    converted = to_rgb(wide)
    assert converted.getpixel((0, 0)) == (255, 255, 255) and converted.getpixel((1, 0)) == (100, 100, 100)


def test_exif_to_rgb_applies_orientation_and_converts():
    img = Image.new("L", (8, 4), 0)
    img.paste(255, (0, 0, 2, 2))  # white block in the top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display rotates 90 degrees clockwise
    buf = io.BytesIO()
    img.save(buf, format="PNG", exif=exif)
    loaded = Image.open(io.BytesIO(buf.getvalue()))
    upright = exif_to_rgb(loaded)
    assert upright.mode == "RGB" and upright.size == (4, 8)
    assert upright.getpixel((3, 0)) == (255, 255, 255) and upright.getpixel((0, 0)) == (0, 0, 0)
