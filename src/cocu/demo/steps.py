"""The demo's stages as library calls: make the world, train a model, curate, evaluate.

Each function does one stage into the folder it is given and returns a small JSON-able dict of what it
did (kept in the stage's done-marker); :mod:`cocu.demo.pipeline` decides what runs and caches it.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from cocu.demo.settings import ARCHIVE, CAPTION, TRUTH, AblationRow, DemoSettings, TrainBudget
from cocu.utils.atomic import atomic_write_json

logger = logging.getLogger(__name__)

TEXT_MODES = {CAPTION: "caption-nouns", ARCHIVE: "cocu", TRUTH: "oracle"}


def world_dirs(out: Path) -> dict[str, Path]:
    world = out / "world"
    return {
        "world": world,
        "teacher": world / "teacher",
        "pretrain": world / "pretrain",
        "val": world / "val",
        "classify": world / "classify",
        "vocab": world / "vocab.txt",
        "world_json": world / "world.json",
    }


def make_world(settings: DemoSettings) -> dict[str, Any]:
    """``cocu synth`` into ``DIR/world``; returns the world's split statistics."""
    from cocu.synth.world import WorldConfig, generate_world

    w = settings.world
    cfg = WorldConfig(
        seed=settings.seed,
        size=w.size,
        teacher=w.teacher,
        pretrain=w.pretrain,
        val=w.val,
        classify=w.classify,
        workers=max(1, min(4, os.cpu_count() or 1)),
    )
    stats = generate_world(world_dirs(settings.out)["world"], cfg)
    return {"world_config": cfg.settings(), "stats": stats}


def budget_overrides(settings: DemoSettings, budget: TrainBudget, output: Path, seed: int) -> list[str]:
    """``key=value`` overrides that pin a run's output, seed, budget (steps, batch, lr, warm-up) and threads."""
    out = [
        f"data.num_workers={settings.num_workers}",
        f"output={output}",
        f"seed={seed}",
        "resume=null",
        f"train.max_steps={budget.steps}",
        f"train.batch_size={budget.batch_size}",
        f"train.checkpoint_every={max(budget.steps, 1)}",
        "train.keep_checkpoints=1",
        f"train.log_every={max(1, min(10, budget.steps // 20 or 1))}",
    ]
    if settings.threads is not None:
        out.append(f"train.threads={settings.threads}")
    if budget.lr is not None:
        out.append(f"optim.lr={budget.lr}")
    if budget.warmup_steps is not None:
        out += [f"optim.warmup={budget.warmup_steps}", "optim.warmup_unit=steps"]
    return out


def resolved_config(config: str, overrides: list[str]) -> dict[str, Any]:
    """The resolved training config as flat ``key: value`` pairs, without the keys that cannot change the
    trained weights: what a training stage's cache fingerprint holds (an edited YAML invalidates it)."""
    from cocu.train.config import RUNTIME_KEYS, config_to_dict, flatten, load_config

    flat = flatten(config_to_dict(load_config(config, overrides)))
    return {k: v for k, v in flat.items() if k not in RUNTIME_KEYS}


def clip_overrides(settings: DemoSettings, output: Path, steps: int | None = None) -> list[str]:
    """The teacher CLIP's run on the teacher split: the main one, or one of ``steps`` training steps."""
    dirs = world_dirs(settings.out)
    budget = settings.clip if steps is None else replace(settings.clip, steps=steps)
    return budget_overrides(settings, budget, output, settings.seed) + [
        f"data.train={dirs['teacher']}",
        "text.mode=none",
        f"text.vocab={dirs['vocab']}",
    ]


def groupvit_overrides(
    settings: DemoSettings, row: AblationRow, output: Path, seed: int, budget: int = 1
) -> list[str]:
    """The overrides of one ablation row's GroupViT run: same budget (``budget`` times the steps) and seed
    for every row."""
    dirs = world_dirs(settings.out)
    steps = replace(settings.groupvit, steps=settings.groupvit.steps * budget)
    out = budget_overrides(settings, steps, output, seed) + [
        f"data.train={dirs['pretrain']}",
        f"text.mode={TEXT_MODES[row.concepts]}",
        f"text.num_labels={settings.num_labels}",
        f"text.vocab={dirs['vocab']}",
    ]
    if row.concepts == ARCHIVE:
        out += [f"data.archive={settings.out / 'curation' / row.name}", f"text.sampling={row.sampling}"]
    else:
        out.append("data.archive=null")
    if settings.tau is not None:
        out.append(f"text.tau={settings.tau}")
    return out


