"""The one tar scanner: webdataset tar shards -> samples (members with byte offsets), with counted skips.

Both the curation reader (:func:`cocu.data.reader.iter_samples`) and the training index
(:mod:`cocu.train.shards`) read tars through :func:`scan_tar` and judge samples with
:func:`sample_problem`, so they always agree on which samples a shard holds.

Members are read from the tar headers (ustar, GNU long names, pax ``path``/``size`` records) by a small
parser that seeks over member data, so a header-only pass costs one 512-byte read per member; the data of
the extensions asked for is read as well. Grouping follows webdataset: ``dir/000123.jpg`` has key
``dir/000123`` and extension ``jpg`` (everything after the first dot of the base name, lower-cased); a
change of key, or an extension already present in the current group, starts a new sample. Directory
entries are passed over; other non-file members, and files with an extension that is not used, are
counted as ``unexpected_member``; so is a second member of a kind already present (a ``png`` beside a
``jpg``: the first in :data:`IMAGE_EXTS` order is kept).

A damaged shard (a header with a bad checksum, a file cut inside a header or inside a member's data, no
end-of-archive marker) is counted once as ``corrupt_shard`` and reading stops there. Every complete
sample read before the damage is kept, including the one being assembled when it already has its image
and caption members; a sample that lacks one of them because of the cut is lost with the shard's tail
(named in the ``corrupt_shard`` detail, not counted again).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

from cocu.data import skips as reasons
from cocu.data.skips import SkipCounter

IMAGE_EXTS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "avif")
CAPTION_EXTS: tuple[str, ...] = ("txt", "text")
META_EXT = "json"
CURATED_EXT = "concepts.json"  # written by `cocu curate --write-shards`; read into ``meta["curated"]``
USED_EXTS = frozenset(IMAGE_EXTS + CAPTION_EXTS + (META_EXT, CURATED_EXT))
SMALL_EXTS = frozenset(CAPTION_EXTS + (META_EXT, CURATED_EXT))
"""The members a header pass reads (captions and metadata); images are left on disk."""

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
_REGULAR = (b"0", b"\0", b"7")
_DIRECTORY = b"5"
_PAX_LOCAL = (b"x", b"X")
_PAX_GLOBAL = b"g"
_GNU_LONGNAME = b"L"
_GNU_LONGLINK = b"K"
_POSIX_MAGIC = b"ustar\x0000"
_WDS_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


class ShardDamage(Exception):
    """The tar is truncated or damaged at a byte position; nothing after it can be read."""


@dataclass(frozen=True)
class TarEntry:
    """One tar member: its name, type flag, and the byte range of its data in the file."""

    name: str
    type: bytes
    offset: int
    size: int

    @property
    def is_file(self) -> bool:
        return self.type in _REGULAR


@dataclass(frozen=True)
class Member:
    """A used member of a sample: data at ``offset`` .. ``offset + size`` of the shard; ``data`` if read."""

    offset: int
    size: int
    data: bytes | None


@dataclass
class TarSample:
    """The members of one webdataset sample, by extension, in the order met."""

    key: str
    source: str
    members: dict[str, Member] = field(default_factory=dict)

    def first(self, exts: tuple[str, ...]) -> Member | None:
        """The first member present among ``exts`` (in that order)."""
        return next((self.members[ext] for ext in exts if ext in self.members), None)

    @property
    def image(self) -> Member | None:
        return self.first(IMAGE_EXTS)

    @property
    def caption(self) -> Member | None:
        return self.first(CAPTION_EXTS)

    @property
    def complete(self) -> bool:
        """Has an image and a caption member (a cut after them loses nothing that is used for training)."""
        return self.image is not None and self.caption is not None


def split_member_name(name: str) -> tuple[str, str] | None:
    """webdataset's split of a member name into ``(key, lower-cased extension)``; ``None`` without a dot."""
    match = _WDS_NAME.match(name)
    if match is None:
        return None
    return match.group(1), match.group(2).lower()


