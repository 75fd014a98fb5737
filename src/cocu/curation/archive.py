"""The curated concept archive: one row per sample, stored as ``RUN/curation/archive-{i}.parquet`` parts.

Columns: ``key``, ``caption``, ``caption_concepts`` (list<string>), ``neighbors`` (list<string>, keys,
nearest first, self excluded), ``concepts`` (list<string>, the archive sorted by score descending),
``scores`` (list<float>, aligned), ``clusters`` (list<int32>, aligned). Cluster ids: with ``cluster``
sampling the k-means cluster of each concept (0 .. min(L, M) - 1, numbered by best member); with ``naive``
sampling 0 .. L-1 for the top-L concepts and -1 for the rest.

Part ``i`` covers a fixed range of anchor rows; its parquet key-value metadata (``cocu``) records the range
and the part's summary counts, so a finished part is never recomputed and the summary needs no re-read.
Parts are written atomically (temporary name, then rename).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cocu.utils.atomic import atomic_path

CURATION_DIR = "curation"
PART_PATTERN = re.compile(r"^archive-(\d+)\.parquet$")
META_KEY = b"cocu"
DICTIONARY_COLUMNS = ["concepts.list.element", "caption_concepts.list.element"]
"""Only the concept names repeat enough for parquet dictionary encoding to pay (it is the costliest part of
writing a part when applied to keys and captions as well)."""
SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("caption", pa.string()),
        ("caption_concepts", pa.list_(pa.string())),
        ("neighbors", pa.list_(pa.string())),
        ("concepts", pa.list_(pa.string())),
        ("scores", pa.list_(pa.float32())),
        ("clusters", pa.list_(pa.int32())),
    ]
)


@dataclass
class ArchiveRow:
    """The curated concepts of one sample (see the module docstring for the meaning of each field)."""

    key: str
    caption: str
    caption_concepts: list[str]
    neighbors: list[str]
    concepts: list[str]
    scores: list[float]
    clusters: list[int]

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


@dataclass(frozen=True)
class PaddedArchive:
    """Archives of a chunk of ``b`` anchors as padded arrays, each row sorted by score descending.

    ``concept`` int64 [b, m] (-1 padding), ``score`` float32 [b, m] (nan padding), ``valid`` bool [b, m],
    ``size`` int64 [b]; ``order`` int64 [p] maps the sorted flat layout back to the chunk's pair order and
    ``flat_col`` int64 [p] is each sorted pair's column.
    """

    concept: np.ndarray
    score: np.ndarray
    valid: np.ndarray
    size: np.ndarray
    order: np.ndarray
    flat_col: np.ndarray


def pad_sorted(
    num_anchors: int, pair_anchor: np.ndarray, pair_concept: np.ndarray, pair_first: np.ndarray, scores: np.ndarray
) -> PaddedArchive:
    """Sort each anchor's pairs by score descending (ties: first appearance) and pad to [b, m].

    ``pair_first`` orders the pairs anchor by anchor (it indexes the anchor-major flattened concept lists), so
    one argsort of it gives every anchor's pairs in order of first appearance; a stable per-row argsort of
    the negated scores then sorts each row.
    """
    first_order = np.argsort(pair_first, kind="stable")  # [p] anchor-major, first appearance
    anchor = pair_anchor[first_order]
    size = np.bincount(anchor, minlength=num_anchors).astype(np.int64)  # [b]
    starts = np.cumsum(size) - size
    m = int(size.max(initial=0))
    key = np.full((num_anchors, m), np.inf, dtype=np.float32)
    key[anchor, np.arange(anchor.shape[0]) - starts[anchor]] = -scores[first_order]
    within = np.argsort(key, axis=1, kind="stable")  # [b, m]
    valid = np.arange(m)[None, :] < size[:, None]  # [b, m]
    order = first_order[(starts[:, None] + within)[valid]]  # [p] sorted row-major layout -> pair
    concept = np.full((num_anchors, m), -1, dtype=np.int64)
    score = np.full((num_anchors, m), np.nan, dtype=np.float32)
    concept[valid] = pair_concept[order]
    score[valid] = scores[order]
    flat_col = np.broadcast_to(np.arange(m, dtype=np.int64), (num_anchors, m))[valid]
    return PaddedArchive(concept, score, valid, size, order, flat_col)


def _list_column(sizes: np.ndarray, values: pa.Array) -> pa.ListArray:
    offsets = np.zeros(sizes.shape[0] + 1, dtype=np.int32)
    np.cumsum(sizes, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), values)


def _take(values: pa.Array | pa.ChunkedArray, rows: pa.Array) -> pa.Array:
    taken = values.take(rows)
    return taken.combine_chunks() if isinstance(taken, pa.ChunkedArray) else taken


def archive_table(
    keys: pa.Array,
    captions: pa.Array,
    anchor_rows: np.ndarray,
    caption_sizes: np.ndarray,
    caption_concepts: np.ndarray,
    neighbor_ids: np.ndarray,
    padded: PaddedArchive,
    clusters: np.ndarray,
    concept_names: pa.Array,
) -> pa.Table:
    """Build one archive part.

    ``keys``/``captions``: string arrays (or chunked arrays, one chunk per embedding part) of the whole data
    set; ``anchor_rows``: int64 [b] the part's rows;
    ``caption_sizes`` int64 [b] and ``caption_concepts`` int64 [sum] the anchors' caption concept ids (CSR
    values); ``neighbor_ids``: int64 [b, k] global rows (-1 = none); ``clusters``: int [b, m] aligned with
    ``padded``; ``concept_names``: string array of the vocabulary.
    """
    rows = pa.array(anchor_rows, type=pa.int64())
    nb_valid = neighbor_ids >= 0
    valid = padded.valid
    columns = [
        _take(keys, rows),
        _take(captions, rows),
        _list_column(caption_sizes, concept_names.take(pa.array(caption_concepts, type=pa.int64()))),
        _list_column(nb_valid.sum(axis=1), _take(keys, pa.array(neighbor_ids[nb_valid], type=pa.int64()))),
        _list_column(padded.size, concept_names.take(pa.array(padded.concept[valid], type=pa.int64()))),
        _list_column(padded.size, pa.array(padded.score[valid], type=pa.float32())),
        _list_column(padded.size, pa.array(clusters[valid].astype(np.int32), type=pa.int32())),
    ]
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def part_path(run_dir: str | Path, index: int) -> Path:
    return Path(run_dir) / CURATION_DIR / f"archive-{index}.parquet"


def write_part(path: str | Path, table: pa.Table, meta: dict) -> None:
    """Write ``table`` atomically with ``meta`` (JSON) in the parquet key-value metadata."""
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta).encode("utf-8")})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="snappy", use_dictionary=DICTIONARY_COLUMNS)


def read_part_meta(path: str | Path) -> dict | None:
    """The metadata a part was written with, or ``None`` if the file is not a complete archive part."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid):
        return None
    raw = (schema.metadata or {}).get(META_KEY)
    return json.loads(raw) if raw is not None else None


