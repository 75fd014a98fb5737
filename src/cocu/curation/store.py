"""Out-of-core access to embedding folders (ours or clip-retrieval's), for indexing and curation at scale.

Nothing here holds all rows in anonymous memory:

- :class:`VectorParts`: the ``img_emb_*.npy`` (or ``text_emb_*.npy``) parts of one or more folders,
  memory-mapped as written (float16 or float32), in the order of the integer in their name
  (``img_emb_7.npy`` and ``img_emb_00007.npy`` alike, so ``..._2`` comes before ``..._10``). Rows are read
  on demand (:meth:`VectorParts.rows`, :meth:`VectorParts.chunks`) and returned as float32 rescaled to
  unit length, exactly as :func:`cocu.curation.embed.load_embeddings` returns them (float16 rows are only
  close to unit length).
- :class:`EmbeddingStore`: the vectors plus keys and captions read column by column from the metadata
  parquet parts as Arrow chunked arrays (one chunk per part), and ground truth / captions streamed part
  by part (:meth:`EmbeddingStore.iter_meta`).

:func:`rows_fingerprint` identifies the row order of a folder from a few sampled rows, so an index can be
checked against the folder it is used with.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cocu.curation import embed as emb_mod

CHUNK_ROWS = 65_536
"""Rows converted to float32 at once when streaming a set."""
FINGERPRINT_ROWS = 64


def _unit_rows(x: np.ndarray, block: int = 2048) -> None:
    """Scale the rows of ``x [b, d]`` float32 to unit length in place, block by block (cache-sized), with the
    arithmetic of ``np.linalg.norm(axis=1)`` (sqrt of the pairwise sum of squares), so the values equal
    :func:`cocu.curation.embed.load_embeddings`' bit for bit."""
    for start in range(0, x.shape[0], block):
        part = x[start : start + block]  # [c, d] view
        part /= np.maximum(np.sqrt(np.add.reduce(part * part, axis=1, keepdims=True)), 1e-12)


class VectorParts:
    """Rows of memory-mapped ``.npy`` parts seen as one ``[n, d]`` set (see the module docstring)."""

    def __init__(self, arrays: list[np.ndarray], paths: list[Path], normalize: bool = True) -> None:
        if not arrays:
            raise ValueError("no embedding parts")
        dims = {a.shape[1] for a in arrays}
        if len(dims) != 1:
            raise ValueError(f"embedding parts {', '.join(map(str, paths))} have different dimensions {sorted(dims)}")
        self.arrays, self.paths = arrays, paths
        self.offsets = np.concatenate([[0], np.cumsum([a.shape[0] for a in arrays])]).astype(np.int64)
        self.dim = dims.pop()
        self.normalize = normalize

    @classmethod
    def from_array(cls, array: np.ndarray) -> VectorParts:
        """One in-memory array of unit rows as a set, its rows returned as they are (tests and benchmarks)."""
        return cls([array], [Path("<memory>")], normalize=False)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.offsets[-1]), self.dim

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def slice(self, start: int, stop: int) -> np.ndarray:
        """float32 [stop - start, d] unit rows ``start..stop``."""
        return self.rows(np.arange(start, stop, dtype=np.int64))

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """float32 [len(ids), d] rows ``ids`` (any order, repeats allowed), rescaled to unit length unless the
        set is an in-memory array."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.empty((ids.shape[0], self.dim), dtype=np.float32)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexError(f"row ids out of range 0..{len(self) - 1}")
        part = np.searchsorted(self.offsets, ids, side="right") - 1
        order = np.argsort(part, kind="stable")  # group the ids by part, keeping their order within a part
        bounds = np.searchsorted(part[order], np.arange(len(self.arrays) + 1))
        for p in np.flatnonzero(np.diff(bounds)):
            where = order[bounds[p] : bounds[p + 1]]
            local = ids[where] - self.offsets[p]
            contiguous = local[-1] - local[0] == local.size - 1 and bool(np.all(np.diff(local) == 1))
            values = self.arrays[p][local[0] : local[-1] + 1] if contiguous else self.arrays[p][local]
            if where[-1] - where[0] == where.size - 1:  # sorted ids: this part's rows are one block of out
                out[where[0] : where[-1] + 1] = values
            else:
                out[where] = values
        if self.normalize:
            _unit_rows(out)
        return out

    def chunks(
        self, chunk: int = CHUNK_ROWS, start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, float32 [c, d] unit rows)`` over rows ``start..stop``, ``chunk`` rows at a time."""
        stop = len(self) if stop is None else stop
        for first in range(start, stop, chunk):
            yield first, self.slice(first, min(stop, first + chunk))

    def check_finite(self, keys: pa.ChunkedArray | None, where: str) -> None:
        """Raise ``ValueError`` (naming the first bad key) if any row holds NaN or inf."""
        count, row = 0, -1
        for first, block in self.chunks():
            bad = ~np.isfinite(block).all(axis=1)
            if bad.any() and row < 0:
                row = first + int(np.argmax(bad))
            count += int(bad.sum())
        if count:
            name = repr(keys[row].as_py()) if keys is not None else f"row {row}"
            raise ValueError(
                f"{count} embedding row(s) in {where} are not finite (first key {name}): the embeddings are "
                "damaged; delete that folder and rerun (the embedding stage is then redone)"
            )


def rows_fingerprint(vectors: VectorParts, samples: int = FINGERPRINT_ROWS) -> str:
    """A digest of the set's size and of ``samples`` rows at fixed, spread positions (their stored bytes):
    two folders with the same rows in another order give different digests."""
    n = len(vectors)
    ids = np.unique(np.linspace(0, n - 1, num=min(samples, n)).astype(np.int64)) if n else np.zeros(0, np.int64)
    digest = hashlib.sha256(f"{n}x{vectors.dim}".encode())
    for row in ids:
        p = int(np.searchsorted(vectors.offsets, row, side="right") - 1)
        digest.update(np.ascontiguousarray(vectors.arrays[p][row - vectors.offsets[p]], dtype=np.float32).tobytes())
    return digest.hexdigest()[:32]


