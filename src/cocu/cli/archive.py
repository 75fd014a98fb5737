"""`cocu archive RUN [options]`: the archive stage alone, on RUN/emb, RUN/vocab and RUN/index made by the
stage commands (`cocu embed`, `cocu vocab`, `cocu index`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from cocu.cli.curate import add_method_arguments, config_from_args, format_summary
from cocu.curation.pipeline import curate_archive
from cocu.curation.runstate import RunMismatchError
from cocu.utils.lock import FolderLocked
from cocu.utils.outputs import output_error


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "archive",
        help="curate the concept archive of a run folder whose emb/, vocab/ and index/ already exist",
        description=(
            "Expand, rank and cluster the concepts of every sample of RUN/emb using RUN/index and RUN/vocab, "
            "writing RUN/curation/archive-*.parquet and RUN/summary.json (finished parts are kept)."
        ),
    )
    p.add_argument("run", help="run folder holding emb/ (cocu embed), vocab/ (cocu vocab), index/ (cocu index)")
    add_method_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        summary = curate_archive(args.run, config_from_args(args))
    except (RunMismatchError, ValueError, FileNotFoundError, FolderLocked) as err:
        print(f"cocu archive: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # disk full, read-only folder: one line, what and where
        message = output_error(err, err.filename or args.run, Path(args.run))
        print(f"cocu archive: error: {message}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") == "0":  # data-parallel runs: rank 0 reports
        print(format_summary(summary))
        print(f"wrote {args.run}/curation/ and {args.run}/summary.json")
    return 0
