"""Gather what the report shows from a demo folder: loss curves, gallery, overlays, per-class IoU and the
studies' figures (budget curve, per-concept gains, teacher strength).

Everything here reads files the stages wrote (metrics.jsonl, archives, shards, val labels, saved
predictions, eval JSON); no model runs at report time.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cocu.demo import figures
from cocu.demo.paths import class_kinds, class_names, eval_paths, model_dir
from cocu.demo.report import Chip, ClassIoU, GalleryItem, OverlayItem, ReportData
from cocu.demo.settings import TEACHER_DENSE, DemoSettings, row
from cocu.demo.steps import row_train_config, world_dirs

logger = logging.getLogger(__name__)

CURVE_ROWS = ("baseline", "cocu", "oracle")
OVERLAY_ROWS = ("baseline", "cocu", "oracle", TEACHER_DENSE)
GALLERY_ROW = "cocu"
IMAGE_SIDE = 192
ALPHA = 0.7


def _loss_curves(settings: DemoSettings, trained: list[str]) -> bytes | None:
    from cocu.train.metrics import METRICS_FILE, read_metrics

    total: dict[str, tuple[list[int], list[float]]] = {}
    caption: dict[str, tuple[list[int], list[float]]] = {}
    for name in CURVE_ROWS:
        if name not in trained:
            continue
        records = read_metrics(model_dir(settings.out, name) / METRICS_FILE)
        for target, key in ((total, "loss"), (caption, "loss_caption")):
            pairs = [(int(r["step"]), float(r[key])) for r in records if isinstance(r.get(key), (int, float))]
            if pairs:
                target[name] = ([p[0] for p in pairs], [p[1] for p in pairs])
    if not total:
        return None
    return figures.loss_curves_png(
        {"total loss (eq. 5)": total, "image-caption loss (eq. 1-2)": caption},
        "GroupViT pre-training on the synthetic world",
    )


def _gallery(settings: DemoSettings) -> list[GalleryItem]:
    from cocu.curation.archive import read_archive
    from cocu.curation.vocab import load_vocabulary
    from cocu.data.reader import iter_samples

    dirs = world_dirs(settings.out)
    archive = read_archive(settings.out / "curation" / GALLERY_ROW)
    vocab = load_vocabulary(dirs["vocab"])
    spec = row(GALLERY_ROW)
    tau = row_train_config(settings, spec, model_dir(settings.out, spec.name), settings.seed).text.tau
    items = []
    for s in iter_samples(str(dirs["pretrain"])):
        if len(items) >= settings.gallery:
            break
        truth = {k: float(v) for k, v in ((s.meta or {}).get("concepts") or {}).items() if v > 0}
        arch = archive.get(s.key)
        caption_concepts = vocab.extract(s.caption)
        curated = list(arch.concepts) if arch else []
        sampled = _one_draw(arch, settings, spec.sampling or "naive", tau) if arch else set()
        items.append(GalleryItem(
            key=s.key,
            image_png=figures.png_bytes(figures.upscale(s.image, IMAGE_SIDE)),
            caption=s.caption,
            caption_concepts=[Chip(c, "hit" if c in truth else "false") for c in caption_concepts],
            curated=[
                Chip(c, "hit" if c in truth else "false", f"{score:.2f} \u00b7 c{cl}", c in sampled)
                for c, score, cl in zip(arch.concepts, arch.scores, arch.clusters)
            ] if arch else [],
            truth=[
                Chip(c, "found" if c in curated or c in caption_concepts else "missed", f"{100 * f:.0f}%")
                for c, f in sorted(truth.items(), key=lambda kv: -kv[1])
            ],
        ))
    return items


def _one_draw(arch: Any, settings: DemoSettings, sampling: str, tau: float) -> set[str]:
    """The concepts one training step would use (one draw of the row's sampler)."""
    from cocu.curation.sampling import sample_concepts

    rng = np.random.default_rng([settings.seed, 7])
    return set(sample_concepts(arch, settings.num_labels, sampling, tau, rng))


def _colours(n: int) -> np.ndarray:
    """The synthetic world's own class colours (sky blue, grass green, ...) when they cover ``n`` classes."""
    from cocu.synth.contact import PALETTE

    if len(PALETTE) >= n:
        return np.asarray(PALETTE[:n], dtype=np.uint8)
    return figures.palette(n)


def _val_meta(val: Path) -> dict[str, dict]:
    """``val/meta.jsonl`` by key (caption, true concepts, caption concepts); empty if the file is absent."""
    path = val / "meta.jsonl"
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text("utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out[str(row.get("key"))] = row
    return out


def _overlays(settings: DemoSettings, trained: list[str]) -> tuple[list[OverlayItem], list]:
    dirs = world_dirs(settings.out)
    val = dirs["val"]
    names = class_names(val)
    colours = _colours(len(names))
    keys = [k.strip() for k in (val / "ImageSets" / "Segmentation" / "val.txt").read_text("utf-8").splitlines()]
    keys = [k for k in keys if k][: settings.overlays]
    meta = _val_meta(val)
    shown = [n for n in OVERLAY_ROWS if n in trained]
    items = []
    present: set[int] = set()
    for key in keys:
        image = np.asarray(Image.open(val / "JPEGImages" / f"{key}.jpg").convert("RGB"))
        truth = np.asarray(Image.open(val / "SegmentationClass" / f"{key}.png"))
        present.update(int(v) for v in np.unique(truth) if v < len(names))
        preds = {}
        for name in shown:
            path = eval_paths(settings.out, name)[1] / f"{key}.png"
            if not path.is_file():
                logger.warning("report: no saved prediction %s; overlay left out", path)
                continue
            pred = np.asarray(Image.open(path))
            present.update(int(v) for v in np.unique(pred) if v < len(names))
            preds[name] = figures.png_bytes(figures.upscale(figures.overlay(image, pred, colours, ALPHA), IMAGE_SIDE))
        info = meta.get(key, {})
        said = set(info.get("caption_concepts") or [])
        items.append(OverlayItem(
            key=key,
            image_png=figures.png_bytes(figures.upscale(image, IMAGE_SIDE)),
            truth_png=figures.png_bytes(figures.upscale(figures.overlay(image, truth, colours, ALPHA), IMAGE_SIDE)),
            predictions=preds,
            caption=str(info.get("caption", "")),
            unmentioned=[c for c in (info.get("concepts") or {}) if c not in said],
        ))
    legend = [(names[i], tuple(int(x) for x in colours[i])) for i in sorted(present)]
    return items, legend


def _class_iou(settings: DemoSettings, trained: list[str]) -> list[ClassIoU]:
    dirs = world_dirs(settings.out)
    kinds = class_kinds(dirs["world_json"])
    per_model = {}
    for name in trained:
        raw = json.loads(eval_paths(settings.out, name)[0].read_text("utf-8"))
        per_model[name] = raw.get("seg", {}).get("per_class_iou", {})
    out = []
    for cls in class_names(dirs["val"]):
        out.append(ClassIoU(
            name=cls,
            kind=kinds.get(cls, "?"),
            iou={m: (None if v.get(cls) is None else v[cls] / 100.0) for m, v in per_model.items()},
        ))
    return out


def build_report_data(settings: DemoSettings, results: dict[str, Any]) -> ReportData:
    """Everything :func:`cocu.demo.report.render_report` needs, read from ``settings.out``."""
    trained = [r["name"] for r in results["rows"] if r["trained"]]
    dense = [r["name"] for r in results["rows"] if r["name"] == TEACHER_DENSE and r.get("miou") is not None]
    evaluated = trained + dense
    overlays, legend = _overlays(settings, evaluated)
    notes = []
    if settings.quick:
        notes.append("Quick run: tiny world and budgets; the numbers only show that every stage runs.")
    if len(settings.seeds) > 1:
        notes.append(f"Pictures and per-class IoU show seed {settings.seed}; the table averages "
                     f"{len(settings.seeds)} seeds.")
    curve = (results.get("budget_curve") or {}).get("points") or []
    concepts = results.get("per_concept") or []
    strength = results.get("teacher_strength") or []
    return ReportData(
        results=results,
        loss_png=_loss_curves(settings, trained),
        gallery=_gallery(settings),
        overlays=overlays,
        legend=legend,
        class_iou=_class_iou(settings, evaluated),
        notes=notes,
        budget_png=figures.budget_curve_png(curve) if curve else None,
        concept_png=figures.concept_gain_png(concepts) if any(e.get("gain") is not None for e in concepts) else None,
        strength_png=figures.teacher_strength_png(strength) if strength else None,
    )
