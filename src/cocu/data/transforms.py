"""Image transforms with PIL, numpy and torch only (no torchvision).

- :func:`exif_to_rgb` / :func:`to_rgb`: bring any decoded image to an upright RGB image.
- :func:`resize_short_side`, :func:`center_crop`, :func:`to_tensor`: the evaluation-side pieces.
- :class:`Preprocess`: resize short side, centre crop, normalise (CLIP-style evaluation preprocessing).
- :class:`TrainAugment`: random resized crop, horizontal flip and colour jitter, drawn from a
  ``torch.Generator`` passed per call so that a run is reproducible from its seed. The random draws follow
  torchvision's ``RandomResizedCrop``/``RandomHorizontalFlip``/``ColorJitter`` algorithms.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from cocu.data.randaugment import RandAugment, random_erase

logger = logging.getLogger(__name__)

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "clip": (CLIP_MEAN, CLIP_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}
"""Named (mean, std) pairs: CLIP's, and ImageNet's (what GroupViT and CoCu train and evaluate with)."""

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WIDE_INT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def _resample(name: str) -> Image.Resampling:
    try:
        return _RESAMPLE[name]
    except KeyError:
        raise ValueError(f"unknown interpolation {name!r}; expected one of {sorted(_RESAMPLE)}") from None


def _composite_on_white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB.

    Alpha (RGBA, LA, PA, and P with a transparency entry) is composited on white; 16-bit and 32-bit integer
    greyscale (``I;16*``, ``I``) is scaled from 0..65535 to 0..255 (``I`` values that already fit in
    0..255 are kept); float greyscale (``F``) is clipped to 0..255; other modes (L, 1, P, CMYK, YCbCr, ...)
    use PIL's conversion. An RGB image is returned as is.
    """
    if img.mode == "RGB":
        return img
    if img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
        return _composite_on_white(img)
    if img.mode in _WIDE_INT_MODES or img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)  # [H,W]
        if img.mode == "F":
            arr = np.clip(arr, 0.0, 255.0)
        elif img.mode != "I" or arr.max(initial=0.0) > 255.0:
            arr = np.clip(arr, 0.0, 65535.0) / 257.0
        grey = np.rint(arr).astype(np.uint8)
        return Image.fromarray(np.stack([grey, grey, grey], axis=-1), mode="RGB")
    return img.convert("RGB")


