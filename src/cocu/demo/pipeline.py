"""`cocu demo`: run every stage (cached), then write ``results.json`` and ``report.html``.

Layout under ``DIR``: ``world/`` (the synth output), ``models/clip/``, ``models/groupvit-<row>/``,
``curation/<row>/``, ``eval/<row>.json`` (+ ``eval/<row>/`` with the val label maps), ``stages/`` (the
done-markers), ``concepts.json``, ``results.json``, ``report.html``. With several seeds the first seed
uses these names and every other seed ``S`` adds ``-seedS`` (``models/groupvit-cocu-seed1/``,
``eval/cocu-seed1.json``); the world, the CLIP and the curation are made once, with the first seed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from cocu.demo import steps
from cocu.demo.concepts import DRAWS
from cocu.demo.metrics import CONCEPT_KEYS, EVAL_KEYS, aggregate_seeds, gap_closed
from cocu.demo.settings import ARCHIVE, ROWS, DemoSettings, row, validate
from cocu.demo.stages import StageRecord, StageRunner
from cocu.utils.atomic import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
REPORT_FILE = "report.html"
CONCEPTS_FILE = "concepts.json"
LAYOUT_VERSION = 1


@dataclass
class DemoOutcome:
    results: dict[str, Any]
    results_path: Path
    report_path: Path
    summary: str


def run_name(row_name: str, seed: int, base_seed: int) -> str:
    """``cocu`` for the base seed, ``cocu-seed1`` for another seed."""
    return row_name if seed == base_seed else f"{row_name}-seed{seed}"


def model_dir(out: Path, name: str) -> Path:
    return out / "models" / f"groupvit-{name}"


def eval_paths(out: Path, name: str) -> tuple[Path, Path]:
    """``eval/<name>.json`` and the folder of its val predictions."""
    return out / "eval" / f"{name}.json", out / "eval" / name


class _Demo:
    def __init__(self, settings: DemoSettings) -> None:
        self.s = settings
        self.out = settings.out
        self.runner = StageRunner(self.out, settings.force)

    def world(self) -> StageRecord:
        payload = {"v": LAYOUT_VERSION, "world": self.s.world, "seed": self.s.seed}
        return self.runner.run(
            "synth", payload, lambda: steps.make_world(self.s), [steps.world_dirs(self.out)["world"]]
        )

    def clip(self, world: StageRecord) -> tuple[StageRecord, StageRecord]:
        out_dir = self.out / "models" / "clip"
        overrides = steps.clip_overrides(self.s, out_dir)
        payload = {"world": world.fingerprint, "config": steps.resolved_config(self.s.clip_config, overrides)}
        trained = self.runner.run("train-clip", payload, lambda: steps.train_model(self.s.clip_config, overrides),
                                  [out_dir])
        json_path = self.out / "eval" / "clip.json"
        evaluated = self.runner.run(
            "eval-clip",
            {"model": trained.fingerprint},
            lambda: steps.evaluate_model(out_dir, self.out / "world", json_path, None),
            [json_path],
        )
        return trained, evaluated

    def curate(self, clip: StageRecord) -> dict[str, StageRecord]:
        """One curation run per archive row; rows after the first of an expansion reuse its embeddings and
        index (same encoder, same data), so only their archive is computed."""
        records: dict[str, StageRecord] = {}
        first: dict[str, str] = {}
        for r in ROWS:
            if r.concepts != ARCHIVE:
                continue
            run_dir = self.out / "curation" / r.name
            source = first.setdefault(r.expansion, r.name)
            reuse = None if source == r.name else self.out / "curation" / source
            payload = {"clip": clip.fingerprint, "row": r, "neighbors": self.s.neighbors,
                       "labels": self.s.num_labels, "seed": self.s.seed,
                       "reuse": records[source].fingerprint if reuse is not None else None}
            records[r.name] = self.runner.run(
                f"curate-{r.name}", payload,
                lambda r=r, run_dir=run_dir, reuse=reuse: steps.curate_row(
                    self.s, r, self.out / "models" / "clip", run_dir, reuse
                ),
                [run_dir],
            )
        return records

    def train_and_eval(self, world: StageRecord, curated: dict[str, StageRecord]) -> dict[str, dict[int, dict]]:
        """Per row name and seed: the evaluation figures (fractions) of each trained model."""
        figures: dict[str, dict[int, dict]] = {}
        for seed in self.s.seeds:
            for name in self.s.train_rows:
                r = row(name)
                rn = run_name(name, seed, self.s.seed)
                mdir = model_dir(self.out, rn)
                overrides = steps.groupvit_overrides(self.s, r, mdir, seed)
                upstream = curated[name].fingerprint if r.concepts == ARCHIVE else world.fingerprint
                trained = self.runner.run(
                    f"train-{rn}",
                    {"upstream": upstream, "config": steps.resolved_config(self.s.groupvit_config, overrides)},
                    lambda overrides=overrides: steps.train_model(self.s.groupvit_config, overrides),
                    [mdir],
                )
                json_path, pred_dir = eval_paths(self.out, rn)
                self.runner.run(
                    f"eval-{rn}",
                    {"model": trained.fingerprint},
                    lambda mdir=mdir, json_path=json_path, pred_dir=pred_dir: steps.evaluate_model(
                        mdir, self.out / "world", json_path, pred_dir
                    ),
                    [json_path, pred_dir],
                )
                figures.setdefault(name, {})[seed] = read_eval_figures(json_path)
        return figures

    def concepts(self, world: StageRecord, curated: dict[str, StageRecord]) -> dict[str, Any]:
        path = self.out / CONCEPTS_FILE
        text = {r.name: asdict(steps.row_train_config(self.s, r, model_dir(self.out, r.name), self.s.seed).text)
                for r in ROWS}
        payload = {"world": world.fingerprint, "curated": {k: v.fingerprint for k, v in curated.items()},
                   "labels": self.s.num_labels, "seed": self.s.seed, "text": text, "draws": DRAWS}
        self.runner.run("concepts", payload, lambda: self._concepts(path), [path])
        import json

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


def read_eval_figures(json_path: Path) -> dict[str, float | None]:
    """The row metrics of one ``eval/<row>.json``, as fractions in [0, 1] (the evaluation writes percent)."""
    import json

    raw = json.loads(json_path.read_text("utf-8"))
    seg, cls = raw.get("seg", {}), raw.get("cls", {})

    def frac(value: Any) -> float | None:
        return None if value is None else float(value) / 100.0

    return {
        "miou": frac(seg.get("miou")),
        "miou_whole_image": frac(seg.get("miou_whole_image")),
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
) -> dict[str, Any]:
    """The ``results.json`` object (see docs/DESIGN.md, ``cocu.demo``)."""
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
    demo = _Demo(settings)
    world = demo.world()
    clip, clip_eval = demo.clip(world)
    curated = demo.curate(clip)
    figures = demo.train_and_eval(world, curated)
    concept_stats = demo.concepts(world, curated)
    extra = {
        "world": world.info.get("stats"),
        "clip": {"top1": read_eval_figures(settings.out / "eval" / "clip.json")["top1"]},
        "curation": {name: rec.info.get("summary") for name, rec in curated.items()},
    }
    timings = demo.runner.timings()
    timings["total"] = {"seconds": round(time.perf_counter() - started, 3), "cached": False}
    report_start = time.perf_counter()
    results = build_results(settings, concept_stats, figures, timings, extra)
    report_html = render_report(build_report_data(settings, results))
    timings["report"] = {"seconds": round(time.perf_counter() - report_start, 3), "cached": False}
    timings["total"] = {"seconds": round(time.perf_counter() - started, 3), "cached": False}
    results["timings"] = timings
    results_path = settings.out / RESULTS_FILE
    report_path = settings.out / REPORT_FILE
    atomic_write_json(results_path, results)
    atomic_write_text(report_path, report_html)
    return DemoOutcome(results, results_path, report_path, format_summary(results))
