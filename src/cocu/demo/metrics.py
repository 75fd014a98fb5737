"""The demo's numbers: ground-truth concept recall/precision, seed statistics and the gap CoCu closes.

Recall and precision are micro-averaged over all (image, concept) pairs of the pretrain split:
``recall = sum_i |P_i & T_i| / sum_i |T_i|`` and ``precision = sum_i |P_i & T_i| / sum_i |P_i|``, where
``T_i`` are the true concepts of image ``i`` (every concept with a pixel in it) and ``P_i`` the concepts
the model would be trained on (caption concepts, curated archive, or sampled concepts). An image the
curation did not produce a row for counts with ``P_i`` empty (it contributes to the recall's
denominator only), so a lossy curation cannot look better than it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

EVAL_KEYS: tuple[str, ...] = (
    "miou", "miou_lc", "miou_whole_image", "miou_group_bound", "pixel_acc", "top1", "top5"
)
CONCEPT_KEYS: tuple[str, ...] = ("recall", "precision", "sampled_recall", "sampled_precision", "sampled_coverage")


@dataclass(frozen=True)
class ConceptScore:
    """Micro-averaged ground-truth recall and precision of predicted concept sets."""

    recall: float | None
    precision: float | None
    hits: int
    n_true: int
    n_predicted: int
    images: int
    missing: int

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "recall": self.recall,
            "precision": self.precision,
            "hits": self.hits,
            "n_true": self.n_true,
            "n_predicted": self.n_predicted,
            "images": self.images,
            "missing": self.missing,
        }


def score_concepts(
    predicted: Sequence[Mapping[str, Iterable[str]]] | Mapping[str, Iterable[str]],
    truth: Mapping[str, Iterable[str]],
) -> ConceptScore:
    """Score one prediction per key (or several draws of them, e.g. per-step samples) against ``truth``.

    ``predicted`` maps sample key -> concepts (or is a list of such maps, one per draw, pooled).
    Keys absent from ``truth`` are ignored; keys of ``truth`` absent from a draw count as empty predictions.
    """
    draws = [predicted] if isinstance(predicted, Mapping) else list(predicted)
    if not draws:
        raise ValueError("no predictions to score")
    hits = n_true = n_pred = missing = 0
    truth_sets = {k: set(v) for k, v in truth.items()}
    for draw in draws:
        for key, true in truth_sets.items():
            if key not in draw:
                missing += 1
                pred: set[str] = set()
            else:
                pred = set(draw[key])
            hits += len(pred & true)
            n_true += len(true)
            n_pred += len(pred)
    return ConceptScore(
        recall=hits / n_true if n_true else None,
        precision=hits / n_pred if n_pred else None,
        hits=hits,
        n_true=n_true,
        n_predicted=n_pred,
        images=len(truth_sets),
        missing=missing,
    )


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the non-null values (std is null with fewer than two)."""
    kept = [float(v) for v in values if v is not None]
    if not kept:
        return None, None
    mean = sum(kept) / len(kept)
    if len(kept) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in kept) / (len(kept) - 1)
    return mean, math.sqrt(var)


def gap_closed(baseline: float | None, cocu: float | None, oracle: float | None) -> float | None:
    """Fraction of the baseline-to-oracle gap that CoCu closes: ``(cocu - base) / (oracle - base)``.

    Undefined (``None``) when a value is missing or the oracle does not beat the baseline.
    """
    if baseline is None or cocu is None or oracle is None:
        return None
    gap = oracle - baseline
    if not gap > 0:
        return None
    return (cocu - baseline) / gap


def aggregate_seeds(per_seed: Sequence[Mapping[str, float | None]], keys: Sequence[str] = EVAL_KEYS) -> dict:
    """``{key: mean}`` plus ``std: {key: std}`` over the seeds' evaluation results (nulls stay null)."""
    out: dict = {}
    std: dict = {}
    for key in keys:
        out[key], std[key] = mean_std([s.get(key) for s in per_seed])
    out["std"] = std
    return out
