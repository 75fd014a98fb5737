"""Text-to-vision-guided ranking (paper section 3.3, eq. 6-8), batched over the pairs of a chunk.

For concept ``c`` with prompt embedding ``t``, anchor image ``x`` and the N' neighbour images ``x_i`` whose
captions contain ``c`` (exact membership):

- ``s_a = cos(t, x)`` (eq. 6);
- ``s_b = (1 + N') cos(t, x) / (cos(t, x) + sum_i cos(t, x_i))`` (eq. 7), and ``s_b = 1`` when N' = 0;
- ``t2v-paper``: ``s = s_a + s_b`` (eq. 8 as printed);
- ``t2v``: ``s = s_a / m + s_b`` with ``m`` the largest cosine seen for the anchor over all its archive
  concepts and their reference images (the normalisation of the authors' code);
- ``naive``: ``s = s_a``.

Eq. 7 is a ratio of cosines and only meaningful for positive ones (as CLIP's image-text cosines are): inside
eq. 7 every cosine is floored at ``EPS``, which keeps ``s_b`` within [0, 1 + N'] with no sign flip or
division by zero: an anchor unrelated to the concept (cosine <= 0) whose reference images are related gets
``s_b`` near 0, and a concept unrelated to all of them gets the neutral ``s_b = 1``. ``m`` is floored at
``EPS`` for the same reason.
"""

from __future__ import annotations

import numpy as np

from cocu.curation.expand import CaptionConcepts, ExpandedChunk

RANKINGS: tuple[str, ...] = ("t2v", "t2v-paper", "naive")
EPS = 1e-6


def rowwise_cos(a: np.ndarray, a_rows: np.ndarray, b: np.ndarray, b_rows: np.ndarray, block: int = 512) -> np.ndarray:
    """``out[j] = a[a_rows[j]] . b[b_rows[j]]`` (float64 [t], accumulated in float64), gathered in small blocks
    that stay in cache.

    Float64 because eq. 7 is ill-conditioned where the cosines sit near the ``EPS`` floor: a float32 rounding
    error of 6e-8 in a cosine of 3e-6 moved ``s_b`` by 1e-3 (seen in ``benchmarks/curation.py``)."""
    out = np.empty(a_rows.shape[0], dtype=np.float64)
    for start in range(0, a_rows.shape[0], block):
        stop = start + block
        out[start:stop] = np.einsum("ij,ij->i", a[a_rows[start:stop]], b[b_rows[start:stop]], dtype=np.float64)
    return out


def segment_max(values: np.ndarray, segment: np.ndarray, num_segments: int) -> np.ndarray:
    """Max of ``values`` per segment id; ``segment`` must be non-decreasing. Empty segments get -inf."""
    out = np.full(num_segments, -np.inf)
    if values.shape[0]:
        starts = np.flatnonzero(np.concatenate([[True], segment[1:] != segment[:-1]]))
        out[segment[starts]] = np.maximum.reduceat(values, starts)
    return out


def reference_cos(chunk: ExpandedChunk, image_emb: np.ndarray, image_rows: np.ndarray, captions: CaptionConcepts,
                  concept_emb: np.ndarray) -> np.ndarray:
    """cos(t_c, x_i) of every reference triple of ``chunk`` (the concept ``c`` in neighbour ``i``'s caption):
    float64 [r]. ``image_emb`` [u, d] holds the unit image rows ``image_rows`` (int64 [u], sorted), which
    must include every referenced neighbour (read once per chunk from the memory-mapped parts)."""
    local = np.searchsorted(image_rows, chunk.ref_image)
    concept = captions.indices[chunk.ref_position].astype(np.int64)
    return rowwise_cos(image_emb, local, concept_emb, concept)


def score_chunk(
    chunk: ExpandedChunk,
    anchor_emb: np.ndarray,
    concept_emb: np.ndarray,
    ref_cos: np.ndarray | None,
    method: str,
) -> np.ndarray:
    """Relevancy score of every (anchor, concept) pair of ``chunk``: float32 [p].

    ``anchor_emb``: [b, d] image embeddings of the chunk's anchors (row = local anchor id);
    ``ref_cos``: [r] from :func:`reference_cos` (not needed for ``naive``).
    """
    if method not in RANKINGS:
        raise ValueError(f"unknown ranking {method!r}; choose one of {', '.join(RANKINGS)}")
    p = chunk.pair_anchor.shape[0]
    s_a = rowwise_cos(anchor_emb, chunk.pair_anchor, concept_emb, chunk.pair_concept)  # [p]
    if method == "naive":
        return s_a.astype(np.float32)
    assert ref_cos is not None
    n_ref = np.bincount(chunk.ref_pair, minlength=p)  # [p]
    ref_sum = np.bincount(chunk.ref_pair, weights=np.maximum(ref_cos, EPS), minlength=p)  # [p] float64
    own = np.maximum(s_a, EPS)
    s_b = np.where(n_ref == 0, 1.0, (1.0 + n_ref) * own / (own + ref_sum))
    if method == "t2v-paper":
        return (s_a + s_b).astype(np.float32)
    largest = np.maximum(
        segment_max(s_a, chunk.pair_anchor, chunk.num_anchors),
        segment_max(ref_cos, chunk.pair_anchor[chunk.ref_pair], chunk.num_anchors),
    )  # [b]
    m = np.maximum(largest, EPS)[chunk.pair_anchor]  # [p]
    return (s_a / m + s_b).astype(np.float32)
