"""`cocu eval-cls`: zero-shot image classification accuracy (top-1 / top-5) on an image folder."""

from __future__ import annotations

import argparse
import sys

from cocu.evaluation.benchmarks import TEMPLATE_SETS, prompt_templates, read_classnames_file
from cocu.evaluation.cls_eval import evaluate_classification, open_image_folder
from cocu.evaluation.encoders import ZeroShotModel
from cocu.cli._args import positive_int
from cocu.models.bundle import load_bundle
from cocu.utils.atomic import atomic_write_json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval-cls",
        help="zero-shot classification accuracy on an image folder",
        description="Zero-shot classification with prompt-ensembled class embeddings. ROOT/<class>/<image>: "
        "ImageNet val with wnid folders, or folders named by their classes (optionally with classes.txt).",
    )
    p.add_argument("--model", required=True, help="GroupViT or CLIP model folder")
    p.add_argument("--root", required=True, help="image folder root (one sub-folder per class)")
    p.add_argument("--out", metavar="FILE", help="write the scores as JSON")
    p.add_argument("--classnames", metavar="FILE", help="class names, one a line, in sorted folder order")
    p.add_argument("--limit", type=positive_int, help="evaluate only N images (spread over the classes)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--device", default="auto", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--templates", choices=TEMPLATE_SETS, default="imagenet80", help="prompt templates")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        names = read_classnames_file(args.classnames) if args.classnames else None
        folder = open_image_folder(args.root, names)
        zs = ZeroShotModel(load_bundle(args.model), args.device)
        result = evaluate_classification(
            zs,
            folder,
            prompt_templates(args.templates),
            limit=args.limit,
            batch_size=args.batch_size,
            progress=not args.no_progress,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"cocu eval-cls: error: {err}", file=sys.stderr)
        return 2
    print(result.format())
    if args.out:
        atomic_write_json(args.out, {"model": str(args.model), **result.to_json()})
        print(f"wrote {args.out}")
    return 0
