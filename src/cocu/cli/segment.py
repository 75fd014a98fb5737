"""`cocu segment`: zero-shot segmentation of one image into the labels you name."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from cocu.cli._args import add_normalization, add_templates, positive_int
from cocu.data.transforms import exif_to_rgb
from cocu.evaluation.benchmarks import SEG_TEMPLATES, prompt_templates
from cocu.evaluation.dense_clip import SEG_METHODS, default_crop
from cocu.evaluation.encoders import ZeroShotModel
from cocu.evaluation.normalization import load_zero_shot
from cocu.evaluation.outputs import check_not_input, check_overwrite, png_info
from cocu.evaluation.overlay import render_overlay
from cocu.evaluation.seg_eval import save_label_map
from cocu.evaluation.segmenter import segment_with_labels, user_protocol
from cocu.utils.atomic import atomic_path

DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
"""Largest image (width x height) read without --max-pixels: PIL's decompression-bomb limit."""


def parse_labels(text: str) -> list[str]:
    labels = [part.strip() for part in text.split(",")]
    if not labels or any(not label for label in labels):
        raise ValueError(f"--labels must be a comma-separated list of non-empty names, got {text!r}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"--labels has repeated names: {text!r}")
    return labels


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "segment",
        help="segment one image into the labels you name",
        description="Zero-shot segmentation of IMAGE with a GroupViT: writes the image with a coloured mask and a "
        "legend, and the label map <out stem>_labels.png (0 = background, i = i-th label).",
    )
    p.add_argument("image", help="input image (any size and mode)")
    p.add_argument("--model", required=True, help="GroupViT model folder")
    p.add_argument(
        "--method",
        choices=SEG_METHODS,
        default="groupvit",
        help="groupvit (default), or a training-free dense read of a CLIP folder (crop default: its input size)",
    )
    p.add_argument("--labels", required=True, help='comma-separated class names, e.g. "sky,grass,dog"')
    p.add_argument("--out", help="overlay PNG to write (default: <image stem>_overlay.png here)")
    p.add_argument("--bg-thresh", type=float, help="pixels whose best score is below this become background")
    p.add_argument("--short-side", type=positive_int, help="resize the short side (default 2x model size)")
    p.add_argument("--crop", type=positive_int, help="sliding-window crop (default 2x model size)")
    p.add_argument("--stride", type=positive_int, help="sliding-window stride (default crop / 2)")
    p.add_argument("--device", default="auto", help="torch device (default: cuda if available, else cpu)")
    p.add_argument(
        "--local-consistency", action="store_true", help="refine the class scores with PAMR (local consistency)"
    )
    p.add_argument(
        "--max-pixels",
        type=positive_int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse images with more pixels than this (default {DEFAULT_MAX_PIXELS:,}: PIL's decompression-bomb limit)",
    )
    p.add_argument("--force", action="store_true", help="allow replacing existing files that cocu did not write")
    add_templates(p, SEG_TEMPLATES)
    add_normalization(p)
    p.set_defaults(func=run)


def read_image(path: str, max_pixels: int) -> Image.Image:
    """The upright RGB image; a clear error for an unreadable file or one above ``max_pixels``."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # the size is checked below, with a message naming --max-pixels
    try:
        with Image.open(path) as img:
            pixels = img.width * img.height
            if pixels > max_pixels:
                raise ValueError(
                    f"{path}: {img.width} x {img.height} = {pixels:,} pixels, above the limit of {max_pixels:,} "
                    f"(a guard against decompression bombs); raise it with --max-pixels {pixels} if you trust the file"
                )
            img.load()
            return exif_to_rgb(img)
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"{path}: cannot read image ({err})") from err
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def load_model(args: argparse.Namespace) -> ZeroShotModel:
    """The model to segment with, with its image normalisation (said on stdout)."""
    zs, norm = load_zero_shot(args.model, args.device, args.normalize, args.image_mean, args.image_std, args.method)
    print(f"image normalisation: {norm.note}")
    return zs


def run(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path(f"{Path(args.image).stem}_overlay.png")
    labels_path = out.with_name(f"{out.stem}_labels.png")
    try:
        labels = parse_labels(args.labels)
        for path in (out, labels_path):
            check_not_input(path, input_files=[args.image])
            check_overwrite(path, args.force)
        image = read_image(args.image, args.max_pixels)
        zs = load_model(args)
        proto = user_protocol(
            zs.image_size, args.short_side, default_crop(zs, args.crop), args.stride, args.bg_thresh,
            args.local_consistency,
        )
        label_map = segment_with_labels(zs, image, labels, proto, list(prompt_templates(args.templates)))
    except (FileNotFoundError, ValueError) as err:
        print(f"cocu segment: error: {err}", file=sys.stderr)
        return 2
    overlay = render_overlay(image, label_map, labels, background_name="background" if proto.with_background else None)
    with atomic_path(out) as tmp:
        overlay.save(tmp, format="PNG", pnginfo=png_info())
    save_label_map(label_map, labels_path)
    present = sorted(int(v) for v in set(label_map.ravel().tolist()))
    names = ["background", *labels]
    print(f"wrote {out} and {labels_path}: " + ", ".join(names[v] for v in present))
    return 0
