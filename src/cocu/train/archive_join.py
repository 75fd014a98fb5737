"""Join the concept archive to the training samples by key, reading the archive part by part.

The archive (``RUN/curation/archive-*.parquet``, :mod:`cocu.curation.archive`) is streamed in record
batches of its ``key``, ``caption``, ``concepts``, ``scores`` and ``clusters`` columns; each batch's keys
are hashed (the shard index keeps the 64-bit hash of every sample key) and looked up in the sorted index
hashes, and every hit is confirmed on the key strings. Nothing holds the whole archive: what is kept is,
per training sample, its join status and the position of its concepts in three flat arrays (concept id,
score, cluster) with the concept names. With a cache folder (the training output folder's
``data_archive/``) those arrays are written there once and memory-mapped, so every process (ranks, loader
workers) reads only the pages of the rows it draws; the cache is reused when the shard index and the
archive parts (size, modification time, first and last 64 KiB) are unchanged.

The archive must have been curated from these samples: each joined row's caption must equal the sample's
caption in the shards. A row that does not is not used (the sample is handled like one without an archive
row) and is counted as ``archive_caption_mismatch``; when more than 1 % of the rows joined by key
mismatch, the archive belongs to other data and training stops with a clear error.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cocu.curation.archive import ArchiveRow, part_files
from cocu.data.skips import SkipCounter
from cocu.train.shards import PackedStrings, ShardIndex, files_fingerprint, hash_strings
from cocu.utils.atomic import atomic_path, atomic_write_json

logger = logging.getLogger(__name__)

MISSING_ARCHIVE_ROW = "missing_archive_row"
"""A training sample whose key has no row in the concept archive (``text.mode: cocu``)."""
ARCHIVE_CAPTION_MISMATCH = "archive_caption_mismatch"
"""A training sample whose archive row (same key) has another caption: the row is not used."""
MAX_MISMATCH_SHARE = 0.01
"""Above this share of mismatched captions among the rows joined by key, training stops."""
JOIN_VERSION = 1
CACHE_DIR = "data_archive"
NO_ROW, JOINED, MISMATCH = 0, 1, 2
_COLUMNS = ("key", "caption", "concepts", "scores", "clusters")
_BATCH_ROWS = 65536
_PAIR_FILES = {"concept_id": np.int32, "score": np.float32, "cluster": np.int32}
_MANIFEST = "manifest.json"


@dataclass(frozen=True)
class PackedArchive:
    """Archive rows of the training samples as flat arrays (shared, or memory-mapped, by worker processes).

    Sample ``i`` has concepts ``concept_id[start[i] : start[i] + count[i]]`` (indices into ``names``) with
    their ``score`` and ``cluster``; ``start[i] == -1``: the sample has no (usable) archive row."""

    names: list[str]
    start: np.ndarray
    count: np.ndarray
    concept_id: np.ndarray
    score: np.ndarray
    cluster: np.ndarray

    @classmethod
    def pack(cls, rows: Sequence[ArchiveRow | None]) -> PackedArchive:
        names: dict[str, int] = {}
        ids: list[int] = []
        scores: list[float] = []
        clusters: list[int] = []
        start = np.full(len(rows), -1, dtype=np.int64)
        count = np.zeros(len(rows), dtype=np.int32)
        for i, row in enumerate(rows):
            if row is None:
                continue
            if not len(row.concepts) == len(row.scores) == len(row.clusters):
                raise ValueError(f"archive row {row.key!r}: concepts, scores and clusters differ in length")
            start[i], count[i] = len(ids), len(row.concepts)
            ids.extend(names.setdefault(c, len(names)) for c in row.concepts)
            scores.extend(row.scores)
            clusters.extend(row.clusters)
        return cls(
            names=list(names),
            start=start,
            count=count,
            concept_id=np.asarray(ids, dtype=np.int32),
            score=np.asarray(scores, dtype=np.float32),
            cluster=np.asarray(clusters, dtype=np.int32),
        )

    def select(self, rows: np.ndarray) -> PackedArchive:
        """The archive of samples ``rows`` (int [m]), renumbered 0 .. m-1 (the flat arrays are shared)."""
        return PackedArchive(self.names, self.start[rows], self.count[rows], self.concept_id, self.score, self.cluster)

    def row(self, i: int, key: str, caption: str) -> ArchiveRow | None:
        lo = int(self.start[i])
        if lo < 0:
            return None
        hi = lo + int(self.count[i])
        return ArchiveRow(
            key=key,
            caption=caption,
            caption_concepts=[],
            neighbors=[],
            concepts=[self.names[c] for c in self.concept_id[lo:hi]],
            scores=self.score[lo:hi].tolist(),
            clusters=self.cluster[lo:hi].tolist(),
        )


@dataclass(frozen=True)
class ArchiveJoin:
    """Per shard-index row: ``status`` (int8: ``NO_ROW``, ``JOINED`` or ``MISMATCH``) and ``archive``
    (aligned with the index rows; only joined rows have concepts). ``example``: one mismatch, for errors."""

    status: np.ndarray
    archive: PackedArchive
    example: str

    def kept_rows(self, missing: str) -> np.ndarray:
        """The index rows a run trains on: all (``missing: caption``) or the joined ones (``drop``)."""
        if missing == "drop":
            return np.flatnonzero(self.status == JOINED).astype(np.int64)
        return np.arange(self.status.shape[0], dtype=np.int64)

    def check_and_count(self, index: ShardIndex, archive_spec: str, skips: SkipCounter) -> None:
        """Stop on an archive from other data; else count each sample without a usable row (one log line each)."""
        mismatched = int((self.status == MISMATCH).sum())
        by_key = mismatched + int((self.status == JOINED).sum())
        if mismatched > MAX_MISMATCH_SHARE * by_key:
            raise ValueError(
                f"the concept archive {archive_spec} was not curated from these shards: {mismatched} of the "
                f"{by_key} archive rows found by key ({100 * mismatched / by_key:.1f} %) have another caption "
                f"than the sample in the shards (e.g. {self.example}); curate these shards again, or point "
                "data.archive at the run curated from them"
            )
        for r in np.flatnonzero(self.status != JOINED).tolist():
            if self.status[r] == MISMATCH:
                detail = f"archive {archive_spec} has another caption for this key"
                skips.add(ARCHIVE_CAPTION_MISMATCH, index.keys[r], index.source(r), detail)
            else:
                skips.add(MISSING_ARCHIVE_ROW, index.keys[r], index.source(r), f"not in archive {archive_spec}")


def _strings(packed: PackedStrings) -> pa.Array:
    """A zero-copy Arrow view of packed strings."""
    n = len(packed)
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(packed.offsets), pa.py_buffer(packed.blob))


def _arrow_hashes(array: pa.Array) -> np.ndarray:
    """:func:`~cocu.train.shards.hash_strings` of an Arrow string array, read from its buffers."""
    large = array.cast(pa.large_string())
    buffers = large.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int64)[large.offset : large.offset + len(large) + 1]
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, dtype=np.uint8)
    return hash_strings(data, offsets)


def _bools(array: pa.Array) -> np.ndarray:
    return pc.fill_null(array, False).to_numpy(zero_copy_only=False).astype(bool)


class _PairSink:
    """Receives the flat concept arrays batch by batch: files in ``folder``, or lists in memory."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.total = 0
        self.chunks: dict[str, list[np.ndarray]] = {name: [] for name in _PAIR_FILES}
        self.handles = {}
        if folder is not None:
            self.handles = {name: open(folder / f".{name}.tmp", "wb") for name in _PAIR_FILES}

    def write(self, arrays: dict[str, np.ndarray]) -> None:
        for name, dtype in _PAIR_FILES.items():
            data = np.ascontiguousarray(arrays[name], dtype=dtype)
            if self.folder is None:
                self.chunks[name].append(data)
            else:
                self.handles[name].write(data.tobytes())
        self.total += int(arrays["concept_id"].shape[0])

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()

    def arrays(self) -> dict[str, np.ndarray]:
        if self.folder is None:
            return {
                name: np.concatenate(self.chunks[name] + [np.zeros(0, dtype=dtype)])
                for name, dtype in _PAIR_FILES.items()
            }
        for name in _PAIR_FILES:
            (self.folder / f".{name}.tmp").replace(self.folder / f"{name}.bin")
        return _open_pairs(self.folder, self.total)


