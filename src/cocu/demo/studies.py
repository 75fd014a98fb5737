"""The demo's three studies as pure functions over what the stages wrote.

- :func:`budget_curve`: per row and budget multiple, the evaluation figures' mean and sample std over seeds
  and the share of the baseline-to-oracle mIoU gap the row closes.
- :func:`concept_rates` / :func:`per_concept`: per class of the world, how often captions name it when it
  is in the image (caption mention rate), how often the CoCu archive holds it (archive recall), and each
  trained row's IoU on it; :func:`concept_summary` condenses that per kind (stuff/thing) and seed, with the
  correlation of the gain with the mention rate.
- :func:`teacher_row_stats`: the curation ablation's ground-truth recall/precision of the archive, of its
  top-L concepts and of the per-step samples, for one teacher.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from cocu.curation.archive import ArchiveRow
from cocu.demo.concepts import PretrainSample, row_concept_stats
from cocu.demo.metrics import EVAL_KEYS, aggregate_seeds, gap_closed, mean_std, score_concepts
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


def concept_summary(
    entries: Sequence[Mapping[str, Any]],
    class_iou: Mapping[str, Mapping[int, Mapping[str, float | None]]],
) -> dict[str, Any]:
    """The per-concept study in a few numbers: per kind (``stuff``/``thing``) the classes counted, their mean
    caption mention rate and archive recall, the mean CoCu - baseline IoU gain (over classes, of the seed
    means) and that mean per seed (``gain_per_seed``, so a reader sees whether its sign holds on every
    seed); and ``gain_mention_correlation``, Pearson's r of gain against mention rate over the classes with
    both (null below three classes or without spread). ``entries``: :func:`per_concept`'s output."""
    base, cocu = class_iou.get("baseline", {}), class_iou.get("cocu", {})
    seeds = sorted(set(base) & set(cocu))
    by_kind: dict[str, Any] = {}
    for kind in sorted({e.get("kind", "?") for e in entries}):
        members = [e for e in entries if e.get("kind", "?") == kind]
        per_seed = {}
        for seed in seeds:
            gains = [cocu[seed].get(e["name"]) - base[seed].get(e["name"]) for e in members
                     if cocu[seed].get(e["name"]) is not None and base[seed].get(e["name"]) is not None]
            per_seed[str(seed)] = mean_std(gains)[0]
        by_kind[kind] = {
            "classes": len(members),
            "mean_caption_mention_rate": mean_std([e.get("caption_mention_rate") for e in members])[0],
            "mean_archive_recall": mean_std([e.get("archive_recall") for e in members])[0],
            "mean_gain": mean_std([e.get("gain") for e in members])[0],
            "gain_per_seed": per_seed,
        }
    pairs = [(e["caption_mention_rate"], e["gain"]) for e in entries
             if e.get("caption_mention_rate") is not None and e.get("gain") is not None]
    return {"by_kind": by_kind, "seeds": seeds, "gain_mention_correlation": _pearson(pairs)}


def _pearson(pairs: Sequence[tuple[float, float]]) -> float | None:
    if len(pairs) < 3:
        return None
    mx = sum(x for x, _ in pairs) / len(pairs)
    my = sum(y for _, y in pairs) / len(pairs)
    sxy = sum((x - mx) * (y - my) for x, y in pairs)
    sxx = sum((x - mx) ** 2 for x, _ in pairs)
    syy = sum((y - my) ** 2 for _, y in pairs)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


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
