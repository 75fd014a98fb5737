"""Cluster-guided sampling, part 1: partition each archive into semantic clusters (paper section 3.3).

Each anchor's archive (its concepts' prompt embeddings) is split into ``min(L, M)`` clusters by k-means.
Thousands of tiny k-means problems are solved at once in kernel form: a problem needs only the Gram matrix
of its points, which for unit-norm concept embeddings is a lookup into the vocabulary's Gram matrix, so no
per-anchor embedding copies are made. Distances are exact squared Euclidean distances to the centroids:

    ||x_i - mu_k||^2 = G_ii - 2 (G W^T)_ik + (W G W^T)_kk,   mu_k = sum_j W_kj x_j

Initialisation is farthest-point (deterministic): the first centre is the archive's top-ranked concept,
each further centre the point farthest from the centres chosen so far. Then a fixed number of Lloyd
iterations (stopping early once no label changes); a cluster left empty by an assignment takes the point
farthest from its centroid out of a cluster with several members, so there are always ``min(L, M)``
clusters.
Cluster ids are finally renumbered by their best-ranked member, so cluster 0 holds the top concept.
"""

from __future__ import annotations

import numpy as np

GRAM_MAX_VOCAB = 8192
"""Vocabularies up to this size use a precomputed [V, V] Gram matrix (256 MiB at the limit)."""


class ConceptGram:
    """Inner products between concept embeddings, looked up from a [V, V] table or computed on demand."""

    def __init__(self, concept_emb: np.ndarray) -> None:
        self.concept_emb = np.ascontiguousarray(concept_emb, dtype=np.float32)  # [V, d]
        v = self.concept_emb.shape[0]
        self.table = self.concept_emb @ self.concept_emb.T if v <= GRAM_MAX_VOCAB else None  # [V, V]

    def blocks(self, ids: np.ndarray) -> np.ndarray:
        """``ids``: int64 [p, m] concept ids (any value where padded). Returns float32 [p, m, m]."""
        safe = np.maximum(ids, 0)
        if self.table is not None:
            v = self.table.shape[0]
            return self.table.ravel().take(safe[:, :, None] * v + safe[:, None, :])
        emb = self.concept_emb[safe]  # [p, m, d]
        return np.matmul(emb, emb.transpose(0, 2, 1))


def kmeans_gram(gram: np.ndarray, valid: np.ndarray, num_clusters: int, iterations: int = 10) -> np.ndarray:
    """Batched k-means on Gram matrices.

    ``gram``: float [p, m, m]; ``valid``: bool [p, m], each row's valid points first (a prefix), point 0 is
    the top-ranked one; ``num_clusters``: L. Problem ``q`` gets ``min(L, valid[q].sum())`` clusters.
    Returns int64 labels [p, m] in 0..L-1 (renumbered by first member), -1 on padding.
    """
    p, m, _ = gram.shape
    if p == 0 or m == 0:
        return np.full((p, m), -1, dtype=np.int64)
    gram = gram.astype(np.float32, copy=False)
    diag = np.einsum("pii->pi", gram)  # [p, m]
    counts = valid.sum(axis=1)  # [p]
    k_used = np.minimum(num_clusters, counts)  # [p]
    cluster_ok = np.arange(num_clusters)[None, :] < k_used[:, None]  # [p, L]
    rows = np.arange(p)

    # Farthest-point initialisation; a centre is encoded as a one-hot row of W [p, L, m].
    weights = np.zeros((p, num_clusters, m), dtype=np.float32)
    centre = np.zeros(p, dtype=np.int64)
    nearest = np.full((p, m), np.inf, dtype=np.float32)
    for k in range(num_clusters):
        weights[rows, k, centre] = cluster_ok[:, k]
        dist = diag + diag[rows, centre][:, None] - 2.0 * gram[rows, centre, :]  # [p, m]
        nearest = np.minimum(nearest, dist)
        nearest[rows, centre] = -np.inf
        centre = np.where(valid, nearest, -np.inf).argmax(axis=1)

    labels = np.full((p, m), -1, dtype=np.int64)
    for _ in range(iterations):
        cross = np.matmul(gram, weights.transpose(0, 2, 1))  # [p, m, L]
        self_term = np.einsum("pki,pik->pk", weights, cross)  # [p, L]
        dist = diag[:, :, None] - 2.0 * cross + self_term[:, None, :]
        dist = np.where(cluster_ok[:, None, :], dist, np.inf)
        new_labels = _fill_empty(np.where(valid, dist.argmin(axis=2), -1), dist, valid, cluster_ok)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
        onehot = (labels[:, None, :] == np.arange(num_clusters)[None, :, None]).astype(np.float32)  # [p, L, m]
        sizes = onehot.sum(axis=2, keepdims=True)  # [p, L, 1]
        weights = onehot / np.maximum(sizes, 1.0)
    return renumber_by_first_member(labels, num_clusters)


