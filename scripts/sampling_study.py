"""The sampling study of the demo: cluster-guided sampling's knobs, one demo folder per grid point.

Cluster-guided sampling draws one concept from each of the archive's first L clusters per step (clusters
ordered by their best-ranked member). This study varies the sampling temperature (``--tau``), the number
of concepts per step (``--labels`` L, clusters following it) and the number of k-means clusters per image
against L (``--clusters`` K > L leaves the weakest clusters out of the draw), trains only the full CoCu row
at the demo's budget, and tabulates per point the GT recall and precision sampled per step, the GT recall
over 10 steps, and mIoU (mean and sample std over the seeds run).

    python scripts/sampling_study.py --out runs/sampling            # every point, seed 0
    python scripts/sampling_study.py --out runs/sampling --points tau0.3,k4 --seeds 0,1,2

Each point is ``cocu demo --out OUT/<point> --rows cocu <its flags>`` (cached: a rerun with more seeds
trains only the new ones). Writes ``OUT/sampling_study.json`` (one entry per point run so far) and
``OUT/sampling_study.md``; extra ``cocu demo`` flags after ``--`` (e.g. a smaller world) go to every point.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from cocu.utils.atomic import atomic_write_json, atomic_write_text
from cocu.utils.environment import kernel_signature

GRID: dict[str, list[str]] = {
    "default": [],
    "tau0.03": ["--tau", "0.03"],
    "tau0.3": ["--tau", "0.3"],
    "tau1": ["--tau", "1.0"],
    "l2": ["--labels", "2"],
    "l4": ["--labels", "4"],
    "k4": ["--clusters", "4"],
    "k6": ["--clusters", "6"],
}
"""Grid point name -> its ``cocu demo`` flags (the demo's defaults: tau 0.1, L 3, K = L)."""

KEYS = ("sampled_recall", "sampled_precision", "sampled_coverage", "recall", "precision", "miou", "miou_lc",
        "top1")


def run_point(out: Path, name: str, seeds: str, extra: list[str]) -> dict:
    """Run (or resume) one grid point's demo and return its CoCu row and settings."""
    folder = out / name
    cmd = [sys.executable, "-m", "cocu", "demo", "--out", str(folder), "--rows", "cocu", "--seeds", seeds,
           *GRID[name], *extra]
    with open(out / f"{name}.log", "a", encoding="utf-8") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    results = json.loads((folder / "results.json").read_text("utf-8"))
    cocu = next(r for r in results["rows"] if r["name"] == "cocu")
    s = results["settings"]
    return {
        "point": name,
        "flags": GRID[name],
        "tau": s["tau"],
        "labels": s["num_labels"],
        "clusters": s["num_clusters"] if s["num_clusters"] is not None else s["num_labels"],
        "seeds": [p["seed"] for p in cocu["per_seed"]],
        **{k: cocu.get(k) for k in KEYS},
        "miou_std": cocu["std"].get("miou"),
        "miou_per_seed": [p.get("miou") for p in cocu["per_seed"]],
        "train_environments": results.get("train_environments", []),
    }


def table(entries: list[dict]) -> str:
    """The study as a markdown table, values in percent."""

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    lines = ["| point | tau | L | K | sampled recall | sampled precision | recall over 10 steps | archive recall "
             "| mIoU | mIoU std | seeds |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        tau = "0.1 (default)" if e["tau"] is None else f"{e['tau']:g}"
        lines.append(f"| {e['point']} | {tau} | {e['labels']} | {e['clusters']} | {pct(e['sampled_recall'])} | "
                     f"{pct(e['sampled_precision'])} | {pct(e['sampled_coverage'])} | {pct(e['recall'])} | "
                     f"{pct(e['miou'])} | {pct(e['miou_std'])} | {','.join(map(str, e['seeds']))} |")
    return "\n".join(lines) + "\n" + environments_note(entries)


def environments_note(entries: list[dict]) -> str:
    """A warning line when the points' models were not all trained in one recorded environment (the same
    seed trains a different model on other CPU kernels or versions, so such mIoUs do not compare)."""
    unrecorded = sum(1 for e in entries if not e.get("train_environments")
                     or any(not g.get("environment") for g in e["train_environments"]))
    recorded = {kernel_signature(g["environment"]) for e in entries for g in e.get("train_environments", [])
                if g.get("environment")}
    if not unrecorded and len(recorded) <= 1:
        return ""
    return (f"\nThe points were trained in {len(recorded)} recorded environment(s); {unrecorded} point(s) "
            "have runs without a record. mIoU compares only between runs of one environment.\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("demo_flags", nargs="*", help="extra 'cocu demo' flags for every point, after '--'")
    p.add_argument("--out", required=True, type=Path, help="study folder: one demo folder per grid point")
    p.add_argument("--points", default=",".join(GRID), help=f"comma-separated grid points (of {', '.join(GRID)})")
    p.add_argument("--seeds", default="0", help="GroupViT training seeds per point (comma-separated)")
    args = p.parse_args(argv)
    extra = args.demo_flags
    points = [n.strip() for n in args.points.split(",") if n.strip()]
    unknown = [n for n in points if n not in GRID]
    if unknown or not points:
        p.error(f"unknown grid points {unknown}; choose from {', '.join(GRID)}")
    args.out.mkdir(parents=True, exist_ok=True)
    study_path = args.out / "sampling_study.json"
    done = {e["point"]: e for e in json.loads(study_path.read_text("utf-8"))} if study_path.is_file() else {}
    for name in points:
        print(f"sampling study: {name} ({' '.join(GRID[name]) or 'demo defaults'}), seeds {args.seeds}",
              flush=True)
        done[name] = run_point(args.out, name, args.seeds, extra)
        entries = [done[n] for n in GRID if n in done]
        atomic_write_json(study_path, entries)
        atomic_write_text(args.out / "sampling_study.md", table(entries))
    print(table([done[n] for n in GRID if n in done]), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
