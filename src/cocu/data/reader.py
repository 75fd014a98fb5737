"""Streaming reader for image-caption data: webdataset tar shards, or a folder of images plus a captions file.

Sources (see :func:`resolve_sources`):

- **Tar shards** (webdataset layout, as written by img2dataset, GroupViT's scripts or :mod:`cocu.data.writer`):
  a brace pattern ``dir/c3-{00000..00003}.tar`` (also ``{a,b}`` alternatives), one ``.tar`` path, a
  directory (its ``*.tar`` files in name order; other files such as img2dataset's per-shard ``.parquet``
  and ``_stats.json`` are ignored), or a list of any of these. Tars are read by the one scanner of
  :mod:`cocu.data.tarscan`, which the training index uses too (webdataset key grouping, used members:
  image ``jpg``/``jpeg``/``png``/``webp``/``avif``, first present in that order, caption ``txt``/``text``,
  optional ``json`` metadata; truncation and damage rules). Uncompressed tars only.
- **Folder + captions file**: the spec is the path of the captions file, one of ``.csv`` (RFC 4180
  quoting, header row), ``.tsv`` (header row, fields split on tabs, no quoting), ``.jsonl`` (one JSON
  object a line) or ``.parquet``. Required columns/keys ``image`` and ``caption``; optional ``key``.
  ``image`` is a path relative to the captions file's folder (absolute paths are used as they are). The
  sample key is ``key`` when given, else the ``image`` path without its suffix. Any other columns
  become ``Sample.meta`` (``None`` when there are none).
  A ``.parquet`` file may instead hold the image bytes: img2dataset's parquet output (a binary column
  named after the image format, e.g. ``jpg``; a row without bytes, such as a failed download, is
  ``missing_image``) or a Hugging Face parquet export of a webdataset set (``jpg`` as an image struct with
  ``bytes``, caption ``txt``, key ``__key__``).
- **img2dataset ``files`` output**: a directory without tars whose sub-folders (or itself) hold
  ``{key}.jpg`` + ``{key}.txt`` + ``{key}.json`` files; each folder is one source, grouped like a tar.
  Only regular files are opened (anything else is ``unexpected_member``). Training reads tars only.

Every sample or member that cannot be used is skipped and counted in a :class:`SkipCounter` with a reason
from :mod:`cocu.data.skips` (one warning line each); a damaged tar or captions file costs the rest of that
file (counted as ``corrupt_shard``) and reading goes on with the next source. Keys are unique over one
:func:`iter_samples` call: a repeated key is skipped as ``duplicate_key`` (the first occurrence wins).

With ``decode_images=False`` the image bytes are not decoded (``Sample.image`` is ``None``), which is
fast for metadata-only passes, but then truncated or undecodable images are **not** detected.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from cocu.data import skips as reasons
from cocu.data.skips import SkipCounter
from cocu.data.tarscan import (
    CAPTION_EXTS,
    CURATED_EXT,
    IMAGE_EXTS,
    META_EXT,
    USED_EXTS,
    Member,
    TarSample,
    caption_text,
    finish_sample,
    json_object,
    sample_problem,
    scan_tar,
    split_member_name,
)
from cocu.data.transforms import exif_to_rgb

logger = logging.getLogger(__name__)

TAR_SUFFIX = ".tar"
CAPTIONS_SUFFIXES: tuple[str, ...] = (".csv", ".tsv", ".jsonl", ".parquet")
_RESERVED_COLUMNS = frozenset({"image", "caption", "key"})
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)")


@dataclass
class Sample:
    """One image-caption pair. ``image`` is RGB and upright (EXIF applied), or ``None`` if not decoded."""

    key: str
    image: Image.Image | None
    image_bytes: bytes
    caption: str
    meta: dict | None
    source: str
    index: int
    image_ext: str | None = None
    """The extension the image was stored under in a tar or files folder (``jpg``, ``png``, ...); ``None`` for a
    captions file's row."""
    caption_ext: str | None = None
    """The caption's extension there (``txt`` or ``text``); ``None`` for a captions file's row."""