def _number(field_bytes: bytes, what: str, pos: int) -> int:
    """A numeric header field: octal text, or GNU base-256 when the first byte has its high bit set."""
    if field_bytes and field_bytes[0] in (0x80, 0xFF):
        value = int.from_bytes(field_bytes[1:], "big")
        return value - (1 << (8 * (len(field_bytes) - 1))) if field_bytes[0] == 0xFF else value
    text = field_bytes.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise ShardDamage(f"invalid {what} field in the header at byte {pos}") from None


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pax_records(data: bytes, pos: int) -> dict[str, str]:
    """The ``length key=value\\n`` records of a pax extended header."""
    records: dict[str, str] = {}
    at = 0
    while at < len(data) and data[at:at + 1] != b"\0":
        space = data.find(b" ", at)
        try:
            length = int(data[at:space])
        except ValueError:
            raise ShardDamage(f"invalid pax header at byte {pos}") from None
        record = data[space + 1 : at + length]
        if length <= 0 or not record.endswith(b"\n") or b"=" not in record:
            raise ShardDamage(f"invalid pax record in the header at byte {pos}")
        name, value = record[:-1].split(b"=", 1)
        records[name.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        at += length
    return records


def iter_entries(handle: BinaryIO, file_size: int) -> Iterator[TarEntry]:
    """The members of an uncompressed tar in order (pax and GNU long-name headers applied, not yielded).

    The caller may read a member's data from ``handle`` between iterations. Raises :class:`ShardDamage`
    where the archive is cut or damaged; a valid archive ends at a zero block.
    """
    pos = 0
    pending_name: str | None = None
    pending_size: int | None = None
    while True:
        handle.seek(pos)
        header = handle.read(BLOCK)
        if len(header) < BLOCK:
            if not header:
                raise ShardDamage(f"the file ends at byte {pos} without an end-of-archive marker (truncated)")
            raise ShardDamage(f"the file ends inside the member header at byte {pos} (truncated)")
        if header == _ZERO_BLOCK:
            return
        stored = _number(header[148:156], "checksum", pos)
        computed = sum(header) - sum(header[148:156]) + 8 * 0x20
        if stored != computed:
            raise ShardDamage(f"bad header checksum at byte {pos} (not a tar archive, or damaged)")
        type_flag = header[156:157]
        size = _number(header[124:136], "size", pos) if pending_size is None else pending_size
        if size < 0:
            raise ShardDamage(f"negative member size in the header at byte {pos}")
        offset = pos + BLOCK
        if offset + size > file_size:
            raise ShardDamage(f"the member at byte {pos} runs past the end of the file (truncated)")
        pos = offset + (size + BLOCK - 1) // BLOCK * BLOCK
        if type_flag in _PAX_LOCAL or type_flag == _GNU_LONGNAME:
            handle.seek(offset)
            data = handle.read(size)
            if type_flag == _GNU_LONGNAME:
                pending_name = _text(data)
            else:
                records = _pax_records(data, offset - BLOCK)
                pending_name = records.get("path", pending_name)
                if "size" in records:
                    pending_size = int(records["size"])
            continue
        if type_flag in (_PAX_GLOBAL, _GNU_LONGLINK):
            continue
        name = pending_name
        if name is None:
            name = _text(header[0:100])
            if header[257:265] == _POSIX_MAGIC and header[345] != 0:
                name = _text(header[345:500]) + "/" + name
        pending_name, pending_size = None, None
        yield TarEntry(name=name, type=type_flag, offset=offset, size=size)


def scan_tar(path: str, skips: SkipCounter, load: frozenset[str] = USED_EXTS) -> Iterator[TarSample]:
    """The samples of one tar shard, with the data of the members whose extension is in ``load``.

    Member-level skips (``unexpected_member``, ``corrupt_shard``) are counted in ``skips``; whether a
    yielded sample is usable is for :func:`sample_problem` (and the caller's duplicate-key check) to say.
    """
    current: TarSample | None = None
    try:
        with open(path, "rb", buffering=1 << 16) as handle:
            file_size = os.fstat(handle.fileno()).st_size
            for entry in iter_entries(handle, file_size):
                if entry.type == _DIRECTORY:
                    continue
                if not entry.is_file:
                    skips.add(reasons.UNEXPECTED_MEMBER, entry.name, path, "not a regular file")
                    continue
                parts = split_member_name(entry.name)
                if parts is None or parts[1] not in USED_EXTS:
                    skips.add(reasons.UNEXPECTED_MEMBER, entry.name, path, "unexpected extension")
                    continue
                key, ext = parts
                data = None
                if ext in load:
                    handle.seek(entry.offset)
                    data = handle.read(entry.size)
                if current is not None and (key != current.key or ext in current.members):
                    yield _finish(current, skips)
                    current = None
                if current is None:
                    current = TarSample(key=key, source=path)
                current.members[ext] = Member(entry.offset, entry.size, data)
    except (ShardDamage, OSError) as exc:
        pending = current
        if pending is not None and pending.complete:
            yield _finish(pending, skips)
            pending = None
        lost = f"; the incomplete sample {pending.key!r} being read is lost" if pending is not None else ""
        skips.add(reasons.CORRUPT_SHARD, current.key if current is not None else "", path, f"{exc}{lost}")
        return
    if current is not None:
        yield _finish(current, skips)


def _finish(sample: TarSample, skips: SkipCounter) -> TarSample:
    """Count the second members of a kind (the first in preference order is the one used)."""
    for kind in (IMAGE_EXTS, CAPTION_EXTS):
        present = [ext for ext in kind if ext in sample.members]
        for ext in present[1:]:
            detail = f"{sample.key}.{ext}: another member of the same kind, kept .{present[0]}"
            skips.add(reasons.UNEXPECTED_MEMBER, sample.key, sample.source, detail)
    return sample


def caption_text(value: bytes | str) -> str | None:
    """The caption with surrounding whitespace stripped, or ``None`` if it is not valid UTF-8."""
    try:
        text = value.decode("utf-8") if isinstance(value, bytes) else value
        text.encode("utf-8")
    except UnicodeError:
        return None
    return text.strip()


def sample_problem(has_image: bool, caption: bytes | str | None, image_problem: str = "") -> tuple[str, str] | None:
    """The reason (and detail) a sample with these members cannot be used, or ``None``.

    Checked in order: no image, no caption, caption not UTF-8, caption empty (whitespace and NUL bytes
    only). The duplicate-key check comes before this and is the caller's.
    """
    if not has_image:
        return reasons.MISSING_IMAGE, image_problem or "no " + "/".join(IMAGE_EXTS) + " member"
    if caption is None:
        return reasons.MISSING_CAPTION, ""
    text = caption_text(caption)
    if text is None:
        return reasons.CAPTION_NOT_UTF8, ""
    if not text.strip("\0").strip():
        return reasons.EMPTY_CAPTION, ""
    return None


def json_object(data: bytes) -> tuple[dict | None, str]:
    """A ``json`` member parsed as an object, or ``(None, why not)``."""
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeError, json.JSONDecodeError) as exc:
        return None, str(exc)
    if not isinstance(value, dict):
        return None, f"json member is a {type(value).__name__}, not an object"
    return value, ""
