"""Deterministic, atomic webdataset shard writer.

``ShardWriter`` collects up to ``samples_per_shard`` samples in memory, then writes them as
``{prefix}-{i:05d}.tar`` (``i`` from 0) through a temporary name that is renamed on success, so a failure
never leaves a partial shard under a final name. Tar bytes depend only on the samples: members are sorted
by key then extension (so a shard reads back in key order), with mtime 0, uid/gid 0, empty user/group
names and mode 0644, in PAX format. The shards are readable by :func:`cocu.data.reader.iter_samples` and
by ``webdataset.WebDataset``.
"""

from __future__ import annotations

import io
import logging
import tarfile
from pathlib import Path
from types import TracebackType

from cocu.data.tarscan import split_member_name
from cocu.utils.atomic import atomic_path

logger = logging.getLogger(__name__)


def write_tar(path: str | Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    """Write ``samples`` (``(key, {ext: bytes})``) to one tar at ``path``, atomically and deterministically."""
    with atomic_path(path) as tmp:
        with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for key, members in sorted(samples, key=lambda item: item[0]):
                for ext in sorted(members):
                    data = members[ext]
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    info.mtime = 0
                    info.mode = 0o644
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    info.type = tarfile.REGTYPE
                    archive.addfile(info, io.BytesIO(data))


def check_key(key: str) -> None:
    """Raise ``ValueError`` unless ``key`` makes safe member names (relative, no ``..``, reads back as itself)."""
    _check_member_name(key, "txt")


def _check_member_name(key: str, ext: str) -> None:
    if not isinstance(key, str) or not isinstance(ext, str):
        raise TypeError(f"key and extension must be str, got {type(key).__name__}, {type(ext).__name__}")
    if key.startswith("/") or ".." in key.split("/"):
        raise ValueError(f"key {key!r} must be a relative path without '..'")
    if split_member_name(f"{key}.{ext}") != (key, ext):
        raise ValueError(
            f"member {key}.{ext} would not read back as key {key!r} + extension {ext!r}: keys need a "
            "non-empty last path part without dots, extensions must be non-empty lower-case without '/'"
        )


class ShardWriter:
    """Write samples into numbered webdataset shards; use as a context manager.

    ``write(key, {"jpg": ..., "txt": ..., "json": ...})`` adds one sample; every ``samples_per_shard``
    samples a shard is written. Leaving the ``with`` block normally writes the last, partial shard;
    leaving it with an exception discards (and logs) the samples not yet written, keeping complete shards.
    Keys must be unique. Existing files with the same names are replaced. ``paths`` lists written shards.
    """

    def __init__(self, out_dir: str | Path, prefix: str = "shard", samples_per_shard: int = 1000) -> None:
        if samples_per_shard <= 0:
            raise ValueError(f"samples_per_shard must be positive, got {samples_per_shard}")
        if not prefix or "/" in prefix:
            raise ValueError(f"prefix must be a non-empty file name part, got {prefix!r}")
        self.out_dir = Path(out_dir)
        self.prefix = prefix
        self.samples_per_shard = samples_per_shard
        self._pending: list[tuple[str, dict[str, bytes]]] = []
        self._keys: set[str] = set()
        self._paths: list[Path] = []
        self._closed = False
        self.out_dir.mkdir(parents=True, exist_ok=True)

    @property
    def paths(self) -> list[Path]:
        """Final paths of the shards written so far, in order."""
        return list(self._paths)

    @property
    def num_samples(self) -> int:
        """Samples accepted so far (written or pending)."""
        return len(self._keys)

    def write(self, key: str, members: dict[str, bytes]) -> None:
        """Add one sample: ``members`` maps extension (e.g. ``"jpg"``) to the member's bytes."""
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        if not members:
            raise ValueError(f"sample {key!r} has no members")
        checked: dict[str, bytes] = {}
        for ext, data in members.items():
            _check_member_name(key, ext)
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"member {key}.{ext} must be bytes, got {type(data).__name__}")
            checked[ext] = bytes(data)
        if key in self._keys:
            raise ValueError(f"duplicate key {key!r}")
        self._keys.add(key)
        self._pending.append((key, checked))
        if len(self._pending) >= self.samples_per_shard:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        path = self.out_dir / f"{self.prefix}-{len(self._paths):05d}.tar"
        write_tar(path, self._pending)
        self._paths.append(path)
        self._pending = []

    def close(self) -> None:
        """Write the last partial shard (if any); further writes raise."""
        if self._closed:
            return
        self._flush()
        self._closed = True
        stale = sorted(set(self.out_dir.glob(f"{self.prefix}-[0-9][0-9][0-9][0-9][0-9].tar")) - set(self._paths))
        if stale:
            logger.warning(
                "%s holds %d other %s-*.tar shard(s) not written by this writer (e.g. %s)",
                self.out_dir, len(stale), self.prefix, stale[0].name,
            )

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        if self._pending:
            logger.warning("discarding %d unwritten sample(s) after an error", len(self._pending))
        self._pending = []
        self._closed = True