def part_files(run_dir_or_file: str | Path) -> list[Path]:
    """The archive part files of a run folder (numeric order), or ``[file]`` for one parquet file."""
    path = Path(run_dir_or_file)
    if path.is_file():
        return [path]
    folder = path / CURATION_DIR if (path / CURATION_DIR).is_dir() else path
    if not folder.is_dir():
        raise FileNotFoundError(f"no archive found at {path}: expected RUN/{CURATION_DIR}/archive-*.parquet")
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := PART_PATTERN.match(p.name))]
    if not found:
        raise FileNotFoundError(f"no archive-*.parquet parts in {folder}")
    return [p for _, p in sorted(found)]


def read_part(path: str | Path) -> list[ArchiveRow]:
    """The rows of one archive part file, in file order."""
    table = pq.read_table(path)
    missing = [name for name in SCHEMA.names if name not in table.column_names]
    if missing:
        raise ValueError(f"{path} is not a cocu archive part: missing column(s) {', '.join(missing)}")
    columns = {name: table.column(name).to_pylist() for name in SCHEMA.names}
    return [ArchiveRow(**{name: columns[name][i] for name in SCHEMA.names}) for i in range(table.num_rows)]


def read_archive(run_dir_or_file: str | Path) -> dict[str, ArchiveRow]:
    """All archive rows of a run (``RUN``, ``RUN/curation`` or one part file), by sample key."""
    return {row.key: row for path in part_files(run_dir_or_file) for row in read_part(path)}


class ArchiveLookup:
    """Rows by key without holding the whole archive: an index key -> (part, row) and one loaded part.

    Lookups in archive order (the order of the data) load every part once.
    """

    def __init__(self, run_dir_or_file: str | Path) -> None:
        self.paths = part_files(run_dir_or_file)
        self.where: dict[str, tuple[int, int]] = {}
        for part, path in enumerate(self.paths):
            keys = pq.read_table(path, columns=["key"]).column("key").to_pylist()
            self.where.update((key, (part, i)) for i, key in enumerate(keys))
        self._part = -1
        self._rows: list[ArchiveRow] = []

    def __len__(self) -> int:
        return len(self.where)

    def get(self, key: str) -> ArchiveRow | None:
        found = self.where.get(key)
        if found is None:
            return None
        part, i = found
        if part != self._part:
            self._rows, self._part = read_part(self.paths[part]), part
        return self._rows[i]
