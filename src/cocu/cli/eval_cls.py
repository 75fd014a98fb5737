"""`cocu eval-cls`: zero-shot image classification accuracy (top-1 / top-5) on an image folder."""

from __future__ import annotations

import argparse
import sys

from cocu.cli._args import add_normalization, add_templates, positive_int
from cocu.evaluation.benchmarks import CLS_TEMPLATES, prompt_templates, read_classnames_file
from cocu.evaluation.cls_eval import evaluate_classification, open_image_folder
from cocu.evaluation.normalization import load_zero_shot
from cocu.evaluation.outputs import check_not_input, check_overwrite
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
    p.add_argument("--force", action="store_true", help="allow replacing an existing file that cocu did not write")
    p.add_argument("--classnames", metavar="FILE", help="class names, one a line, in sorted folder order")
    p.add_argument("--limit", type=positive_int, help="evaluate only N images (spread over the classes)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--device", default="auto", help="torch device (default: cuda if available, else cpu)")
    add_templates(p, CLS_TEMPLATES)
    add_normalization(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        names = read_classnames_file(args.classnames) if args.classnames else None
        folder = open_image_folder(args.root, names)
        if args.out:
            check_not_input(args.out, input_dirs=[args.root])
            check_overwrite(args.out, args.force)
        zs, norm = load_zero_shot(args.model, args.device, args.normalize, args.image_mean, args.image_std)
        print(f"image normalisation: {norm.note}")
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
