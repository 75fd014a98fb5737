"""The demo's three studies as pure functions over what the stages wrote.

- :func:`budget_curve`: per row and budget multiple, the evaluation figures' mean and sample std over seeds
  and the share of the baseline-to-oracle mIoU gap the row closes.
- :func:`concept_rates` / :func:`per_concept`: per class of the world, how often captions name it when it
  is in the image (caption mention rate), how often the CoCu archive holds it (archive recall), and each
  trained row's IoU on it.
- :func:`teacher_row_stats`: the curation ablation's ground-truth recall/precision of the archive, of its
  top-L concepts and of the per-step samples, for one teacher.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from cocu.curation.archive import ArchiveRow
from cocu.demo.concepts import PretrainSample, row_concept_stats
from cocu.demo.metrics import EVAL_KEYS, aggregate_seeds, gap_closed, score_concepts
from cocu.demo.settings import AblationRow

CURVE_KEYS: tuple[str, ...] = ("miou", "miou_lc", "miou_whole_image", "miou_group_bound", "top1")
CONCEPT_ROWS: tuple[str, ...] = ("baseline", "cocu", "oracle")


def budget_curve(
    figures: Mapping[int, Mapping[str, Mapping[int, Mapping[str, float | None]]]],
    base_steps: int,
    rows: Sequence[str],
) -> dict[str, Any]:
    """``figures[budget][row][seed]`` (evaluation figures as fractions) -> the ``budget_curve`` object:
    ``points``, one per (row, budget) with any trained seed, each with the mean of :data:`CURVE_KEYS`, their
    ``std`` (sample std over seeds, null below two), the ``seeds`` it averages and ``gap_closed``
    (``(row - baseline) / (oracle - baseline)`` on the mean mIoU at that budget; null without a gap)."""
    points = []
    budgets = sorted(figures)
    for budget in budgets:
        per_row = figures[budget]
        means = {}
        for name in rows:
            done = per_row.get(name, {})
            if not done:
                continue
            seeds = sorted(done)
            agg = aggregate_seeds([done[s] for s in seeds], EVAL_KEYS)
            means[name] = agg["miou"]
            points.append({
                "row": name,
                "budget": budget,
                "steps": budget * base_steps,
                "seeds": seeds,
                **{k: agg[k] for k in CURVE_KEYS},
                "std": {k: agg["std"][k] for k in CURVE_KEYS},
            })
        base, oracle = means.get("baseline"), means.get("oracle")
        for p in points:
            if p["budget"] == budget:
                p["gap_closed"] = gap_closed(base, means.get(p["row"]), oracle)
    return {"base_steps": base_steps, "budgets": budgets, "rows": list(rows), "points": points}


def concept_rates(
    samples: Sequence[PretrainSample],
    archive: Mapping[str, ArchiveRow] | None,
    vocab: Any,
    classes: Sequence[str],
) -> dict[str, dict[str, Any]]:
    """Per class: ``images`` (pretrain images holding it), ``caption_mention_rate`` (share of those whose
    caption names it) and ``archive_recall`` (share of those whose CoCu archive row holds it; an image
    without an archive row counts as a miss). Rates are null for a class in no image."""
    holding = {c: 0 for c in classes}
    named = {c: 0 for c in classes}
    archived = {c: 0 for c in classes}
    for s in samples:
        said = set(vocab.extract(s.caption))
        kept = set(archive[s.key].concepts) if archive is not None and s.key in archive else set()
        for c in s.truth:
            if c not in holding:
                continue
            holding[c] += 1
            named[c] += c in said
            archived[c] += c in kept
    return {
        c: {
            "images": holding[c],
            "caption_mention_rate": named[c] / holding[c] if holding[c] else None,
            "archive_recall": (archived[c] / holding[c] if holding[c] else None) if archive is not None else None,
        }
        for c in classes
    }


def per_concept(
    rates: Mapping[str, Mapping[str, Any]],
    kinds: Mapping[str, str],
    class_iou: Mapping[str, Mapping[int, Mapping[str, float | None]]],
) -> list[dict[str, Any]]:
    """One entry per class of ``rates``: its rates, kind (stuff/thing) and, per row of ``class_iou``
    (``row -> seed -> class -> IoU fraction``), the IoU averaged over seeds (``iou``) and ``gain``
    (CoCu - baseline IoU; null when either is missing)."""
    out = []
    for name, rate in rates.items():
        iou = {}
        for row_name, per_seed in class_iou.items():
            vals = [v.get(name) for v in per_seed.values()]
            kept = [float(v) for v in vals if v is not None]
            iou[row_name] = sum(kept) / len(kept) if kept else None
        base, cocu = iou.get("baseline"), iou.get("cocu")
        out.append({
            "name": name,
            "kind": kinds.get(name, "?"),
            **rate,
            "iou": iou,
            "gain": None if base is None or cocu is None else cocu - base,
        })
    return out


def top_l(archive: Mapping[str, ArchiveRow], num_labels: int) -> dict[str, list[str]]:
    """The ``num_labels`` best-ranked concepts of each archive row (the archive is sorted by score)."""
    return {key: list(r.concepts[:num_labels]) for key, r in archive.items()}


def teacher_row_stats(
    row: AblationRow,
    samples: list[PretrainSample],
    archive: dict[str, ArchiveRow],
    vocab: Any,
    num_labels: int,
    tau: float,
    oracle_pick: str,
    seed: int,
) -> dict[str, Any]:
    """One curated row under one teacher: archive ``recall``/``precision``, ``top_l_recall``/``top_l_precision``
    and the per-step ``sampled_recall``/``sampled_precision``/``sampled_coverage`` (see
    :func:`cocu.demo.concepts.row_concept_stats`)."""
    stats = row_concept_stats(row, samples, archive, vocab, num_labels, tau, oracle_pick, seed)
    truth = {s.key: s.truth.keys() for s in samples}
    best = score_concepts(top_l({s.key: archive[s.key] for s in samples if s.key in archive}, num_labels), truth)
    keys = ("recall", "precision", "sampled_recall", "sampled_precision", "sampled_coverage")
    return {**{k: stats[k] for k in keys}, "top_l_recall": best.recall, "top_l_precision": best.precision}
