"""Embed a dataset's images and captions with the frozen CLIP, in clip-retrieval's folder layout.

``EMB_DIR/img_emb/img_emb_{i}.npy``, ``EMB_DIR/text_emb/text_emb_{i}.npy`` and
``EMB_DIR/metadata/metadata_{i}.parquet`` (columns ``image_path`` = the sample key, ``caption``, and
``true_concepts`` list<string> when the samples' json member has ``concepts``) are row-aligned parts of
at most ``rows_per_part`` rows, L2-normalised, float32 (or float16). Folders made by clip-retrieval load
with :func:`load_embeddings`, and ours can be given to clip-retrieval's indexing.

Each part is written atomically (image, text, then metadata last: a part is finished when all three
exist), so an interrupted run resumes: samples whose keys are in finished parts are not decoded or
encoded again and the finished files are left untouched. Every sample is either embedded or rejected
with a reason (``EMB_DIR/rejected.parquet``: ``key``, ``source``, ``reason``, ``detail``); the reader's
skips and the undecodable images are both counted there. ``EMB_DIR/embed_info.json`` records the
encoder, dimension, dtype and counts.
"""

from __future__ import annotations

import io
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from cocu.data import skips as reasons
from cocu.data.reader import Sample, iter_samples
from cocu.data.skips import SkipCounter
from cocu.data.transforms import exif_to_rgb
from cocu.utils.atomic import atomic_path, atomic_write_json

if TYPE_CHECKING:
    from cocu.curation.encoder import FrozenClip

logger = logging.getLogger(__name__)

IMG_DIR, TEXT_DIR, META_DIR = "img_emb", "text_emb", "metadata"
REJECTED_FILE = "rejected.parquet"
INFO_FILE = "embed_info.json"
DTYPES = {"float32": np.float32, "float16": np.float16}
MEMBER_REASONS = frozenset({reasons.UNEXPECTED_MEMBER, reasons.BAD_JSON})
"""Skips that drop a member but keep the sample (so they are not rejections)."""
_PART = re.compile(r"^img_emb_(\d+)\.npy$")


def img_path(out: Path, part: str | int) -> Path:
    return out / IMG_DIR / f"img_emb_{part}.npy"


def text_path(out: Path, part: str | int) -> Path:
    return out / TEXT_DIR / f"text_emb_{part}.npy"


def meta_path(out: Path, part: str | int) -> Path:
    return out / META_DIR / f"metadata_{part}.parquet"


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


def _true_concepts(meta: dict | None) -> list[str] | None:
    if not meta or "concepts" not in meta:
        return None
    value = meta["concepts"]
    if isinstance(value, dict):
        return [str(name) for name in value]
    if isinstance(value, (list, tuple)):
        return [str(name) for name in value]
    return None


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
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
        _save_npy(img_path(self.out, index), image[:count].astype(self.dtype))
        _save_npy(text_path(self.out, index), text[:count].astype(self.dtype))
        columns: dict[str, pa.Array] = {
            "image_path": pa.array([r["key"] for r in rows], pa.string()),
            "caption": pa.array([r["caption"] for r in rows], pa.string()),
        }
        if any(r["true_concepts"] is not None for r in rows):
            columns["true_concepts"] = pa.array([r["true_concepts"] for r in rows], pa.list_(pa.string()))
        with atomic_path(meta_path(self.out, index)) as tmp:
            pq.write_table(pa.table(columns), tmp)
        self.written.append(index)
        logger.info("wrote part %d (%d rows)", index, count)


def _part_indices(out: Path) -> dict[int, str]:
    """Part number -> its suffix as spelled in the file name (clip-retrieval may zero-pad)."""
    folder = out / IMG_DIR
    if not folder.is_dir():
        return {}
    found: dict[int, str] = {}
    for path in folder.iterdir():
        match = _PART.match(path.name)
        if match is not None:
            found[int(match.group(1))] = match.group(1)
    return dict(sorted(found.items()))


def _npy_rows(path: Path) -> int:
    return int(np.load(path, mmap_mode="r").shape[0])


def _finished_parts(out: Path) -> dict[int, list[str]]:
    """Finished parts of an earlier run (all three files present, row counts agreeing) -> their keys."""
    finished: dict[int, list[str]] = {}
    for index, suffix in _part_indices(out).items():
        files = (img_path(out, suffix), text_path(out, suffix), meta_path(out, suffix))
        if not all(f.is_file() for f in files):
            logger.warning("part %s is incomplete (a file is missing); it will be written again", suffix)
            continue
        keys = pq.read_table(files[2], columns=["image_path"]).column("image_path").to_pylist()
        if not (_npy_rows(files[0]) == _npy_rows(files[1]) == len(keys)):
            logger.warning("part %s has disagreeing row counts; it will be written again", suffix)
            continue
        finished[index] = keys
    return finished


