"""k-nearest-neighbour self-joins: the top-``k`` neighbours of every row of a set within the same set, as
curation's vision-driven expansion needs when every image is an anchor. One pass over the set replaces one
index query per row.

Exact (:func:`self_knn`): searching each row against an exact index costs ``n^2 * d`` multiply-adds; the
similarity matrix of a set with itself is symmetric, so computing only the blocks on and above the diagonal
halves that. Each off-diagonal block ``S = X_i X_j^T`` updates two sets of top-``k`` heaps: the rows of
block ``i`` from ``S``'s rows, and the rows of block ``j`` from ``S``'s columns. Row updates go straight to
faiss' heap arrays; column updates first keep only the entries above the current ``k``-th best score of
their column's row (a comparison and a ``flatnonzero``), since transposing a block costs as much memory
traffic as the product itself. The diagonal blocks come first so every heap has a useful threshold before
the column filtering starts. Results equal exact search up to float rounding (and the order of exact ties).
Measured by ``benchmarks/curation.py`` at 200k x 512 on 2 cores: 1.16 ms per row against 1.64 ms for
batched exact search of the same index, chunk by chunk.

Approximate (:func:`ivf_self_knn`): the inverted lists of an IVF index, list against nearby lists, as
matrix products. :func:`self_join` picks the join that fits an index and measures its recall.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator

import faiss
import numpy as np
import torch
from tqdm import tqdm

from cocu.curation.expand import drop_self
from cocu.curation.index import exact_neighbors, faiss_threads, recall_at_k
from cocu.curation.store import VectorParts

logger = logging.getLogger(__name__)

BLOCK = 8192
"""Rows per block of the symmetric tiling (a block pair's product is ``BLOCK x BLOCK``)."""
SUB_BLOCK = 2048
"""Rows of block ``i`` multiplied at once, so a product tile stays small enough to be re-read from cache."""
JOIN_BATCH = 64
"""Lists handed to the worker threads at once."""
JOIN_TARGET = 0.97
"""The IVF self-join probes the fewest lists (from 2 up to twice the index's ``nprobe + 1``, at least 4) whose
recall@k on the check rows reaches this (a margin over the 0.95 floor for the check's sampling error)."""


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
    return _without_self(*self_knn(vectors, k + 1, threads=threads, progress=progress))


def _without_self(scores: np.ndarray, ids: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """int64 [r, k]: a self-join's ``k + 1`` columns of ``rows`` (default 0..r-1) with each row's own id
    dropped (:func:`drop_self`)."""
    rows = np.arange(ids.shape[0], dtype=np.int64) if rows is None else rows
    return drop_self(ids, scores, rows)[0]


def _ivf_lists(ivf: faiss.IndexIVF) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets [nlist + 1], members [n])``: the row ids of every inverted list, list after list."""
    nlist, lists = ivf.nlist, ivf.invlists
    sizes = np.array([lists.list_size(i) for i in range(nlist)], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    members = np.empty(int(offsets[-1]), dtype=np.int64)
    for i in np.flatnonzero(sizes):
        members[offsets[i] : offsets[i + 1]] = faiss.rev_swig_ptr(lists.get_ids(int(i)), int(sizes[i]))
    return offsets, members


def _join_lists(
    vectors: VectorParts, ivf: faiss.IndexIVF, k: int, lists_probed: int, which: np.ndarray, progress: bool
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each list in ``which``: ``(member rows [m], scores [m, k'], ids [m, k'])``, ``k' = min(k, c)``."""
    offsets, members = _ivf_lists(ivf)
    which = np.asarray([i for i in which if offsets[i + 1] > offsets[i]], dtype=np.int64)
    probed = _probed_lists(ivf, lists_probed, which)  # [len(which), P]

    def one(at: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        i = which[at]
        rows = members[offsets[i] : offsets[i + 1]]  # [m]
        candidates = np.concatenate([members[offsets[j] : offsets[j + 1]] for j in probed[at]])  # [c]
        own = torch.from_numpy(vectors.rows(rows))  # [m, d]
        scores = (own @ torch.from_numpy(vectors.rows(candidates)).T).numpy()  # [m, c]
        found, position = _top(scores, k)  # [m, min(k, c)] each
        return rows, found, candidates[position]

    # Lists are small products: one single-threaded product per worker thread beats a multi-threaded BLAS
    # call per list (1 vs 5 ms for 244 x 488 x 512 on a busy 2-core machine); each list is computed the
    # same way whichever thread takes it.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=max(1, faiss.omp_get_max_threads())) as pool:
            bar = tqdm(total=len(which), desc="self-join", unit="list", disable=not progress, mininterval=2.0)
            for start in range(0, len(which), JOIN_BATCH):  # bounded: results wait for the caller
                for result in pool.map(one, range(start, min(start + JOIN_BATCH, len(which)))):
                    yield result
                    bar.update()
            bar.close()
    finally:
        torch.set_num_threads(before)


def _probed_lists(ivf: faiss.IndexIVF, lists_probed: int, which: np.ndarray, block: int = 1024) -> np.ndarray:
    """int64 [len(which), P]: per list of ``which``, the ``P`` lists with the nearest centroids, itself first
    (centroid Gram rows by blocks, so 65k lists do not need a 16 GiB matrix, and only the lists asked for:
    the self-join's recall check asks for a few hundred)."""
    nlist = ivf.nlist
    centroids = ivf.quantizer.reconstruct_n(0, nlist)  # [nlist, d]
    probes = max(1, min(lists_probed, nlist))
    out = np.empty((len(which), probes), dtype=np.int64)
    for start in range(0, len(which), block):
        lists = which[start : start + block]  # [b]
        gram = centroids[lists] @ centroids.T  # [b, nlist]
        gram[np.arange(len(lists)), lists] = np.inf  # a list probes itself first
        out[start : start + len(lists)] = _top(gram, probes)[1]
    return out


def ivf_self_knn(
    vectors: np.ndarray | VectorParts,
    index: faiss.Index,
    k: int,
    lists_probed: int,
    *,
    rows: np.ndarray | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate top-``k`` neighbours of the ``rows`` (sorted int64; default every row) of ``vectors [n, d]``
    among all rows (itself included), through the inverted lists of ``index`` (an IVF index built over the
    same rows in the same order): ``(scores [r, k] float32, ids [r, k] int64)``, best first, -1 / -inf
    where fewer were found.

    The rows are taken list by list: all members of a list are scored, by one float32 matrix product,
    against every member of the ``lists_probed`` lists whose centroids are nearest their list's centroid
    (the list itself first), so a row's result does not depend on which other rows are asked for. Unlike a
    per-query IVF search the probed lists are chosen per list, not per row, and the scores are exact, not
    quantised; the recall is whatever the data give and is measured by :func:`self_join`. Vectors are read
    from ``vectors`` (memory-mapped parts) list by list. ``benchmarks/curation.py`` at 1M clustered 512-d
    vectors (IVF4096, 3 lists probed, 2 cores): 25 us per row including the recall check, recall@8 1.0,
    against 75 us per query for faiss' IVF-SQ8 search of the same index.
    """
    parts = vectors if isinstance(vectors, VectorParts) else VectorParts.from_array(np.asarray(vectors))
    ivf = index if isinstance(index, faiss.IndexIVF) else faiss.extract_index_ivf(index)
    if ivf.ntotal != len(parts) or ivf.d != parts.dim:
        raise ValueError(f"the index holds {ivf.ntotal} vectors of dim {ivf.d}; the vectors are {parts.shape}")
    wanted = np.arange(len(parts), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    scores = np.full((wanted.shape[0], k), -np.inf, dtype=np.float32)
    ids = np.full((wanted.shape[0], k), -1, dtype=np.int64)
    which = np.arange(ivf.nlist) if rows is None else _lists_holding(ivf, wanted)
    for members, found, found_ids in _join_lists(parts, ivf, k, lists_probed, which, progress):
        at = np.searchsorted(wanted, members)
        hit = (at < wanted.shape[0]) & (wanted[np.minimum(at, wanted.shape[0] - 1)] == members)
        scores[at[hit], : found.shape[1]] = found[hit]
        ids[at[hit], : found.shape[1]] = found_ids[hit]
    return scores, ids


def _lists_holding(ivf: faiss.IndexIVF, rows: np.ndarray) -> np.ndarray:
    """The ids of the lists that hold ``rows``, ascending."""
    offsets, members = _ivf_lists(ivf)
    owner = np.repeat(np.arange(ivf.nlist), np.diff(offsets))
    order = np.argsort(members)
    return np.unique(owner[order[np.searchsorted(members[order], rows)]])


def _top(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``min(k, columns)`` largest ``values [m, c]`` and their columns, largest first."""
    k = min(k, values.shape[1])
    part = np.argpartition(-values, k - 1, axis=1)[:, :k] if k < values.shape[1] else np.argsort(-values, axis=1)
    found = np.take_along_axis(values, part, axis=1)
    order = np.argsort(-found, axis=1, kind="stable")
    return np.take_along_axis(found, order, axis=1), np.take_along_axis(part, order, axis=1)


@dataclass
class SelfJoin:
    """How a self-join found every row's neighbours (written into the caller's table): ``method`` (``exact``
    or ``ivf``), ``params``, ``recall_at_k`` against exact search on ``n_check`` random rows (``None`` for
    ``exact``) and ``seconds``."""

    method: str
    params: dict[str, Any] = field(default_factory=dict)
    recall_at_k: float | None = None
    n_check: int = 0
    seconds: float = 0.0

    def info(self) -> dict[str, Any]:
        return {"method": f"{self.method} self-join", "params": self.params, "recall_at_k": self.recall_at_k,
                "n_check": self.n_check, "seconds": round(self.seconds, 2)}


def worth_self_join(n: int, anchors: int) -> bool:
    """A self-join finds every row's neighbours at once; it pays when at least half of the rows are anchors."""
    return 2 * anchors >= n


def join_kind(index: faiss.Index) -> str | None:
    """``exact``, ``ivf`` or ``None``: the self-join that fits ``index``."""
    if isinstance(index, faiss.IndexFlat):
        return "exact"
    try:
        faiss.extract_index_ivf(index)
    except RuntimeError:
        return None
    return "ivf"


def self_join(
    index: faiss.Index,
    vectors: np.ndarray | VectorParts,
    k: int,
    table: np.ndarray,
    *,
    rank: int = 0,
    world: int = 1,
    threads: int | None = None,
    n_check: int = 300,
    min_recall: float = 0.95,
    seed: int = 0,
    progress: bool = False,
) -> SelfJoin | None:
    """Write every row's ``k`` nearest other rows of ``vectors [n, d]`` (the rows ``index`` holds, in its order)
    into ``table`` (int64 [n, k], writable, e.g. a memory-mapped file; self excluded, -1 = none) by the
    self-join that fits the index, or return ``None`` when there is none (HNSW and other kinds) or when the
    IVF join's recall@k, measured on ``n_check`` rows, falls below ``min_recall`` (the caller then searches
    the index row by row). IVF probes the fewest lists, from 2 up to twice the index's own ``nprobe + 1``
    (at least 4), whose recall reaches :data:`JOIN_TARGET`.

    With ``world`` > 1 this rank fills only the rows of the lists ``i`` with ``i % world == rank`` (exact:
    rank 0 fills all); every rank takes the same decision (the check rows depend on ``seed`` only), and
    each list is joined whole, so the table equals a single process's."""
    start = time.perf_counter()
    parts = vectors if isinstance(vectors, VectorParts) else VectorParts.from_array(np.asarray(vectors))
    kind = join_kind(index)
    if kind is None:
        return None
    with faiss_threads(threads):
        if kind == "exact":
            if rank == 0:
                table[:] = self_neighbors(parts.slice(0, len(parts)), k, progress=progress)
            return SelfJoin("exact", seconds=time.perf_counter() - start)
        ivf = faiss.extract_index_ivf(index)
        n = len(parts)
        rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n_check, n), replace=False))
        _, truth = exact_neighbors(parts, parts.rows(rows), k + 1)
        most = min(int(ivf.nlist), max(4, 2 * (int(ivf.nprobe) + 1)))
        for lists_probed in range(min(2, most), most + 1):  # the join's cost grows with the lists probed: fewest that do
            found = _without_self(*ivf_self_knn(parts, ivf, k + 1, lists_probed, rows=rows), rows)
            recall = recall_at_k(found, truth, k, rows)
            logger.info("IVF self-join probing %d lists: recall@%d %.4f on %d rows", lists_probed, k, recall,
                        len(rows))
            if recall >= JOIN_TARGET:
                break
        if recall < min_recall:
            logger.warning("IVF self-join recall@%d %.4f on %d rows is below %.2f: searching the index instead",
                           k, recall, len(rows), min_recall)
            return None
        logger.info("IVF self-join of every row, probing %d lists", lists_probed)
        mine = np.arange(rank, ivf.nlist, world)
        for members, scores, ids in _join_lists(parts, ivf, k + 1, lists_probed, mine, progress):
            width = ids.shape[1]
            if width < k + 1:  # fewer candidates than k + 1: pad as a search would
                ids = np.pad(ids, ((0, 0), (0, k + 1 - width)), constant_values=-1)
                scores = np.pad(scores, ((0, 0), (0, k + 1 - width)), constant_values=-np.inf)
            table[members] = _without_self(scores, ids, members)
    return SelfJoin("ivf", {"lists_probed": lists_probed, "nlist": int(ivf.nlist)}, round(recall, 4),
                    len(rows), time.perf_counter() - start)