def _fill_empty(labels: np.ndarray, dist: np.ndarray, valid: np.ndarray, cluster_ok: np.ndarray) -> np.ndarray:
    """Give every wanted but empty cluster the point farthest from its own centroid among the points of
    clusters with more than one member, so a problem always has ``min(L, M)`` clusters (even when points
    coincide)."""
    p, m = labels.shape
    rows = np.arange(p)
    for k in range(cluster_ok.shape[1]):
        member = labels[:, None, :] == np.arange(cluster_ok.shape[1])[None, :, None]  # [p, L, m]
        sizes = member.sum(axis=2)  # [p, L]
        empty = cluster_ok[:, k] & (sizes[:, k] == 0)  # [p]
        if not empty.any():
            continue
        own = np.maximum(labels, 0)
        own_size = np.take_along_axis(sizes, own, axis=1)  # [p, m]
        own_dist = np.take_along_axis(dist, own[:, :, None], axis=2)[:, :, 0]  # [p, m]
        movable = valid & (own_size > 1)
        pick = np.where(movable, own_dist, -np.inf).argmax(axis=1)  # [p]
        fix = empty & movable.any(axis=1)
        labels[rows[fix], pick[fix]] = k
    return labels


def renumber_by_first_member(labels: np.ndarray, num_clusters: int) -> np.ndarray:
    """Renumber cluster ids so they are ordered by their first (best-ranked) member; -1 stays -1."""
    p, m = labels.shape
    member = labels[:, None, :] == np.arange(num_clusters)[None, :, None]  # [p, L, m]
    first = np.where(member.any(axis=2), member.argmax(axis=2), m)  # [p, L]
    order = np.argsort(first, axis=1, kind="stable")  # new id -> old id
    new_id = np.empty_like(order)
    new_id[np.arange(p)[:, None], order] = np.arange(num_clusters)[None, :]
    return np.where(labels >= 0, np.take_along_axis(new_id, np.maximum(labels, 0), axis=1), -1)


def cluster_archives(
    concept_ids: np.ndarray,
    valid: np.ndarray,
    gram: ConceptGram,
    num_clusters: int,
    iterations: int = 10,
    batch: int = 1024,
) -> np.ndarray:
    """Cluster ids for padded archives.

    ``concept_ids``: int64 [b, m] (sorted by score, padding after the valid prefix); ``valid``: bool [b, m].
    Returns int64 [b, m], -1 on padding. Archives are solved ``batch`` at a time in order of size, each
    batch trimmed to its longest archive, so little work goes into padding.
    """
    b, m = concept_ids.shape
    out = np.full((b, m), -1, dtype=np.int64)
    sizes = valid.sum(axis=1)
    order = np.argsort(sizes, kind="stable")
    for start in range(0, b, batch):
        rows = order[start : start + batch]
        width = int(sizes[rows].max(initial=0))
        if width == 0:
            continue
        ids = concept_ids[rows, :width]
        out[rows, :width] = kmeans_gram(gram.blocks(ids), valid[rows, :width], num_clusters, iterations)
    return out