def _open_pairs(folder: Path, total: int) -> dict[str, np.ndarray]:
    out = {}
    for name, dtype in _PAIR_FILES.items():
        path = folder / f"{name}.bin"
        if path.stat().st_size != total * np.dtype(dtype).itemsize:
            raise ValueError(f"{path} has the wrong size")
        out[name] = np.memmap(path, dtype=dtype, mode="r") if total else np.zeros(0, dtype=dtype)
    return out


def _check_columns(path: Path, schema: pa.Schema) -> None:
    missing = [name for name in _COLUMNS if name not in schema.names]
    if missing:
        raise ValueError(f"{path} is not a cocu archive part: missing column(s) {', '.join(missing)}")


def _join(
    index: ShardIndex, parts: list[Path], sink: _PairSink
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], str]:
    """Stream the archive parts: per index row its status, pair start and count; the names; one mismatch."""
    n = len(index)
    order = np.argsort(index.key_hash, kind="stable")  # [n]
    sorted_hash = index.key_hash[order]
    keys, captions = _strings(index.keys), _strings(index.captions)
    status = np.zeros(n, dtype=np.int8)
    start = np.full(n, -1, dtype=np.int64)
    count = np.zeros(n, dtype=np.int32)
    names: dict[str, int] = {}
    example, repeated = "", 0
    for path in parts:
        parquet = pq.ParquetFile(path)
        _check_columns(path, parquet.schema_arrow)
        for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=list(_COLUMNS)):
            if n == 0:
                break
            batch_keys = batch.column("key")
            hashes = _arrow_hashes(batch_keys)
            pos = np.minimum(np.searchsorted(sorted_hash, hashes), n - 1)  # [b]
            arows = np.flatnonzero(sorted_hash[pos] == hashes)
            irows = order[pos[arows]]
            same = _bools(pc.equal(batch_keys.take(arows), keys.take(irows)))
            arows, irows = arows[same], irows[same]
            _, first = np.unique(irows, return_index=True)
            fresh = np.zeros(irows.shape[0], dtype=bool)
            fresh[first] = True
            fresh &= status[irows] == NO_ROW
            repeated += int((~fresh).sum())
            arows, irows = arows[fresh], irows[fresh]
            equal = _bools(pc.equal(batch.column("caption").take(arows), captions.take(irows)))
            if not example and not equal.all():
                bad = int(np.flatnonzero(~equal)[0])
                archive_caption = batch.column("caption")[int(arows[bad])].as_py()
                example = (
                    f"key {index.keys[int(irows[bad])]!r}: archive {archive_caption!r}, "
                    f"shards {index.captions[int(irows[bad])]!r}"
                )
            status[irows[~equal]] = MISMATCH
            arows, irows = arows[equal], irows[equal]
            status[irows] = JOINED
            sub = batch.take(pa.array(arows, type=pa.int64()))
            lengths = [
                pc.fill_null(pc.list_value_length(sub.column(name)), 0).to_numpy().astype(np.int64)
                for name in ("concepts", "scores", "clusters")
            ]
            if not (np.array_equal(lengths[0], lengths[1]) and np.array_equal(lengths[0], lengths[2])):
                bad = int(np.flatnonzero((lengths[0] != lengths[1]) | (lengths[0] != lengths[2]))[0])
                key = sub.column("key")[bad].as_py()
                raise ValueError(f"archive row {key!r} in {path}: concepts, scores and clusters differ in length")
            encoded = pc.dictionary_encode(pc.list_flatten(sub.column("concepts")))
            global_ids = np.asarray(
                [names.setdefault(str(name), len(names)) for name in encoded.dictionary.to_pylist()], dtype=np.int32
            )
            within = np.zeros(lengths[0].shape[0], dtype=np.int64)
            np.cumsum(lengths[0][:-1], out=within[1:])
            start[irows] = sink.total + within
            count[irows] = lengths[0]
            sink.write(
                {
                    "concept_id": global_ids[encoded.indices.to_numpy(zero_copy_only=False)],
                    "score": pc.list_flatten(sub.column("scores")).to_numpy(zero_copy_only=False),
                    "cluster": pc.list_flatten(sub.column("clusters")).to_numpy(zero_copy_only=False),
                }
            )
    if repeated:
        logger.warning("the archive holds %d repeated keys; the first row of each key is used", repeated)
    return status, start, count, list(names), example


