"""`cocu demo`: run every stage (cached), then write ``results.json`` and ``report.html``.

Layout under ``DIR``: ``world/`` (the synth output), ``models/clip/``, ``models/groupvit-<row>/``,
``curation/<row>/``, ``eval/<row>.json`` (+ ``eval/<row>/`` with the val label maps), ``stages/`` (the
done-markers), ``concepts.json``, ``results.json``, ``report.html``. With several seeds the first seed
uses these names and every other seed ``S`` adds ``-seedS`` (``models/groupvit-cocu-seed1/``,
``eval/cocu-seed1.json``); the world, the CLIP and the curation are made once, with the first seed.
Budget multiples other than 1 add ``-x<B>`` (``models/groupvit-cocu-x2/``); the teacher CLIP read densely
is ``eval/teacher-dense.json``; extra teachers are ``models/clip-t<STEPS>/`` curating into
``curation/t<STEPS>/<row>/``; ``concept_rates.json`` and ``strength/<teacher>.json`` hold the studies'
inputs (see :mod:`cocu.demo.paths` and :mod:`cocu.demo.studies`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from cocu.demo import steps
from cocu.demo.concepts import DRAWS
from cocu.demo.metrics import CONCEPT_KEYS, EVAL_KEYS, aggregate_seeds, gap_closed
from cocu.demo.paths import class_kinds, class_names, curation_dir, eval_paths, model_dir, run_name, teacher_dir
from cocu.demo.settings import ARCHIVE, BUDGET_ROWS, ROWS, TEACHER_DENSE, DemoSettings, row, validate
from cocu.demo.stages import StageNotRun, StageRecord, StageRunner
from cocu.demo.studies import CONCEPT_ROWS, budget_curve, concept_summary, per_concept
from cocu.utils.atomic import atomic_write_json, atomic_write_text
from cocu.utils.environment import environment, group_by_environment

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
REPORT_FILE = "report.html"
CONCEPTS_FILE = "concepts.json"
RATES_FILE = "concept_rates.json"
LAYOUT_VERSION = 1


@dataclass
class DemoOutcome:
    results: dict[str, Any]
    results_path: Path
    report_path: Path
    summary: str


class Demo:
    """The demo's stages over one output folder, each cached by :class:`StageRunner`."""

    def __init__(self, settings: DemoSettings) -> None:
        self.s = settings
        self.out = settings.out
        self.runner = StageRunner(self.out, settings.force, settings.collect_only)
        self.missing: list[str] = []
        self.trained: dict[str, Path] = {}
        """Every model this demo trained or reused: stage name -> model folder (for ``train_environments``)."""

    def world(self) -> StageRecord:
        payload = {"v": LAYOUT_VERSION, "world": self.s.world, "seed": self.s.seed}
        return self.runner.run(
            "synth", payload, lambda: steps.make_world(self.s), [steps.world_dirs(self.out)["world"]], heavy=True
        )

    def clip(self, world: StageRecord, teacher_steps: int | None = None) -> tuple[StageRecord, StageRecord]:
        """Train and evaluate (classification) the main teacher CLIP, or an extra one of ``teacher_steps``."""
        out_dir = teacher_dir(self.out, teacher_steps)
        tag = out_dir.name
        overrides = steps.clip_overrides(self.s, out_dir, teacher_steps)
        payload = {"world": world.fingerprint, "config": steps.resolved_config(self.s.clip_config, overrides)}
        trained = self.runner.run(f"train-{tag}", payload,
                                  lambda: steps.train_model(self.s.clip_config, overrides), [out_dir], heavy=True)
        self.trained[f"train-{tag}"] = out_dir
        json_path = self.out / "eval" / f"{tag}.json"
        evaluated = self.runner.run(
            f"eval-{tag}",
            {"model": trained.fingerprint},
            lambda: steps.evaluate_model(out_dir, self.out / "world", json_path, None),
            [json_path],
        )
        return trained, evaluated

    def curate(self, clip: StageRecord, teacher_steps: int | None = None) -> dict[str, StageRecord]:
        """One curation run per archive row with the main teacher (or an extra one); rows after the first of
        an expansion reuse its embeddings and index (same encoder, same data), so only their archive is
        computed."""
        records: dict[str, StageRecord] = {}
        first: dict[str, str] = {}
        encoder = teacher_dir(self.out, teacher_steps)
        prefix = "curate-" if teacher_steps is None else f"curate-t{teacher_steps}-"
        for r in ROWS:
            if r.concepts != ARCHIVE:
                continue
            run_dir = curation_dir(self.out, r.name, teacher_steps)
            source = first.setdefault(r.expansion, r.name)
            reuse = None if source == r.name else curation_dir(self.out, source, teacher_steps)
            payload = {"clip": clip.fingerprint, "row": r, "neighbors": self.s.neighbors,
                       "labels": self.s.num_labels, "seed": self.s.seed,
                       "reuse": records[source].fingerprint if reuse is not None else None}
            if self.s.num_clusters is not None:
                payload["clusters"] = self.s.num_clusters
            if self.s.tau is not None:
                payload["tau"] = self.s.tau
            records[r.name] = self.runner.run(
                prefix + r.name, payload,
                lambda r=r, run_dir=run_dir, reuse=reuse: steps.curate_row(self.s, r, encoder, run_dir, reuse),
                [run_dir],
                heavy=True,
            )
        return records

    def train_and_eval(
        self, world: StageRecord, curated: dict[str, StageRecord]
    ) -> dict[int, dict[str, dict[int, dict]]]:
        """Per budget multiple, row name and seed: the evaluation figures (fractions) of each trained model.
        Budget 1 trains ``train_rows``, every other budget :data:`BUDGET_ROWS`; under ``collect_only`` a run
        not trained yet is left out (and named in ``self.missing``)."""
        figures: dict[int, dict[str, dict[int, dict]]] = {}
        for budget in self.s.curve_budgets:
            for seed in self.s.seeds:
                for name in self.s.rows_at(budget):
                    try:
                        result = self.train_one(world, curated, row(name), seed, budget)
                    except StageNotRun as missing:
                        self.missing.append(missing.name)
                        continue
                    figures.setdefault(budget, {}).setdefault(name, {})[seed] = result
        return figures

    def train_one(self, world: StageRecord, curated: dict[str, StageRecord], r, seed: int, budget: int) -> dict:
        rn = run_name(r.name, seed, self.s.seed, budget)
        mdir = model_dir(self.out, rn)
        overrides = steps.groupvit_overrides(self.s, r, mdir, seed, budget)
        upstream = curated[r.name].fingerprint if r.concepts == ARCHIVE else world.fingerprint
        trained = self.runner.run(
            f"train-{rn}",
            {"upstream": upstream, "config": steps.resolved_config(self.s.groupvit_config, overrides)},
            lambda: steps.train_model(self.s.groupvit_config, overrides),
            [mdir],
            heavy=True,
        )
        self.trained[f"train-{rn}"] = mdir
        json_path, pred_dir = eval_paths(self.out, rn)
        self.runner.run(
            f"eval-{rn}",
            {"model": trained.fingerprint},
            lambda: steps.evaluate_model(mdir, self.out / "world", json_path, pred_dir),
            [json_path, pred_dir],
        )
        return read_eval_figures(json_path)

    def teacher_dense(self, clip: StageRecord) -> dict[str, float | None]:
        """The teacher CLIP read densely (``dense_method``) on the val split, with the GroupViT protocol."""
        json_path, pred_dir = eval_paths(self.out, TEACHER_DENSE)
        method = self.s.dense_method
        self.runner.run(
            f"eval-{TEACHER_DENSE}",
            {"model": clip.fingerprint, "method": method},
            lambda: steps.evaluate_model(teacher_dir(self.out, None), self.out / "world", json_path, pred_dir,
                                         method),
            [json_path, pred_dir],
        )
        return read_eval_figures(json_path)

    def concepts(self, world: StageRecord, curated: dict[str, StageRecord]) -> dict[str, Any]:
        path = self.out / CONCEPTS_FILE
        text = {r.name: asdict(steps.row_train_config(self.s, r, model_dir(self.out, r.name), self.s.seed).text)
                for r in ROWS}
        payload = {"world": world.fingerprint, "curated": {k: v.fingerprint for k, v in curated.items()},
                   "labels": self.s.num_labels, "seed": self.s.seed, "text": text, "draws": DRAWS}
        self.runner.run("concepts", payload, lambda: self._concepts(path), [path])
        return json.loads(path.read_text("utf-8"))

    def _concepts(self, path: Path) -> dict[str, Any]:
        from cocu.curation.archive import read_archive
        from cocu.curation.vocab import load_vocabulary
        from cocu.demo.concepts import read_pretrain, row_concept_stats

        dirs = steps.world_dirs(self.out)
        samples = read_pretrain(dirs["pretrain"])
        vocab = load_vocabulary(dirs["vocab"])
        stats = {}
        for r in ROWS:
            text = steps.row_train_config(self.s, r, model_dir(self.out, r.name), self.s.seed).text
            archive = read_archive(self.out / "curation" / r.name) if r.concepts == ARCHIVE else None
            stats[r.name] = row_concept_stats(r, samples, archive, vocab, self.s.num_labels, text.tau,
                                              text.oracle_pick, self.s.seed)
        atomic_write_json(path, {"images": len(samples), "rows": stats})
        return {"images": len(samples)}

    def concept_rates(self, world: StageRecord, curated: dict[str, StageRecord]) -> dict[str, Any]:
        """Per class of the world: caption mention rate and CoCu archive recall on the pretrain split."""
        path = self.out / RATES_FILE
        payload = {"world": world.fingerprint, "cocu": curated["cocu"].fingerprint if "cocu" in curated else None}
        self.runner.run("concept-rates", payload, lambda: self._concept_rates(path, "cocu" in curated), [path])
        return json.loads(path.read_text("utf-8"))

    def _concept_rates(self, path: Path, with_archive: bool) -> dict[str, Any]:
        from cocu.curation.archive import read_archive
        from cocu.curation.vocab import load_vocabulary
        from cocu.demo.concepts import read_pretrain
        from cocu.demo.studies import concept_rates

        dirs = steps.world_dirs(self.out)
        archive = read_archive(curation_dir(self.out, "cocu")) if with_archive else None
        rates = concept_rates(read_pretrain(dirs["pretrain"]), archive, load_vocabulary(dirs["vocab"]),
                              class_names(dirs["val"]))
        atomic_write_json(path, rates)
        return {"classes": len(rates)}

    def teacher_strength(
        self, world: StageRecord, main: tuple[StageRecord, StageRecord], curated: dict[str, StageRecord]
    ) -> list[dict[str, Any]]:
        """The curation ablation under the main teacher and each of ``teacher_steps`` (an extra teacher of
        the main teacher's step count is the main teacher): per teacher its steps, classification top-1
        and per curated row the archive, top-L and sampled recall/precision."""
        out = []
        for t in sorted({self.s.clip.steps, *self.s.teacher_steps}):
            extra = None if t == self.s.clip.steps else t
            try:
                clip, _ = main if extra is None else self.clip(world, extra)
                records = curated if extra is None else self.curate(clip, extra)
            except StageNotRun as missing:
                self.missing.append(missing.name)
                continue
            tag = teacher_dir(self.out, extra).name
            path = self.out / "strength" / f"{tag}.json"
            payload = {"curated": {k: v.fingerprint for k, v in records.items()}, "labels": self.s.num_labels,
                       "tau": self.s.tau, "seed": self.s.seed, "draws": DRAWS}
            self.runner.run(f"strength-{tag}", payload, lambda path=path, extra=extra: self._strength(path, extra),
                            [path])
            top1 = read_eval_figures(self.out / "eval" / f"{tag}.json")["top1"]
            out.append({"steps": t, "teacher_images": self.s.world.teacher, "main": extra is None, "top1": top1,
                        "rows": json.loads(path.read_text("utf-8"))})
        return out

    def _strength(self, path: Path, teacher_steps: int | None) -> dict[str, Any]:
        from cocu.curation.archive import read_archive
        from cocu.curation.vocab import load_vocabulary
        from cocu.demo.concepts import read_pretrain
        from cocu.demo.studies import teacher_row_stats

        dirs = steps.world_dirs(self.out)
        samples = read_pretrain(dirs["pretrain"])
        vocab = load_vocabulary(dirs["vocab"])
        stats = {}
        for r in ROWS:
            if r.concepts != ARCHIVE:
                continue
            text = steps.row_train_config(self.s, r, model_dir(self.out, r.name), self.s.seed).text
            archive = read_archive(curation_dir(self.out, r.name, teacher_steps))
            stats[r.name] = teacher_row_stats(r, samples, archive, vocab, self.s.num_labels, text.tau,
                                              text.oracle_pick, self.s.seed)
        atomic_write_json(path, stats)
        return {"rows": list(stats)}

    def train_environments(self) -> list[dict[str, Any]]:
        """The trained models grouped by the environment that trained them (more than one group: the rows
        were trained on different kernels or versions and differ by more than their configs)."""
        from cocu.train.trainer import RESULT_FILE

        envs = {}
        for stage, folder in self.trained.items():
            path = folder / RESULT_FILE
            envs[stage] = json.loads(path.read_text("utf-8")).get("environment") if path.is_file() else None
        return group_by_environment(envs)

    def class_iou(self) -> dict[str, dict[int, dict[str, float | None]]]:
        """Per row of the per-concept study and seed (budget 1): the val per-class IoU as fractions."""
        out: dict[str, dict[int, dict[str, float | None]]] = {}
        for name in CONCEPT_ROWS:
            for seed in self.s.seeds:
                json_path = eval_paths(self.out, run_name(name, seed, self.s.seed))[0]
                if not json_path.is_file() or name not in self.s.train_rows:
                    continue
                raw = json.loads(json_path.read_text("utf-8")).get("seg", {}).get("per_class_iou", {})
                out.setdefault(name, {})[seed] = {c: None if v is None else v / 100.0 for c, v in raw.items()}
        return out


