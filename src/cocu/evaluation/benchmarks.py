"""Benchmark specs as data: class names (`resources/classnames/*.txt`) and protocol defaults
(`resources/benchmarks.json`), plus the ImageNet-1k class list for zero-shot classification.

Class-name files hold foreground classes only, one a line, in each benchmark's label-index order;
a benchmark with a background class (VOC, Context, COCO-Object, ImageNet-S) has it at label 0, so its
foreground class ``i`` (0-based line number) is label ``i + 1``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

from cocu.resources import CLASSNAME_SETS
from cocu.text.prompts import SIMPLE_TEMPLATE, imagenet_templates, subset_templates

BACKGROUND = "background"


@dataclass(frozen=True)
class Protocol:
    """The numbers of one zero-shot segmentation run.

    ``short_side``/``max_long_side``: keep-ratio resize to short side ``short_side`` unless the long side
    would exceed ``max_long_side`` (None = no cap); ``crop``/``stride``: sliding window; ``bg_thresh``:
    None = no background class; ``top_k``: classes kept by whole-image similarity; ``batch_size``: crops
    per forward pass; ``local_consistency``: refine each window's class scores with PAMR
    (:mod:`cocu.evaluation.refine`) before the background rule.
    """

    short_side: int
    crop: int
    stride: int
    bg_thresh: float | None = None
    max_long_side: int | None = None
    top_k: int = 5
    batch_size: int = 4
    local_consistency: bool = False

    def __post_init__(self) -> None:
        for name in ("short_side", "crop", "stride", "top_k", "batch_size"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"protocol {name} must be positive, got {getattr(self, name)}")
        if self.stride > self.crop:
            raise ValueError(f"stride {self.stride} is larger than crop {self.crop}: windows would leave gaps")
        if self.max_long_side is not None and self.max_long_side < self.short_side:
            raise ValueError(f"max_long_side {self.max_long_side} is smaller than short_side {self.short_side}")
        if self.bg_thresh is not None and not 0.0 <= self.bg_thresh <= 1.0:
            raise ValueError(f"bg_thresh must be in [0, 1], got {self.bg_thresh}")

    @property
    def with_background(self) -> bool:
        return self.bg_thresh is not None

    def as_dict(self) -> dict:
        return {
            "short_side": self.short_side,
            "max_long_side": self.max_long_side,
            "crop": self.crop,
            "stride": self.stride,
            "bg_thresh": self.bg_thresh,
            "top_k": self.top_k,
            "local_consistency": self.local_consistency,
        }


@dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark's layout and defaults, as read from ``benchmarks.json``.

    ``label_suffixes`` maps a label-file suffix to the name of its label decoding (tried in order);
    protocol fields are None where they depend on the model (the ``folder`` benchmark).
    """

    name: str
    title: str
    classnames: str | None
    layout: str
    roots: tuple[str, ...]
    images: str
    image_ext: str
    labels: str
    label_suffixes: tuple[tuple[str, str], ...]
    split: str | None
    short_side: int | None
    max_long_side: int | None
    crop: int | None
    stride: int | None
    bg_thresh: float | None

    @property
    def with_background(self) -> bool:
        return self.bg_thresh is not None

    def protocol(self, model_image_size: int, **overrides) -> Protocol:
        """Defaults filled in for a model (``folder``: short side = crop = image size, stride = crop / 2),
        then any non-None override applied (``bg_thresh`` is only accepted with a background class; a
        new ``crop`` without a new ``stride`` gets stride = crop / 2)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        if "bg_thresh" in given and not self.with_background:
            raise ValueError(f"{self.name} has no background class, so --bg-thresh does not apply")
        crop = given.pop("crop", None) or self.crop or model_image_size
        if "stride" in given:
            stride = given.pop("stride")
        elif self.stride is not None and crop == self.crop:
            stride = self.stride
        else:
            stride = max(1, crop // 2)
        values = {
            "short_side": self.short_side or model_image_size,
            "bg_thresh": self.bg_thresh,
            "max_long_side": self.max_long_side,
            **given,
        }
        return Protocol(crop=crop, stride=stride, **values)


@functools.lru_cache(maxsize=None)
def _benchmarks_raw() -> dict:
    text = resources.files("cocu.resources").joinpath("benchmarks.json").read_text("utf-8")
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def benchmark_names() -> list[str]:
    return list(_benchmarks_raw())


def get_benchmark(name: str) -> BenchmarkSpec:
    raw = _benchmarks_raw()
    if name not in raw:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(raw)}")
    r = dict(raw[name])
    spec = BenchmarkSpec(
        name=name,
        title=r.pop("title"),
        classnames=r.pop("classnames"),
        layout=r.pop("layout"),
        roots=tuple(r.pop("roots")),
        images=r.pop("images"),
        image_ext=r.pop("image_ext"),
        labels=r.pop("labels"),
        label_suffixes=tuple(r.pop("label_suffixes").items()),
        split=r.pop("split", None),
        short_side=r.pop("short_side"),
        max_long_side=r.pop("max_long_side"),
        crop=r.pop("crop"),
        stride=r.pop("stride"),
        bg_thresh=r.pop("bg_thresh"),
    )
    if r:
        raise ValueError(f"benchmarks.json: unknown keys for {name}: {sorted(r)}")
    return spec


def _parse_names(text: str, source: str) -> list[str]:
    names = [line.strip() for line in text.splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names:
        raise ValueError(f"{source}: no class names")
    empty = [i for i, n in enumerate(names) if not n]
    if empty:
        raise ValueError(f"{source}: empty class name on line {empty[0] + 1}")
    return names


@functools.lru_cache(maxsize=None)
def _packaged_classnames(name: str) -> tuple[str, ...]:
    text = resources.files("cocu.resources").joinpath(f"classnames/{name}.txt").read_text("utf-8")
    return tuple(_parse_names(text, f"classnames/{name}.txt"))


def load_classnames(name: str) -> list[str]:
    """Foreground class names of a packaged set (``voc`` ... ``imagenet``), in label-index order."""
    if name not in CLASSNAME_SETS:
        raise ValueError(f"unknown class-name set {name!r}; known: {', '.join(CLASSNAME_SETS)}")
    return list(_packaged_classnames(name))


def read_classnames_file(path: str | Path) -> list[str]:
    """A ``classes.txt``: one name a line, index = line number (trailing blank lines ignored)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: class list not found (expected one class name a line)")
    return _parse_names(p.read_text("utf-8"), str(p))


TEMPLATE_SETS = ("simple", "subset", "imagenet80")
SEG_TEMPLATES = "simple"
"""Default of segmentation: GroupViT's and CoCu's ``evaluate.seg.template: simple``."""
CLS_TEMPLATES = "subset"
"""Default of classification: their ``evaluate.cls.template: subset``."""


def prompt_templates(name: str) -> tuple[str, ...]:
    """``simple``: "a photo of a {}." only (the published segmentation protocol); ``subset``: the 7
    templates of the published ImageNet protocol; ``imagenet80``: CLIP's 80 ImageNet templates."""
    if name == "imagenet80":
        return imagenet_templates()
    if name == "subset":
        return subset_templates()
    if name == "simple":
        return (SIMPLE_TEMPLATE,)
    raise ValueError(f"unknown template set {name!r}; known: {', '.join(TEMPLATE_SETS)}")


def unique_keys(names: Sequence[str]) -> list[str]:
    """Names usable as JSON keys: a repeated name gets its index appended (CLIP's ImageNet list has two
    "missile" and two "sunglasses" entries)."""
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return [name if counts[name] == 1 else f"{name} #{i}" for i, name in enumerate(names)]
