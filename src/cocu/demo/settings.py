"""What the demo runs: the ablation rows of the paper's table 3 and the budgets of every stage.

The demo is the paper's experiment in miniature on the synthetic semantic-gap world (``cocu.synth``):
a small CLIP trained on the world's teacher split plays the frozen foundation model, the pretrain split
is curated once per ablation row, ``groupvit-tiny`` is pre-trained on each row's concepts with the same
budget and seed, and every model is evaluated zero-shot on the world's val (segmentation) and classify
(classification) splits. Two presets: :func:`full_settings` (the default, tens of minutes on a laptop
CPU) and :func:`quick_settings` (a smoke run of every stage with tiny budgets, no quality claim).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

CAPTION = "caption"
ARCHIVE = "archive"
TRUTH = "truth"


@dataclass(frozen=True)
class AblationRow:
    """One row of the paper's table 3 (plus the oracle trained on each image's true concepts).

    ``concepts`` says what the model is trained on: the caption's own concepts (``caption``), a curated
    concept archive (``archive``) or the true concepts of each image (``truth``). ``expansion``,
    ``ranking`` and ``sampling`` are the curation choices (``None`` where the row does not curate).
    ``headline`` rows (baseline, full CoCu, oracle) are the ones trained unless ``--rows`` says otherwise.
    """

    name: str
    title: str
    concepts: str
    expansion: str | None = None
    ranking: str | None = None
    sampling: str | None = None
    headline: bool = False

    @property
    def curated(self) -> bool:
        return self.concepts == ARCHIVE


ROWS: tuple[AblationRow, ...] = (
    AblationRow("baseline", "Baseline (GroupViT): caption concepts only", CAPTION, headline=True),
    AblationRow("lang", "#1 language-driven expansion + naive ranking + naive sampling", ARCHIVE,
                "lang", "naive", "naive"),
    AblationRow("vision", "#2 vision-driven expansion + naive ranking + naive sampling", ARCHIVE,
                "vision", "naive", "naive"),
    AblationRow("vision-t2v", "#3 + text-to-vision-guided ranking", ARCHIVE, "vision", "t2v", "naive"),
    AblationRow("cocu", "#4 + cluster-guided sampling (full CoCu)", ARCHIVE, "vision", "t2v", "cluster", headline=True),
    AblationRow("oracle", "Oracle: the true concepts of every image", TRUTH, headline=True),
)
ROW_NAMES: tuple[str, ...] = tuple(r.name for r in ROWS)
BUDGET_ROWS: tuple[str, ...] = ("baseline", "cocu", "oracle")
"""The rows trained at every budget multiple of the budget curve (budget 1 trains ``train_rows``)."""
TEACHER_DENSE = "teacher-dense"
"""The results row of the teacher CLIP read densely (no pre-training)."""


def row(name: str) -> AblationRow:
    for r in ROWS:
        if r.name == name:
            return r
    raise KeyError(f"unknown ablation row {name!r}; expected one of {', '.join(ROW_NAMES)}")


@dataclass(frozen=True)
class WorldBudget:
    """Split sizes and image size of the synthetic world (passed to ``cocu.synth.world.WorldConfig``).

    ``classify`` is images per thing class; the other splits are image counts.
    """

    size: int = 64
    teacher: int = 3000
    pretrain: int = 3000
    val: int = 100
    classify: int = 10


@dataclass(frozen=True)
class TrainBudget:
    """Steps, batch size and learning rate of one training run (passed as ``load_config`` overrides)."""

    steps: int
    batch_size: int
    lr: float | None = None
    warmup_steps: int | None = None


@dataclass(frozen=True)
class DemoSettings:
    """Everything the demo's result depends on; each stage fingerprints the part it uses.

    Every GroupViT row trains from the one ``groupvit_config`` (so all rows share its budget and
    optimiser); the demo overrides only the row's text mode, archive and sampling, the output, the seed
    and the budget given here. ``threads``: torch (and faiss) threads for every stage (``None``: the
    libraries' default). One thread plus one data-loading worker process is the fastest on a 2-core
    machine, and far faster than two threads when other work shares the cores (OpenMP threads then spin).
    ``num_workers``: data-loading worker processes of every training run. ``jobs``: independent stages
    (training runs, extra teachers) run this many at a time in worker processes (:mod:`cocu.demo.parallel`);
    no fingerprint depends on it. ``collect_only``: train and curate nothing; results and report from the
    stages already done (the runs not done are listed in ``results.json`` ``missing``).

    ``budgets``: multiples of ``groupvit.steps`` for the budget curve (1 = the ablation table's runs; every
    other multiple trains :data:`BUDGET_ROWS`). ``teacher_steps``: extra teacher CLIPs (training steps)
    that each curate the archive rows again, for the teacher-strength ablation. ``tau``: sampling
    temperature of training and curation (None: the training config's); ``num_clusters``: k-means clusters
    per image in the curation (None: ``num_labels``). ``dense_method``: how the ``teacher-dense`` row reads
    the teacher CLIP (:mod:`cocu.evaluation.dense_clip`).
    """

    out: Path
    quick: bool = False
    seeds: tuple[int, ...] = (0,)
    world: WorldBudget = field(default_factory=WorldBudget)
    clip: TrainBudget = field(default_factory=lambda: TrainBudget(steps=400, batch_size=64))
    groupvit: TrainBudget = field(default_factory=lambda: TrainBudget(steps=80, batch_size=64))
    clip_config: str = "configs/train/clip_tiny_synth.yaml"
    groupvit_config: str = "configs/train/groupvit_tiny_synth_cocu.yaml"
    train_rows: tuple[str, ...] = ROW_NAMES
    num_labels: int = 3
    neighbors: int = 8
    gallery: int = 8
    overlays: int = 4
    threads: int | None = 1
    num_workers: int = 1
    jobs: int = 1
    force: bool = False
    collect_only: bool = False
    budgets: tuple[int, ...] = (1,)
    teacher_steps: tuple[int, ...] = ()
    tau: float | None = None
    num_clusters: int | None = None
    dense_method: str = "maskclip"

    @property
    def seed(self) -> int:
        """The base seed: the world, the CLIP and the curation use it; training repeats per seed."""
        return self.seeds[0]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["out"] = str(self.out)
        out["seeds"] = list(self.seeds)
        out["train_rows"] = list(self.train_rows)
        out["budgets"] = list(self.budgets)
        out["teacher_steps"] = list(self.teacher_steps)
        return out

    @property
    def clusters(self) -> int:
        """k-means clusters per image in the curation."""
        return self.num_clusters if self.num_clusters is not None else self.num_labels

    def rows_at(self, budget: int) -> tuple[str, ...]:
        """The rows trained at a budget multiple: ``train_rows`` at 1, :data:`BUDGET_ROWS` at any other."""
        return self.train_rows if budget == 1 else BUDGET_ROWS

    @property
    def curve_budgets(self) -> tuple[int, ...]:
        """The budget multiples of the budget curve, 1 first."""
        return tuple(sorted({1, *self.budgets}))


def full_settings(out: str | Path) -> DemoSettings:
    """The default demo, about half an hour on a 2-core laptop CPU: every row curated, and GroupViT trained
    for the baseline, full CoCu and the oracle (``--rows`` trains the other ablation rows too).

    Measured step costs (one thread, batch 64): GroupViT 2.4 s, CLIP 1.0 s. Training all six rows fits
    only 80 steps each in that half hour, where the rows' mIoU differ by noise (measured); three rows at
    160 steps double each model's budget."""
    return DemoSettings(
        out=Path(out),
        clip=TrainBudget(steps=300, batch_size=64),
        groupvit=TrainBudget(steps=160, batch_size=64),
        train_rows=tuple(r.name for r in ROWS if r.headline),
    )


def quick_settings(out: str | Path) -> DemoSettings:
    """A smoke run of every stage: a tiny world, tiny budgets, baseline + CoCu + oracle trained at budgets
    1x and 2x, and one extra (weaker) teacher for the teacher-strength ablation."""
    return DemoSettings(
        out=Path(out),
        quick=True,
        world=WorldBudget(size=64, teacher=200, pretrain=200, val=16, classify=2),
        clip=TrainBudget(steps=30, batch_size=32),
        groupvit=TrainBudget(steps=20, batch_size=32),
        train_rows=tuple(r.name for r in ROWS if r.headline),
        gallery=4,
        overlays=2,
        budgets=(1, 2),
        teacher_steps=(10,),
    )


def with_overrides(settings: DemoSettings, **changes: Any) -> DemoSettings:
    """Copy ``settings`` with the given fields replaced, skipping ``None`` values; validates the result."""
    kept = {k: v for k, v in changes.items() if v is not None}
    out = replace(settings, **kept)
    validate(out)
    return out


def validate(settings: DemoSettings) -> None:
    if not settings.seeds:
        raise ValueError("at least one seed is needed")
    if len(set(settings.seeds)) != len(settings.seeds):
        raise ValueError(f"repeated seeds in {list(settings.seeds)}")
    unknown = [n for n in settings.train_rows if n not in ROW_NAMES]
    if unknown:
        raise ValueError(f"unknown rows {unknown}; expected some of {', '.join(ROW_NAMES)}")
    for name, budget in (("clip", settings.clip), ("groupvit", settings.groupvit)):
        if budget.steps < 1 or budget.batch_size < 2:
            raise ValueError(f"{name}: need steps >= 1 and batch_size >= 2 (contrastive), got {budget}")
    w = settings.world
    if min(w.teacher, w.pretrain, w.val, w.classify) < 1:
        raise ValueError(f"every world split needs at least one image, got {w}")
    if settings.threads is not None and settings.threads < 1:
        raise ValueError(f"threads must be >= 1, got {settings.threads}")
    if settings.jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {settings.jobs}")
    if settings.num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {settings.num_workers}")
    if settings.num_labels < 1 or settings.neighbors < 1:
        raise ValueError("num_labels and neighbors must be >= 1")
    for name, values in (("budgets", settings.budgets), ("teacher_steps", settings.teacher_steps)):
        if any(v < 1 for v in values) or len(set(values)) != len(values):
            raise ValueError(f"{name} must be distinct positive integers, got {list(values)}")
    if settings.tau is not None and not settings.tau > 0:
        raise ValueError(f"tau must be > 0, got {settings.tau}")
    if settings.num_clusters is not None and settings.num_clusters < 1:
        raise ValueError(f"num_clusters must be >= 1, got {settings.num_clusters}")
    from cocu.evaluation.dense_clip import DENSE_METHODS

    if settings.dense_method not in DENSE_METHODS:
        raise ValueError(f"dense_method must be one of {', '.join(DENSE_METHODS)}, got {settings.dense_method!r}")
