"""`cocu eval-seg`: zero-shot semantic segmentation mIoU of a GroupViT on a benchmark."""

from __future__ import annotations

import argparse
import sys

from cocu.data.skips import SkipCounter
from cocu.evaluation.benchmarks import TEMPLATE_SETS, benchmark_names, get_benchmark, prompt_templates
from cocu.evaluation.datasets import open_dataset
from cocu.evaluation.dense_clip import SEG_METHODS, default_crop, load_seg_model
from cocu.evaluation.seg_eval import SegEvalOptions, evaluate_segmentation
from cocu.cli._args import positive_int
from cocu.utils.atomic import atomic_write_json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval-seg",
        help="zero-shot segmentation mIoU on a benchmark (GroupViT protocol)",
        description="Zero-shot semantic segmentation of a GroupViT model folder on a benchmark in its standard "
        "layout (see docs/benchmarks.md). Protocol defaults per benchmark; each can be overridden.",
    )
    p.add_argument("--model", required=True, help="GroupViT model folder (ours or a transformers checkpoint)")
    p.add_argument(
        "--method",
        choices=SEG_METHODS,
        default="groupvit",
        help="groupvit (default), or a training-free dense read of a CLIP folder (crop default: its input size)",
    )
    p.add_argument("--dataset", required=True, choices=benchmark_names(), help="benchmark name")
    p.add_argument("--root", required=True, help="data set root (its standard layout, or a folder above it)")
    p.add_argument("--save-predictions", metavar="DIR", help="write each predicted label map as DIR/<image>.png")
    p.add_argument("--out", metavar="FILE", help="write the scores as JSON")
    p.add_argument("--short-side", type=positive_int, help="resize the short side to this many pixels")
    p.add_argument("--max-long-side", type=positive_int, help="cap the long side after resizing")
    p.add_argument("--crop", type=positive_int, help="sliding-window crop size")
    p.add_argument("--stride", type=positive_int, help="sliding-window stride")
    p.add_argument("--bg-thresh", type=float, help="background threshold (benchmarks with a background class)")
    p.add_argument("--limit", type=positive_int, help="evaluate only the first N images")
    p.add_argument("--device", default="auto", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--batch-size", type=positive_int, default=4, help="crops per forward pass (default 4)")
    p.add_argument(
        "--templates",
        choices=TEMPLATE_SETS,
        default="imagenet80",
        help="prompt templates: the protocol's 80 (default) or a single one (quick checks)",
    )
    p.add_argument(
        "--diagnostics",
        action="store_true",
        help="also report miou_whole_image, miou_group_bound and groups_per_image",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        spec = get_benchmark(args.dataset)
        skips = SkipCounter()
        dataset = open_dataset(spec, args.root, skips)
        zs = load_seg_model(args.model, args.method, args.device)
        proto = spec.protocol(
            zs.image_size,
            short_side=args.short_side,
            max_long_side=args.max_long_side,
            crop=default_crop(zs, args.crop),
            stride=args.stride,
            bg_thresh=args.bg_thresh,
            batch_size=args.batch_size,
        )
        options = SegEvalOptions(
            limit=args.limit,
            save_predictions=args.save_predictions,
            diagnostics=args.diagnostics,
            templates=prompt_templates(args.templates),
            progress=not args.no_progress,
        )
        result = evaluate_segmentation(zs, dataset, proto, options, skips)
    except (FileNotFoundError, ValueError) as err:
        print(f"cocu eval-seg: error: {err}", file=sys.stderr)
        return 2
    print(result.format())
    if args.out:
        atomic_write_json(args.out, {"model": str(args.model), "method": args.method, **result.to_json()})
        print(f"wrote {args.out}")
    return 0