def read_eval_figures(json_path: Path) -> dict[str, float | None]:
    """The row metrics of one ``eval/<row>.json``, as fractions in [0, 1] (the evaluation writes percent)."""
    raw = json.loads(json_path.read_text("utf-8"))
    seg, cls = raw.get("seg", {}), raw.get("cls", {})

    def frac(value: Any) -> float | None:
        return None if value is None else float(value) / 100.0

    return {
        "miou": frac(seg.get("miou")),
        "miou_whole_image": frac(seg.get("miou_whole_image")),
        "miou_lc": frac(raw.get("seg_lc", {}).get("miou")),
        "miou_group_bound": frac(seg.get("miou_group_bound")),
        "pixel_acc": frac(seg.get("pixel_acc")),
        "top1": frac(cls.get("top1")),
        "top5": frac(cls.get("top5")),
    }


def build_results(
    settings: DemoSettings,
    concept_stats: dict[str, Any],
    figures: dict[str, dict[int, dict]],
    timings: dict[str, Any],
    extra: dict[str, Any],
    dense: dict[str, float | None] | None = None,
) -> dict[str, Any]:
    """The ``results.json`` object (see docs/DESIGN.md, ``cocu.demo``); ``dense``: the evaluation figures of
    the teacher CLIP read densely (the ``teacher-dense`` row, after the ablation rows)."""
    rows = []
    for r in ROWS:
        cs = concept_stats["rows"].get(r.name, {})
        done = figures.get(r.name, {})
        per_seed = [{"seed": seed, **done[seed]} for seed in settings.seeds if seed in done]
        agg = aggregate_seeds(per_seed, EVAL_KEYS)
        rows.append({
            "name": r.name,
            "title": r.title,
            "trained": bool(per_seed),
            "expansion": r.expansion,
            "ranking": r.ranking,
            "sampling": r.sampling,
            "concepts": r.concepts,
            **{k: cs.get(k) for k in CONCEPT_KEYS},
            **{k: agg[k] for k in EVAL_KEYS},
            "std": agg["std"],
            "per_seed": per_seed,
            "concept_counts": cs.get("counts"),
            "sampled_concept_counts": cs.get("sampled_counts"),
        })
    if dense is not None:
        rows.append({
            "name": TEACHER_DENSE,
            "title": f"Teacher CLIP read densely ({settings.dense_method}), no pre-training",
            "trained": False,
            "method": settings.dense_method,
            "expansion": None,
            "ranking": None,
            "sampling": None,
            "concepts": None,
            **{k: None for k in CONCEPT_KEYS},
            **{k: dense.get(k) for k in EVAL_KEYS},
            "std": {k: None for k in EVAL_KEYS},
            "per_seed": [],
            "concept_counts": None,
            "sampled_concept_counts": None,
        })
    by_name = {r["name"]: r for r in rows}
    per_seed_gap = []
    for seed in settings.seeds:
        vals = [figures.get(n, {}).get(seed, {}).get("miou") for n in ("baseline", "cocu", "oracle")]
        per_seed_gap.append({"seed": seed, "gap_closed": gap_closed(*vals)})
    return {
        "version": LAYOUT_VERSION,
        "seed": settings.seed,
        "seeds": list(settings.seeds),
        "units": "recall, precision, mIoU, accuracy and gap_closed are fractions in [0, 1]",
        "gap_closed": gap_closed(*(by_name[n]["miou"] for n in ("baseline", "cocu", "oracle"))),
        "gap_closed_per_seed": per_seed_gap,
        "rows": rows,
        "settings": settings.to_dict(),
        "timings": timings,
        **extra,
    }