def join_archive(
    index: ShardIndex, archive_spec: str | Path, cache_dir: str | Path | None, index_fingerprint: str
) -> ArchiveJoin:
    """Join ``archive_spec`` (``RUN``, ``RUN/curation`` or one part) to ``index``; cached in ``cache_dir``."""
    parts = part_files(archive_spec)
    fingerprint = files_fingerprint(parts, f"archive-join-v{JOIN_VERSION}\0{index_fingerprint}")
    folder = Path(cache_dir) if cache_dir is not None else None
    if folder is not None:
        cached = _load_cached(folder, fingerprint)
        if cached is not None:
            logger.info("reusing the archive join %s", folder)
            return cached
        folder.mkdir(parents=True, exist_ok=True)
        (folder / _MANIFEST).unlink(missing_ok=True)  # the files below are trusted only with a new manifest
    sink = _PairSink(folder)
    try:
        status, start, count, names, example = _join(index, parts, sink)
    finally:
        sink.close()
    pairs = sink.arrays()
    if folder is not None:
        for name, array in (("status", status), ("start", start), ("count", count)):
            with atomic_path(folder / f"{name}.npy") as tmp:
                with open(tmp, "wb") as handle:
                    np.save(handle, array)
        atomic_write_json(
            folder / _MANIFEST,
            {"fingerprint": fingerprint, "pairs": sink.total, "names": names, "example": example},
        )
    archive = PackedArchive(names, start, count, pairs["concept_id"], pairs["score"], pairs["cluster"])
    return ArchiveJoin(status=status, archive=archive, example=example)


def _load_cached(folder: Path, fingerprint: str) -> ArchiveJoin | None:
    try:
        manifest = json.loads((folder / _MANIFEST).read_text("utf-8"))
        if manifest.get("fingerprint") != fingerprint:
            return None
        rows = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in ("status", "start", "count")}
        pairs = _open_pairs(folder, int(manifest["pairs"]))
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None
    archive = PackedArchive(
        list(manifest["names"]), rows["start"], rows["count"], pairs["concept_id"], pairs["score"], pairs["cluster"]
    )
    return ArchiveJoin(status=np.asarray(rows["status"]), archive=archive, example=str(manifest["example"]))
