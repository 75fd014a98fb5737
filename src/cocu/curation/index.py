"""FAISS nearest-neighbour indexes over L2-normalised embeddings (inner product = cosine).

Kinds:

- ``exact``: ``IndexFlatIP``, brute force (used up to ``exact_max`` vectors by ``auto``).
- ``ivf``: inverted lists of full vectors (``IVF{nlist},Flat``); search parameter ``nprobe``.
- ``ivfsq``: inverted lists of 8-bit scalar-quantised codes (``IVF{nlist},SQ8``, d bytes a vector),
  re-ranked exactly with the full vectors read from the memory-mapped embedding parts (:class:`Searcher`);
  parameters ``nprobe`` and ``k_factor`` (candidates re-ranked = k * k_factor).
- ``ivfpq``: inverted lists of 4-bit fast-scan product codes (``IVF{nlist},PQ{m}x4fs``, m/2 bytes a
  vector), re-ranked the same way; parameters ``nprobe`` and ``k_factor``.
- ``hnsw``: ``IndexHNSWFlat`` graph; parameter ``efSearch``.
- ``auto``: ``exact`` up to ``exact_max`` vectors, else :data:`AUTO_APPROXIMATE` = ``ivfsq``, chosen by
  measurement with ``benchmarks/index_choice.py`` (clustered 512-d vectors, 2 faiss threads, kinds
  measured in interleaved rounds on a shared machine, throughput per 2 busy cores): at 1M vectors
  IVF4096 + SQ8 + exact re-ranking answered ~13-15k queries/s at recall@8 0.998 (nprobe 2) against ~10k
  for IVF4096-flat at the same recall (it reads 4x fewer bytes per scanned vector); at 200k, ivfsq 21.9k,
  ivf 14.2k, 4-bit fast-scan PQ 6.8k (it needed re-ranking factor 32 for recall 0.95) and HNSW32 4.1k
  (efSearch 96, and 219 s to build 200k). At 1M an HNSW coarse quantizer was neither faster nor as
  accurate (those figures were taken with faiss' in-memory re-ranking, ``RFlat``).

The index holds only compact codes (no copy of the full vectors: re-ranking reads them from the parts),
and ``--max-memory`` bounds it: :func:`estimate_memory` is checked before building, ``auto`` takes the
first of exact / ``ivfsq`` / ``ivfpq`` that fits and an explicit kind that does not fit is refused with
the figure it needs. Above :data:`HNSW_COARSE_NLIST` lists the coarse quantiser is an HNSW graph (as
autofaiss uses for large indexes), so assigning a vector to its list does not cost a scan of every
centroid, and k-means training assigns through an HNSW graph too (both searched with
:data:`COARSE_EF_SEARCH`). A graph finds the nearest centroid only where the centroids have structure to
navigate (near centroids near each other, as CLIP embeddings have: semantic families); over structureless
centroids (independent random directions in 512-d, ``benchmarks/scale.py --family-size 0``) its top-1 agreed
with a flat search for 17 % of vectors at 65,536 lists, and no compact index avoids the flat scan's
n * nlist * d cost there. Vectors are added in chunks.

An approximate index is trained on a random sample, then its search parameters are tuned on
``n_check`` database vectors used as queries (as curation's anchors are): the cheapest setting whose
recall@k (k = ``k_check``, the query's own row left out of both lists) against exact search reaches
``target_recall`` with two standard errors to spare is kept. Its recall is then measured on another
``n_check`` held-out rows (so the reported value is not flattered by the choice) and returned, with the
throughput of that check, in :class:`IndexInfo` (stored by :func:`index_embeddings` in
``index_info.json``, with the rows' fingerprint that :func:`check_rows` compares); ``nprobe`` / ``efSearch``
are saved in the index file, the re-ranking factor in ``index_info.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import faiss
import numpy as np
from tqdm import tqdm

from cocu.curation.store import VectorParts, rows_fingerprint
from cocu.utils.atomic import atomic_path, atomic_write_json

logger = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("auto", "exact", "ivf", "ivfsq", "ivfpq", "hnsw")
AUTO_APPROXIMATE = "ivfsq"
DEFAULT_EXACT_MAX = 100_000
SINGLE_THREAD_MAX = 100_000
"""make_index uses one faiss thread up to this many vectors unless told otherwise: on small inputs OpenMP's
thread barriers cost more than they save, and on a busy machine they cost seconds per build."""
IMAGE_INDEX, CAPTION_INDEX, INFO_FILE = "image.index", "caption.index", "index_info.json"
TRAIN_PER_LIST = 40
"""Default k-means training rows per inverted list (faiss asks for at least 39)."""
MAX_TRAIN = 262_144
"""At most this many training rows (their float32 copy is the build's largest temporary) ..."""
MIN_TRAIN_PER_LIST = 8
MAX_TRAIN_AT_SCALE = 524_288
"""... unless that leaves fewer than :data:`MIN_TRAIN_PER_LIST` rows per list: then up to this many (1 GiB)."""
SCALE_FROM = 1 << 20
LIST_SIZE_AT_SCALE = 150
MAX_NLIST = 262_144
HNSW_COARSE_NLIST = 8192
"""From this many lists on, the coarse quantiser is ``HNSW32`` instead of a flat scan of the centroids."""
COARSE_EF_SEARCH = 64
"""efSearch of the HNSW coarse quantiser, in k-means training and when vectors are added and searched. A vector
sent to a list other than its nearest centroid's is lost to its neighbours' searches and self-joins; at
faiss' default 16 a few percent of vectors went astray on the ``benchmarks/scale.py`` world."""
ENCODER_TRAIN = 65_536
"""With an HNSW coarse quantiser the codes (SQ8, PQ) are trained on at most this many of the k-means rows: the
k-means sample is the build's largest temporary, and faiss' encoder training copies it as residuals."""
ADD_CHUNK = 65_536
SPOT_CHECK_ROWS = 64
NPROBE_GRID: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
K_FACTOR_GRID: tuple[int, ...] = (2, 4, 8, 16, 32)
RERANKED = ("ivfsq", "ivfpq")
EF_SEARCH_GRID: tuple[int, ...] = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


@dataclass
class IndexInfo:
    """What was built: kind, size, the measured recall@k against exact search, and its parameters."""

    kind: str
    n: int
    dim: int
    recall_at_k: float | None
    params: dict[str, Any] = field(default_factory=dict)
    k_check: int = 8
    n_check: int = 0
    queries_per_second: float | None = None
    build_seconds: float = 0.0
    fingerprint: str | None = None
    memory_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> IndexInfo:
        return cls(**{name: raw[name] for name in cls.__dataclass_fields__ if name in raw})


@contextlib.contextmanager
def faiss_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` OpenMP threads in faiss (``None``: leave faiss' setting), restored after."""
    if threads is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, int(threads)))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _as_f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _as_parts(vectors: np.ndarray | VectorParts) -> VectorParts:
    if isinstance(vectors, VectorParts):
        return vectors
    x = np.asarray(vectors)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"vectors must be a non-empty [n,d] array, got shape {x.shape}")
    return VectorParts.from_array(x)


def search(
    index: faiss.Index, queries: np.ndarray, k: int, batch_size: int = 16_384, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner-product neighbours of ``queries`` [n,d]: ``(scores [n,k] float32, ids [n,k] int64)``,
    best first; ids are -1 (score -inf) where the index has fewer than ``k`` hits."""
    queries = _as_f32(queries)
    if queries.ndim != 2 or queries.shape[1] != index.d:
        raise ValueError(f"queries have shape {queries.shape}; the index expects [n, {index.d}]")
    n = queries.shape[0]
    scores = np.empty((n, k), dtype=np.float32)
    ids = np.empty((n, k), dtype=np.int64)
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc="search", unit="batch", disable=not progress or len(starts) < 2):
        s, i = index.search(queries[start : start + batch_size], k)  # [b,k] each
        scores[start : start + s.shape[0]], ids[start : start + i.shape[0]] = s, i
    return scores, ids


class Searcher:
    """Search ``index``; with ``k_factor`` the ``k * k_factor`` best candidates by the index's compact codes
    are re-ranked by their exact inner products with the full vectors, read from ``vectors`` (memory-mapped
    parts: nothing but the codes is held in memory)."""

    def __init__(self, index: faiss.Index, vectors: VectorParts | None = None, k_factor: int | None = None) -> None:
        if k_factor and vectors is None:
            raise ValueError("re-ranking needs the vectors")
        self.index, self.vectors, self.k_factor = index, vectors, k_factor

    def __call__(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores [n,k] float32, ids [n,k] int64)`` as :func:`search`."""
        if not self.k_factor:
            return search(self.index, queries, k)
        queries = _as_f32(queries)
        _, candidates = search(self.index, queries, k * self.k_factor)  # [n, c]
        scores = np.full((queries.shape[0], k), -np.inf, dtype=np.float32)
        ids = np.full((queries.shape[0], k), -1, dtype=np.int64)
        for start in range(0, queries.shape[0], 1024):
            cand = candidates[start : start + 1024]  # [b, c]
            valid = cand >= 0
            unique, inverse = np.unique(np.where(valid, cand, cand.max(initial=0).clip(0)), return_inverse=True)
            full = self.vectors.rows(unique)  # [u, d]
            exact = np.einsum("bcd,bd->bc", full[inverse.reshape(cand.shape)], queries[start : start + 1024])
            exact = np.where(valid, exact, -np.inf).astype(np.float32)  # [b, c]
            top = np.argsort(-exact, axis=1, kind="stable")[:, :k]
            scores[start : start + cand.shape[0], : top.shape[1]] = np.take_along_axis(exact, top, axis=1)
            ids[start : start + cand.shape[0], : top.shape[1]] = np.where(
                np.isfinite(np.take_along_axis(exact, top, axis=1)), np.take_along_axis(cand, top, axis=1), -1
            )
        return scores, ids


def exact_neighbors(vectors: np.ndarray | VectorParts, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product top-``k`` of ``queries`` among ``vectors`` (an array, or parts streamed chunk
    by chunk): ``(scores [q,k] float32, ids [q,k] int64)``."""
    queries = _as_f32(queries)
    if not isinstance(vectors, VectorParts):
        return faiss.knn(queries, _as_f32(vectors), k, metric=faiss.METRIC_INNER_PRODUCT)
    heap = faiss.ResultHeap(queries.shape[0], k, keep_max=True)
    for first, block in vectors.chunks():
        s, i = faiss.knn(queries, block, min(k, block.shape[0]), metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(s, np.where(i >= 0, i + first, -1))
    heap.finalize()
    return heap.D, heap.I


def recall_per_query(
    found: np.ndarray, truth: np.ndarray, k: int, query_ids: np.ndarray | None = None
) -> np.ndarray:
    """|found_k ∩ truth_k| / k per row [n] float64; with ``query_ids`` each query's own id is removed from
    both lists first (they hold ``k + 1`` columns then)."""
    out = np.empty(truth.shape[0], dtype=np.float64)
    for row in range(truth.shape[0]):
        f, t = found[row], truth[row]
        if query_ids is not None:
            f, t = f[f != query_ids[row]], t[t != query_ids[row]]
        t = t[:k]
        out[row] = len(np.intersect1d(f[:k], t)) / max(1, len(t))
    return out


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int, query_ids: np.ndarray | None = None) -> float:
    """Mean of :func:`recall_per_query` (0 rows: 0.0)."""
    per_query = recall_per_query(found, truth, k, query_ids)
    return float(per_query.mean()) if per_query.size else 0.0


def default_nlist(n: int) -> int:
    """The number of inverted lists: about 4 * sqrt(n) as a power of two up to :data:`SCALE_FROM` vectors (4096
    for 1M), and above it about one list per :data:`LIST_SIZE_AT_SCALE` vectors (65,536 at 10M, 262,144 from
    ~30M), as autofaiss sizes large indexes.

    Fewer lists than the data has natural clusters made IVF merge clusters and scatter their members
    over many lists: at 1M noisy clustered vectors (3000 clusters) 2048 lists needed nprobe 16 for
    recall@8 0.95, 4096 lists reached 0.995 at nprobe 2. With clusters of a few hundred vectors their number
    grows with n, and a cluster without a list of its own is spread over lists it shares with others: at 10M
    vectors in 33,000 clusters 16,384 lists (4 * sqrt(n)) left recall@8 at 0.34 even at nprobe 128
    (``benchmarks/scale.py --n 10000000``). Lists that grow with n also keep the per-anchor cost of a search
    (and of the IVF self-join) from growing with n."""
    target = 4 * math.sqrt(max(n, 1)) if n <= SCALE_FROM else max(4 * math.sqrt(n), n / LIST_SIZE_AT_SCALE)
    return int(min(MAX_NLIST, max(16, 2 ** round(math.log2(target)))))


def factory_string(kind: str, dim: int, nlist: int, pq_m: int | None = None, hnsw_m: int = 32) -> str:
    coarse = f"IVF{nlist}_HNSW32" if nlist >= HNSW_COARSE_NLIST else f"IVF{nlist}"
    if kind == "exact":
        return "Flat"
    if kind == "ivf":
        return f"{coarse},Flat"
    if kind == "ivfsq":
        return f"{coarse},SQ8"
    if kind == "ivfpq":
        m = pq_m or default_pq_m(dim)
        return f"{coarse},PQ{m}x4fs"
    if kind == "hnsw":
        return f"HNSW{hnsw_m},Flat"
    raise ValueError(f"unknown index kind {kind!r}; expected one of {', '.join(KINDS)}")


def default_pq_m(dim: int) -> int:
    """Sub-quantizers for fast-scan PQ: dim/4 (4 dims each), a multiple of 2, at least 2."""
    m = max(2, dim // 4)
    while dim % m:
        m -= 1
    return m


def default_train_size(n: int, lists: int, train_size: int | None = None) -> int:
    """Training rows: :data:`TRAIN_PER_LIST` per list, at most :data:`MAX_TRAIN`, but at least
    :data:`MIN_TRAIN_PER_LIST` per list up to :data:`MAX_TRAIN_AT_SCALE` (``train_size`` overrides)."""
    if train_size:
        return min(n, train_size)
    wanted = min(TRAIN_PER_LIST * lists, max(MAX_TRAIN, min(MAX_TRAIN_AT_SCALE, MIN_TRAIN_PER_LIST * lists)))
    return min(n, wanted)


def _lists(n: int, nlist: int | None) -> int:
    return min(nlist or default_nlist(n), max(1, n // 40))  # k-means wants >= 39 points per list


def estimate_memory(kind: str, n: int, dim: int, nlist: int | None = None, pq_m: int | None = None,
                    hnsw_m: int = 32, train_size: int | None = None) -> int:
    """Bytes a build of ``kind`` over ``n`` x ``dim`` vectors holds at its peak: the index (codes, ids,
    centroids, graphs) plus the float32 training sample and one added chunk."""
    if kind == "exact":
        return n * dim * 4
    if kind == "hnsw":
        return n * (dim * 4 + hnsw_m * 2 * 8)
    lists = _lists(n, nlist)
    code = {"ivf": dim * 4, "ivfsq": dim, "ivfpq": ((pq_m or default_pq_m(dim)) + 1) // 2}[kind]
    coarse = lists * dim * 4 + (lists * 64 * 4 if lists >= HNSW_COARSE_NLIST else 0)
    train = default_train_size(n, lists, train_size) * dim * 4
    return n * (code + 8) + coarse + train + ADD_CHUNK * dim * 8


def default_max_memory() -> float:
    """Half of this machine's RAM, in GB (10^9 bytes)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2e9


def choose_kind(kind: str, n: int, dim: int, exact_max: int, max_memory: float | None, **shape: Any) -> str:
    """The kind to build: ``auto`` = exact up to ``exact_max`` vectors, else the first of ``ivfsq``, ``ivfpq``
    whose :func:`estimate_memory` fits ``max_memory`` GB (default :func:`default_max_memory`). Raises
    ``ValueError`` with the figure needed when none fits."""
    budget = (max_memory if max_memory is not None else default_max_memory()) * 1e9
    candidates = ([] if n > exact_max else ["exact"]) + [AUTO_APPROXIMATE, "ivfpq"] if kind == "auto" else [kind]
    for candidate in candidates:
        need = estimate_memory(candidate, n, dim, **shape)
        if need <= budget:
            return candidate
    need = estimate_memory(candidates[-1], n, dim, **shape)
    raise ValueError(
        f"a {candidates[-1]} index over {n} x {dim} vectors needs about {need / 1e9:.3g} GB, more than "
        f"--max-memory {budget / 1e9:.3g} GB; raise --max-memory or choose a more compact --kind (ivfpq)"
    )


def _settings(kind: str, nprobe: int | None, k_factor: int | None, ef_search: int | None) -> list[dict[str, int]]:
    """Candidate search settings, cheapest first (a fixed value leaves only that value)."""
    if kind == "ivf":
        return [{"nprobe": p} for p in ([nprobe] if nprobe else NPROBE_GRID)]
    if kind in RERANKED:
        probes = [nprobe] if nprobe else NPROBE_GRID
        factors = [k_factor] if k_factor else K_FACTOR_GRID
        grid = [{"nprobe": p, "k_factor": f} for p in probes for f in factors]
        return sorted(grid, key=lambda s: (s["nprobe"] * (1 + s["k_factor"] / 16), s["k_factor"]))
    if kind == "hnsw":
        return [{"efSearch": e} for e in ([ef_search] if ef_search else EF_SEARCH_GRID)]
    return [{}]


def _apply(index: faiss.Index, setting: dict[str, int]) -> None:
    """Set the index's own search parameters (the re-ranking factor belongs to :class:`Searcher`)."""
    own = {k: v for k, v in setting.items() if k != "k_factor"}
    if own:
        faiss.ParameterSpace().set_index_parameters(index, ",".join(f"{k}={v}" for k, v in own.items()))


def searcher_for(index: faiss.Index, vectors: VectorParts | None, params: dict[str, Any]) -> Searcher:
    """The :class:`Searcher` of an index with its stored parameters (``k_factor``: re-ranked)."""
    return Searcher(index, vectors, params.get("k_factor"))


def _tune(
    index: faiss.Index,
    vectors: VectorParts,
    kind: str,
    queries: np.ndarray,
    query_ids: np.ndarray,
    truth: np.ndarray,
    k: int,
    target: float,
    fixed: tuple[int | None, int | None, int | None],
) -> tuple[dict[str, int], float, float]:
    """Pick the cheapest setting whose recall reaches ``target`` with two standard errors to spare (a
    setting picked by its own sample flatters it), else the best seen: ``(setting, recall, q/s)``."""
    best: tuple[dict[str, int], float, float] | None = None
    for setting in _settings(kind, *fixed):
        _apply(index, setting)
        start = time.perf_counter()
        _, found = searcher_for(index, vectors, setting)(queries, k + 1)
        qps = len(queries) / max(time.perf_counter() - start, 1e-9)
        per_query = recall_per_query(found, truth, k, query_ids)
        recall = float(per_query.mean())
        margin = 2.0 * float(per_query.std()) / np.sqrt(max(1, per_query.size))
        logger.info("%s %s: recall@%d %.4f (+-%.4f), %.0f queries/s", kind, setting, k, recall, margin / 2, qps)
        if best is None or recall > best[1]:
            best = (setting, recall, qps)
        if recall - margin >= target or recall >= 1.0:
            return setting, recall, qps
    assert best is not None
    logger.warning("%s: no setting reached recall@%d %.2f; best %s gives %.4f", kind, k, target, best[0], best[1])
    _apply(index, best[0])
    return best


def _train_hnsw_coarse(ivf: faiss.IndexIVF, sample: np.ndarray) -> None:
    """k-means (the IVF's own clustering parameters: spherical for inner product) of ``sample`` [m, d] into
    ``ivf.nlist`` centroids, assigning through an HNSW graph searched with :data:`COARSE_EF_SEARCH`, and the
    centroids added to the IVF's HNSW quantiser (then ``ivf.train`` trains only the encoder)."""
    dim, nlist = ivf.d, int(ivf.nlist)
    clustering = faiss.Clustering(dim, nlist, ivf.cp)
    assigner = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    assigner.hnsw.efSearch = COARSE_EF_SEARCH
    clustering.train(sample, assigner)
    quantizer = faiss.downcast_index(ivf.quantizer)
    quantizer.hnsw.efSearch = COARSE_EF_SEARCH
    quantizer.add(faiss.vector_to_array(clustering.centroids).reshape(nlist, dim))


def make_index(
    vectors: np.ndarray | VectorParts,
    *,
    kind: str = "auto",
    exact_max: int = DEFAULT_EXACT_MAX,
    k_check: int = 8,
    n_check: int = 1000,
    target_recall: float = 0.95,
    nlist: int | None = None,
    nprobe: int | None = None,
    k_factor: int | None = None,
    ef_search: int | None = None,
    pq_m: int | None = None,
    hnsw_m: int = 32,
    train_size: int | None = None,
    threads: int | None = None,
    max_memory: float | None = None,
    seed: int = 0,
) -> tuple[faiss.Index, IndexInfo]:
    """Build an inner-product index over ``vectors`` [n,d] (an array, or memory-mapped parts read chunk by
    chunk): ``(index, IndexInfo)``.

    ``threads``: faiss threads for the build and the check (default: 1 up to :data:`SINGLE_THREAD_MAX`
    vectors, else every core this process may use). ``max_memory``: GB the index may take (see
    :func:`choose_kind`). Approximate kinds are trained on ``train_size`` random rows (default
    :data:`TRAIN_PER_LIST` per list, at most :data:`MAX_TRAIN`), then tuned and checked against exact search
    on ``n_check`` rows.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; expected one of {', '.join(KINDS)}")
    parts = _as_parts(vectors)
    n, dim = parts.shape
    shape = {"nlist": nlist, "pq_m": pq_m, "hnsw_m": hnsw_m, "train_size": train_size}
    chosen = choose_kind(kind, n, dim, exact_max, max_memory, **shape)
    memory = estimate_memory(chosen, n, dim, **shape)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    if threads is None:
        threads = 1 if n <= SINGLE_THREAD_MAX else cpu_threads()
    with faiss_threads(threads):
        lists = _lists(n, nlist)
        factory = factory_string(chosen, dim, lists, pq_m, hnsw_m)
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        params: dict[str, Any] = {"factory": factory}
        if chosen in ("ivf", "ivfsq", "ivfpq"):
            params["nlist"] = lists
            sample = default_train_size(n, lists, train_size)
            train_rows = np.sort(rng.choice(n, size=sample, replace=False)) if sample < n else np.arange(n)
            ivf = faiss.extract_index_ivf(index)
            ivf.cp.niter = 10
            logger.info("training %s on %d vectors", factory, sample)
            if lists >= HNSW_COARSE_NLIST:
                _train_hnsw_coarse(ivf, parts.rows(train_rows))
                train_rows = np.sort(rng.choice(train_rows, size=min(sample, ENCODER_TRAIN), replace=False))
            index.train(parts.rows(train_rows))
            params["train_size"] = int(sample)
        if chosen == "hnsw":
            index.hnsw.efConstruction = 40
        logger.info("adding %d vectors to %s", n, factory)
        for _, block in tqdm(parts.chunks(ADD_CHUNK), desc="add", unit="chunk", disable=n <= ADD_CHUNK,
                             total=-(-n // ADD_CHUNK)):
            index.add(block)
        recall = qps = None
        checked = 0
        if chosen != "exact":
            # 2 * n_check rows: the first half tunes the search parameters, the held-out half measures recall
            rows = rng.choice(n, size=min(2 * n_check, n), replace=False)
            tune_ids, held_ids = np.sort(rows[: (len(rows) + 1) // 2]), np.sort(rows[(len(rows) + 1) // 2 :])
            if held_ids.size == 0:
                held_ids = tune_ids
            logger.info("exact neighbours of %d check rows, then tuning", len(tune_ids) + len(held_ids))
            _, truth = exact_neighbors(parts, parts.rows(np.concatenate([tune_ids, held_ids])), k_check + 1)
            setting, tune_recall, _ = _tune(
                index, parts, chosen, parts.rows(tune_ids), tune_ids, truth[: len(tune_ids)], k_check,
                target_recall, (nprobe, k_factor, ef_search),
            )
            start_check = time.perf_counter()
            _, found = searcher_for(index, parts, setting)(parts.rows(held_ids), k_check + 1)
            qps = len(held_ids) / max(time.perf_counter() - start_check, 1e-9)
            recall = recall_at_k(found, truth[len(tune_ids) :], k_check, held_ids)
            checked = len(held_ids)
            params.update(setting)
            params["tuning_recall"] = round(float(tune_recall), 4)
            if recall < target_recall:
                logger.warning(
                    "%s: recall@%d on %d held-out rows is %.4f, below the target %.2f (tuning rows: %.4f)",
                    chosen, k_check, checked, recall, target_recall, tune_recall,
                )
    info = IndexInfo(
        kind=chosen,
        n=n,
        dim=dim,
        recall_at_k=None if recall is None else round(float(recall), 4),
        params=params,
        k_check=k_check,
        n_check=checked,
        queries_per_second=None if qps is None else round(float(qps), 1),
        build_seconds=round(time.perf_counter() - start, 2),
        fingerprint=rows_fingerprint(parts),
        memory_bytes=int(memory),
    )
    return index, info


def build_index(vectors: np.ndarray | VectorParts, path: str | Path, **options: Any) -> IndexInfo:
    """:func:`make_index` (same keyword options), then write the index to ``path`` atomically."""
    index, info = make_index(vectors, **options)
    write_index(index, path)
    logger.info("wrote %s: %s", path, info)
    return info


def write_index(index: faiss.Index, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def load_index(
    path: str | Path, expected_dim: int, expected_n: int | None = None, mmap: bool = False
) -> faiss.Index:
    """Read an index written by :func:`build_index` (``mmap``: its inverted lists stay memory-mapped from the
    file, not copied into memory); raises if it is missing or does not fit the embeddings (dimension
    ``expected_dim``; and ``expected_n`` vectors, if given)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"index {path} not found; build it with `cocu index EMB_DIR --out {path.parent}`")
    try:
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP if mmap else 0)
    except RuntimeError as err:
        raise ValueError(f"cannot read FAISS index {path} ({err}); rebuild it with `cocu index`") from err
    if index.d != expected_dim:
        raise ValueError(
            f"index {path} has dimension {index.d} but the embeddings have {expected_dim}; it was built from "
            "other embeddings: rebuild it with `cocu index`"
        )
    if expected_n is not None and index.ntotal != expected_n:
        raise ValueError(
            f"index {path} holds {index.ntotal} vectors but the embeddings have {expected_n} rows; rebuild it "
            "with `cocu index`"
        )
    return index


def check_rows(index: faiss.Index, vectors: VectorParts, path: Path, fingerprint: str | None) -> None:
    """Stop (``ValueError``) unless ``index`` numbers its rows as ``vectors`` does: by the row fingerprint
    recorded when cocu built it, else (an index built by another tool) by searching the index for
    :data:`SPOT_CHECK_ROWS` sampled rows, each of which must find itself among its nearest hits."""
    fix = (f"the index {path} was not built from these embeddings in this row order (tools that read parts in "
           "name order, 0, 1, 10, 11, 2, ..., number rows differently); rebuild it with `cocu index`")
    if fingerprint is not None:
        if fingerprint != rows_fingerprint(vectors):
            raise ValueError(f"row fingerprint mismatch: {fix}")
        return
    n = len(vectors)
    rows = np.unique(np.linspace(0, n - 1, num=min(SPOT_CHECK_ROWS, n)).astype(np.int64))
    queries = vectors.rows(rows)
    _, ids = search(index, queries, 10)
    found = float((ids == rows[:, None]).any(axis=1).mean())  # duplicates of a row may hide it: not all need to
    if found < 0.5:
        raise ValueError(f"only {found:.0%} of {rows.size} sampled rows find themselves in it: {fix}")
    logger.info("index %s: %.0f%% of %d sampled rows find themselves", path, 100 * found, rows.size)


def index_embeddings(
    image: np.ndarray | VectorParts | None, text: np.ndarray | VectorParts | None, out_dir: str | Path, **options: Any
) -> dict[str, IndexInfo]:
    """Build ``image.index`` (and ``caption.index`` from ``text`` if given) in ``out_dir`` and record their
    :class:`IndexInfo` (with the rows' fingerprint) in ``index_info.json``. ``options`` go to
    :func:`build_index`."""
    out = Path(out_dir)
    shape = {key: options[key] for key in ("nlist", "pq_m", "hnsw_m", "train_size") if key in options}
    sets = [(name, _as_parts(vectors), filename)
            for name, vectors, filename in (("image", image, IMAGE_INDEX), ("caption", text, CAPTION_INDEX))
            if vectors is not None]
    for _, parts, _ in sets:  # refuse what cannot fit before building anything
        choose_kind(options.get("kind", "auto"), len(parts), parts.dim, options.get("exact_max", DEFAULT_EXACT_MAX),
                    options.get("max_memory"), **shape)
    out.mkdir(parents=True, exist_ok=True)
    infos: dict[str, IndexInfo] = {}
    for name, parts, filename in sets:
        infos[name] = build_index(parts, out / filename, **options)
    atomic_write_json(out / INFO_FILE, {name: info.to_dict() for name, info in infos.items()})
    return infos


def read_index_info(index_dir: str | Path) -> dict[str, IndexInfo]:
    """The :class:`IndexInfo` per index (``image``, ``caption``) of an index folder."""
    path = Path(index_dir) / INFO_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; build the indexes with `cocu index`")
    raw = json.loads(path.read_text("utf-8"))
    return {name: IndexInfo.from_dict(value) for name, value in raw.items()}


def cpu_threads() -> int:
    """Cores this process may use (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