@dataclass
class _Raw:
    """A sample as found in its source, before validation."""

    key: str
    source: str
    image: bytes | None
    caption: bytes | str | None
    meta: bytes | dict | None
    curated: bytes | None = None
    where: str = ""
    image_problem: str = ""
    image_ext: str | None = None
    caption_ext: str | None = None


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{a..b}`` integer ranges (zero-padded when an end has a leading zero) and ``{x,y}`` lists.

    Several groups multiply out left to right; nested braces are not supported. A group that is neither a
    range nor a list is kept literally.
    """
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    head, body, tail = pattern[: match.start()], match.group(1), pattern[match.end() :]
    rng = _RANGE.fullmatch(body)
    if rng is not None:
        lo_text, hi_text = rng.groups()
        lo, hi = int(lo_text), int(hi_text)
        padded = any(len(t.lstrip("-")) > 1 and t.lstrip("-").startswith("0") for t in (lo_text, hi_text))
        width = max(len(lo_text), len(hi_text)) if padded else 0
        step = 1 if hi >= lo else -1
        items = [f"{i:0{width}d}" for i in range(lo, hi + step, step)]
    elif "," in body:
        items = body.split(",")
    else:
        items = ["{" + body + "}"]
    tails = expand_braces(tail)
    return [head + item + rest for item in items for rest in tails]


def _holds_images(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return any((split_member_name(e.name) or ("", ""))[1] in IMAGE_EXTS for e in entries)


def _resolve_one(spec: str) -> list[str]:
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        tars = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(TAR_SUFFIX))
        if tars:
            return [str(p) for p in tars]
        folders = ([path] if _holds_images(path) else []) + sorted(
            p for p in path.iterdir() if p.is_dir() and _holds_images(p)
        )
        if not folders:
            raise ValueError(
                f"directory {path} holds no {TAR_SUFFIX} files and no image files (img2dataset's `files` layout)"
            )
        return [str(p) + os.sep for p in folders]
    if not path.exists():
        raise FileNotFoundError(f"data source not found: {path}")
    if path.name.endswith(TAR_SUFFIX) or path.suffix.lower() in CAPTIONS_SUFFIXES:
        return [str(path)]
    raise ValueError(
        f"unsupported data source {path}: expected a {TAR_SUFFIX} shard, a directory of shards or a "
        f"captions file ({', '.join(CAPTIONS_SUFFIXES)})"
    )


def resolve_sources(spec: str | Path | Sequence[str | Path]) -> list[str]:
    """Turn a source spec into the ordered list of files to read (tar shards and/or captions files).

    ``spec`` is a brace pattern, a single tar, a directory of tars (name order, non-tar files ignored), a
    captions file (``.csv``/``.tsv``/``.jsonl``/``.parquet``), or a list/tuple of these. Every listed
    file must exist (``FileNotFoundError`` names the first missing one).
    """
    if isinstance(spec, (str, Path)):
        text = str(spec)
        patterns = [text] if Path(text).exists() else expand_braces(text)
        return [found for pattern in patterns for found in _resolve_one(pattern)]
    if isinstance(spec, Sequence):
        return [found for item in spec for found in resolve_sources(item)]
    raise TypeError(f"data source spec must be a path, a pattern or a list of them, got {type(spec).__name__}")


def _raw_from_scan(scanned: TarSample) -> _Raw:
    def data(member: Member | None) -> bytes | None:
        return member.data if member is not None else None

    raw = _Raw(
        key=scanned.key,
        source=scanned.source,
        image=data(scanned.image),
        caption=data(scanned.caption),
        meta=data(scanned.members.get(META_EXT)),
        curated=data(scanned.members.get(CURATED_EXT)),
        image_ext=scanned.first_ext(IMAGE_EXTS),
        caption_ext=scanned.first_ext(CAPTION_EXTS),
    )
    return raw


def _iter_files(folder: str, skips: SkipCounter) -> Iterator[_Raw]:
    """Raw samples of one folder of img2dataset's ``files`` output (``{key}.jpg``, ``{key}.txt``,
    ``{key}.json``), grouped as in a tar (files of one key are adjacent in name order)."""
    current: TarSample | None = None
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_dir():
            continue
        parts = split_member_name(entry.name)
        if not entry.is_file() or parts is None or parts[1] not in USED_EXTS:
            why = "not a regular file" if not entry.is_file() else "unexpected extension"
            skips.add(reasons.UNEXPECTED_MEMBER, entry.name, folder, why)
            continue
        key, ext = parts
        if current is not None and key != current.key:
            yield _raw_from_scan(finish_sample(current, skips))
            current = None
        if current is None:
            current = TarSample(key, folder)
        if ext in current.members:
            skips.add(reasons.UNEXPECTED_MEMBER, entry.name, folder, f"another .{ext} file of the same key")
            continue
        data, problem = _read_image_file(Path(entry.path))
        if data is None:
            skips.add(reasons.UNEXPECTED_MEMBER, entry.name, folder, problem)
            continue
        current.members[ext] = Member(0, len(data), data)
    if current is not None:
        yield _raw_from_scan(finish_sample(current, skips))


def _iter_tar(path: str, skips: SkipCounter) -> Iterator[_Raw]:
    """Raw samples of one tar (:func:`cocu.data.tarscan.scan_tar`: damage ends it with ``corrupt_shard``)."""
    for scanned in scan_tar(path, skips, load=USED_EXTS):
        yield _raw_from_scan(scanned)


def _captions_rows(path: str) -> Iterator[tuple[str, dict[str, Any] | None, str]]:
    """Yield ``(where, row, problem)`` for each data row; ``row`` is ``None`` when it cannot be parsed."""
    suffix = Path(path).suffix.lower()
    if suffix == ".parquet":
        parquet = pq.ParquetFile(path)
        roles = _parquet_roles(path, parquet.schema_arrow)
        image_type = parquet.schema_arrow.field(next(c for c, r in roles.items() if r == "image")).type
        inline = any(check(image_type) for check in (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_struct))
        row_number = 0
        for batch in parquet.iter_batches(batch_size=256):
            for row in batch.to_pylist():
                row_number += 1
                default_key = f"{Path(path).stem}/{row_number:09d}"
                yield f"row {row_number}", _renamed(row, roles, inline, default_key), ""
        return
    if suffix == ".jsonl":
        with open(path, "rb") as handle:
            for line_number, line in enumerate(handle, start=1):
                text = line.decode("utf-8", errors="surrogateescape").strip()
                if not text:
                    continue
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as exc:
                    yield f"line {line_number}", None, f"invalid JSON: {exc}"
                    continue
                if not isinstance(row, dict):
                    yield f"line {line_number}", None, "line is not a JSON object"
                    continue
                yield f"line {line_number}", row, ""
        return
    tsv = suffix == ".tsv"
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        if tsv:
            reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            reader = csv.DictReader(handle)
        _require_columns(path, reader.fieldnames or [])
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield f"line {reader.line_num}", None, f"CSV error: {exc}"
                continue
            if None in row or any(value is None for value in row.values()):
                yield f"line {reader.line_num}", None, "wrong number of fields"
                continue
            yield f"line {reader.line_num}", dict(row), ""


def _parquet_roles(path: str, schema: pa.Schema) -> dict[str, str]:
    """Column -> role (``image``, ``caption``, ``key``) of a parquet captions file.

    Besides ``image`` (a path, or the image bytes) / ``caption`` / ``key``, the layouts of img2dataset's
    parquet output (image bytes in a column named after the format, e.g. ``jpg``) and of Hugging Face
    parquet exports of webdataset sets (``jpg`` as bytes or as an image struct with ``bytes``, ``txt``,
    ``__key__``) are read.
    """
    names = schema.names
    image = next((n for n in ("image", *IMAGE_EXTS) if n in names), None)
    caption = next((n for n in ("caption", *CAPTION_EXTS) if n in names), None)
    key = next((n for n in ("key", "__key__") if n in names), None)
    if image is None or caption is None:
        missing = [role for role, found in (("image", image), ("caption", caption)) if found is None]
        raise ValueError(
            f"captions file {path} lacks column(s) {missing} (image: image or {'/'.join(IMAGE_EXTS)} bytes; "
            f"caption: caption, txt or text); found {list(names)}"
        )
    return {column: role for column, role in ((image, "image"), (caption, "caption"), (key, "key")) if column}


def _renamed(row: dict[str, Any], roles: dict[str, str], inline: bool, default_key: str) -> dict[str, Any]:
    """A parquet row with its role columns renamed. With ``inline`` images the image is bytes (``b""`` when
    the row has none, e.g. a failed download), taken out of an image struct's ``bytes`` field if need be."""
    out = {name: value for name, value in row.items() if name not in roles and not isinstance(value, bytes)}
    for column, role in roles.items():
        value = row[column]
        if role == "image" and inline:
            value = value.get("bytes") if isinstance(value, dict) else value
            value = value if isinstance(value, bytes) else b""
        out[role] = value
    if inline and out.get("key") in (None, ""):
        out["key"] = default_key
    return out


