"""Embed a dataset's images and captions with the frozen CLIP, in clip-retrieval's folder layout.

``EMB_DIR/img_emb/img_emb_{i:05d}.npy``, ``EMB_DIR/text_emb/text_emb_{i:05d}.npy`` and
``EMB_DIR/metadata/metadata_{i:05d}.parquet`` (columns ``image_path`` = the sample key, ``caption``, and
``true_concepts`` list<string> when the samples' json member has ``concepts``, plus img2dataset's ``url``,
``width``, ``height``, ``original_width``, ``original_height``, ``sha256`` where the source has them, as
clip-retrieval keeps them) are row-aligned parts of
at most ``rows_per_part`` rows, L2-normalised, float32 (or float16). Part names are zero-padded so that
name order is row order (for tools that list a folder by name); folders with unpadded names (older cocu,
other writers) are still read and resumed, parts always ordered by their integer number. Folders made by
clip-retrieval load with :func:`load_embeddings`, and ours can be given to clip-retrieval's indexing.

Images are decoded, EXIF-fixed and preprocessed in DataLoader worker processes
(:mod:`cocu.curation.embed_loader`) while the model encodes the previous batch; the result is identical
for any number of workers.

Each part is written atomically (image, text, then metadata last: a part is finished when all three
exist), so an interrupted run resumes: samples whose keys are in finished parts are not decoded or
encoded again and the finished files are left untouched, but their captions are checked against the data
(a different caption means the folder was made from other data: an error naming the file and
``--overwrite``). ``EMB_DIR/embed_info.json`` records the encoder, dimension, dtype, precision, counts, the environment
(:mod:`cocu.utils.environment`; a resume in another one is logged: its rows may differ in the last bits) and
a fingerprint of every input file (size, mtime, SHA-256 of its first and last 64 KiB); a rerun whose
input file's content fingerprint changed is refused the same way. Every sample is either embedded or
rejected with a reason (``EMB_DIR/rejected.parquet``: ``key``, ``source``, ``reason``, ``detail``). A
write that fails (disk full, read-only folder) ends with one :class:`EmbedOutputError` line and leaves
no partial file; stale temporary files of a killed run are removed when the next run starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from cocu.curation.embed_loader import SOURCE_COLUMNS, SampleBatches, batch_loader, default_workers
from cocu.data import skips as reasons
from cocu.data.reader import resolve_sources
from cocu.data.skips import SkipCounter
from cocu.utils.atomic import atomic_path, atomic_write_json
from cocu.utils.environment import environment, kernel_signature
from cocu.utils.outputs import OutputError, writing

if TYPE_CHECKING:
    from cocu.curation.encoder import FrozenClip

logger = logging.getLogger(__name__)

IMG_DIR, TEXT_DIR, META_DIR = "img_emb", "text_emb", "metadata"
REJECTED_FILE = "rejected.parquet"
INFO_FILE = "embed_info.json"
DTYPES = {"float32": np.float32, "float16": np.float16}
PART_DIGITS = 5
FINGERPRINT_BLOCK = 64 * 1024
MEMBER_REASONS = frozenset({reasons.UNEXPECTED_MEMBER, reasons.BAD_JSON})
"""Skips that drop a member but keep the sample (so they are not rejections)."""
_PART = re.compile(r"^img_emb_(\d+)\.npy$")
_OWN_NAMES = r"(img_emb_\d+\.npy|text_emb_\d+\.npy|metadata_\d+\.parquet|embed_info\.json|rejected\.parquet)"
_OWN_FILE = re.compile(rf"^{_OWN_NAMES}$")
_STALE_TEMP = re.compile(rf"^\.{_OWN_NAMES}\..+\.tmp$")
"""A temporary file of :func:`cocu.utils.atomic.atomic_path` for one of the folder's files."""


def _suffix(part: str | int) -> str:
    """An int part number is zero-padded; a string is the suffix as spelled in an existing file name."""
    return f"{part:0{PART_DIGITS}d}" if isinstance(part, int) else part


