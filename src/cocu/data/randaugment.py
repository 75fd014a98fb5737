"""RandAugment and random erasing, the rest of GroupViT's training augmentation, without torchvision or timm.

RandAugment (Cubuk et al. 2020) in the form GroupViT trained with (timm's ``rand-m9-mstd0.5-inc1``): each
image gets ``n`` operations drawn uniformly from :data:`OPS`, each applied with probability ``p`` at a
magnitude drawn from a normal of mean ``m`` and std ``mstd`` clipped to ``[0, 10]``. The "increasing"
operation set is used, where a larger magnitude always means a stronger change (posterize keeps fewer
bits, solarize uses a lower threshold, enhancements move further from 1 in a random direction).
Geometric operations fill uncovered pixels with the ImageNet mean colour.

Random erasing (Zhong et al. 2020), applied to the normalised tensor: with probability ``p`` one
rectangle of 2-33 % of the area, aspect ratio in ``[0.3, 1 / 0.3]`` (log-uniform), is filled with
standard normal noise per pixel and channel.

All randomness comes from a ``torch.Generator`` so equal seeds give equal images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from PIL import Image, ImageEnhance, ImageOps

MAX_LEVEL = 10.0
FILL = (124, 116, 104)
"""ImageNet mean colour in 0-255, the fill of geometric operations."""


def _rand(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator))


def _signed(value: float, generator: torch.Generator | None) -> float:
    return value if _rand(generator) < 0.5 else -value


def _affine(img: Image.Image, matrix: tuple[float, ...]) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, matrix, Image.Resampling.BILINEAR, fillcolor=FILL)


def _shear_x(img, level, g):
    return _affine(img, (1, _signed(level / MAX_LEVEL * 0.3, g), 0, 0, 1, 0))


def _shear_y(img, level, g):
    return _affine(img, (1, 0, 0, _signed(level / MAX_LEVEL * 0.3, g), 1, 0))


def _translate_x(img, level, g):
    return _affine(img, (1, 0, _signed(level / MAX_LEVEL * 0.45, g) * img.width, 0, 1, 0))


def _translate_y(img, level, g):
    return _affine(img, (1, 0, 0, 0, 1, _signed(level / MAX_LEVEL * 0.45, g) * img.height))


def _rotate(img, level, g):
    return img.rotate(_signed(level / MAX_LEVEL * 30.0, g), Image.Resampling.BILINEAR, fillcolor=FILL)


def _enhancer(kind: type):
    def op(img, level, g):
        return kind(img).enhance(1.0 + _signed(level / MAX_LEVEL * 0.9, g))

    return op


def _posterize(img, level, g):
    bits = 4 - int(level / MAX_LEVEL * 4)
    return ImageOps.posterize(img, bits) if bits > 0 else Image.new("RGB", img.size)


def _solarize(img, level, g):
    return ImageOps.solarize(img, 256 - int(level / MAX_LEVEL * 256))


def _solarize_add(img, level, g):
    add = int(level / MAX_LEVEL * 110)
    lut = [min(255, v + add) if v < 128 else v for v in range(256)] * 3
    return img.point(lut)


OPS: dict[str, Callable[[Image.Image, float, torch.Generator | None], Image.Image]] = {
    "AutoContrast": lambda img, level, g: ImageOps.autocontrast(img),
    "Equalize": lambda img, level, g: ImageOps.equalize(img),
    "Invert": lambda img, level, g: ImageOps.invert(img),
    "Rotate": _rotate,
    "PosterizeIncreasing": _posterize,
    "SolarizeIncreasing": _solarize,
    "SolarizeAdd": _solarize_add,
    "ColorIncreasing": _enhancer(ImageEnhance.Color),
    "ContrastIncreasing": _enhancer(ImageEnhance.Contrast),
    "BrightnessIncreasing": _enhancer(ImageEnhance.Brightness),
    "SharpnessIncreasing": _enhancer(ImageEnhance.Sharpness),
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateXRel": _translate_x,
    "TranslateYRel": _translate_y,
}


@dataclass(frozen=True)
class RandAugment:
    """``n`` operations per image, each applied with probability ``p`` at magnitude ~ N(``m``, ``mstd``)."""

    n: int = 2
    m: float = 9.0
    mstd: float = 0.5
    p: float = 0.5

    def __post_init__(self) -> None:
        if self.n < 0 or not 0.0 <= self.m <= MAX_LEVEL or self.mstd < 0 or not 0.0 <= self.p <= 1.0:
            raise ValueError(f"RandAugment needs n >= 0, 0 <= m <= 10, mstd >= 0, 0 <= p <= 1; got {self}")

    @classmethod
    def from_spec(cls, spec: str) -> RandAugment:
        """Parse timm's notation, e.g. ``rand-m9-mstd0.5-inc1`` (keys ``m``, ``n``, ``mstd``, ``p``; only the
        increasing operation set, ``inc1``, is implemented)."""
        parts = spec.split("-")
        if parts[0] != "rand":
            raise ValueError(f"RandAugment spec {spec!r} must start with 'rand-' (e.g. rand-m9-mstd0.5-inc1)")
        values: dict[str, float] = {}
        for part in parts[1:]:
            key = next((k for k in ("mstd", "inc", "m", "n", "p") if part.startswith(k)), None)
            try:
                value = float(part[len(key):]) if key else None
            except ValueError:
                value = None
            if key is None or value is None:
                raise ValueError(f"RandAugment spec {spec!r}: cannot read {part!r} (known: m, n, mstd, p, inc)")
            values[key] = value
        if values.pop("inc", 1.0) != 1.0:
            raise ValueError(f"RandAugment spec {spec!r}: only the increasing operation set (inc1) is implemented")
        return cls(n=int(values.get("n", 2)), m=values.get("m", 9.0), mstd=values.get("mstd", 0.5),
                   p=values.get("p", 0.5))

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        names = list(OPS)
        for _ in range(self.n):
            name = names[int(torch.randint(len(names), (), generator=generator))]
            if _rand(generator) >= self.p:
                continue
            level = self.m + self.mstd * float(torch.randn((), generator=generator)) if self.mstd > 0 else self.m
            img = OPS[name](img, min(MAX_LEVEL, max(0.0, level)), generator)
        return img


def random_erase(x: torch.Tensor, prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """With probability ``prob``, fill one random rectangle of ``x [C, H, W]`` (normalised) with N(0, 1)
    noise (a copy; ``x`` is not changed). Ten tries to fit a rectangle; none fitting leaves ``x`` as is."""
    if prob <= 0 or _rand(generator) >= prob:
        return x
    _, height, width = x.shape
    for _ in range(10):
        area = height * width * (0.02 + _rand(generator) * (1 / 3 - 0.02))
        aspect = math.exp(math.log(0.3) + _rand(generator) * (math.log(1 / 0.3) - math.log(0.3)))
        h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
        if 0 < h < height and 0 < w < width:
            top = int(torch.randint(height - h + 1, (), generator=generator))
            left = int(torch.randint(width - w + 1, (), generator=generator))
            out = x.clone()
            out[:, top : top + h, left : left + w] = torch.randn((x.shape[0], h, w), generator=generator, dtype=x.dtype)
            return out
    return x
