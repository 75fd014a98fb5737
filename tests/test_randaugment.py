"""RandAugment and random erasing (:mod:`cocu.data.randaugment`) and their place in TrainAugment."""

import numpy as np
import pytest
import torch
from PIL import Image

from cocu.data.randaugment import OPS, RandAugment, random_erase
from cocu.data.transforms import TrainAugment
from cocu.train.config import ConfigError, load_config
from cocu.train.data import make_augment


def _picture(size: int = 48) -> Image.Image:
    rng = np.random.default_rng(0)
    x = np.zeros((size, size, 3), dtype=np.uint8)
    x[: size // 2] = (200, 60, 30)
    x[size // 2 :] = (20, 120, 220)
    x += rng.integers(0, 30, x.shape, dtype=np.uint8)
    return Image.fromarray(x)


def test_spec_parses_groupvits_notation():
    assert RandAugment.from_spec("rand-m9-mstd0.5-inc1") == RandAugment(n=2, m=9.0, mstd=0.5, p=0.5)
    assert RandAugment.from_spec("rand-n3-m5-p1") == RandAugment(n=3, m=5.0, mstd=0.5, p=1.0)
    for bad in ("auto-m9", "rand-m9-inc0", "rand-q4", "rand-m11"):
        with pytest.raises(ValueError):
            RandAugment.from_spec(bad)


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_operation_keeps_size_and_mode_and_changes_the_picture_at_full_magnitude(name):
    img = _picture()
    out = OPS[name](img, 10.0, torch.Generator().manual_seed(0))
    assert out.size == img.size and out.mode == "RGB"
    assert not np.array_equal(np.asarray(out), np.asarray(img)), name


def test_zero_probability_is_the_identity_and_seeds_repeat():
    img = _picture()
    assert np.array_equal(np.asarray(RandAugment(p=0.0)(img, torch.Generator().manual_seed(1))), np.asarray(img))
    ra = RandAugment(n=3, p=1.0)
    a = ra(img, torch.Generator().manual_seed(7))
    b = ra(img, torch.Generator().manual_seed(7))
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_random_erase_fills_one_rectangle_with_noise_and_leaves_the_input_alone():
    x = torch.zeros(3, 40, 40)
    out = random_erase(x, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(x, torch.zeros(3, 40, 40))
    changed = (out != 0).any(dim=0)  # [H, W]
    rows, cols = changed.any(dim=1).nonzero().flatten(), changed.any(dim=0).nonzero().flatten()
    box = changed[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    assert box.all()  # one filled rectangle
    assert 0.02 * 1600 * 0.5 <= int(changed.sum()) <= 1600 / 3 * 1.2
    assert torch.equal(random_erase(x, 0.0, torch.Generator().manual_seed(3)), x)


def test_train_augment_with_the_published_settings_is_seeded_and_erases_about_a_quarter_of_images():
    aug = TrainAugment(size=32, randaugment=RandAugment.from_spec("rand-m9-mstd0.5-inc1"), erase_prob=0.25)
    img = _picture(64)
    a = aug(img, torch.Generator().manual_seed(5))
    assert a.shape == (3, 32, 32) and torch.equal(a, aug(img, torch.Generator().manual_seed(5)))
    plain = TrainAugment(size=32, randaugment=RandAugment(p=0.0), color_jitter=0.0)
    erasing = TrainAugment(size=32, randaugment=RandAugment(p=0.0), color_jitter=0.0, erase_prob=0.25)
    erased = sum(
        not torch.equal(erasing(img, torch.Generator().manual_seed(s)), plain(img, torch.Generator().manual_seed(s)))
        for s in range(200)
    )
    assert 30 <= erased <= 70  # binomial(200, 0.25): mean 50, sd 6


def test_config_keys_reach_the_augmentation_and_bad_specs_are_refused():
    required = ["output=out", "data.train=shards"]
    cfg = load_config("cocu_c3.yaml", [*required, "data.archive=run"])
    aug = make_augment(cfg, 32)
    assert aug.randaugment == RandAugment(n=2, m=9.0, mstd=0.5, p=0.5) and aug.erase_prob == 0.25
    assert make_augment(load_config(None, required), 32).randaugment is None
    with pytest.raises(ConfigError, match="data.augment.randaugment"):
        load_config(None, [*required, "data.augment.randaugment=rand-m9-inc0"])
    with pytest.raises(ConfigError, match="erase_prob"):
        load_config(None, [*required, "data.augment.erase_prob=1.5"])