def row_train_config(settings: DemoSettings, row: AblationRow, output: Path, seed: int, budget: int = 1):
    """The resolved :class:`cocu.train.config.TrainConfig` of one row's GroupViT run (nothing is trained)."""
    from cocu.train.config import load_config

    return load_config(settings.groupvit_config, groupvit_overrides(settings, row, output, seed, budget))


def train_model(config: str, overrides: list[str]) -> dict[str, Any]:
    """One training run (``cocu train CONFIG key=value ...``) in this process; returns the trainer's result."""
    from cocu.train.config import load_config
    from cocu.train.trainer import train

    cfg = load_config(config, overrides)
    result = train(cfg)
    if not result.finished:
        raise RuntimeError(f"training into {cfg.output} stopped at step {result.steps} of {result.total_steps}")
    return {"result": result.to_json(), "overrides": overrides, "config": config}


REUSED_STAGES = ("emb", "vocab", "index")


def curate_row(
    settings: DemoSettings, row: AblationRow, encoder_dir: Path, run_dir: Path, reuse_from: Path | None = None
) -> dict[str, Any]:
    """``cocu curate`` of the pretrain split with one row's expansion, ranking and sampling.

    ``reuse_from``: a finished run of the same encoder and expansion whose embeddings, vocabulary and index
    are copied into ``run_dir`` (``cocu archive`` then builds only the archive), instead of embedding again.
    """
    from cocu.curation.pipeline import CurateConfig, curate, curate_archive

    dirs = world_dirs(settings.out)
    assert row.expansion is not None and row.ranking is not None and row.sampling is not None
    cfg = CurateConfig(
        expansion=row.expansion,
        ranking=row.ranking,
        sampling=row.sampling,
        neighbors=settings.neighbors,
        labels=settings.clusters,
        seed=settings.seed,
        vocab=str(dirs["vocab"]),
        threads=settings.threads,
    )
    if settings.tau is not None:
        cfg = replace(cfg, tau=settings.tau)
    if reuse_from is None:
        return {"summary": curate(str(dirs["pretrain"]), str(encoder_dir), run_dir, cfg)}
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in REUSED_STAGES:
        shutil.copytree(reuse_from / name, run_dir / name)
    return {"summary": curate_archive(run_dir, cfg), "reused": str(reuse_from)}


def evaluate_model(
    model_dir: Path, world: Path, out_json: Path, predictions: Path | None, method: str = "groupvit"
) -> dict[str, Any]:
    """Zero-shot segmentation on ``world/val`` (with diagnostics) and classification on ``world/classify``.

    Writes ``out_json`` with ``seg`` and ``cls`` (the evaluation's own JSON, scores in percent); a CLIP
    model gets classification only, unless ``method`` reads it densely (``maskclip``, ``sclip``,
    ``naclip``: the same protocol as GroupViT, each patch a group). ``predictions``: folder for the val
    label maps. Prompts follow the published protocol (one template for segmentation, the 7-template subset
    for classification); segmentation is scored twice, plain (``seg``) and with PAMR local consistency
    (``seg_lc``, the paper's "LC" rows).
    """
    from cocu.data.skips import SkipCounter
    from cocu.evaluation.benchmarks import CLS_TEMPLATES, get_benchmark, prompt_templates
    from cocu.evaluation.cls_eval import evaluate_classification, open_image_folder
    from cocu.evaluation.datasets import open_dataset
    from cocu.evaluation.dense_clip import load_seg_model
    from cocu.evaluation.seg_eval import SegEvalOptions, evaluate_segmentation

    zs = load_seg_model(str(model_dir), method, "cpu")
    report: dict[str, Any] = {"model": str(model_dir), "family": zs.family, "method": method}
    if zs.family == "groupvit" or method != "groupvit":
        spec = get_benchmark("folder")
        skips = SkipCounter()
        dataset = open_dataset(spec, world / "val", skips)
        proto = spec.protocol(zs.image_size)
        options = SegEvalOptions(save_predictions=predictions, diagnostics=True, progress=True)
        report["seg"] = evaluate_segmentation(zs, dataset, proto, options, skips).to_json()
        lc_proto = spec.protocol(zs.image_size, local_consistency=True)
        lc_data = open_dataset(spec, world / "val", SkipCounter())
        report["seg_lc"] = evaluate_segmentation(zs, lc_data, lc_proto, SegEvalOptions(progress=True), SkipCounter()).to_json()
    folder = open_image_folder(world / "classify")
    report["cls"] = evaluate_classification(zs, folder, prompt_templates(CLS_TEMPLATES), progress=True).to_json()
    atomic_write_json(out_json, report)
    return {
        "miou": report.get("seg", {}).get("miou"),
        "top1": report["cls"]["top1"],
    }

