"""A random-access index over webdataset tar shards, so that training can read sample ``i`` directly.

Training needs map-style access (an epoch is a seeded permutation of sample indices, and a resumed run
jumps straight to its step), while tar shards are streams. One pass over the tar *headers* records,
for every sample, the shard and byte range of its image member; captions are small and are read,
validated and kept in memory during that pass (packed into one UTF-8 buffer, so DataLoader worker
processes share them without copy-on-write growth), and the byte range of the ``json`` member is kept
when asked for. Images are then read with ``os.pread`` on the raw shard file at training time (no tar
parsing, no shared file offsets between processes) and decoded there; a corrupt image is only found
at that point (the data loader substitutes and counts it).

Members are grouped into samples as :mod:`cocu.data.reader` does (webdataset keys: the member name up to
the first dot of its base name; a repeated extension starts a new sample), and samples are skipped for
the same reasons, counted in a :class:`~cocu.data.skips.SkipCounter`: missing image or caption,
caption not UTF-8 or empty, duplicate key, unexpected members (dropped, the sample kept), bad ``json``
(dropped, the sample kept), a damaged or truncated shard (the rest of it is lost).

The index can be saved as an ``.npz`` (plain arrays, no pickle) and is reused when the shard list and
every shard's size and modification time are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from cocu.data import skips as reasons
from cocu.data.reader import CAPTION_EXTS, IMAGE_EXTS, META_EXT, TAR_SUFFIX, resolve_sources, split_member_name
from cocu.data.skips import SkipCounter
from cocu.utils.atomic import atomic_path

logger = logging.getLogger(__name__)

INDEX_VERSION = 1
_USED_EXTS = frozenset(IMAGE_EXTS + CAPTION_EXTS + (META_EXT,))


@dataclass(frozen=True)
class PackedStrings:
    """Strings stored as one UTF-8 buffer ``blob`` (uint8) and ``offsets`` (int64, n+1)."""

    blob: np.ndarray
    offsets: np.ndarray

    @classmethod
    def pack(cls, items: Sequence[str]) -> PackedStrings:
        encoded = [s.encode("utf-8") for s in items]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        blob = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
        return cls(blob=blob, offsets=offsets)

    def __len__(self) -> int:
        return int(self.offsets.shape[0]) - 1

    def __getitem__(self, i: int) -> str:
        return self.blob[self.offsets[i] : self.offsets[i + 1]].tobytes().decode("utf-8")

    def to_list(self) -> list[str]:
        return [self[i] for i in range(len(self))]


@dataclass(frozen=True)
class ShardIndex:
    """Per sample ``i`` (index order = shard order, then tar order): ``keys[i]``, ``captions[i]`` (stripped),
    image member at ``image_offset[i]`` / ``image_size[i]`` bytes of ``shards[shard_id[i]]``, json member
    at ``json_offset[i]`` / ``json_size[i]`` (offset -1: none or not indexed). ``skipped``: the skip counts
    per reason of the indexing pass (kept with a saved index)."""

    shards: list[str]
    keys: PackedStrings
    captions: PackedStrings
    shard_id: np.ndarray
    image_offset: np.ndarray
    image_size: np.ndarray
    json_offset: np.ndarray
    json_size: np.ndarray
    skipped: dict[str, int]

    def __len__(self) -> int:
        return int(self.shard_id.shape[0])

    def image_bytes(self, i: int) -> bytes:
        return read_range(self.shards[int(self.shard_id[i])], int(self.image_offset[i]), int(self.image_size[i]))

    def json_bytes(self, i: int) -> bytes | None:
        offset = int(self.json_offset[i])
        if offset < 0:
            return None
        return read_range(self.shards[int(self.shard_id[i])], offset, int(self.json_size[i]))

    def save(self, path: str | Path, fingerprint: str) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(
                    handle,
                    version=np.array(INDEX_VERSION),
                    fingerprint=np.array(fingerprint),
                    shards=np.array(self.shards, dtype=np.str_),
                    keys_blob=self.keys.blob,
                    keys_offsets=self.keys.offsets,
                    captions_blob=self.captions.blob,
                    captions_offsets=self.captions.offsets,
                    shard_id=self.shard_id,
                    image_offset=self.image_offset,
                    image_size=self.image_size,
                    json_offset=self.json_offset,
                    json_size=self.json_size,
                    skipped=np.array(json.dumps(self.skipped)),
                )

    @classmethod
    def load(cls, path: str | Path, fingerprint: str) -> ShardIndex | None:
        """The saved index, or ``None`` if it is missing, unreadable or was built for other shards."""
        try:
            with np.load(path, allow_pickle=False) as data:
                if int(data["version"]) != INDEX_VERSION or str(data["fingerprint"]) != fingerprint:
                    return None
                return cls(
                    shards=[str(s) for s in data["shards"]],
                    keys=PackedStrings(data["keys_blob"], data["keys_offsets"]),
                    captions=PackedStrings(data["captions_blob"], data["captions_offsets"]),
                    shard_id=data["shard_id"],
                    image_offset=data["image_offset"],
                    image_size=data["image_size"],
                    json_offset=data["json_offset"],
                    json_size=data["json_size"],
                    skipped=json.loads(str(data["skipped"])),
                )
        except (OSError, KeyError, ValueError, json.JSONDecodeError):
            return None


_FDS: dict[tuple[int, str], int] = {}


def read_range(path: str, offset: int, size: int) -> bytes:
    """``size`` bytes of ``path`` at ``offset`` via ``os.pread`` on a per-process cached descriptor."""
    key = (os.getpid(), path)
    fd = _FDS.get(key)
    if fd is None:
        fd = _FDS[key] = os.open(path, os.O_RDONLY)
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise OSError(f"{path}: short read at byte {offset} ({len(data)} of {size} bytes); the shard changed?")
    return data


def shards_fingerprint(shards: Sequence[str], with_json: bool) -> str:
    """Identifies a shard list by paths, sizes and modification times (plus the indexing options)."""
    digest = hashlib.sha256(f"v{INDEX_VERSION};json={with_json}".encode())
    for path in shards:
        st = os.stat(path)
        digest.update(f"\0{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return digest.hexdigest()


class _Builder:
    def __init__(self, with_json: bool, skips: SkipCounter) -> None:
        self.with_json = with_json
        self.skips = skips
        self.seen: set[str] = set()
        self.keys: list[str] = []
        self.captions: list[str] = []
        self.rows: list[tuple[int, int, int, int, int]] = []

    def add(self, key: str, members: dict[str, tuple[int, int, bytes | None]], shard: int, path: str) -> None:
        """``members``: ext -> (offset, size, data read for captions/json)."""
        image = next((members[e] for e in IMAGE_EXTS if e in members), None)
        caption = next((members[e] for e in CAPTION_EXTS if e in members), None)
        for kind in (IMAGE_EXTS, CAPTION_EXTS):
            present = [e for e in kind if e in members]
            for ext in present[1:]:
                detail = f"{key}.{ext}: another member of the same kind, kept .{present[0]}"
                self.skips.add(reasons.UNEXPECTED_MEMBER, key, path, detail)
        if key in self.seen:
            self.skips.add(reasons.DUPLICATE_KEY, key, path, "key already read")
            return
        self.seen.add(key)
        if image is None:
            self.skips.add(reasons.MISSING_IMAGE, key, path, "no jpg/jpeg/png member")
            return
        if caption is None:
            self.skips.add(reasons.MISSING_CAPTION, key, path)
            return
        try:
            text = (caption[2] or b"").decode("utf-8").strip()
        except UnicodeError:
            self.skips.add(reasons.CAPTION_NOT_UTF8, key, path)
            return
        if not text:
            self.skips.add(reasons.EMPTY_CAPTION, key, path)
            return
        json_offset, json_size = -1, 0
        if self.with_json and META_EXT in members:
            offset, size, data = members[META_EXT]
            if _valid_json_object(data, key, path, self.skips):
                json_offset, json_size = offset, size
        self.keys.append(key)
        self.captions.append(text)
        self.rows.append((shard, image[0], image[1], json_offset, json_size))


def _valid_json_object(data: bytes | None, key: str, path: str, skips: SkipCounter) -> bool:
    try:
        value = json.loads((data or b"").decode("utf-8"))
    except (UnicodeError, json.JSONDecodeError) as exc:
        skips.add(reasons.BAD_JSON, key, path, str(exc))
        return False
    if not isinstance(value, dict):
        skips.add(reasons.BAD_JSON, key, path, f"json member is a {type(value).__name__}, not an object")
        return False
    return True


def _scan_tar(path: str, shard: int, builder: _Builder) -> None:
    size = os.path.getsize(path)
    key: str | None = None
    members: dict[str, tuple[int, int, bytes | None]] = {}
    try:
        with tarfile.open(path, mode="r:") as archive:
            for info in archive:
                if info.isdir():
                    continue
                if not info.isfile():
                    builder.skips.add(reasons.UNEXPECTED_MEMBER, info.name, path, "not a regular file")
                    continue
                parts = split_member_name(info.name)
                if parts is None or parts[1] not in _USED_EXTS:
                    builder.skips.add(reasons.UNEXPECTED_MEMBER, info.name, path, "unexpected extension")
                    continue
                if info.offset_data + info.size > size:
                    raise tarfile.ReadError(f"member {info.name} runs past the end of the file (truncated)")
                member_key, ext = parts
                small = ext in CAPTION_EXTS or (ext == META_EXT and builder.with_json)
                data = read_range(path, info.offset_data, info.size) if small else None
                if key is not None and (member_key != key or ext in members):
                    builder.add(key, members, shard, path)
                    members = {}
                key = member_key
                members[ext] = (info.offset_data, info.size, data)
            if archive.offset >= size:
                raise tarfile.ReadError("archive ends without an end-of-archive marker (truncated)")
    except (tarfile.TarError, OSError, EOFError) as exc:
        lost = f"; sample {key!r} being read is lost" if members else ""
        builder.skips.add(reasons.CORRUPT_SHARD, key or "", path, f"{type(exc).__name__}: {exc}{lost}")
        return
    if members and key is not None:
        builder.add(key, members, shard, path)


def build_shard_index(
    spec: str | Path | Sequence[str | Path],
    *,
    with_json: bool = False,
    skips: SkipCounter | None = None,
    progress: bool = True,
) -> ShardIndex:
    """Index the samples of webdataset tar shards (``spec`` as :func:`cocu.data.reader.resolve_sources`).

    ``with_json``: also validate and index the ``json`` members. Raises ``ValueError`` for a source that
    is not a tar shard (captions files are not indexed; write them to shards with ``cocu.data.writer``).
    """
    shards = resolve_sources(spec)
    others = [s for s in shards if not s.endswith(TAR_SUFFIX)]
    if others:
        raise ValueError(
            f"training reads webdataset tar shards; {others[0]} is not one (convert captions files with "
            "cocu.data.writer.ShardWriter)"
        )
    counter = skips if skips is not None else SkipCounter()
    before = dict(counter.counts)
    builder = _Builder(with_json, counter)
    for shard, path in enumerate(tqdm(shards, desc="index shards", unit="shard", disable=not progress)):
        _scan_tar(path, shard, builder)
    rows = np.asarray(builder.rows, dtype=np.int64).reshape(-1, 5)  # [n, 5]
    index = ShardIndex(
        shards=list(shards),
        keys=PackedStrings.pack(builder.keys),
        captions=PackedStrings.pack(builder.captions),
        shard_id=rows[:, 0].astype(np.int32),
        image_offset=rows[:, 1].copy(),
        image_size=rows[:, 2].copy(),
        json_offset=rows[:, 3].copy(),
        json_size=rows[:, 4].copy(),
        skipped=_difference(counter.counts, before),
    )
    logger.info("indexed %d samples in %d shard(s); %d skipped", len(index), len(shards), counter.total)
    return index


def _difference(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}


def load_or_build_index(
    spec: str | Path | Sequence[str | Path],
    cache: str | Path | None,
    *,
    with_json: bool = False,
    skips: SkipCounter | None = None,
    progress: bool = True,
) -> ShardIndex:
    """:func:`build_shard_index`, reusing ``cache`` (an ``.npz``) when it matches the shards; saves it."""
    shards = resolve_sources(spec)
    fingerprint = shards_fingerprint(shards, with_json)
    if cache is not None and Path(cache).is_file():
        index = ShardIndex.load(cache, fingerprint)
        if index is not None:
            logger.info(
                "reusing the shard index %s (%d samples; %d skipped when it was built: %s)",
                cache,
                len(index),
                sum(index.skipped.values()),
                index.skipped,
            )
            return index
    index = build_shard_index(shards, with_json=with_json, skips=skips, progress=progress)
    if cache is not None:
        index.save(cache, fingerprint)
    return index