def _require_columns(path: str, names: Sequence[str]) -> None:
    missing = [name for name in ("image", "caption") if name not in names]
    if missing:
        raise ValueError(f"captions file {path} lacks column(s) {missing}; found {list(names)}")


def _read_image_file(path: Path) -> tuple[bytes | None, str]:
    """The bytes of an image file, or ``(None, why not)``; only regular files are opened (a FIFO would hang)."""
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
            return None, f"cannot read {path}: {kind}"
        return path.read_bytes(), ""
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror or exc}"


def _iter_captions(path: str, skips: SkipCounter) -> Iterator[_Raw]:
    """Raw samples from a captions file, reading each image file from disk."""
    folder = Path(path).parent
    try:
        for where, row, problem in _captions_rows(path):
            image_ref = row.get("image") if row is not None else None
            inline = isinstance(image_ref, bytes)
            if row is None or not (inline or (isinstance(image_ref, str) and image_ref.strip())):
                skips.add(reasons.BAD_ROW, "", path, f"{where}: {problem or 'no image path'}")
                continue
            caption = row.get("caption")
            if caption is not None and not isinstance(caption, (str, bytes)):
                skips.add(reasons.BAD_ROW, "", path, f"{where}: caption is a {type(caption).__name__}, not text")
                continue
            given_key = row.get("key")
            if given_key not in (None, ""):
                key = str(given_key)
            else:
                assert isinstance(image_ref, str)
                key = str(PurePosixPath(image_ref).with_suffix(""))
            meta = {name: value for name, value in row.items() if name not in _RESERVED_COLUMNS}
            raw = _Raw(key=key, source=path, image=None, caption=caption, meta=meta or None)
            raw.where = where
            if inline:
                raw.image = image_ref or None
                raw.image_problem = "" if image_ref else "no image bytes in the row"
            else:
                image_path = Path(image_ref) if os.path.isabs(image_ref) else folder / image_ref
                raw.image, raw.image_problem = _read_image_file(image_path)
            yield raw
    except (OSError, pa.ArrowException) as exc:
        skips.add(reasons.CORRUPT_SHARD, "", path, f"{type(exc).__name__}: {exc}")


