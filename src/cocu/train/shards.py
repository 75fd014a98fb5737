"""A random-access index over webdataset tar shards, so that training can read sample ``i`` directly.

Training needs map-style access (an epoch is a seeded permutation of sample indices, and a resumed run
jumps straight to its step), while tar shards are streams. One pass over the tar *headers*, shard by shard
in parallel worker processes, records for every sample the shard and byte range of its image and ``json``
members; captions are small and are read and kept (packed into one UTF-8 buffer, so DataLoader worker
processes share them without copy-on-write growth), and each key's 64-bit hash is kept for the archive
join. Images are read with ``os.pread`` on the raw shard file at training time (no tar parsing, no shared
file offsets between processes) and decoded there; a corrupt image is only found at that point (the data
loader substitutes and counts it).

The shards are read by :func:`cocu.data.tarscan.scan_tar` and samples judged by
:func:`cocu.data.tarscan.sample_problem`, the scanner and rules of the curation reader
(:func:`cocu.data.reader.iter_samples`), so both find the same samples with the same skip counts (the
reader alone also finds ``corrupt_image`` when it decodes). Duplicate keys are resolved after the
parallel pass with the reader's rule: the first occurrence in shard order claims the key (even when it is
unusable itself), later ones are ``duplicate_key``.

The index can be saved as an uncompressed ``.npz`` (plain arrays, no pickle); a saved index is memory-mapped
(file-backed pages shared by every rank and loader worker, not anonymous memory) and reused when the shard
list and every shard's size, modification time and first and last 64 KiB are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from cocu.data import skips as reasons
from cocu.data.reader import TAR_SUFFIX, resolve_sources
from cocu.data.skips import SkipCounter
from cocu.data.tarscan import CURATED_EXT, META_EXT, SMALL_EXTS, caption_text, json_object, sample_problem, scan_tar
from cocu.utils.atomic import atomic_path

logger = logging.getLogger(__name__)

INDEX_VERSION = 2
MAX_INDEX_WORKERS = 8
_PROBE = 1 << 16


@dataclass(frozen=True)
class PackedStrings:
    """Strings stored as one UTF-8 buffer ``blob`` (uint8) and ``offsets`` (int64, n+1)."""

    blob: np.ndarray
    offsets: np.ndarray

    @classmethod
    def pack(cls, items: Sequence[str]) -> PackedStrings:
        encoded = [s.encode("utf-8", "surrogateescape") for s in items]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        blob = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
        return cls(blob=blob, offsets=offsets)

    def select(self, keep: np.ndarray) -> PackedStrings:
        """The strings where the bool mask ``keep`` [n] is true, in order."""
        lengths = np.diff(self.offsets)  # [n]
        offsets = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
        np.cumsum(lengths[keep], out=offsets[1:])
        return PackedStrings(blob=self.blob[np.repeat(keep, lengths)], offsets=offsets)

    def __len__(self) -> int:
        return int(self.offsets.shape[0]) - 1

    def __getitem__(self, i: int) -> str:
        return self.blob[self.offsets[i] : self.offsets[i + 1]].tobytes().decode("utf-8", "surrogateescape")

    def to_list(self) -> list[str]:
        return [self[i] for i in range(len(self))]


_MULT = np.uint64(0x100000001B3)
_MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))
_SHIFTS = (np.uint64(30), np.uint64(27), np.uint64(31))


def hash_strings(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each string ``data[offsets[i] : offsets[i+1]]`` (UTF-8 bytes): uint64 [n].

    A polynomial hash of the bytes (mod 2**64) finished with the splitmix64 mixer, computed with numpy in
    one pass over the bytes (explicit uint64 operands, so numpy 1.x and 2.x give the same numbers). Equal
    strings have equal hashes; a match of hashes is confirmed on the strings by its users.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    n = offsets.shape[0] - 1
    if n <= 0:
        return np.zeros(0, dtype=np.uint64)
    base = int(offsets[0])
    lengths = np.diff(offsets)  # [n]
    total = int(offsets[-1]) - base
    position = np.arange(total, dtype=np.int64) - np.repeat(offsets[:-1] - base, lengths)  # [total]
    powers = np.full(max(1, int(lengths.max(initial=0))), _MULT, dtype=np.uint64)
    powers[0] = np.uint64(1)
    powers = np.cumprod(powers, dtype=np.uint64)  # P**k mod 2**64
    terms = data[base : base + total].astype(np.uint64) * powers[position]  # [total]
    running = np.concatenate([np.zeros(1, dtype=np.uint64), np.cumsum(terms, dtype=np.uint64)])
    h = running[offsets[1:] - base] - running[offsets[:-1] - base] + lengths.astype(np.uint64) * _MIX[0]
    h = h ^ (h >> _SHIFTS[0])
    h = h * _MIX[0]
    h = h ^ (h >> _SHIFTS[1])
    h = h * _MIX[1]
    return h ^ (h >> _SHIFTS[2])


def hash_keys(keys: Sequence[str]) -> np.ndarray:
    """:func:`hash_strings` of each key: uint64 [n]; equal keys, equal hashes."""
    packed = PackedStrings.pack(keys)
    return hash_strings(packed.blob, packed.offsets)


@dataclass(frozen=True)
class ShardIndex:
    """Per sample ``i`` (index order = shard order, then tar order): ``keys[i]`` (64-bit hash
    ``key_hash[i]``), ``captions[i]`` (stripped), image member at ``image_offset[i]`` / ``image_size[i]``
    bytes of ``shards[shard_id[i]]``, json member at ``json_offset[i]`` / ``json_size[i]`` (offset -1:
    none, or not a JSON object). ``skipped``: the skip counts per reason of the indexing pass (kept with
    a saved index)."""

    shards: list[str]
    keys: PackedStrings
    captions: PackedStrings
    key_hash: np.ndarray
    shard_id: np.ndarray
    image_offset: np.ndarray
    image_size: np.ndarray
    json_offset: np.ndarray
    json_size: np.ndarray
    skipped: dict[str, int]

    def __len__(self) -> int:
        return int(self.shard_id.shape[0])

    def source(self, i: int) -> str:
        return self.shards[int(self.shard_id[i])]

    def image_bytes(self, i: int) -> bytes:
        return read_range(self.source(i), int(self.image_offset[i]), int(self.image_size[i]))

    def json_bytes(self, i: int) -> bytes | None:
        offset = int(self.json_offset[i])
        if offset < 0:
            return None
        return read_range(self.source(i), offset, int(self.json_size[i]))

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
                    key_hash=self.key_hash,
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
            data = mapped_npz(path)
            if int(data["version"]) != INDEX_VERSION or str(data["fingerprint"]) != fingerprint:
                return None
            return cls(
                shards=[str(s) for s in data["shards"]],
                keys=PackedStrings(data["keys_blob"], data["keys_offsets"]),
                captions=PackedStrings(data["captions_blob"], data["captions_offsets"]),
                key_hash=data["key_hash"],
                shard_id=data["shard_id"],
                image_offset=data["image_offset"],
                image_size=data["image_size"],
                json_offset=data["json_offset"],
                json_size=data["json_size"],
                skipped=json.loads(str(data["skipped"])),
            )
        except (OSError, KeyError, ValueError, json.JSONDecodeError, zipfile.BadZipFile, struct.error):
            return None


def mapped_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of an uncompressed ``.npz`` (as ``np.savez`` writes), memory-mapped read-only instead of
    read into memory, so that every process shares their pages (0-d and empty arrays are read)."""
    arrays: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as handle:
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
                raise ValueError(f"{path}: {info.filename} is not a stored .npy member")
            handle.seek(info.header_offset)
            local = handle.read(30)
            if local[:4] != b"PK\x03\x04":
                raise ValueError(f"{path}: damaged zip member {info.filename}")
            name_length, extra_length = struct.unpack("<HH", local[26:30])
            handle.seek(info.header_offset + 30 + name_length + extra_length)
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                raise ValueError(f"{path}: unsupported .npy version {version} in {info.filename}")
            if dtype.hasobject:
                raise ValueError(f"{path}: {info.filename} holds Python objects")
            name = info.filename[: -len(".npy")]
            if len(shape) == 0 or 0 in shape:
                count = int(np.prod(shape))
                arrays[name] = np.fromfile(handle, dtype=dtype, count=count).reshape(shape)
            else:
                order = "F" if fortran else "C"
                arrays[name] = np.memmap(path, dtype=dtype, mode="r", offset=handle.tell(), shape=shape, order=order)
    return arrays


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