@dataclass
class MetaPart:
    """One metadata part streamed by :meth:`EmbeddingStore.iter_meta`: its captions and ground truth (``None``
    when the part has no ``true_concepts`` column)."""

    captions: pa.Array
    truth: pa.Array | None


class EmbeddingStore:
    """One or more embedding folders (ranks' folders are concatenated in order) opened out of core.

    ``image``: :class:`VectorParts`; ``text``: :class:`VectorParts` or ``None`` when the folders have no
    ``text_emb/`` (clip-retrieval with ``--enable_text False``); ``keys`` / ``captions``: ``pa.ChunkedArray``
    of strings, one chunk per part; ``rejected``: counts by reason from the folders' ``rejected.parquet``.
    """

    def __init__(self, dirs: list[Path]) -> None:
        self.dirs = [Path(d) for d in dirs]
        images, texts, image_paths, text_paths, metas = [], [], [], [], []
        keys, captions, missing_text = [], [], []
        for folder in self.dirs:
            parts = emb_mod._part_indices(folder)
            if not parts:
                raise FileNotFoundError(
                    f"no {emb_mod.IMG_DIR}/img_emb_*.npy files in {folder}; make them with `cocu embed`"
                )
            for suffix in parts.values():
                image_file = emb_mod.img_path(folder, suffix)
                text_file, meta_file = emb_mod.text_path(folder, suffix), emb_mod.meta_path(folder, suffix)
                if not meta_file.is_file():
                    raise FileNotFoundError(
                        f"{meta_file} is missing (its part {image_file} exists); rerun `cocu embed`"
                    )
                image = emb_mod.open_rows(image_file)
                rows = pq.ParquetFile(meta_file).metadata.num_rows
                columns = pq.read_schema(meta_file).names
                for column in ("image_path", "caption"):
                    if column not in columns:
                        raise ValueError(f"{meta_file} has no {column!r} column (columns: {columns})")
                checked = [(image, image_file)]
                if text_file.is_file():
                    text = emb_mod.open_rows(text_file)
                    texts.append(text)
                    text_paths.append(text_file)
                    checked.append((text, text_file))
                else:
                    missing_text.append((text_file, image_file))
                for array, path in checked:
                    if array.shape[0] != rows:
                        raise ValueError(
                            f"{path} has {array.shape[0]} rows but {meta_file} has {rows}; the part is damaged: "
                            "delete its three files and rerun `cocu embed`"
                        )
                images.append(image)
                image_paths.append(image_file)
                metas.append(meta_file)
                table = pq.read_table(meta_file, columns=["image_path", "caption"])
                keys.extend(table.column("image_path").cast(pa.string()).chunks)
                captions.extend(table.column("caption").cast(pa.string()).fill_null("").chunks)
        if texts and missing_text:
            text_file, image_file = missing_text[0]
            raise FileNotFoundError(f"{text_file} is missing (its part {image_file} exists); rerun `cocu embed`")
        self.image = VectorParts(images, image_paths)
        self.text = VectorParts(texts, text_paths) if texts else None
        if self.text is not None and self.text.dim != self.image.dim:
            raise ValueError(
                f"image and text embeddings of {self.dirs} have dimensions {self.image.dim}/{self.text.dim}"
            )
        self.meta_files = metas
        self.keys = pa.chunked_array(keys, pa.string())
        self.captions = pa.chunked_array(captions, pa.string())
        self.rejected: dict[str, int] = {}
        counts: Counter[str] = Counter()
        for folder in self.dirs:
            rejected_file = folder / emb_mod.REJECTED_FILE
            if rejected_file.is_file():
                counts.update(pq.read_table(rejected_file, columns=["reason"]).column("reason").to_pylist())
        self.rejected = dict(counts)

    def __len__(self) -> int:
        return len(self.image)

    @property
    def dim(self) -> int:
        return self.image.dim

    @property
    def has_truth(self) -> bool:
        return any("true_concepts" in pq.read_schema(m).names for m in self.meta_files)

    def iter_meta(self) -> Iterator[MetaPart]:
        """Captions and ground truth part by part, in row order."""
        for meta in self.meta_files:
            names = pq.read_schema(meta).names
            columns = ["caption"] + (["true_concepts"] if "true_concepts" in names else [])
            table = pq.read_table(meta, columns=columns)
            captions = table.column("caption").cast(pa.string()).fill_null("").combine_chunks()
            truth = table.column("true_concepts").combine_chunks() if "true_concepts" in names else None
            yield MetaPart(captions, truth)

    def check_finite(self) -> None:
        where = ", ".join(map(str, self.dirs))
        self.image.check_finite(self.keys, where)
        if self.text is not None:
            self.text.check_finite(self.keys, where)


def first_occurrences(keys: pa.ChunkedArray) -> np.ndarray:
    """int64 rows whose key does not occur in an earlier row, ascending (a stable sort of the keys, no
    Python objects per row)."""
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = pc.sort_indices(keys).to_numpy()  # stable: equal keys keep their row order
    ordered = keys.take(pa.array(order))
    repeat = np.zeros(n, dtype=bool)
    if n > 1:
        same = pc.equal(ordered.slice(1), ordered.slice(0, n - 1))
        repeat[1:] = same.to_numpy(zero_copy_only=False)
    return np.sort(order[~repeat]).astype(np.int64)
