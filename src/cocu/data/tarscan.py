"""The one tar scanner: webdataset tar shards -> samples (members with byte offsets), with counted skips.

Both the curation reader (:func:`cocu.data.reader.iter_samples`) and the training index
(:mod:`cocu.train.shards`) read tars through :func:`scan_tar` and judge samples with
:func:`sample_problem`, so they always agree on which samples a shard holds.

Members are read from the tar headers (ustar, GNU long names, pax ``path``/``size`` records) by a small
parser over the memory-mapped file that jumps from header to header (a header-only pass touches one
512-byte block per member; header checksums are verified for a whole shard at once); the data of the
extensions asked for is read as well. Grouping follows webdataset: ``dir/000123.jpg`` has key
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
import mmap
import os
from typing import Iterator, NamedTuple

import numpy as np

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
_REGULAR = frozenset(b"0\x007")  # type flags as byte values
_DIRECTORY = ord("5")
_PAX_LOCAL = frozenset(b"xX")
_GNU_LONGNAME = ord("L")
_EXTENSION = frozenset(b"xXLgK")  # pax local/global, GNU long name/link: headers about the next member
_POSIX_MAGIC = b"ustar\x0000"
_KIND = {**{ext: "image" for ext in IMAGE_EXTS}, **{ext: "caption" for ext in CAPTION_EXTS}}


class ShardDamage(Exception):
    """The tar is truncated or damaged at a byte position; nothing after it can be read."""


TarEntry = tuple[str, int, int, int]
"""One tar member: its name, type flag (a byte value: ``ord("0")`` for a file), and its data's offset and
size in the file."""


class Member(NamedTuple):
    """A used member of a sample: data at ``offset`` .. ``offset + size`` of the shard; ``data`` if read."""

    offset: int
    size: int
    data: bytes | None


class TarSample:
    """The members of one webdataset sample, by extension, in the order met."""

    __slots__ = ("key", "source", "members")

    def __init__(self, key: str, source: str) -> None:
        self.key = key
        self.source = source
        self.members: dict[str, Member] = {}

    def first_ext(self, exts: tuple[str, ...]) -> str | None:
        """The first extension among ``exts`` (in that order) that the sample has a member for."""
        return next((ext for ext in exts if ext in self.members), None)

    def first(self, exts: tuple[str, ...]) -> Member | None:
        """The first member present among ``exts`` (in that order)."""
        ext = self.first_ext(exts)
        return None if ext is None else self.members[ext]

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
    """webdataset's split of a member name into ``(key, lower-cased extension)`` (its pattern
    ``^((?:.*/|)[^.]+)[.]([^/]*)$``): the key runs to the first dot of the base name; ``None`` without one."""
    base = name.rfind("/") + 1
    dot = name.find(".", base)
    if dot < 0 or dot == 0:
        return None
    if dot == base:  # ``dir/.x``: the pattern's key may then end with "/" if no dot comes after a slash
        head = name[: dot - 1]
        last_dot = head.rfind(".")
        if last_dot >= 0 and head.find("/", last_dot + 1) < 0:
            return None
    return name[:dot], name[dot + 1 :].lower()


def _number(field_bytes: bytes, what: str, pos: int) -> int:
    """A numeric header field: octal text, or GNU base-256 when the first byte has its high bit set."""
    try:
        return int(field_bytes.rstrip(b"\0 ") or b"0", 8)
    except ValueError:
        pass
    if field_bytes and field_bytes[0] in (0x80, 0xFF):
        value = int.from_bytes(field_bytes[1:], "big")
        return value - (1 << (8 * (len(field_bytes) - 1))) if field_bytes[0] == 0xFF else value
    text = field_bytes.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise ShardDamage(f"invalid {what} field in the header at byte {pos} (not a tar archive, or damaged)") from None


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


def read_entries(buf: bytes | mmap.mmap) -> tuple[list[TarEntry], str]:
    """The members of an uncompressed tar held in ``buf``, in order (pax and GNU long-name headers applied,
    not listed), and ``""``, or the members before the damage and what the damage is.

    A valid archive ends at a zero block. The walk from header to header reads each header's size, type and
    name; the checksums of all headers are then verified at once.
    """
    file_size = len(buf)
    header_at: list[int] = []  # byte position of every header walked
    entry_header: list[int] = []  # per entry: index of its header in ``header_at``
    names: list[str] = []
    types: list[int] = []
    offsets: list[int] = []
    sizes: list[int] = []
    damage = ""
    pos = 0
    pending_name: str | None = None
    pending_size: int | None = None
    try:
        while True:
            if pos + BLOCK > file_size:
                if pos == file_size:
                    raise ShardDamage(f"the file ends at byte {pos} without an end-of-archive marker (truncated)")
                raise ShardDamage(f"the file ends inside the member header at byte {pos} (truncated)")
            if buf[pos] == 0 and buf[pos : pos + BLOCK] == _ZERO_BLOCK:
                break
            header_at.append(pos)
            type_flag = buf[pos + 156]
            size = _number(buf[pos + 124 : pos + 136], "size", pos) if pending_size is None else pending_size
            if size < 0:
                raise ShardDamage(f"negative member size in the header at byte {pos}")
            offset = pos + BLOCK
            if offset + size > file_size:
                raise ShardDamage(f"the member at byte {pos} runs past the end of the file (truncated)")
            if type_flag in _EXTENSION:
                if type_flag == _GNU_LONGNAME:
                    pending_name = _text(bytes(buf[offset : offset + size]))
                elif type_flag in _PAX_LOCAL:
                    records = _pax_records(bytes(buf[offset : offset + size]), pos)
                    pending_name = records.get("path", pending_name)
                    if "size" in records:
                        pending_size = int(records["size"])
            else:
                if pending_name is None:
                    end = buf.find(b"\0", pos, pos + 100)
                    name = buf[pos : end if end >= 0 else pos + 100].decode("utf-8", "surrogateescape")
                    if buf[pos + 345] != 0 and buf[pos + 257 : pos + 265] == _POSIX_MAGIC:
                        name = _text(buf[pos + 345 : pos + 500]) + "/" + name
                else:
                    name = pending_name
                entry_header.append(len(header_at) - 1)
                names.append(name)
                types.append(type_flag)
                offsets.append(offset)
                sizes.append(size)
                pending_name, pending_size = None, None
            pos = offset + (size + BLOCK - 1) // BLOCK * BLOCK
    except ShardDamage as exc:
        damage = str(exc)
    entries = list(zip(names, types, offsets, sizes))
    if not header_at:
        return entries, damage
    whole = file_size // BLOCK
    raw = np.frombuffer(buf, dtype=np.uint8, count=whole * BLOCK).reshape(whole, BLOCK)
    blocks = raw[np.asarray(header_at, dtype=np.int64) // BLOCK]  # [h, 512]; headers start on blocks
    del raw
    computed = np.add.reduce(blocks, axis=1, dtype=np.uint32).astype(np.int64)  # [h]
    computed -= np.add.reduce(blocks[:, 148:156], axis=1, dtype=np.uint32).astype(np.int64)
    computed += 8 * 0x20  # the checksum field counts as eight spaces
    bad = np.flatnonzero(computed != _octal_columns(blocks[:, 148:156]))
    if bad.size:
        first = int(bad[0])
        damage = f"bad header checksum at byte {header_at[first]} (not a tar archive, or damaged)"
        entries = entries[: int(np.searchsorted(np.asarray(entry_header, dtype=np.int64), first))]
    return entries, damage


def _octal_columns(fields: np.ndarray) -> np.ndarray:
    """Octal numbers written as text in each row of ``fields`` (uint8 [h, w]): leading spaces, digits,
    then a NUL or space; int64 [h]. A malformed field gives a number that fails the checksum test."""
    value = np.zeros(fields.shape[0], dtype=np.int64)
    started = np.zeros(fields.shape[0], dtype=bool)
    ended = np.zeros(fields.shape[0], dtype=bool)
    for column in fields.T.astype(np.int64):
        digit = (column >= 0x30) & (column <= 0x37)
        active = digit & ~ended
        value = np.where(active, value * 8 + column - 0x30, value)
        started |= digit
        ended |= started & ~digit
    return value


def scan_tar(path: str, skips: SkipCounter, load: frozenset[str] = USED_EXTS) -> Iterator[TarSample]:
    """The samples of one tar shard, with the data of the members whose extension is in ``load``.

    Member-level skips (``unexpected_member``, ``corrupt_shard``) are counted in ``skips``; whether a
    yielded sample is usable is for :func:`sample_problem` (and the caller's duplicate-key check) to say.
    """
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size == 0:
                raise OSError("the file is empty")
            try:
                mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):  # a file system without mmap: read the file instead
                yield from _group(path, handle.read(), skips, load)
                return
            with mapped as buf:
                yield from _group(path, buf, skips, load)
    except OSError as exc:
        skips.add(reasons.CORRUPT_SHARD, "", path, f"{type(exc).__name__}: {exc}")


def _group(path: str, buf: bytes | mmap.mmap, skips: SkipCounter, load: frozenset[str]) -> Iterator[TarSample]:
    entries, damage = read_entries(buf)
    current: TarSample | None = None
    for name, type_flag, offset, size in entries:
        if type_flag not in _REGULAR:
            if type_flag != _DIRECTORY:
                skips.add(reasons.UNEXPECTED_MEMBER, name, path, "not a regular file")
            continue
        parts = split_member_name(name)
        if parts is None or parts[1] not in USED_EXTS:
            skips.add(reasons.UNEXPECTED_MEMBER, name, path, "unexpected extension")
            continue
        key, ext = parts
        if current is not None and (key != current.key or ext in current.members):
            yield finish_sample(current, skips)
            current = None
        if current is None:
            current = TarSample(key, path)
        current.members[ext] = Member(offset, size, buf[offset : offset + size] if ext in load else None)
    if not damage:
        if current is not None:
            yield finish_sample(current, skips)
        return
    lost = ""
    if current is not None and current.complete:
        yield finish_sample(current, skips)
    elif current is not None:
        lost = f"; the incomplete sample {current.key!r} being read is lost"
    skips.add(reasons.CORRUPT_SHARD, current.key if current is not None else "", path, f"{damage}{lost}")


def finish_sample(sample: TarSample, skips: SkipCounter) -> TarSample:
    """Count the second members of a kind (the first in preference order is the one used)."""
    members = sample.members
    kinds = [_KIND[ext] for ext in members if ext in _KIND]
    if len(kinds) != len(set(kinds)):
        for kind in (IMAGE_EXTS, CAPTION_EXTS):
            present = [ext for ext in kind if ext in members]
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
    if not text.replace("\0", "").strip():
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