def img_path(out: Path, part: str | int) -> Path:
    return out / IMG_DIR / f"img_emb_{_suffix(part)}.npy"


def text_path(out: Path, part: str | int) -> Path:
    return out / TEXT_DIR / f"text_emb_{_suffix(part)}.npy"


def meta_path(out: Path, part: str | int) -> Path:
    return out / META_DIR / f"metadata_{_suffix(part)}.parquet"


class EmbedOutputError(OutputError):
    """The embedding folder cannot be written (disk full, read-only, permissions); nothing partial is left."""


def _writing(path: Path, out: Path) -> contextlib.AbstractContextManager[None]:
    """:func:`cocu.utils.outputs.writing` raising :class:`EmbedOutputError`."""
    return writing(path, out, EmbedOutputError)


class RecordingSkips(SkipCounter):
    """A :class:`SkipCounter` that also keeps one record per skip (for ``rejected.parquet``)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict[str, str]] = []

    def add(self, reason: str, key: str, source: str, detail: str = "") -> None:
        super().add(reason, key, source, detail)
        self.records.append({"key": key, "source": source, "reason": reason, "detail": detail})

    def rejections(self) -> list[dict[str, str]]:
        return [r for r in self.records if r["reason"] not in MEMBER_REASONS]


@dataclass
class EmbedResult:
    """What :func:`embed_dataset` did. ``embedded`` counts all rows in the folder (kept + new)."""

    out_dir: Path
    dim: int
    embedded: int
    new_rows: int
    kept_rows: int
    parts_written: list[int]
    parts_kept: list[int]
    rejected: dict[str, int]
    skips: SkipCounter = field(repr=False)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def summary(self) -> dict[str, Any]:
        return {
            "embedded": self.embedded,
            "new_rows": self.new_rows,
            "kept_rows": self.kept_rows,
            "rejected": self.rejected_total,
            "rejected_by_reason": self.rejected,
            "skips": self.skips.as_dict(),
            "parts_written": self.parts_written,
            "parts_kept": self.parts_kept,
            "dim": self.dim,
        }


def source_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """``size``, ``mtime_ns`` and ``head_tail_sha256`` (of the first and last 64 KiB) of an input file; for
    a folder source (img2dataset's ``files`` layout) the total size and a hash of its listing."""
    p = Path(path)
    if p.is_dir():
        listing = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(p) if e.is_file())
        listed = hashlib.sha256(json.dumps(listing).encode())
        latest = max((m for _, _, m in listing), default=p.stat().st_mtime_ns)
        return {"size": sum(n for _, n, _ in listing), "mtime_ns": latest, "head_tail_sha256": listed.hexdigest()}
    size = p.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(p, "rb") as handle:
        digest.update(handle.read(FINGERPRINT_BLOCK))
        if size > FINGERPRINT_BLOCK:
            handle.seek(max(FINGERPRINT_BLOCK, size - FINGERPRINT_BLOCK))
            digest.update(handle.read(FINGERPRINT_BLOCK))
    return {"size": size, "mtime_ns": p.stat().st_mtime_ns, "head_tail_sha256": digest.hexdigest()}


