"""Exact k-nearest-neighbour self-join: the top-``k`` inner-product neighbours of every row of a set within
the same set, as curation's vision-driven expansion needs when every image is an anchor.

Searching each row against an exact index costs ``n^2 * d`` multiply-adds; the similarity matrix of a set
with itself is symmetric, so computing only the blocks on and above the diagonal halves that. Each
off-diagonal block ``S = X_i X_j^T`` updates two sets of top-``k`` heaps: the rows of block ``i`` from
``S``'s rows, and the rows of block ``j`` from ``S``'s columns. Row updates go straight to faiss' heap
arrays; column updates first keep only the entries above the current ``k``-th best score of their
column's row (a comparison and a ``flatnonzero``), since transposing a block costs as much memory traffic
as the product itself. The diagonal blocks come first so every heap has a useful threshold before the
column filtering starts. Results equal exact search up to float rounding (and the order of exact ties).
Measured at 200k x 512 on 2 cores: about 1.5x faster than ``faiss.knn`` of every row against the set.
"""

from __future__ import annotations

import faiss
import numpy as np
from tqdm import tqdm

from cocu.curation.expand import drop_self
from cocu.curation.index import faiss_threads

BLOCK = 8192
"""Rows per block of the symmetric tiling (a block pair's product is ``BLOCK x BLOCK``)."""
SUB_BLOCK = 2048
"""Rows of block ``i`` multiplied at once, so a product tile stays small enough to be re-read from cache."""


class _Heaps:
    """faiss min-heaps over preallocated ``scores [n, k]`` / ``ids [n, k]`` (keep the ``k`` largest)."""

    def __init__(self, n: int, k: int) -> None:
        self.scores = np.full((n, k), -np.inf, dtype=np.float32)  # [n, k]
        self.ids = np.full((n, k), -1, dtype=np.int64)  # [n, k]
        self.heaps = faiss.float_minheap_array_t()
        self.heaps.nh, self.heaps.k = n, k
        self.heaps.val, self.heaps.ids = faiss.swig_ptr(self.scores), faiss.swig_ptr(self.ids)
        self.heaps.heapify()

    def add_rows(self, tile: np.ndarray, row0: int, col0: int) -> None:
        """Offer ``tile [r, c]`` to the heaps of rows ``row0..row0+r``; column ``j`` is id ``col0 + j``."""
        self.heaps.addn(tile.shape[1], faiss.swig_ptr(tile), col0, row0, tile.shape[0])

    def add_columns(self, tile: np.ndarray, row0: int, col0: int) -> int:
        """Offer ``tile [r, c]``'s columns to the heaps of rows ``col0..col0+c`` (entry ``(i, j)`` has id
        ``row0 + i``); returns how many entries passed the heaps' current thresholds."""
        width = tile.shape[1]
        threshold = self.scores[col0 : col0 + width, 0]  # [c] the k-th best so far (top of each min-heap)
        flat = np.flatnonzero(tile > threshold[None, :])
        if flat.size == 0:
            return 0
        row, col = np.divmod(flat, width)
        order = np.argsort(col, kind="stable")
        row, col = row[order], col[order]
        cols, first, counts = np.unique(col, return_index=True, return_counts=True)
        most = int(counts.max())
        values = np.full((cols.size, most), -np.inf, dtype=np.float32)  # [candidate rows, most]
        ids = np.full((cols.size, most), -1, dtype=np.int64)
        slot = np.arange(row.size) - np.repeat(first, counts)
        target = np.repeat(np.arange(cols.size), counts)
        values[target, slot] = tile[row, col]
        ids[target, slot] = row + row0
        subset = (cols + col0).astype(np.int64)
        self.heaps.addn_query_subset_with_ids(
            cols.size, faiss.swig_ptr(subset), most, faiss.swig_ptr(values), faiss.swig_ptr(ids), most
        )
        return int(row.size)

    def sorted(self) -> tuple[np.ndarray, np.ndarray]:
        self.heaps.reorder()
        self.scores[self.ids < 0] = -np.inf  # faiss leaves -FLT_MAX in unfilled slots
        return self.scores, self.ids


def self_knn(
    vectors: np.ndarray,
    k: int,
    *,
    block: int = BLOCK,
    sub_block: int = SUB_BLOCK,
    threads: int | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner-product neighbours of every row of ``vectors [n, d]`` among all rows, itself included:
    ``(scores [n, k] float32, ids [n, k] int64)``, best first; ids -1 (score -inf) where ``n < k``."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"vectors must be [n, d], got shape {x.shape}")
    if k < 1 or block < 1 or sub_block < 1:
        raise ValueError("k, block and sub_block must be >= 1")
    n = x.shape[0]
    heaps = _Heaps(n, k)
    starts = list(range(0, n, block))
    pairs = [(i, i) for i in starts] + [(i, j) for a, i in enumerate(starts) for j in starts[a + 1 :]]
    with faiss_threads(threads):
        for i0, j0 in tqdm(pairs, desc="self-join", unit="block", disable=not progress or len(pairs) < 2):
            right = x[j0 : j0 + block]  # [Bj, d]
            for r0 in range(i0, min(i0 + block, n), sub_block):
                tile = x[r0 : min(r0 + sub_block, i0 + block, n)] @ right.T  # [b, Bj]
                heaps.add_rows(tile, r0, j0)
                if j0 != i0:
                    heaps.add_columns(tile, r0, j0)
    return heaps.sorted()


def self_neighbors(vectors: np.ndarray, k: int, *, threads: int | None = None, progress: bool = False) -> np.ndarray:
    """int64 [n, k]: every row's ``k`` nearest other rows, nearest first (-1 = none), with the same rule as
    :func:`cocu.curation.expand.find_neighbors` for dropping the row itself."""
    scores, ids = self_knn(vectors, k + 1, threads=threads, progress=progress)
    rows = np.arange(ids.shape[0], dtype=np.int64)
    return drop_self(ids, scores, rows)[0]
