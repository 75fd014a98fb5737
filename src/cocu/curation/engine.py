"""Array-level concept curation of a chunk of anchors: search, expand, rank, sort, cluster, count.

:class:`Curator` holds everything that does not depend on the anchors (embeddings, caption concept lists,
concept embeddings, the cosines of every caption concept to its own image, the vocabulary Gram matrix) and
curates one chunk of anchor rows at a time with :meth:`Curator.curate_rows`. It knows nothing about files,
encoders or text; :mod:`cocu.curation.pipeline` and ``benchmarks/curation.py`` drive it.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np

from cocu.curation.archive import PaddedArchive, pad_sorted
from cocu.curation.cluster import ConceptGram, cluster_archives
from cocu.curation.expand import EXPANSIONS, CaptionConcepts, SearchFn, expand_chunk, find_neighbors
from cocu.curation.rank import RANKINGS, reference_cos, score_chunk
from cocu.curation.sampling import DEFAULT_TAU, SAMPLINGS, draw_padded
from cocu.curation.store import VectorParts

METRIC_SETS: tuple[str, ...] = ("caption", "archive", "topL", "sampled")


@dataclass(frozen=True)
class CurationParams:
    """The method choices (defaults = full CoCu)."""

    expansion: str = "vision"
    neighbors: int = 8
    ranking: str = "t2v"
    sampling: str = "cluster"
    labels: int = 3
    tau: float = DEFAULT_TAU
    kmeans_iters: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("expansion", self.expansion, EXPANSIONS),
            ("ranking", self.ranking, RANKINGS),
            ("sampling", self.sampling, SAMPLINGS),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        if self.neighbors < 1 or self.labels < 1 or self.kmeans_iters < 1:
            raise ValueError("neighbors, labels and kmeans_iters must be >= 1")
        if self.tau <= 0:
            raise ValueError(f"tau must be positive, got {self.tau}")


@dataclass(frozen=True)
class TrueConcepts:
    """Ground-truth concepts per sample: vocabulary ids (CSR) plus the count of names not in the vocabulary.

    ``known``: bool [n], whether the sample carries ground truth at all.
    """

    ids: CaptionConcepts
    unmapped: np.ndarray
    known: np.ndarray

    @classmethod
    def from_names(
        cls, names: Sequence[Sequence[str] | None], concept_index: dict[str, int]
    ) -> TrueConcepts:
        """Map each sample's true concept names (``None`` = no ground truth) through ``concept_index``."""
        rows: list[list[int]] = []
        unmapped = np.zeros(len(names), dtype=np.int64)
        known = np.zeros(len(names), dtype=bool)
        for i, sample in enumerate(names):
            if sample is None:
                rows.append([])
                continue
            known[i] = True
            distinct = list(dict.fromkeys(sample))
            mapped = [concept_index[c] for c in distinct if c in concept_index]
            rows.append(mapped)
            unmapped[i] = len(distinct) - len(mapped)
        return cls(CaptionConcepts.from_lists(rows), unmapped, known)


@dataclass
class ChunkResult:
    """One curated chunk: ``rows`` int64 [b]; ``neighbor_ids`` int64 [b, k]; ``archive`` (padded, sorted);
    ``clusters`` int64 [b, m]; ``stats``: summable counts for the run summary."""

    rows: np.ndarray
    neighbor_ids: np.ndarray
    archive: PaddedArchive
    clusters: np.ndarray
    stats: dict[str, float] = field(default_factory=dict)