def format_summary(results: dict[str, Any]) -> str:
    """A plain-text table of the rows for the terminal."""

    def pct(v: float | None) -> str:
        return "    -" if v is None else f"{100 * v:5.1f}"

    lines = ["row          GT-recall  GT-prec  sampled-recall  over-10-steps  mIoU  top-1"]
    for r in results["rows"]:
        lines.append(
            f"{r['name']:<12} {pct(r['recall']):>9} {pct(r['precision']):>8} {pct(r['sampled_recall']):>15} "
            f"{pct(r.get('sampled_coverage')):>14} {pct(r['miou']):>5} {pct(r['top1']):>6}"
        )
    gap = results.get("gap_closed")
    lines.append(f"baseline-to-oracle mIoU gap closed by CoCu: {'undefined' if gap is None else f'{100 * gap:.0f}%'}")
    total = results.get("timings", {}).get("total", {}).get("seconds")
    if total is not None:
        lines.append(f"total time {total:.0f} s")
    return "\n".join(lines)


def run_demo(settings: DemoSettings) -> DemoOutcome:
    """Run (or resume) the whole demo into ``settings.out``; see the module docstring for the layout."""
    validate(settings)
    before = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        return _run(settings)
    finally:
        torch.set_num_threads(before)


def _run(settings: DemoSettings) -> DemoOutcome:
    from cocu.demo.collect import build_report_data
    from cocu.demo.report import render_report

    started = time.perf_counter()
    settings.out.mkdir(parents=True, exist_ok=True)
    demo = Demo(settings)
    world = demo.world()
    clip = demo.clip(world)
    curated = demo.curate(clip[0])
    if settings.jobs > 1 and not settings.collect_only:
        from cocu.demo.parallel import prewarm

        prewarm(settings, world, clip[0], curated)
    figures = demo.train_and_eval(world, curated)
    dense = demo.teacher_dense(clip[0])
    concept_stats = demo.concepts(world, curated)
    dirs = steps.world_dirs(settings.out)
    class_iou = demo.class_iou()
    concept_entries = per_concept(demo.concept_rates(world, curated), class_kinds(dirs["world_json"]), class_iou)
    extra = {
        "world": world.info.get("stats"),
        "clip": {"top1": read_eval_figures(settings.out / "eval" / "clip.json")["top1"]},
        "curation": {name: rec.info.get("summary") for name, rec in curated.items()},
        "budget_curve": budget_curve(figures, settings.groupvit.steps, BUDGET_ROWS),
        "per_concept": concept_entries,
        "per_concept_summary": concept_summary(concept_entries, class_iou),
        "teacher_strength": demo.teacher_strength(world, clip, curated),
        "environment": environment(),
        "train_environments": demo.train_environments(),
    }
    extra["missing"] = demo.missing
    timings = demo.runner.timings()
    timings["total"] = {"seconds": round(time.perf_counter() - started, 3), "cached": False}
    report_start = time.perf_counter()
    results = build_results(settings, concept_stats, figures.get(1, {}), timings, extra, dense)
    report_html = render_report(build_report_data(settings, results))
    timings["report"] = {"seconds": round(time.perf_counter() - report_start, 3), "cached": False}
    timings["total"] = {"seconds": round(time.perf_counter() - started, 3), "cached": False}
    results["timings"] = timings
    results_path = settings.out / RESULTS_FILE
    report_path = settings.out / REPORT_FILE
    atomic_write_json(results_path, results)
    atomic_write_text(report_path, report_html)
    return DemoOutcome(results, results_path, report_path, format_summary(results))
