"""Packaged data: class-name lists (`classnames/`), prompt templates (`templates/`), benchmark defaults."""

CLASSNAME_SETS: tuple[str, ...] = (
    "voc",
    "context",
    "coco-object",
    "imagenet-s50",
    "imagenet-s300",
    "cityscapes",
    "ade20k",
    "coco-stuff",
    "imagenet",
)
"""The class-name files in `classnames/`: the eight segmentation benchmarks and ImageNet-1k."""
