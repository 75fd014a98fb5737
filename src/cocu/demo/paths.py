"""Where the demo keeps each run inside ``DIR``: the names every other demo module shares.

A GroupViT run is named after its row, with ``-x<B>`` for a budget multiple ``B`` other than 1 and
``-seed<S>`` for a seed other than the first (``cocu``, ``cocu-seed1``, ``cocu-x2``, ``cocu-x4-seed2``).
Teachers other than the main CLIP are ``models/clip-t<STEPS>`` and curate into ``curation/t<STEPS>/<row>``.
The world's class list and class kinds are read here too, for every module that labels classes.
"""

from __future__ import annotations

import json
from pathlib import Path


def run_name(row_name: str, seed: int, base_seed: int, budget: int = 1) -> str:
    """``cocu`` for the base seed at budget 1, ``cocu-seed1`` for another seed, ``cocu-x2`` for budget 2."""
    name = row_name if budget == 1 else f"{row_name}-x{budget}"
    return name if seed == base_seed else f"{name}-seed{seed}"


def model_dir(out: Path, name: str) -> Path:
    return out / "models" / f"groupvit-{name}"


def eval_paths(out: Path, name: str) -> tuple[Path, Path]:
    """``eval/<name>.json`` and the folder of its val predictions."""
    return out / "eval" / f"{name}.json", out / "eval" / name


def teacher_dir(out: Path, steps: int | None) -> Path:
    """The main teacher CLIP (``steps`` None) or an extra one trained ``steps`` steps."""
    return out / "models" / ("clip" if steps is None else f"clip-t{steps}")


def curation_dir(out: Path, row_name: str, teacher_steps: int | None = None) -> Path:
    """One row's curation run with the main teacher (``teacher_steps`` None) or an extra one."""
    if teacher_steps is None:
        return out / "curation" / row_name
    return out / "curation" / f"t{teacher_steps}" / row_name


def class_names(val_dir: Path) -> list[str]:
    """The world's segmentation classes in label order (``val/classes.txt``)."""
    return [line.strip() for line in (val_dir / "classes.txt").read_text("utf-8").splitlines() if line.strip()]


def class_kinds(world_json: Path) -> dict[str, str]:
    """``stuff`` or ``thing`` per concept of the world (``world.json``)."""
    raw = json.loads(world_json.read_text("utf-8"))
    return {c["name"]: c["kind"] for c in raw.get("concepts", [])}
