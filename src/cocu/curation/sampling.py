"""Cluster-guided sampling, part 2: which concepts a training step uses (paper section 3.3).

``cluster``: one concept per stored cluster, drawn with probability ``softmax(score / tau)`` within the
cluster (clusters in id order, i.e. by their best-ranked member). ``naive``: the top ``num_labels`` concepts
by relevancy, the same every step.

The draw uses the Gumbel-max trick (``argmax(score / tau + Gumbel noise)`` over a cluster is distributed as
``softmax(score / tau)``), vectorised over a batch of padded archives by :func:`draw_padded`;
:func:`sample_concepts` is the per-sample entry point the training data loader calls every step.

Default ``tau = 0.1`` (:data:`DEFAULT_TAU`): with the default ``t2v`` ranking the scores of an archive span
roughly 0 to 3 (``s_a / m`` <= 1 plus ``s_b``, which is about 1 for a concept as typical of the anchor as of
its reference images), and related concepts of one cluster typically differ by 0.1 to 0.5. At ``tau = 0.1``
that is a 2.7x to 150x preference for the better concept: relevancy dominates, yet a close second still
gets drawn. Scores of the ``naive`` ranking are raw cosines (differences of a few hundredths) and want a
smaller ``tau`` (about 0.01) for the same effect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from cocu.curation.archive import ArchiveRow

SAMPLINGS: tuple[str, ...] = ("cluster", "naive")
DEFAULT_TAU = 0.1


def draw_padded(
    scores: np.ndarray,
    clusters: np.ndarray,
    num_labels: int,
    method: str,
    tau: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Column picked per sample and label slot: int64 [b, num_labels], -1 where nothing is picked.

    ``scores``: float [b, m] sorted descending per row (padding anywhere after the valid prefix);
    ``clusters``: int [b, m], the stored cluster ids, -1 on padding (and, for ``naive`` curation, on
    concepts outside the top L). ``cluster``: slot ``k`` holds a draw from cluster ``k``; ``naive``: slot
    ``k`` holds column ``k`` when that column holds a concept (cluster id >= 0).
    """
    if method not in SAMPLINGS:
        raise ValueError(f"unknown sampling {method!r}; choose one of {', '.join(SAMPLINGS)}")
    b, m = scores.shape
    if method == "naive":
        width = min(num_labels, m)
        out = np.full((b, num_labels), -1, dtype=np.int64)
        out[:, :width] = np.where(clusters[:, :width] >= 0, np.arange(width)[None, :], -1)
        return out
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    noisy = scores.astype(np.float64) / tau + rng.gumbel(size=(b, m))  # [b, m]
    out = np.full((b, num_labels), -1, dtype=np.int64)
    for k in range(num_labels):
        member = clusters == k  # [b, m]
        pick = np.where(member, noisy, -np.inf).argmax(axis=1)
        out[:, k] = np.where(member.any(axis=1), pick, -1)
    return out


def sample_concepts(
    row: ArchiveRow, num_labels: int, method: str, tau: float, rng: np.random.Generator
) -> list[str]:
    """Concepts for one training step of one sample (at most ``num_labels``, fewer for a small archive).

    ``cluster``: one concept from each of the clusters ``0 .. num_labels - 1`` drawn with
    ``softmax(score / tau)`` within the cluster, listed in cluster order. ``naive``: the top
    ``num_labels`` concepts. The loader fills any remaining label slots itself (e.g. with the caption).
    """
    if not row.concepts:
        return []
    scores = np.asarray(row.scores, dtype=np.float64)[None, :]
    if method == "naive":
        clusters = np.zeros_like(scores, dtype=np.int64)
    else:
        clusters = np.asarray(row.clusters, dtype=np.int64)[None, :]
    picks = draw_padded(scores, clusters, num_labels, method, tau, rng)[0]
    return [row.concepts[int(c)] for c in picks if c >= 0]
