"""``cocu train CONFIG.yaml [key=value ...]``: pre-train GroupViT or CLIP (see ``cocu.train.trainer``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import yaml

from cocu.train.config import ConfigError, config_to_dict, load_config, valid_keys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="pre-train GroupViT (or a small CLIP) with curated concepts",
        description=(
            "Train from a YAML config with optional dotted overrides, e.g. "
            "`cocu train configs/train/cocu_c3.yaml data.train=/data/c3-{00000..00275}.tar output=runs/c3`. "
            "Under torchrun each process runs this command (data-parallel): "
            "`torchrun --nproc_per_node 4 -m cocu train CONFIG.yaml ...`. Options go before CONFIG."
        ),
    )
    parser.add_argument("config", nargs="?", help="YAML config file (configs/train/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (dotted keys)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--list-keys", action="store_true", help="list every valid config key and exit")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.list_keys:
        print("\n".join(valid_keys()))
        return 0
    if args.config is None:
        example = "configs/train/groupvit_tiny_synth_cocu.yaml"
        print(f"cocu train: a config file is required (e.g. {example})", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as err:
        print(f"cocu train: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from cocu.train.trainer import TrainingDiverged, train
    from cocu.utils.lock import FolderLocked

    try:
        result = train(cfg)
    except TrainingDiverged as err:
        print(f"cocu train: {err}", file=sys.stderr)
        return 1
    except (FileNotFoundError, FileExistsError, ValueError, FolderLocked) as err:
        print(f"cocu train: {err}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary line
        print(json.dumps(result.to_json()))
    return 0