def _check_info(out: Path, encoder_spec: str, dim: int, dtype: str) -> None:
    info_file = out / INFO_FILE
    if not info_file.is_file():
        return
    info = json.loads(info_file.read_text("utf-8"))
    theirs = (info.get("encoder"), info.get("dim"), info.get("dtype"))
    if theirs != (encoder_spec, dim, dtype):
        raise ValueError(
            f"{out} holds embeddings made with encoder {theirs[0]!r} (dim {theirs[1]}, {theirs[2]}), not "
            f"{encoder_spec!r} (dim {dim}, {dtype}); use another --out folder or delete {out} to start over"
        )


def _decode(sample: Sample, skips: SkipCounter) -> Image.Image | None:
    try:
        img = Image.open(io.BytesIO(sample.image_bytes))
        img.load()
        return exif_to_rgb(img)
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, bombs)
        skips.add(reasons.CORRUPT_IMAGE, sample.key, sample.source, f"{type(exc).__name__}: {exc}")
        return None


def embed_dataset(
    data_spec: str | Path | Sequence[str | Path],
    encoder: FrozenClip,
    out_dir: str | Path,
    *,
    batch_size: int = 256,
    rows_per_part: int = 100_000,
    skips: SkipCounter | None = None,
    dtype: str = "float32",
) -> EmbedResult:
    """Embed every usable sample of ``data_spec`` with ``encoder`` (a :class:`~cocu.curation.encoder.FrozenClip`)
    into ``out_dir`` (see the module docstring); resumes an interrupted run in the same folder."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if batch_size < 1 or rows_per_part < 1:
        raise ValueError("batch_size and rows_per_part must be positive")
    out = Path(out_dir)
    _check_info(out, encoder.spec, encoder.dim, dtype)
    for sub in (IMG_DIR, TEXT_DIR, META_DIR):
        (out / sub).mkdir(parents=True, exist_ok=True)
    if not (out / INFO_FILE).is_file():
        atomic_write_json(out / INFO_FILE, {"encoder": encoder.spec, "dim": encoder.dim, "dtype": dtype})
    finished = _finished_parts(out)
    done_keys = {key for keys in finished.values() for key in keys}
    if finished:
        logger.info("resuming: %d finished part(s) with %d rows are kept", len(finished), len(done_keys))
    recorder = RecordingSkips()
    writer = _PartWriter(out, rows_per_part, DTYPES[dtype], set(finished))
    images: list[Image.Image] = []
    rows: list[dict[str, Any]] = []
    kept = new = 0

    def encode_batch() -> None:
        image_emb = encoder.encode_images(images)  # [b,d]
        text_emb = encoder.encode_texts([r["caption"] for r in rows])  # [b,d]
        writer.add(image_emb, text_emb, list(rows))
        images.clear()
        rows.clear()

    progress = tqdm(desc=f"embed {out.name}", unit="sample", dynamic_ncols=True)
    for sample in iter_samples(data_spec, decode_images=False, skips=recorder):
        progress.update(1)
        if sample.key in done_keys:
            kept += 1
            continue
        image = _decode(sample, recorder)
        if image is None:
            continue
        images.append(image)
        rows.append({"key": sample.key, "caption": sample.caption, "true_concepts": _true_concepts(sample.meta)})
        new += 1
        if len(images) >= batch_size:
            encode_batch()
    if images:
        encode_batch()
    writer.flush()
    progress.close()
    if kept != len(done_keys):
        logger.warning(
            "%d row(s) of the finished parts were not found in the data this time (the data changed?); "
            "they stay in %s",
            len(done_keys) - kept,
            out,
        )
    rejections = recorder.rejections()
    table = pa.table(
        {name: pa.array([r[name] for r in rejections], pa.string()) for name in ("key", "source", "reason", "detail")}
    )
    with atomic_path(out / REJECTED_FILE) as tmp:
        pq.write_table(table, tmp)
    rejected: dict[str, int] = {}
    for r in rejections:
        rejected[r["reason"]] = rejected.get(r["reason"], 0) + 1
    if skips is not None:
        skips.merge(recorder)
    result = EmbedResult(
        out_dir=out,
        dim=encoder.dim,
        embedded=len(done_keys) + new,
        new_rows=new,
        kept_rows=len(done_keys),
        parts_written=writer.written,
        parts_kept=sorted(finished),
        rejected=dict(sorted(rejected.items())),
        skips=recorder,
    )
    atomic_write_json(
        out / INFO_FILE,
        {"encoder": encoder.spec, "dim": encoder.dim, "dtype": dtype, "rows_per_part": rows_per_part,
         **result.summary()},
    )
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


def _open_rows(path: Path) -> np.ndarray:
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
        image, text = _open_rows(files[0]), _open_rows(files[1])
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
