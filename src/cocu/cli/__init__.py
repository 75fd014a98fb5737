"""The `cocu` command line: one sub-command per module of this package.

Every public module in `cocu.cli` (private helpers start with ``_``) defines ``register(subparsers)``, which adds its
parser and sets ``func`` to a callable taking the parsed namespace and returning an exit code.
Library code never sees argparse.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import Sequence


def command_modules() -> list[str]:
    """Module names in `cocu.cli`; the command is the name with dashes (`eval_seg` -> `eval-seg`)."""
    package = importlib.import_module(__name__)
    return sorted(info.name for info in pkgutil.iter_modules(package.__path__) if not info.name.startswith("_"))


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or one holding just the module ``only`` (so a command imports only what it needs)."""
    parser = argparse.ArgumentParser(
        prog="cocu",
        description="Concept Curation (CoCu) for language-supervised semantic segmentation.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in command_modules() if only is None else [only]:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    first = args_list[0].replace("-", "_") if args_list else None
    parser = build_parser(only=first if first in command_modules() else None)
    args = parser.parse_args(args_list)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
