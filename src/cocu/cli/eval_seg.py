"""`cocu eval-seg`: zero-shot semantic segmentation mIoU of a GroupViT on a benchmark."""

from __future__ import annotations

import argparse
import sys

from cocu.cli._args import add_normalization, add_templates, positive_int
from cocu.data.skips import SkipCounter
from cocu.evaluation.benchmarks import SEG_TEMPLATES, benchmark_names, get_benchmark, prompt_templates
from cocu.evaluation.datasets import BenchmarkNotFoundError, open_dataset
from cocu.evaluation.dense_clip import SEG_METHODS, default_crop
from cocu.evaluation.encoders import ZeroShotModel
from cocu.evaluation.normalization import load_zero_shot
from cocu.evaluation.outputs import check_not_input, check_overwrite
from cocu.evaluation.seg_eval import SegEvalOptions, evaluate_segmentation
from cocu.utils.atomic import atomic_write_json

EXIT_NOT_FOUND = 3
"""Exit status when the benchmark's layout is not under --root (scripts tell "missing" from "failed")."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval-seg",
        help="zero-shot segmentation mIoU on a benchmark (GroupViT protocol)",
        description="Zero-shot semantic segmentation of a GroupViT model folder on a benchmark in its standard "
        "layout (see docs/benchmarks.md). Protocol defaults per benchmark (the published ones); each can be "
        f"overridden. Exit status {EXIT_NOT_FOUND}: the benchmark is not under --root.",
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
    p.add_argument("--force", action="store_true", help="allow replacing existing files that cocu did not write")
    p.add_argument("--short-side", type=positive_int, help="resize the short side to this many pixels")
    p.add_argument("--max-long-side", type=positive_int, help="cap the long side after resizing")
    p.add_argument("--crop", type=positive_int, help="sliding-window crop size")
    p.add_argument("--stride", type=positive_int, help="sliding-window stride")
    p.add_argument("--bg-thresh", type=float, help="background threshold (benchmarks with a background class)")
    p.add_argument(
        "--local-consistency",
        action="store_true",
        help="refine each window's class scores with PAMR before the background rule (the paper's LC rows)",
    )
    p.add_argument("--limit", type=positive_int, help="evaluate only the first N images")
    p.add_argument("--strict", action="store_true", help="stop at a label whose size differs from its image")
    p.add_argument("--device", default="auto", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--batch-size", type=positive_int, default=4, help="crops per forward pass (default 4)")
    add_templates(p, SEG_TEMPLATES)
    add_normalization(p)
    p.add_argument(
        "--diagnostics",
        action="store_true",
        help="also report miou_whole_image, miou_group_bound and groups_per_image",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=run)


def load_model(args: argparse.Namespace) -> ZeroShotModel:
    """The model to evaluate, with its image normalisation (said on stdout)."""
    zs, norm = load_zero_shot(args.model, args.device, args.normalize, args.image_mean, args.image_std, args.method)
    print(f"image normalisation: {norm.note}")
    return zs


def run(args: argparse.Namespace) -> int:
    try:
        spec = get_benchmark(args.dataset)
        skips = SkipCounter()
        dataset = open_dataset(spec, args.root, skips)
        if args.out:
            check_not_input(args.out, input_dirs=[dataset.root])
            check_overwrite(args.out, args.force)
        zs = load_model(args)
        proto = spec.protocol(
            zs.image_size,
            short_side=args.short_side,
            max_long_side=args.max_long_side,
            crop=default_crop(zs, args.crop),
            stride=args.stride,
            bg_thresh=args.bg_thresh,
            batch_size=args.batch_size,
            local_consistency=args.local_consistency,
        )
        options = SegEvalOptions(
            limit=args.limit,
            save_predictions=args.save_predictions,
            diagnostics=args.diagnostics,
            templates=prompt_templates(args.templates),
            progress=not args.no_progress,
            strict=args.strict,
            force=args.force,
        )
        result = evaluate_segmentation(zs, dataset, proto, options, skips)
    except BenchmarkNotFoundError as err:
        print(f"cocu eval-seg: not found: {err}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except (FileNotFoundError, ValueError) as err:
        print(f"cocu eval-seg: error: {err}", file=sys.stderr)
        return 2
    print(result.format())
    if args.out:
        atomic_write_json(args.out, {"model": str(args.model), "method": args.method, **result.to_json()})
        print(f"wrote {args.out}")
    return 0
