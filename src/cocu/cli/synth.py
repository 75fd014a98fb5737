"""`cocu synth OUT`: generate the synthetic semantic-gap world (image-text shards, VOC val, classification set)."""

from __future__ import annotations

import argparse
import logging
import time

from cocu.synth.stats import SplitStats
from cocu.synth.world import WorldConfig, generate_world

logger = logging.getLogger(__name__)
_DEFAULTS = WorldConfig()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "synth",
        help="generate the synthetic semantic-gap world (captions that miss concepts, complete ground truth)",
        description=(
            "Write OUT/teacher/ and OUT/pretrain/ (webdataset shards: jpg, caption txt, json truth), OUT/val/ "
            "(Pascal VOC layout + classes.txt), OUT/classify/ (ImageNet folder layout), OUT/world.json "
            "(inventory, settings, statistics), OUT/vocab.txt and OUT/contact_sheet.png. The same settings "
            "give the same bytes."
        ),
    )
    p.add_argument("out", metavar="OUT", help="output folder (must be empty or hold a world, with --overwrite)")
    p.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="world seed (default %(default)s)")
    p.add_argument("--teacher", type=int, default=_DEFAULTS.teacher, help="teacher images (default %(default)s)")
    p.add_argument("--pretrain", type=int, default=_DEFAULTS.pretrain, help="pretrain images (default %(default)s)")
    p.add_argument("--val", type=int, default=_DEFAULTS.val, help="segmentation images (default %(default)s)")
    p.add_argument("--classify", type=int, default=_DEFAULTS.classify,
                   help="classification images per thing class (default %(default)s)")
    p.add_argument("--size", type=int, default=_DEFAULTS.size, help="image side in pixels (default %(default)s)")
    p.add_argument("--thing-scale", type=float, default=_DEFAULTS.thing_scale,
                   help="multiplies every thing's size (default %(default)s)")
    p.add_argument("--mention-scale", type=float, default=_DEFAULTS.mention_scale,
                   help="multiplies every caption mention probability, i.e. the caption recall (default %(default)s)")
    p.add_argument("--irrelevant-share", type=float, default=_DEFAULTS.irrelevant_share,
                   help="share of captions unrelated to their image (default %(default)s)")
    p.add_argument("--jpeg-quality", type=int, default=_DEFAULTS.jpeg_quality, help="JPEG quality (default %(default)s)")
    p.add_argument("--samples-per-shard", type=int, default=_DEFAULTS.samples_per_shard,
                   help="samples per webdataset shard (default %(default)s)")
    p.add_argument("--contact-sheet", type=int, default=_DEFAULTS.contact_sheet,
                   help="val images shown on contact_sheet.png (default %(default)s)")
    p.add_argument("--workers", type=int, default=_DEFAULTS.workers,
                   help="worker processes; changes speed, never the bytes (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace the world already in OUT")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = WorldConfig(
        seed=args.seed, size=args.size, teacher=args.teacher, pretrain=args.pretrain, val=args.val,
        classify=args.classify, thing_scale=args.thing_scale, mention_scale=args.mention_scale,
        irrelevant_share=args.irrelevant_share, jpeg_quality=args.jpeg_quality,
        samples_per_shard=args.samples_per_shard, contact_sheet=args.contact_sheet, workers=args.workers,
    )
    start = time.perf_counter()
    tables: dict[str, str] = {}

    def on_split(name: str, stats: SplitStats) -> None:
        tables[name] = stats.format_table()
        logger.info("%s: %d images written", name, stats.count)

    try:
        stats = generate_world(args.out, cfg, overwrite=args.overwrite, on_split=on_split)
    except (ValueError, FileExistsError, NotADirectoryError) as err:
        logger.error("%s", err)
        return 2
    elapsed = time.perf_counter() - start
    print(f"synthetic world in {args.out} ({elapsed:.1f} s)")
    print(f"{'split':<9} {'images':>6} {'recall':>7} {'irrel':>6} {'unique':>7} {'concepts':>8} {'named':>6} {'maxfreq':>7}")
    for split, s in stats.items():
        print(f"{split:<9} {s['count']:>6} {s['caption_recall']:>7.3f} {s['irrelevant_share']:>6.3f} "
              f"{s['unique_caption_share']:>7.3f} {s['mean_concepts_per_image']:>8.2f} {s['mean_caption_concepts']:>6.2f} "
              f"{s['max_concept_frequency']:>7.3f}")
    largest = max(stats, key=lambda k: stats[k]["count"])
    print(f"\nper concept ({largest}): frequency, mean pixel fraction when present, caption mention rate")
    print(tables[largest])
    for split in ("teacher", "pretrain"):
        if stats[split]["count"]:
            print(f"caption recall ({split}): {stats[split]['caption_recall']:.3f}")
    return 0
