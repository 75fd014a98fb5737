"""Is the demo repeatable, and what moves its numbers? Three quick demos, side by side.

Runs ``cocu demo --quick`` twice in this environment (runs ``a`` and ``b``) and once with torch's CPU kernels
held to a lower instruction set (run ``c``: ``ATEN_CPU_CAPABILITY``, default ``avx2``; on a machine whose
best is already that, pick ``default``), then compares every row's figures:

    python scripts/repeatability.py --out runs/repeat                 # a, b, c
    python scripts/repeatability.py --out runs/repeat --capability default -- --seeds 0,1

Prints and writes ``OUT/repeatability.json`` (per row and figure the three values, whether ``a`` and ``b``
are equal in every figure, which figures ``c`` moved) and ``OUT/repeatability.md``. Extra ``cocu demo`` flags
after ``--`` go to all three runs. Each run is a cached demo folder (``OUT/a``, ``OUT/b``, ``OUT/c``): a
rerun reuses them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from cocu.utils.atomic import atomic_write_json, atomic_write_text

FIGURES = ("recall", "precision", "sampled_recall", "miou", "miou_lc", "miou_whole_image", "miou_group_bound",
           "top1")
CAPABILITIES = ("default", "avx2", "avx512", "zvector", "vsx")
"""Values torch accepts for ``ATEN_CPU_CAPABILITY`` (``default``: no vector extension)."""


def run_demo(folder: Path, extra: list[str], capability: str | None) -> dict:
    """One ``cocu demo --quick`` into ``folder`` (its log beside it); returns its ``results.json``."""
    env = dict(os.environ)
    if capability is not None:
        env["ATEN_CPU_CAPABILITY"] = capability
    cmd = [sys.executable, "-m", "cocu", "demo", "--out", str(folder), "--quick", *extra]
    with open(folder.parent / f"{folder.name}.log", "a", encoding="utf-8") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, env=env)
    return json.loads((folder / "results.json").read_text("utf-8"))


def compare(runs: dict[str, dict]) -> dict:
    """Per row and figure the values of each run; ``a_equals_b``; the figures ``c`` moved from ``a``."""
    rows: dict[str, dict[str, dict[str, float | None]]] = {}
    for name, results in runs.items():
        for r in results["rows"]:
            for key in FIGURES:
                rows.setdefault(r["name"], {}).setdefault(key, {})[name] = r.get(key)
    moved = [f"{row}.{key}" for row, figs in rows.items() for key, v in figs.items() if v.get("c") != v.get("a")]
    same = all(v.get("a") == v.get("b") for figs in rows.values() for v in figs.values())
    envs = {name: [g["environment"] for g in res.get("train_environments", [])] for name, res in runs.items()}
    return {"rows": rows, "a_equals_b": same, "c_moved": moved, "train_environments": envs}


def table(report: dict) -> str:
    """The comparison as markdown, values in percent (only the figures that some run has)."""

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}"

    lines = ["| row | figure | a | b | c |", "|---|---|---|---|---|"]
    for row, figs in report["rows"].items():
        for key, v in figs.items():
            if all(v.get(n) is None for n in "abc"):
                continue
            lines.append(f"| {row} | {key} | {pct(v.get('a'))} | {pct(v.get('b'))} | {pct(v.get('c'))} |")
    lines.append("")
    lines.append(f"a and b equal in every figure: {'yes' if report['a_equals_b'] else 'no'}; "
                 f"c moved {len(report['c_moved'])} figure(s).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("demo_flags", nargs="*", help="extra 'cocu demo' flags for the three runs, after '--'")
    p.add_argument("--out", required=True, type=Path, help="folder for the three demo folders and the comparison")
    p.add_argument("--capability", default="avx2", choices=CAPABILITIES,
                   help="ATEN_CPU_CAPABILITY of run c (default avx2)")
    args = p.parse_args(argv)
    extra = args.demo_flags
    args.out.mkdir(parents=True, exist_ok=True)
    runs = {}
    for name, capability in (("a", None), ("b", None), ("c", args.capability)):
        print(f"repeatability: run {name}" + (f" (ATEN_CPU_CAPABILITY={capability})" if capability else ""),
              flush=True)
        runs[name] = run_demo(args.out / name, extra, capability)
    report = {"capability_c": args.capability, "demo_flags": extra, **compare(runs)}
    atomic_write_json(args.out / "repeatability.json", report)
    text = table(report)
    atomic_write_text(args.out / "repeatability.md", text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