class Curator:
    """Curates chunks of anchors against a fixed data set and index.

    ``image_emb``: the unit image embeddings [n, d] (memory-mapped parts, or an array); ``captions``: caption
    concept ids per row; ``concept_emb``:
    float32 [V, d] L2-normalised prompt embeddings; ``search``: nearest-neighbour search over the image
    embeddings (``vision``) or the caption embeddings (``lang``) returning global row ids; ``neighbor_table``:
    int64 [n, k] every row's neighbours already found (self excluded, e.g. by :func:`.knn.self_neighbors`;
    may be a memory-mapped file), used instead of ``search`` (which may then be ``None``). Only a chunk's
    anchors and their neighbours are read from ``image_emb`` at a time.
    """

    def __init__(
        self,
        image_emb: np.ndarray | VectorParts,
        captions: CaptionConcepts,
        concept_emb: np.ndarray,
        search: SearchFn | None,
        params: CurationParams,
        truth: TrueConcepts | None = None,
        neighbor_table: np.ndarray | None = None,
    ) -> None:
        if not isinstance(image_emb, VectorParts):
            image_emb = VectorParts.from_array(np.asarray(image_emb))
        if image_emb.shape[0] != len(captions):
            raise ValueError(f"{image_emb.shape[0]} image embeddings but {len(captions)} caption concept lists")
        if image_emb.shape[1] != concept_emb.shape[1]:
            raise ValueError(
                f"image embeddings have dim {image_emb.shape[1]} but concept embeddings dim {concept_emb.shape[1]}"
            )
        if neighbor_table is None and search is None:
            raise ValueError("the curator needs a search function or a neighbour table")
        if neighbor_table is not None and neighbor_table.shape != (image_emb.shape[0], params.neighbors):
            raise ValueError(
                f"neighbour table has shape {neighbor_table.shape}; expected ({image_emb.shape[0]}, {params.neighbors})"
            )
        self.image_emb = image_emb
        self.neighbor_table = neighbor_table
        self.captions = captions
        self.concept_emb = np.ascontiguousarray(concept_emb, dtype=np.float32)
        self.search = search
        self.params = params
        self.truth = truth if truth is not None and truth.known.any() else None
        self.gram = ConceptGram(self.concept_emb) if params.sampling == "cluster" else None

    def neighbors(self, rows: np.ndarray) -> np.ndarray:
        """int64 [b, k]: the anchors' neighbour rows, nearest first, self excluded (-1 = none)."""
        if self.neighbor_table is not None:
            return self.neighbor_table[rows]
        assert self.search is not None
        queries = self.image_emb.rows(rows)  # [b, d]
        return find_neighbors(self.search, queries, rows, self.params.neighbors)[0]

    def curate_rows(
        self, rows: np.ndarray, rng: np.random.Generator, neighbor_ids: np.ndarray | None = None
    ) -> ChunkResult:
        """Curate the anchors ``rows`` (int64 [b]); ``rng`` draws the sampled-concept metric;
        ``neighbor_ids``: :meth:`neighbors` of ``rows`` if already searched."""
        p = self.params
        rows = np.asarray(rows, dtype=np.int64)
        if neighbor_ids is None:
            neighbor_ids = self.neighbors(rows)
        neighbor_ids = np.asarray(neighbor_ids, dtype=np.int64)
        chunk = expand_chunk(rows, neighbor_ids, self.captions, self.concept_emb.shape[0])
        if p.ranking == "naive":
            queries, ref_cos = self.image_emb.rows(rows), None  # [b, d]
        else:
            needed = np.unique(np.concatenate([rows, chunk.ref_image]))  # [u] anchors and referenced neighbours
            block = self.image_emb.rows(needed)  # [u, d]
            queries = block[np.searchsorted(needed, rows)]  # [b, d]
            ref_cos = reference_cos(chunk, block, needed, self.captions, self.concept_emb)  # [r]
        scores = score_chunk(chunk, queries, self.concept_emb, ref_cos, p.ranking)  # [pairs]
        archive = pad_sorted(rows.shape[0], chunk.pair_anchor, chunk.pair_concept, chunk.pair_first, scores)
        if p.sampling == "cluster":
            clusters = cluster_archives(archive.concept, archive.valid, self.gram, p.labels, p.kmeans_iters)
        else:
            cols = np.arange(archive.concept.shape[1])[None, :]
            clusters = np.where(archive.valid & (cols < p.labels), cols, -1).astype(np.int64)
        result = ChunkResult(rows, neighbor_ids, archive, clusters)
        result.stats = self._stats(result, chunk.pair_own, rng)
        return result

    def curate_chunks(
        self, chunks: Iterable[tuple[int, np.ndarray]], seed: int
    ) -> Iterator[tuple[int, ChunkResult]]:
        """Curate ``(part, rows)`` chunks in order, searching the next chunk's neighbours in a background
        thread while this one is ranked, clustered and handed to the caller (faiss releases the GIL, so
        search and numpy work overlap). Part ``i`` draws its sampled metric with seed ``[seed, i]``."""
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending: tuple[int, np.ndarray, Future] | None = None
            for part, rows in chunks:
                rows = np.asarray(rows, dtype=np.int64)
                ahead = (part, rows, pool.submit(self.neighbors, rows))
                if pending is not None:
                    yield pending[0], self._finish(pending, seed)
                pending = ahead
            if pending is not None:
                yield pending[0], self._finish(pending, seed)

    def _finish(self, pending: tuple[int, np.ndarray, Future], seed: int) -> ChunkResult:
        part, rows, future = pending
        return self.curate_rows(rows, np.random.default_rng([seed, part]), future.result())

    def _stats(self, result: ChunkResult, pair_own: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
        archive, p = result.archive, self.params
        b, m = archive.concept.shape
        stats: dict[str, float] = {
            "samples": float(b),
            "archive_size_sum": float(archive.size.sum()),
            "caption_concepts_sum": float(self.captions.lengths[result.rows].sum()),
            "empty_archives": float((archive.size == 0).sum()),
        }
        if self.truth is None:
            return stats
        picks = draw_padded(archive.score, result.clusters, p.labels, p.sampling, p.tau, rng)  # [b, L]
        known = self.truth.known[result.rows]  # [b]
        owner, _, true_id = self.truth.ids.gather(result.rows)
        true_keys = owner * np.int64(self.concept_emb.shape[0]) + true_id
        keys = np.arange(b, dtype=np.int64)[:, None] * self.concept_emb.shape[0] + np.maximum(archive.concept, 0)
        hit = archive.valid & np.isin(keys, true_keys)  # [b, m]
        own = np.zeros((b, m), dtype=bool)
        own[np.repeat(np.arange(b), archive.size), archive.flat_col] = pair_own[archive.order]
        sampled = np.zeros((b, m), dtype=bool)
        row_ix, slot = np.nonzero(picks >= 0)
        sampled[row_ix, picks[row_ix, slot]] = True
        top = archive.valid & (np.arange(m)[None, :] < p.labels)
        true_count = self.truth.ids.lengths[result.rows] + self.truth.unmapped[result.rows]
        stats["truth_samples"] = float(known.sum())
        stats["true_total"] = float(true_count[known].sum())
        for name, chosen in (("caption", own), ("archive", archive.valid), ("topL", top), ("sampled", sampled)):
            stats[f"{name}_hits"] = float((hit & chosen)[known].sum())
            stats[f"{name}_size"] = float(chosen[known].sum())
        return stats


def summarize_stats(parts: Sequence[dict[str, float]]) -> dict[str, float | None]:
    """Sum per-chunk counts and turn them into the summary's means and micro-averaged recall/precision."""
    total: dict[str, float] = {}
    for stats in parts:
        for key, value in stats.items():
            total[key] = total.get(key, 0.0) + value
    samples = total.get("samples", 0.0)
    out: dict[str, float | None] = {
        "samples_written": int(samples),
        "empty_archives": int(total.get("empty_archives", 0.0)),
        "mean_archive_size": total.get("archive_size_sum", 0.0) / samples if samples else 0.0,
        "mean_caption_concepts": total.get("caption_concepts_sum", 0.0) / samples if samples else 0.0,
    }
    truth = total.get("truth_samples", 0.0)
    out["truth_samples"] = int(truth)
    for name in METRIC_SETS:
        hits = total.get(f"{name}_hits", 0.0)
        size = total.get(f"{name}_size", 0.0)
        true_total = total.get("true_total", 0.0)
        out[f"{name}_recall"] = hits / true_total if truth and true_total else None
        out[f"{name}_precision"] = hits / size if truth and size else None
    return out