def _decode_image(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return exif_to_rgb(img)


def _json_member(data: bytes, raw: _Raw, skips: SkipCounter) -> dict | None:
    value, problem = json_object(data)
    if value is None:
        skips.add(reasons.BAD_JSON, raw.key, raw.source, problem)
    return value


def _parse_meta(raw: _Raw, skips: SkipCounter) -> dict | None:
    meta = raw.meta if raw.meta is None or isinstance(raw.meta, dict) else _json_member(raw.meta, raw, skips)
    if raw.curated is not None:
        curated = _json_member(raw.curated, raw, skips)
        if curated is not None:
            meta = {**(meta or {}), "curated": curated}
    return meta


class _Validator:
    """Turns raw samples into :class:`Sample` objects or counted skips; holds the keys seen so far."""

    def __init__(self, decode_images: bool, skips: SkipCounter) -> None:
        self.decode_images = decode_images
        self.skips = skips
        self.seen: set[str] = set()
        self.count = 0

    def _skip(self, raw: _Raw, reason: str, detail: str = "") -> None:
        self.skips.add(reason, raw.key, raw.source, "; ".join(part for part in (raw.where, detail) if part))

    def _problem(self, raw: _Raw) -> tuple[str, str] | None:
        """The first reason (and detail) to skip ``raw`` before decoding, or ``None``."""
        if raw.key in self.seen:
            return reasons.DUPLICATE_KEY, "key already read"
        self.seen.add(raw.key)
        return sample_problem(raw.image is not None, raw.caption, raw.image_problem)

    def __call__(self, raw: _Raw) -> Sample | None:
        problem = self._problem(raw)
        if problem is not None:
            self._skip(raw, *problem)
            return None
        assert raw.image is not None and raw.caption is not None
        caption = caption_text(raw.caption) or ""
        image = None
        if self.decode_images:
            try:
                image = _decode_image(raw.image)
            except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, bombs)
                self._skip(raw, reasons.CORRUPT_IMAGE, f"{type(exc).__name__}: {exc}")
                return None
        sample = Sample(
            key=raw.key,
            image=image,
            image_bytes=raw.image,
            caption=caption,
            meta=_parse_meta(raw, self.skips),
            source=raw.source,
            index=self.count,
            image_ext=raw.image_ext,
            caption_ext=raw.caption_ext,
        )
        self.count += 1
        return sample


def iter_samples(
    spec: str | Path | Sequence[str | Path],
    *,
    decode_images: bool = True,
    skips: SkipCounter | None = None,
) -> Iterator[Sample]:
    """Stream the samples of ``spec`` (see :func:`resolve_sources`) in a deterministic order.

    Sources are read in order, samples in file order; ``Sample.index`` counts the yielded samples from 0.
    Skips are added to ``skips`` (pass a :class:`SkipCounter` to get the counts back); a summary is logged
    when the iteration completes. With ``decode_images=False``, ``Sample.image`` is ``None`` and corrupt
    images are not detected.
    """
    sources = resolve_sources(spec)
    counter = skips if skips is not None else SkipCounter()
    before = counter.total
    validate = _Validator(decode_images, counter)
    for source in sources:
        logger.debug("reading %s", source)
        if source.endswith(TAR_SUFFIX):
            raws = _iter_tar(source, counter)
        elif source.endswith(os.sep):
            raws = _iter_files(source, counter)
        else:
            raws = _iter_captions(source, counter)
        for raw in raws:
            sample = validate(raw)
            if sample is not None:
                yield sample
    skipped = counter.total - before
    level = logging.WARNING if skipped else logging.INFO
    logger.log(level, "read %d samples from %d source(s); %d skipped", validate.count, len(sources), skipped)
