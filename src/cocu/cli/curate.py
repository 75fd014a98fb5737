"""`cocu curate DATA --encoder ENC --out RUN [options]`: every curation stage, cached and resumable."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from cocu.cli.embed import add_runtime_arguments
from cocu.curation.engine import METRIC_SETS
from cocu.curation.expand import EXPANSIONS
from cocu.curation.index import KINDS
from cocu.curation.pipeline import CurateConfig, curate
from cocu.curation.rank import RANKINGS
from cocu.curation.runstate import RunMismatchError
from cocu.utils.lock import FolderLocked
from cocu.utils.outputs import output_error
from cocu.curation.sampling import SAMPLINGS


DEFAULTS = CurateConfig()
"""The one source of the curation defaults (``CurateConfig``, whose method fields come from ``CurationParams``)."""


def add_method_arguments(p: argparse.ArgumentParser) -> None:
    """The curation-method and archive options shared by `cocu curate` and `cocu archive`."""
    g = p.add_argument_group("method (defaults = full CoCu)")
    g.add_argument("--expansion", choices=EXPANSIONS, default=DEFAULTS.expansion,
                   help="vision: image-to-image kNN (CoCu); lang: image-to-caption kNN (caption curation)")
    g.add_argument("--neighbors", type=int, default=DEFAULTS.neighbors,
                   help=f"retrieved neighbours N, self excluded (default {DEFAULTS.neighbors})")
    g.add_argument("--ranking", choices=RANKINGS, default=DEFAULTS.ranking,
                   help="t2v: s_a/m + s_b (authors' normalisation); t2v-paper: s_a + s_b (eq. 8); naive: s_a")
    g.add_argument("--sampling", choices=SAMPLINGS, default=DEFAULTS.sampling,
                   help="cluster: k-means into min(L, M) clusters, one draw each; naive: the top-L")
    g.add_argument("--labels", type=int, default=DEFAULTS.labels,
                   help=f"concepts per image per step L (default {DEFAULTS.labels})")
    g.add_argument("--tau", type=float, default=DEFAULTS.tau,
                   help=f"softmax temperature of the in-cluster draw (default {DEFAULTS.tau})")
    g.add_argument("--kmeans-iters", type=int, default=DEFAULTS.kmeans_iters,
                   help=f"Lloyd iterations of the clustering (default {DEFAULTS.kmeans_iters})")
    g.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of the index training and the sampled metrics")
    g.add_argument("--chunk-size", type=int, default=DEFAULTS.chunk_size,
                   help=f"anchors per archive part (default {DEFAULTS.chunk_size})")
    g.add_argument("--threads", type=int, help="faiss threads (default: faiss' own setting)")
    g.add_argument("--overwrite", action="store_true",
                   help="reuse an output folder made with other options: redo the stages the change affects")


def config_from_args(args: argparse.Namespace, **extra: Any) -> CurateConfig:
    fields = ("expansion", "neighbors", "ranking", "sampling", "labels", "tau", "kmeans_iters", "seed",
              "chunk_size", "threads", "overwrite")
    return CurateConfig(**{name: getattr(args, name) for name in fields}, **extra)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "curate",
        help="curate the concepts of image-caption data (embed, vocab, index, archive; cached and resumable)",
        description=(
            "Embed DATA with the frozen CLIP ENC, build the concept vocabulary and the kNN index, then write "
            "one archive row per sample to RUN/curation/archive-*.parquet: its caption concepts, retrieved "
            "neighbours and the ranked, clustered concept archive. Each stage is cached in RUN and resumed "
            "after an interruption. Prints and writes RUN/summary.json."
        ),
    )
    p.add_argument("data", help="webdataset shards (brace pattern, folder of .tar, one .tar) or a captions file")
    p.add_argument("--encoder", required=True,
                   help="frozen CLIP: hub name in the local cache, local folder, or random:clip-tiny (tests)")
    p.add_argument("--out", required=True, help="run folder RUN")
    add_method_arguments(p)
    g = p.add_argument_group("stages")
    g.add_argument("--vocab", help="vocabulary file (one concept a line, `name: alias, ...`; default: built-in)")
    g.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size,
                   help=f"embedding batch size (default {DEFAULTS.batch_size})")
    g.add_argument("--rows-per-part", type=int, default=DEFAULTS.rows_per_part,
                   help=f"rows per embedding part (default {DEFAULTS.rows_per_part})")
    add_runtime_arguments(g)
    g.add_argument("--index-kind", choices=KINDS, default=DEFAULTS.index_kind,
                   help=f"index kind (default {DEFAULTS.index_kind})")
    g.add_argument("--exact-max", type=int, default=DEFAULTS.exact_max,
                   help=f"auto index: exact search up to this many images (default {DEFAULTS.exact_max})")
    g.add_argument("--max-memory", type=float,
                   help="GB the index may take; it is sized to fit or refused (default: half of the RAM)")
    g.add_argument("--write-shards", action="store_true",
                   help="also write the input shards again with a {key}.concepts.json member into RUN/shards/")
    g.add_argument("--samples-per-shard", type=int, default=DEFAULTS.samples_per_shard,
                   help=f"with --write-shards (default {DEFAULTS.samples_per_shard})")
    p.set_defaults(func=run)


def _number(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a readable table: counts, archive sizes, recall/precision, rejected counts."""
    lines = [
        f"{'samples in':<24}{summary['samples_in']:>10}",
        f"{'samples written':<24}{summary['samples_written']:>10}",
        f"{'mean caption concepts':<24}{summary['mean_caption_concepts']:>10.2f}",
        f"{'mean archive size':<24}{summary['mean_archive_size']:>10.2f}",
    ]
    if summary.get("truth_samples"):
        lines.append(f"\nagainst the true concepts of {summary['truth_samples']} samples (micro-average):")
        lines.append(f"{'concepts':<12}{'recall':>10}{'precision':>11}")
        for name in METRIC_SETS:
            label = "top-L" if name == "topL" else name
            recall, precision = summary.get(f"{name}_recall"), summary.get(f"{name}_precision")
            lines.append(f"{label:<12}{_number(recall):>10}{_number(precision):>11}")
    rejected = summary.get("rejected", {})
    lines.append("\nrejected samples:")
    width = max([len(r) for r in rejected] + [5])
    lines.extend(f"  {reason:<{width}}  {count:>8}" for reason, count in rejected.items())
    lines.append(f"  {'total':<{width}}  {sum(rejected.values()):>8}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        cfg = config_from_args(
            args,
            vocab=args.vocab,
            batch_size=args.batch_size,
            rows_per_part=args.rows_per_part,
            device=args.device,
            precision=args.precision,
            workers=args.workers,
            index_kind=args.index_kind,
            exact_max=args.exact_max,
            max_memory=args.max_memory,
            write_shards=args.write_shards,
            samples_per_shard=args.samples_per_shard,
        )
        summary = curate(args.data, args.encoder, args.out, cfg)
    except (RunMismatchError, ValueError, FileNotFoundError, FolderLocked) as err:
        print(f"cocu curate: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # disk full, read-only folder: one line, what and where
        message = output_error(err, err.filename or args.out, Path(args.out))
        print(f"cocu curate: error: {message}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") == "0":  # data-parallel runs: rank 0 reports
        print(format_summary(summary))
        print(f"wrote {args.out}/curation/ and {args.out}/summary.json")
    return 0
