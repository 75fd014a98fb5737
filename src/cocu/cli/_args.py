"""Argument types and option groups shared by the command modules (a private module: it registers no command)."""

from __future__ import annotations

import argparse

from cocu.evaluation.benchmarks import TEMPLATE_SETS
from cocu.evaluation.normalization import NORMALIZE_CHOICES


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def add_templates(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument(
        "--templates",
        choices=TEMPLATE_SETS,
        default=default,
        help=f"prompt templates (default {default}, the published protocol's): simple = 'a photo of a {{}}.', "
        "subset = GroupViT's 7 ImageNet templates, imagenet80 = CLIP's 80",
    )


def add_normalization(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--normalize",
        choices=NORMALIZE_CHOICES,
        default="auto",
        help="image mean/std: auto (default) = ImageNet's for the NVIDIA GroupViT hub checkpoints (trained with "
        "them), else the model folder's own; imagenet; clip; model (the folder's preprocessor_config.json)",
    )
    p.add_argument("--image-mean", type=float, nargs=3, metavar=("R", "G", "B"), help="explicit image mean (0..1)")
    p.add_argument("--image-std", type=float, nargs=3, metavar=("R", "G", "B"), help="explicit image std (0..1)")
