"""`cocu demo --out DIR [--quick]`: the paper's experiment in miniature on the synthetic world, with a report."""

from __future__ import annotations

import argparse
import logging
import sys

from cocu.demo.settings import ROW_NAMES, TrainBudget, WorldBudget, full_settings, quick_settings, with_overrides
from cocu.evaluation.dense_clip import DENSE_METHODS


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _row_list(text: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [n for n in names if n not in ROW_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"rows must be some of {', '.join(ROW_NAMES)}; got {text!r}")
    return names


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the whole CoCu experiment in miniature on the synthetic world and write a report",
        description=(
            "Generate the synthetic semantic-gap world, train its small CLIP, curate the pretrain split once per "
            "ablation row of the paper's table 3, pre-train groupvit-tiny per row (and on the true concepts: the "
            "oracle), evaluate zero-shot segmentation and classification, and write DIR/results.json and a "
            "self-contained DIR/report.html. Finished stages are cached; --force reruns them."
        ),
    )
    p.add_argument("--out", required=True, help="output folder (world/, models/, curation/, eval/, report.html)")
    p.add_argument("--quick", action="store_true", help="tiny budgets: a smoke run of every stage in a few minutes")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, help="one seed for everything (default 0)")
    seeds.add_argument("--seeds", type=_int_list, help="comma-separated seeds: GroupViT training repeats per seed "
                       "(world, CLIP and curation use the first); results carry per-seed values and mean/std")
    p.add_argument("--force", action="store_true", help="rerun every stage even if its outputs are cached")
    p.add_argument("--collect-only", action="store_true", help="train and curate nothing: write results.json and "
                   "the report from the stages already done (e.g. while a long run is still going, or after one was "
                   "stopped); the runs left out are listed under results.json 'missing'")
    p.add_argument("--rows", type=_row_list, help=f"ablation rows to train (default: all; --quick: baseline,cocu,"
                   f"oracle); any of {','.join(ROW_NAMES)}")
    g = p.add_argument_group("budgets (override the preset)")
    g.add_argument("--steps", type=int, help="GroupViT training steps per row")
    g.add_argument("--batch-size", type=int, help="GroupViT batch size")
    g.add_argument("--lr", type=float, help="GroupViT peak learning rate")
    g.add_argument("--clip-steps", type=int, help="training steps of the world's CLIP")
    g.add_argument("--clip-batch-size", type=int, help="batch size of the world's CLIP")
    g.add_argument("--teacher", type=int, help="images in the world's teacher split (trains the CLIP)")
    g.add_argument("--pretrain", type=int, help="images in the world's pretrain split (curated, trains GroupViT)")
    g.add_argument("--val", type=int, help="images in the world's val split (zero-shot segmentation)")
    g.add_argument("--classify", type=int, help="images per thing class in the world's classify split")
    g.add_argument("--size", type=int, help="image side of the world in pixels")
    g.add_argument("--neighbors", type=int, help="N: neighbours per image in the curation's expansion")
    g.add_argument("--num-labels", "--labels", dest="num_labels", type=int,
                   help="L: concepts per image per training step (and the curation's clusters unless --clusters)")
    g.add_argument("--clusters", type=int, help="k-means clusters per image in the curation (default: L)")
    g.add_argument("--tau", type=float, help="sampling temperature of the curation and training (default: the "
                   "training config's)")
    st = p.add_argument_group("studies")
    st.add_argument("--budgets", type=_int_list, help="budget curve: comma-separated multiples of the GroupViT step "
                   "count (e.g. 1,2,4); every multiple other than 1 trains baseline, cocu and oracle per seed")
    st.add_argument("--teacher-steps", type=_int_list, help="teacher strength: comma-separated step counts of extra "
                   "teacher CLIPs (e.g. 100,300,1000), each curating the archive rows again")
    st.add_argument("--dense-method", choices=DENSE_METHODS, help="how the teacher-dense row reads the teacher CLIP "
                   "(default maskclip)")
    g.add_argument("--threads", type=int, help="torch threads for every stage (default 1: fastest on 2 shared cores)")
    g.add_argument("--num-workers", type=int, help="data-loading worker processes per training run (default 1)")
    g.add_argument("--jobs", type=int, help="independent stages (training runs, extra teachers) run this many at a "
                   "time in worker processes, each with --threads threads (default 1; at most the number of cores); "
                   "the cache is shared with --jobs 1")
    p.set_defaults(func=run)


def _settings(args: argparse.Namespace):
    base = quick_settings(args.out) if args.quick else full_settings(args.out)
    w = base.world
    world = WorldBudget(
        size=args.size or w.size,
        teacher=args.teacher or w.teacher,
        pretrain=args.pretrain or w.pretrain,
        val=args.val or w.val,
        classify=args.classify or w.classify,
    )
    groupvit = TrainBudget(
        steps=args.steps or base.groupvit.steps,
        batch_size=args.batch_size or base.groupvit.batch_size,
        lr=args.lr if args.lr is not None else base.groupvit.lr,
        warmup_steps=base.groupvit.warmup_steps,
    )
    clip = TrainBudget(
        steps=args.clip_steps or base.clip.steps,
        batch_size=args.clip_batch_size or base.clip.batch_size,
        lr=base.clip.lr,
        warmup_steps=base.clip.warmup_steps,
    )
    seeds = args.seeds or ((args.seed,) if args.seed is not None else None)
    return with_overrides(
        base,
        world=world,
        groupvit=groupvit,
        clip=clip,
        seeds=seeds,
        train_rows=args.rows,
        neighbors=args.neighbors,
        num_labels=args.num_labels,
        num_clusters=args.clusters,
        tau=args.tau,
        budgets=args.budgets,
        teacher_steps=args.teacher_steps,
        dense_method=args.dense_method,
        threads=args.threads,
        num_workers=args.num_workers,
        jobs=args.jobs,
        force=args.force or None,
        collect_only=args.collect_only or None,
    )


def run(args: argparse.Namespace) -> int:
    from cocu.demo.pipeline import run_demo

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        settings = _settings(args)
    except ValueError as err:
        print(f"cocu demo: {err}", file=sys.stderr)
        return 2
    from cocu.demo.stages import StageNotRun
    from cocu.train.trainer import TrainingDiverged

    try:
        outcome = run_demo(settings)
    except TrainingDiverged as err:
        print(f"cocu demo: {err}", file=sys.stderr)
        return 1
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError, StageNotRun) as err:
        print(f"cocu demo: error: {err}", file=sys.stderr)
        return 2
    print(outcome.summary)
    print(f"report: {outcome.report_path}")
    print(f"results: {outcome.results_path}")
    return 0
