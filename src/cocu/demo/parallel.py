"""``cocu demo --jobs N``: the demo's independent stages, N at a time, each in a fresh worker process.

Once the world, the teacher CLIP and the curation exist, what is left is a set of stages that read them
and not each other: a GroupViT run (train + evaluate) per budget, seed and row, the teacher read densely,
and each extra teacher of the teacher-strength study (train, evaluate, curate its rows). :func:`prewarm`
runs these through a pool of ``jobs`` processes, each task in a process of its own (spawned, with the
demo's torch thread count, logging and progress bars to ``DIR/logs/<task>.log``), where it leaves its
outputs and done-markers exactly as the serial demo would;
the serial pass of :func:`cocu.demo.pipeline.run_demo` then finds every stage done and only collects.
Fingerprints do not depend on ``jobs``, so a demo run with ``--jobs 2`` and one without share their cache.

Order: budget 1 first (every seed), then the dense teacher, the extra teachers, and the larger budgets,
so that a run stopped early has finished the parts the other studies need. A stage that fails in a
worker is logged and left without a done-marker; the serial pass then runs it again in the main process,
where its error stops the demo as it would without ``--jobs``.
"""

from __future__ import annotations

import logging
import multiprocessing
from contextlib import redirect_stderr
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from cocu.demo.settings import DemoSettings, row
from cocu.demo.stages import StageRecord

logger = logging.getLogger(__name__)

TRAIN = "train"
DENSE = "dense"
TEACHER = "teacher"


@dataclass(frozen=True)
class Task:
    """One independent piece of the demo: a GroupViT run (``train``: ``row`` at ``seed`` and ``budget``), the
    teacher read densely (``dense``) or an extra teacher of ``teacher_steps`` steps with its curation
    (``teacher``)."""

    kind: str
    row: str | None = None
    seed: int | None = None
    budget: int = 1
    teacher_steps: int | None = None

    @property
    def slug(self) -> str:
        """The task's file name stem: ``train-cocu-seed1-x2``, ``teacher-t100``, ``teacher-dense``."""
        if self.kind == TRAIN:
            return f"train-{self.row}-seed{self.seed}-x{self.budget}"
        if self.kind == TEACHER:
            return f"teacher-t{self.teacher_steps}"
        return "teacher-dense"


def plan(settings: DemoSettings) -> list[Task]:
    """Every independent stage of ``settings``, in the order the pool starts them."""
    tasks = [Task(TRAIN, name, seed, 1) for seed in settings.seeds for name in settings.rows_at(1)]
    tasks.append(Task(DENSE))
    tasks += [Task(TEACHER, teacher_steps=t) for t in sorted(settings.teacher_steps) if t != settings.clip.steps]
    for budget in settings.curve_budgets:
        if budget != 1:
            tasks += [Task(TRAIN, name, seed, budget) for seed in settings.seeds for name in settings.rows_at(budget)]
    return tasks


def run_task(
    settings: DemoSettings, task: Task, world: StageRecord, clip: StageRecord, curated: dict[str, StageRecord]
) -> str:
    """Run one task's stages (cached as in the serial demo) in this process, its log and progress bars going to
    ``DIR/logs/<slug>.log``; returns its slug."""
    log_path = log_file(settings.out, task)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log, redirect_stderr(log):
        handler = logging.StreamHandler(log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            _run_stages(settings, task, world, clip, curated)
        finally:
            root.removeHandler(handler)
    return task.slug


def log_file(out: Path, task: Task) -> Path:
    return out / "logs" / f"{task.slug}.log"


def _run_stages(
    settings: DemoSettings, task: Task, world: StageRecord, clip: StageRecord, curated: dict[str, StageRecord]
) -> None:
    import torch

    from cocu.demo.pipeline import Demo

    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    demo = Demo(settings)
    if task.kind == TRAIN:
        demo.train_one(world, curated, row(task.row), task.seed, task.budget)
    elif task.kind == DENSE:
        demo.teacher_dense(clip)
    elif task.kind == TEACHER:
        extra_clip, _ = demo.clip(world, task.teacher_steps)
        demo.curate(extra_clip, task.teacher_steps)
    else:
        raise ValueError(f"unknown demo task kind {task.kind!r}")


def prewarm(
    settings: DemoSettings, world: StageRecord, clip: StageRecord, curated: dict[str, StageRecord]
) -> None:
    """Run :func:`plan`'s tasks ``settings.jobs`` at a time; a failed task is logged (the serial pass reruns it)."""
    tasks = plan(settings)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(settings.jobs, mp_context=context, max_tasks_per_child=1) as pool:
        pending: dict[Future, Task] = {
            pool.submit(run_task, settings, t, world, clip, curated): t for t in tasks
        }
        with tqdm(total=len(tasks), desc=f"demo stages ({settings.jobs} jobs)", unit="task") as bar:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    task = pending.pop(future)
                    err = future.exception()
                    if err is not None:
                        logger.warning("demo task %s failed in a worker (%s: %s; log %s); the serial pass runs it "
                                       "again", task.slug, type(err).__name__, err, log_file(settings.out, task))
                    else:
                        logger.info("demo task %s done", task.slug)
                    bar.update(1)