def files_fingerprint(paths: Sequence[str | Path], tag: str) -> str:
    """Identifies files by path, size, modification time and their first and last 64 KiB (plus ``tag``)."""
    digest = hashlib.sha256(tag.encode())
    for path in paths:
        st = os.stat(path)
        digest.update(f"\0{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(_PROBE))
            handle.seek(max(0, st.st_size - _PROBE))
            digest.update(handle.read(_PROBE))
    return digest.hexdigest()


def shards_fingerprint(shards: Sequence[str]) -> str:
    """Identifies a shard list (see :func:`files_fingerprint`) for this index version."""
    return files_fingerprint(shards, f"shard-index-v{INDEX_VERSION}")


class _Recorder(SkipCounter):
    """Collects skips in a worker process, to be counted (and logged) by the parent in shard order."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, str, str]] = []

    def add(self, reason: str, key: str, source: str, detail: str = "") -> None:
        self.events.append((reason, key, detail))


@dataclass
class _ShardScan:
    """Every sample group of one shard (usable or not), before the duplicate-key check."""

    keys: PackedStrings
    key_hash: np.ndarray
    captions: PackedStrings
    image: np.ndarray  # int64 [g, 2] offset, size (-1, 0: none)
    meta: np.ndarray  # int64 [g, 2] json offset, size (-1, 0: none or not an object)
    problems: dict[int, tuple[str, str]]  # group -> (reason, detail)
    bad_json: dict[int, list[str]] = field(default_factory=dict)  # group -> details (counted if kept)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # member-level (reason, key, detail)

    def __len__(self) -> int:
        return int(self.key_hash.shape[0])


def _scan_shard(path: str) -> _ShardScan:
    recorder = _Recorder()
    keys: list[str] = []
    captions: list[str] = []
    image: list[tuple[int, int]] = []
    meta: list[tuple[int, int]] = []
    problems: dict[int, tuple[str, str]] = {}
    bad_json: dict[int, list[str]] = {}
    for g, sample in enumerate(scan_tar(path, recorder, load=SMALL_EXTS)):
        keys.append(sample.key)
        members = sample.members
        img, cap = sample.image, sample.caption
        image.append((img.offset, img.size) if img is not None else (-1, 0))
        meta.append((-1, 0))
        problem = sample_problem(img is not None, cap.data if cap is not None else None)
        if problem is not None:
            problems[g] = problem
            captions.append("")
            continue
        assert cap is not None and cap.data is not None
        captions.append(caption_text(cap.data) or "")
        if META_EXT in members or CURATED_EXT in members:
            for ext in (META_EXT, CURATED_EXT):
                member = members.get(ext)
                if member is None:
                    continue
                value, why = json_object(member.data or b"")
                if value is None:
                    bad_json.setdefault(g, []).append(why)
                elif ext == META_EXT:
                    meta[-1] = (member.offset, member.size)
    packed_keys = PackedStrings.pack(keys)
    return _ShardScan(
        keys=packed_keys,
        key_hash=hash_strings(packed_keys.blob, packed_keys.offsets),
        captions=PackedStrings.pack(captions),
        image=np.asarray(image, dtype=np.int64).reshape(-1, 2),
        meta=np.asarray(meta, dtype=np.int64).reshape(-1, 2),
        problems=problems,
        bad_json=bad_json,
        events=recorder.events,
    )


def _scan_all(shards: list[str], workers: int, progress: bool) -> list[_ShardScan]:
    bar = tqdm(total=len(shards), desc="index shards", unit="shard", disable=not progress)
    try:
        if workers <= 1 or len(shards) < 2:
            scans = []
            for path in shards:
                scans.append(_scan_shard(path))
                bar.update(1)
            return scans
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with multiprocessing.get_context(method).Pool(min(workers, len(shards))) as pool:
            scans = []
            for scan in pool.imap(_scan_shard, shards, chunksize=max(1, min(16, len(shards) // (4 * workers)))):
                scans.append(scan)
                bar.update(1)
            return scans
    finally:
        bar.close()


def _concat(parts: Sequence[PackedStrings]) -> PackedStrings:
    sizes = [int(p.offsets[-1]) for p in parts]
    starts = np.cumsum([0] + sizes[:-1], dtype=np.int64)
    offsets = [np.zeros(1, dtype=np.int64)] + [p.offsets[1:] + s for p, s in zip(parts, starts)]
    blobs = [p.blob for p in parts]
    return PackedStrings(
        blob=np.concatenate(blobs) if blobs else np.zeros(0, dtype=np.uint8), offsets=np.concatenate(offsets)
    )


def _duplicates(keys: PackedStrings, key_hash: np.ndarray) -> np.ndarray:
    """bool [g]: groups whose key occurred at an earlier group (equal hashes are confirmed on the keys)."""
    dup = np.zeros(key_hash.shape[0], dtype=bool)
    order = np.argsort(key_hash, kind="stable")  # equal hashes keep group order
    ordered = key_hash[order]
    same = np.flatnonzero(ordered[1:] == ordered[:-1]) + 1  # positions in ``order`` with an equal predecessor
    last = -2
    seen: set[str] = set()
    for pos in same.tolist():
        if pos != last + 1:  # a new run of equal hashes, led by ``order[pos - 1]``
            seen = {keys[int(order[pos - 1])]}
        last = pos
        key = keys[int(order[pos])]
        if key in seen:
            dup[order[pos]] = True
        seen.add(key)
    return dup


def build_shard_index(
    spec: str | Path | Sequence[str | Path],
    *,
    skips: SkipCounter | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> ShardIndex:
    """Index the samples of webdataset tar shards (``spec`` as :func:`cocu.data.reader.resolve_sources`).

    ``workers``: processes scanning shards in parallel (default: the machine's cores, at most
    :data:`MAX_INDEX_WORKERS`). Raises ``ValueError`` for a source that is not a tar shard (captions files
    are not indexed; write them to shards with ``cocu.data.writer``).
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
    count = workers if workers is not None else min(os.cpu_count() or 1, MAX_INDEX_WORKERS)
    scans = _scan_all(shards, count, progress)
    keys = _concat([s.keys for s in scans])
    key_hash = np.concatenate([s.key_hash for s in scans] + [np.zeros(0, dtype=np.uint64)])
    dup = _duplicates(keys, key_hash)
    keep = ~dup
    start = 0
    for path, scan in zip(shards, scans):
        for reason, key, detail in scan.events:
            counter.add(reason, key, path, detail)
        dup_here = np.flatnonzero(dup[start : start + len(scan)]).tolist()
        flagged = set(scan.problems) | set(scan.bad_json) | set(dup_here)
        for g in sorted(flagged):
            key = scan.keys[g]
            if dup[start + g]:
                counter.add(reasons.DUPLICATE_KEY, key, path, "key already read")
            elif g in scan.problems:
                keep[start + g] = False
                counter.add(scan.problems[g][0], key, path, scan.problems[g][1])
            else:
                for detail in scan.bad_json[g]:
                    counter.add(reasons.BAD_JSON, key, path, detail)
        start += len(scan)
    shard_id = np.repeat(np.arange(len(shards), dtype=np.int32), [len(s) for s in scans])
    image = np.concatenate([s.image for s in scans] + [np.zeros((0, 2), dtype=np.int64)])
    meta = np.concatenate([s.meta for s in scans] + [np.zeros((0, 2), dtype=np.int64)])
    index = ShardIndex(
        shards=list(shards),
        keys=keys.select(keep),
        captions=_concat([s.captions for s in scans]).select(keep),
        key_hash=key_hash[keep],
        shard_id=shard_id[keep],
        image_offset=image[keep, 0],
        image_size=image[keep, 1],
        json_offset=meta[keep, 0],
        json_size=meta[keep, 1],
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
    skips: SkipCounter | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> tuple[ShardIndex, str]:
    """:func:`build_shard_index`, reusing ``cache`` (an ``.npz``) when it matches the shards; saves it.

    Returns the index and the shards' fingerprint (which identifies it, e.g. for caches built on it).
    """
    shards = resolve_sources(spec)
    fingerprint = shards_fingerprint(shards)
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
            return index, fingerprint
    index = build_shard_index(shards, skips=skips, progress=progress, workers=workers)
    if cache is not None:
        index.save(cache, fingerprint)
        mapped = ShardIndex.load(cache, fingerprint)  # file-backed pages instead of the built arrays
        index = mapped if mapped is not None else index
    return index, fingerprint