def exif_to_rgb(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (``ImageOps.exif_transpose``) and convert to RGB (:func:`to_rgb`).

    An unreadable EXIF block is logged and the image is used as stored.
    """
    try:
        upright = ImageOps.exif_transpose(img)
    except Exception as exc:  # malformed EXIF must not cost the image
        logger.warning("ignoring unreadable EXIF orientation: %s", exc)
        upright = img
    return to_rgb(upright if upright is not None else img)


def resize_short_side(img: Image.Image, size: int, interpolation: str = "bicubic") -> Image.Image:
    """Resize keeping the aspect ratio so that the shorter side is ``size`` (long side truncated as torchvision)."""
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    w, h = img.size
    if min(w, h) == size:
        return img
    if w <= h:
        new_w, new_h = size, max(1, int(size * h / w))
    else:
        new_w, new_h = max(1, int(size * w / h)), size
    return img.resize((new_w, new_h), _resample(interpolation))


def center_crop(img: Image.Image, size: int | tuple[int, int]) -> Image.Image:
    """Crop the central ``size`` (int or ``(height, width)``) region; a smaller image is padded with black."""
    th, tw = (size, size) if isinstance(size, int) else size
    w, h = img.size
    top = int(round((h - th) / 2.0))
    left = int(round((w - tw) / 2.0))
    return img.crop((left, top, left + tw, top + th))


def _to_unit_tensor(img: Image.Image) -> torch.Tensor:
    if img.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {img.mode!r} (use exif_to_rgb or to_rgb first)")
    arr = np.asarray(img, dtype=np.uint8)  # [H,W,3]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)  # [3,H,W] in [0,1]


def _normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - m) / s  # [3,H,W]


def to_tensor(
    img: Image.Image, mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD
) -> torch.Tensor:
    """RGB PIL image -> float32 tensor ``[3,H,W]`` equal to ``(pixel / 255 - mean) / std`` per channel."""
    return _normalize(_to_unit_tensor(img), mean, std)


@dataclass
class Preprocess:
    """Evaluation preprocessing: short side to ``size``, centre crop ``size`` (if ``crop``), normalise.

    Callable ``PIL.Image -> FloatTensor [3,size,size]`` (``[3,H,W]`` with short side ``size`` if not ``crop``).
    Any mode is accepted (converted with :func:`to_rgb`).
    """

    size: int
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    crop: bool = True
    interpolation: str = "bicubic"

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = resize_short_side(to_rgb(img), self.size, self.interpolation)
        if self.crop:
            img = center_crop(img, self.size)
        return to_tensor(img, self.mean, self.std)


def _uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    return float(torch.empty(1).uniform_(lo, hi, generator=generator).item())


def _randint(high: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(0, high, (1,), generator=generator).item())


def random_resized_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None,
) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params``: returns ``(top, left, h, w)``.

    Ten tries of an area fraction uniform in ``scale`` and a log-uniform aspect ratio in ``ratio``; if none
    fits, the largest centred crop with the ratio clamped to ``ratio``.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * _uniform(scale[0], scale[1], generator)
        aspect = math.exp(_uniform(log_lo, log_hi, generator))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = _randint(height - h + 1, generator)
            left = _randint(width - w + 1, generator)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).unsqueeze(0)  # [1,H,W]


def _blend(x: torch.Tensor, other: torch.Tensor, factor: float) -> torch.Tensor:
    return (factor * x + (1.0 - factor) * other).clamp_(0.0, 1.0)  # [3,H,W]


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x[0], x[1], x[2]
    maxc, _ = x.max(dim=0)
    minc, _ = x.min(dim=0)
    delta = maxc - minc
    safe_max = torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    sat = delta / safe_max
    safe_delta = torch.where(delta == 0, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) / safe_delta, (maxc - g) / safe_delta, (maxc - b) / safe_delta
    hue = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(delta == 0, torch.zeros_like(hue), (hue / 6.0) % 1.0)
    return torch.stack([hue, sat, maxc])  # [3,H,W]


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x[0], x[1], x[2]
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p, q, t = v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f))
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = torch.zeros_like(x)
    for k, (rr, gg, bb) in enumerate(choices):
        mask = i == k
        out[0] = torch.where(mask, rr, out[0])
        out[1] = torch.where(mask, gg, out[1])
        out[2] = torch.where(mask, bb, out[2])
    return out  # [3,H,W]


def _adjust_hue(x: torch.Tensor, shift: float) -> torch.Tensor:
    hsv = _rgb_to_hsv(x)
    hsv[0] = (hsv[0] + shift) % 1.0
    return _hsv_to_rgb(hsv).clamp_(0.0, 1.0)


def color_jitter(
    x: torch.Tensor,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """torchvision-style ``ColorJitter`` on a ``[3,H,W]`` tensor in [0,1], random order of the four ops.

    Factors are uniform in ``[max(0, 1-b), 1+b]`` (``[-hue, hue]`` for the hue shift); a zero strength
    leaves that op out (its factor is still drawn, so the random stream does not depend on the settings).
    """
    order = torch.randperm(4, generator=generator).tolist()
    b = _uniform(max(0.0, 1.0 - brightness), 1.0 + brightness, generator)
    c = _uniform(max(0.0, 1.0 - contrast), 1.0 + contrast, generator)
    s = _uniform(max(0.0, 1.0 - saturation), 1.0 + saturation, generator)
    h = _uniform(-hue, hue, generator)
    for op in order:
        if op == 0 and brightness > 0:
            x = _blend(x, torch.zeros_like(x), b)
        elif op == 1 and contrast > 0:
            x = _blend(x, _grayscale(x).mean().expand_as(x), c)
        elif op == 2 and saturation > 0:
            x = _blend(x, _grayscale(x).expand_as(x), s)
        elif op == 3 and hue > 0:
            x = _adjust_hue(x, h)
    return x  # [3,H,W]


@dataclass
class TrainAugment:
    """Training augmentation: random resized crop to ``size``, horizontal flip, then RandAugment if given or
    else colour jitter, normalise, then random erasing with probability ``erase_prob``.

    Call as ``aug(img, generator) -> FloatTensor [3,size,size]``; all randomness comes from ``generator``
    (a ``torch.Generator``; ``None`` uses torch's global generator), so equal seeds give equal tensors.
    ``color_jitter`` is the brightness/contrast/saturation strength, ``hue`` the hue strength (0 = off).
    With ``randaugment`` (:class:`cocu.data.randaugment.RandAugment`) colour jitter is skipped, as the
    timm pipeline GroupViT trained with did (RandAugment holds its own colour operations).
    """

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip: bool = True
    color_jitter: float = 0.4
    hue: float = 0.0
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    interpolation: str = "bicubic"
    randaugment: RandAugment | None = None
    erase_prob: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.erase_prob <= 1.0:
            raise ValueError(f"erase_prob must be in [0, 1], got {self.erase_prob}")
        if not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")
        if not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < lo <= hi, got {self.ratio}")
        if self.color_jitter < 0 or not 0.0 <= self.hue <= 0.5:
            raise ValueError("color_jitter must be >= 0 and hue in [0, 0.5]")
        _resample(self.interpolation)

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        img = to_rgb(img)
        top, left, h, w = random_resized_crop_box(img.width, img.height, self.scale, self.ratio, generator)
        img = img.resize(
            (self.size, self.size), _resample(self.interpolation), box=(left, top, left + w, top + h)
        )
        if self.flip and _uniform(0.0, 1.0, generator) < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.randaugment is not None:
            img = self.randaugment(img, generator)
        x = _to_unit_tensor(img)  # [3,size,size] in [0,1]
        if self.randaugment is None and (self.color_jitter > 0 or self.hue > 0):
            x = color_jitter(x, self.color_jitter, self.color_jitter, self.color_jitter, self.hue, generator)
        return random_erase(_normalize(x, self.mean, self.std), self.erase_prob, generator)  # [3,size,size]
