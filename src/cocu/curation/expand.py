"""Concept expansion (paper section 3.3, "vision-driven expansion", and section 3.2 "caption curation").

For every anchor sample the archive of candidate concepts is the union of its own caption concepts and the
caption concepts of its N retrieved neighbours. Neighbours are either the N nearest images (``vision``:
image-to-image retrieval) or the images of the N nearest captions (``lang``: image-to-caption retrieval).
The anchor itself is never its own neighbour.

Everything here is batched over a chunk of anchors and works on flat index arrays: concept lists are CSR
arrays (:class:`CaptionConcepts`) and the archive of a chunk is a set of (anchor, concept) pairs plus the
(pair, neighbour) reference triples that the ranking of eq. 7 needs (:class:`ExpandedChunk`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

EXPANSIONS: tuple[str, ...] = ("vision", "lang")


@dataclass(frozen=True)
class CaptionConcepts:
    """Concept ids of every caption, CSR style: row ``i`` is ``indices[indptr[i]:indptr[i + 1]]``.

    ``indptr``: int64 [n + 1]; ``indices``: int32 [nnz] (vocabulary ids, no repeats within a row, in order of
    first appearance in the caption).
    """

    indptr: np.ndarray
    indices: np.ndarray

    @classmethod
    def from_lists(cls, rows: Sequence[Sequence[int]]) -> CaptionConcepts:
        """Build from one list of concept ids per caption; repeats within a row are dropped (first kept)."""
        deduped = [list(dict.fromkeys(int(c) for c in row)) for row in rows]
        lengths = np.fromiter((len(r) for r in deduped), dtype=np.int64, count=len(deduped))
        indptr = np.zeros(len(deduped) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        flat = [c for r in deduped for c in r]
        indices = np.asarray(flat, dtype=np.int32).reshape(-1)
        if indices.size and indices.min() < 0:
            raise ValueError("concept ids must be non-negative")
        return cls(indptr=indptr, indices=indices)

    def __len__(self) -> int:
        return int(self.indptr.shape[0] - 1)

    @property
    def lengths(self) -> np.ndarray:
        """int64 [n]: number of concepts per caption."""
        return np.diff(self.indptr)

    def row(self, i: int) -> np.ndarray:
        return self.indices[self.indptr[i] : self.indptr[i + 1]]

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flatten the concept lists of ``rows`` (int64 [r]) in row order.

        Returns ``(owner [t], position [t], concept [t])``: for each flattened entry, the index into ``rows``
        it came from, its position in ``indices`` (a global CSR position) and its concept id.
        """
        rows = np.asarray(rows, dtype=np.int64)
        starts = self.indptr[rows]
        lengths = self.indptr[rows + 1] - starts
        total = int(lengths.sum())
        owner = np.repeat(np.arange(rows.shape[0], dtype=np.int64), lengths)
        offsets = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        position = np.repeat(starts, lengths) + offsets
        return owner, position, self.indices[position].astype(np.int64)


def drop_self(ids: np.ndarray, scores: np.ndarray, anchor_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove each anchor from its own search results.

    ``ids``/``scores``: [b, k + 1] results of a k + 1 nearest-neighbour search (ids -1 where the index had
    fewer results); ``anchor_ids``: int64 [b]. In each row the first occurrence of the anchor's own id is
    dropped; a row without it drops its last column. Returns ``(ids [b, k], scores [b, k])``.
    """
    b, k1 = ids.shape
    is_self = ids == anchor_ids[:, None]
    drop_col = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k1 - 1)
    keep = np.ones((b, k1), dtype=bool)
    keep[np.arange(b), drop_col] = False
    return ids[keep].reshape(b, k1 - 1), scores[keep].reshape(b, k1 - 1)


SearchFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
"""``search(queries [b, d] float32, k) -> (scores [b, k] float32, ids [b, k] int64)``."""


def find_neighbors(
    search: SearchFn, queries: np.ndarray, anchor_ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest neighbours of each anchor, self excluded: search ``k + 1`` and drop the anchor.

    ``queries``: [b, d] anchor image embeddings; ``anchor_ids``: int64 [b] their rows in the searched set
    (image rows for ``vision``, caption rows for ``lang`` — the same rows). Returns ``(ids [b, k] int64,
    scores [b, k] float32)``, nearest first, ids -1 where the index holds too few vectors.
    """
    scores, ids = search(np.ascontiguousarray(queries, dtype=np.float32), k + 1)
    ids, scores = drop_self(np.asarray(ids, dtype=np.int64), np.asarray(scores), np.asarray(anchor_ids))
    return ids, scores


@dataclass(frozen=True)
class ExpandedChunk:
    """The concept archive of a chunk of ``b`` anchors as flat arrays.

    Pairs (one per distinct (anchor, concept) of the archive), sorted by anchor then concept id:
    ``pair_anchor`` int64 [p] (local anchor 0..b-1), ``pair_concept`` int64 [p], ``pair_first`` int64 [p]
    (order of first appearance: own caption first, then neighbours nearest first; used to break score
    ties), ``pair_own`` bool [p] (the concept is in the anchor's own caption).
    Reference triples (one per neighbour whose caption holds the pair's concept, for eq. 7):
    ``ref_pair`` int64 [r] (index into the pairs), ``ref_image`` int64 [r] (the neighbour's global row),
    ``ref_position`` int64 [r] (the global CSR position of the concept in the neighbour's caption).
    Triples are in anchor order (``pair_anchor[ref_pair]`` is non-decreasing), as ``pair_first`` is.
    """

    num_anchors: int
    pair_anchor: np.ndarray
    pair_concept: np.ndarray
    pair_first: np.ndarray
    pair_own: np.ndarray
    ref_pair: np.ndarray
    ref_image: np.ndarray
    ref_position: np.ndarray


def expand_chunk(
    anchor_ids: np.ndarray, neighbor_ids: np.ndarray, captions: CaptionConcepts, vocab_size: int
) -> ExpandedChunk:
    """Union of each anchor's own caption concepts and its neighbours' caption concepts.

    ``anchor_ids``: int64 [b] global rows; ``neighbor_ids``: int64 [b, k] (-1 = no neighbour). A concept that
    occurs in several neighbour captions is one pair with several reference triples.
    """
    b = int(anchor_ids.shape[0])
    slots = np.concatenate([anchor_ids[:, None].astype(np.int64), neighbor_ids.astype(np.int64)], axis=1)
    valid = slots >= 0  # [b, 1 + k]
    slot_anchor = np.broadcast_to(np.arange(b, dtype=np.int64)[:, None], slots.shape)[valid]
    slot_index = np.broadcast_to(np.arange(slots.shape[1], dtype=np.int64)[None, :], slots.shape)[valid]
    slot_rows = slots[valid]
    owner, position, concept = captions.gather(slot_rows)
    entry_anchor = slot_anchor[owner]
    entry_is_ref = slot_index[owner] > 0
    key = entry_anchor * np.int64(vocab_size) + concept
    unique_key, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    pair_own = np.zeros(unique_key.shape[0], dtype=bool)
    pair_own[inverse[~entry_is_ref]] = True
    return ExpandedChunk(
        num_anchors=b,
        pair_anchor=unique_key // vocab_size,
        pair_concept=unique_key % vocab_size,
        pair_first=first.astype(np.int64),
        pair_own=pair_own,
        ref_pair=inverse[entry_is_ref].astype(np.int64),
        ref_image=slot_rows[owner[entry_is_ref]],
        ref_position=position[entry_is_ref],
    )