def _same_content(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Content identity only: a copied or touched file (new mtime, same bytes) is the same input."""
    return (a.get("size"), a.get("head_tail_sha256")) == (b.get("size"), b.get("head_tail_sha256"))


def _save_npy(path: Path, array: np.ndarray, out: Path) -> None:
    with _writing(path, out), atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array)


class _PartWriter:
    """Buffers embedded rows and writes them as parts at the free part indices, in order."""

    def __init__(self, out: Path, rows_per_part: int, dtype: np.dtype, finished: set[int]) -> None:
        self.out, self.rows_per_part, self.dtype, self.finished = out, rows_per_part, dtype, finished
        self.next_index = 0
        self.images: list[np.ndarray] = []
        self.texts: list[np.ndarray] = []
        self.rows: list[dict[str, Any]] = []
        self.written: list[int] = []

    def add(self, image: np.ndarray, text: np.ndarray, rows: list[dict[str, Any]]) -> None:
        self.images.append(image)
        self.texts.append(text)
        self.rows.extend(rows)
        while len(self.rows) >= self.rows_per_part:
            self._write(self.rows_per_part)

    def flush(self) -> None:
        if self.rows:
            self._write(len(self.rows))

    def _write(self, count: int) -> None:
        image, text = np.concatenate(self.images), np.concatenate(self.texts)  # [m,d] each
        rows, self.rows = self.rows[:count], self.rows[count:]
        self.images, self.texts = [image[count:]], [text[count:]]
        while self.next_index in self.finished:
            self.next_index += 1
        index = self.next_index
        self.next_index += 1
        _save_npy(img_path(self.out, index), image[:count].astype(self.dtype), self.out)
        _save_npy(text_path(self.out, index), text[:count].astype(self.dtype), self.out)
        columns: dict[str, pa.Array] = {
            "image_path": pa.array([r["key"] for r in rows], pa.string()),
            "caption": pa.array([r["caption"] for r in rows], pa.string()),
        }
        if any(r["true_concepts"] is not None for r in rows):
            columns["true_concepts"] = pa.array([r["true_concepts"] for r in rows], pa.list_(pa.string()))
        for name, kind in SOURCE_COLUMNS.items():
            if any(name in r["source_columns"] for r in rows):
                columns[name] = pa.array([r["source_columns"].get(name) for r in rows], pa.type_for_alias(kind))
        path = meta_path(self.out, index)
        with _writing(path, self.out), atomic_path(path) as tmp:
            pq.write_table(pa.table(columns), tmp)
        self.written.append(index)
        logger.info("wrote part %d (%d rows)", index, count)


def _part_indices(out: Path) -> dict[int, str]:
    """Part number -> its suffix as spelled in the file name (zero-padded or not), in number order."""
    folder = out / IMG_DIR
    if not folder.is_dir():
        return {}
    found: dict[int, str] = {}
    for path in folder.iterdir():
        match = _PART.match(path.name)
        if match is None:
            continue
        number = int(match.group(1))
        if number in found:
            raise ValueError(
                f"{folder} holds two parts numbered {number} (img_emb_{found[number]}.npy and {path.name}): "
                "delete the one that does not belong, or embed again into a new folder"
            )
        found[number] = match.group(1)
    return dict(sorted(found.items()))


def _npy_rows(path: Path) -> int:
    return int(np.load(path, mmap_mode="r").shape[0])


def _finished_parts(out: Path) -> tuple[dict[int, dict[str, str | None]], list[str]]:
    """Finished parts of an earlier run (all three files present, row counts agreeing) -> {key: caption
    (``None``: the part has no caption column)}, and the suffixes of the unfinished ones."""
    finished: dict[int, dict[str, str | None]] = {}
    unfinished: list[str] = []
    for index, suffix in _part_indices(out).items():
        files = (img_path(out, suffix), text_path(out, suffix), meta_path(out, suffix))
        if not all(f.is_file() for f in files):
            logger.warning("part %s is incomplete (a file is missing); it will be written again", suffix)
            unfinished.append(suffix)
            continue
        wanted = [c for c in ("image_path", "caption") if c in pq.read_schema(files[2]).names]
        table = pq.read_table(files[2], columns=wanted)
        keys = table.column("image_path").to_pylist()
        if not (_npy_rows(files[0]) == _npy_rows(files[1]) == len(keys)):
            logger.warning("part %s has disagreeing row counts; it will be written again", suffix)
            unfinished.append(suffix)
            continue
        if "caption" in wanted:
            captions = ["" if c is None else str(c) for c in table.column("caption").to_pylist()]
        else:  # a folder written without captions: nothing to check the data against
            captions = [None] * len(keys)
        finished[index] = dict(zip((str(k) for k in keys), captions))
    return finished, unfinished


def _read_info(out: Path) -> dict[str, Any]:
    info_file = out / INFO_FILE
    return json.loads(info_file.read_text("utf-8")) if info_file.is_file() else {}


def _check_info(info: dict[str, Any], out: Path, encoder: FrozenClip, dtype: str, here: dict[str, Any]) -> None:
    if not info:
        return
    theirs = (info.get("encoder"), info.get("dim"), info.get("dtype"))
    if theirs != (encoder.spec, encoder.dim, dtype):
        raise ValueError(
            f"{out} holds embeddings made with encoder {theirs[0]!r} (dim {theirs[1]}, {theirs[2]}), not "
            f"{encoder.spec!r} (dim {encoder.dim}, {dtype}); use another --out folder, or --overwrite to start over"
        )
    if info.get("precision", "fp32") != encoder.precision:
        logger.warning(
            "%s was embedded at precision %s and is continued at %s: rows of the two differ slightly",
            out, info.get("precision", "fp32"), encoder.precision,
        )
    recorded = info.get("environment")
    if recorded and kernel_signature(recorded) != kernel_signature(here):
        logger.warning(
            "%s was embedded in another environment (%s, %s kernels, device %s) and is continued here: rows of the "
            "two may differ in the last bits", out, recorded.get("cpu"), recorded.get("cpu_capability"),
            recorded.get("device"),
        )


def _check_sources(info: dict[str, Any], out: Path, current: dict[str, dict[str, Any]]) -> None:
    recorded = info.get("sources", {})
    for source, fingerprint in current.items():
        if source in recorded and not _same_content(recorded[source], fingerprint):
            raise ValueError(
                f"{source} changed since {out} was embedded from it (size or content differs): the kept rows "
                f"may not match it. Rerun with --overwrite to embed the data again from scratch, or use another --out"
            )


def _remove_files(out: Path, pattern: re.Pattern[str], what: str) -> int:
    removed = 0
    for folder in (out, out / IMG_DIR, out / TEXT_DIR, out / META_DIR):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if pattern.match(path.name) and path.is_file():
                with _writing(path, out):
                    path.unlink()
                removed += 1
    if removed:
        logger.info("removed %d %s in %s", removed, what, out)
    return removed


def _prepare_folder(out: Path, overwrite: bool) -> None:
    """Create the folder; remove temporary files a killed run left (and, with ``overwrite``, every earlier part)."""
    for sub in (IMG_DIR, TEXT_DIR, META_DIR):
        with _writing(out / sub, out):
            (out / sub).mkdir(parents=True, exist_ok=True)
    _remove_files(out, _STALE_TEMP, "stale temporary file(s) of an interrupted run")
    if overwrite:
        _remove_files(out, _OWN_FILE, "file(s) of the earlier embedding (--overwrite)")


def _mismatch_error(out: Path, mismatch: dict[str, str]) -> ValueError:
    return ValueError(
        f"{out} holds key {mismatch['key']!r} with caption {mismatch['stored']!r}, but {mismatch['source']} gives "
        f"{mismatch['caption']!r}: the folder was embedded from other data. Rerun with --overwrite to embed this "
        "data from scratch, or use another --out"
    )


def _write_info(out: Path, info: dict[str, Any]) -> None:
    with _writing(out / INFO_FILE, out):
        atomic_write_json(out / INFO_FILE, info)


def embed_dataset(
    data_spec: str | Path | Sequence[str | Path],
    encoder: FrozenClip,
    out_dir: str | Path,
    *,
    batch_size: int = 256,
    rows_per_part: int = 100_000,
    skips: SkipCounter | None = None,
    dtype: str = "float32",
    workers: int | None = None,
    overwrite: bool = False,
) -> EmbedResult:
    """Embed every usable sample of ``data_spec`` with ``encoder`` (a :class:`~cocu.curation.encoder.FrozenClip`)
    into ``out_dir`` (see the module docstring); resumes an interrupted run in the same folder, or starts
    over with ``overwrite``. ``workers``: DataLoader processes that decode and preprocess (``None``:
    :func:`~cocu.curation.embed_loader.default_workers`; 0: in this process); the result does not depend on it.
    Raises ``ValueError`` for a folder made with another encoder or from other data, and
    :class:`EmbedOutputError` when the folder cannot be written."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if batch_size < 1 or rows_per_part < 1:
        raise ValueError("batch_size and rows_per_part must be positive")
    workers = default_workers() if workers is None else workers
    out = Path(out_dir)
    sources = {os.path.abspath(src): source_fingerprint(src) for src in resolve_sources(data_spec)}
    _prepare_folder(out, overwrite)
    info = _read_info(out)
    here = environment(encoder.device)
    _check_info(info, out, encoder, dtype, here)
    finished, unfinished = _finished_parts(out)
    if finished:
        _check_sources(info, out, sources)
    for suffix in unfinished:  # rewritten under the padded name, which may differ from the old spelling
        for path in (img_path(out, suffix), text_path(out, suffix), meta_path(out, suffix)):
            with _writing(path, out):
                path.unlink(missing_ok=True)
    identity = {"encoder": encoder.spec, "dim": encoder.dim, "dtype": dtype, "precision": encoder.precision}
    known_sources = {**info.get("sources", {}), **sources}
    _write_info(out, {**info, **identity, "sources": known_sources})
    done = {key: caption for part in finished.values() for key, caption in part.items()}
    if finished:
        logger.info("resuming: %d finished part(s) with %d rows are kept", len(finished), len(done))
    recorder = RecordingSkips()
    writer = _PartWriter(out, rows_per_part, DTYPES[dtype], set(finished))
    dataset = SampleBatches(data_spec, encoder.preprocess, batch_size, done)
    kept = new = 0
    with tqdm(desc=f"embed {out.name}", unit="sample", dynamic_ncols=True) as progress:
        for unit in batch_loader(dataset, workers, pin_memory=encoder.device.type == "cuda"):
            if unit["mismatches"]:
                raise _mismatch_error(out, unit["mismatches"][0])
            for record in unit["records"]:
                recorder.add(record["reason"], record["key"], record["source"], record["detail"])
            rows = unit["rows"]
            if rows:
                image_emb = encoder.encode_pixels(unit["pixels"])  # [b,d]
                text_emb = encoder.encode_texts([r["caption"] for r in rows])  # [b,d]
                writer.add(image_emb, text_emb, rows)
            kept += unit["kept"]
            new += len(rows)
            progress.update(unit["kept"] + len(rows) + len(unit["records"]))
        writer.flush()
    if kept != len(done):
        logger.warning(
            "%d row(s) of the finished parts were not found in the data this time (the data changed?); "
            "they stay in %s",
            len(done) - kept,
            out,
        )
    rejections = recorder.rejections()
    table = pa.table(
        {name: pa.array([r[name] for r in rejections], pa.string()) for name in ("key", "source", "reason", "detail")}
    )
    with _writing(out / REJECTED_FILE, out), atomic_path(out / REJECTED_FILE) as tmp:
        pq.write_table(table, tmp)
    rejected: dict[str, int] = {}
    for r in rejections:
        rejected[r["reason"]] = rejected.get(r["reason"], 0) + 1
    if skips is not None:
        skips.merge(recorder)
    result = EmbedResult(
        out_dir=out,
        dim=encoder.dim,
        embedded=len(done) + new,
        new_rows=new,
        kept_rows=len(done),
        parts_written=writer.written,
        parts_kept=sorted(finished),
        rejected=dict(sorted(rejected.items())),
        skips=recorder,
    )
    _write_info(out, {**identity, "rows_per_part": rows_per_part, **result.summary(), "sources": known_sources,
                      "environment": here})
    return result


@dataclass
class Embeddings:
    """All parts of an embedding folder, concatenated in part order (rows aligned across fields)."""

    image: np.ndarray  # [n,d] float32, L2-normalised
    text: np.ndarray  # [n,d] float32, L2-normalised
    keys: list[str]
    captions: list[str]
    true_concepts: list[list[str]] | None

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def dim(self) -> int:
        return int(self.image.shape[1])


def open_rows(path: Path) -> np.ndarray:
    """Memory-map a part's ``.npy`` (nothing is read yet) and check it is a 2-D float array."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read embeddings file {path}: {err}") from err
    if array.ndim != 2 or array.dtype not in (np.float16, np.float32, np.float64):
        raise ValueError(f"{path}: expected a 2-D float array, got {array.dtype} with shape {array.shape}")
    return array


def _copy_unit_rows(src: np.ndarray, dst: np.ndarray, chunk: int = 65_536) -> None:
    """``dst[:] = src`` as float32 with every row scaled to unit length (float16 rows are only close to it)."""
    for start in range(0, src.shape[0], chunk):
        block = dst[start : start + chunk]  # [c,d] view
        block[:] = src[start : start + chunk]
        block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)


def load_embeddings(emb_dir: str | Path) -> Embeddings:
    """Read an embedding folder (ours or clip-retrieval's); rows re-normalised to unit length in float32.

    Every part is checked before any embedding is read. Raises ``FileNotFoundError`` if there are no parts
    or a part lacks its text or metadata file, and ``ValueError`` naming the file when row counts or
    dimensions disagree.
    """
    out = Path(emb_dir)
    parts = _part_indices(out)
    if not parts:
        raise FileNotFoundError(f"no {IMG_DIR}/img_emb_*.npy files in {out}; make them with `cocu embed`")
    arrays: list[tuple[np.ndarray, np.ndarray]] = []
    keys: list[str] = []
    captions: list[str] = []
    concepts: list[list[str]] = []
    any_concepts = False
    for suffix in parts.values():
        files = (img_path(out, suffix), text_path(out, suffix), meta_path(out, suffix))
        for needed in files[1:]:
            if not needed.is_file():
                raise FileNotFoundError(f"{needed} is missing (its part {files[0]} exists); rerun `cocu embed`")
        image, text = open_rows(files[0]), open_rows(files[1])
        table = pq.read_table(files[2])
        for column in ("image_path", "caption"):
            if column not in table.column_names:
                raise ValueError(f"{files[2]} has no {column!r} column (columns: {table.column_names})")
        for array, path in ((image, files[0]), (text, files[1])):
            if array.shape[0] != table.num_rows:
                raise ValueError(
                    f"{path} has {array.shape[0]} rows but {files[2]} has {table.num_rows}; the part is "
                    "damaged: delete its three files and rerun `cocu embed`"
                )
        if text.shape[1] != image.shape[1] or (arrays and image.shape[1] != arrays[0][0].shape[1]):
            raise ValueError(
                f"{files[0]} / {files[1]}: dimension {image.shape[1]}/{text.shape[1]} disagrees with the other parts"
            )
        arrays.append((image, text))
        keys.extend(str(k) for k in table.column("image_path").to_pylist())
        captions.extend("" if c is None else str(c) for c in table.column("caption").to_pylist())
        if "true_concepts" in table.column_names:
            any_concepts = True
            concepts.extend(list(c or []) for c in table.column("true_concepts").to_pylist())
        else:
            concepts.extend([] for _ in range(table.num_rows))
    dim = arrays[0][0].shape[1]
    image_all = np.empty((len(keys), dim), dtype=np.float32)  # [n,d]
    text_all = np.empty((len(keys), dim), dtype=np.float32)  # [n,d]
    row = 0
    for image, text in arrays:
        _copy_unit_rows(image, image_all[row : row + image.shape[0]])
        _copy_unit_rows(text, text_all[row : row + text.shape[0]])
        row += image.shape[0]
    return Embeddings(
        image=image_all,
        text=text_all,
        keys=keys,
        captions=captions,
        true_concepts=concepts if any_concepts else None,
    )


def read_rejected(emb_dir: str | Path) -> pa.Table:
    """The rejected samples of the last ``cocu embed`` run into ``emb_dir`` (key, source, reason, detail)."""
    return pq.read_table(Path(emb_dir) / REJECTED_FILE)
