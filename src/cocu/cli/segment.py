"""`cocu segment`: zero-shot segmentation of one image into the labels you name."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from cocu.data.transforms import exif_to_rgb
from cocu.evaluation.benchmarks import TEMPLATE_SETS, prompt_templates
from cocu.evaluation.dense_clip import SEG_METHODS, default_crop, load_seg_model
from cocu.evaluation.overlay import render_overlay
from cocu.evaluation.seg_eval import save_label_map
from cocu.evaluation.segmenter import segment_with_labels, user_protocol
from cocu.cli._args import positive_int
from cocu.utils.atomic import atomic_path


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
    p.add_argument("--templates", choices=TEMPLATE_SETS, default="imagenet80", help="prompt templates")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path(f"{Path(args.image).stem}_overlay.png")
    labels_path = out.with_name(f"{out.stem}_labels.png")
    try:
        labels = parse_labels(args.labels)
        try:
            with Image.open(args.image) as img:
                img.load()
                image = exif_to_rgb(img)
        except (OSError, UnidentifiedImageError) as err:
            raise ValueError(f"{args.image}: cannot read image ({err})") from err
        zs = load_seg_model(args.model, args.method, args.device)
        proto = user_protocol(zs.image_size, args.short_side, default_crop(zs, args.crop), args.stride, args.bg_thresh)
        label_map = segment_with_labels(zs, image, labels, proto, list(prompt_templates(args.templates)))
    except (FileNotFoundError, ValueError) as err:
        print(f"cocu segment: error: {err}", file=sys.stderr)
        return 2
    overlay = render_overlay(image, label_map, labels, background_name="background" if proto.with_background else None)
    with atomic_path(out) as tmp:
        overlay.save(tmp, format="PNG")
    save_label_map(label_map, labels_path)
    present = sorted(int(v) for v in set(label_map.ravel().tolist()))
    names = ["background", *labels]
    print(f"wrote {out} and {labels_path}: " + ", ".join(names[v] for v in present))
    return 0
