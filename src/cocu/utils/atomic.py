"""Atomic writes: everything cocu writes goes to a temporary name in the same folder, then is renamed."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator


_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
"""The names :func:`atomic_path` gives its temporary files (``.NAME.XXXXXXXX.tmp``, mkstemp's suffix)."""


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of :func:`atomic_path` left under ``folder`` by a killed run (call it while
    holding the folder's lock); returns what was removed. No other file is touched."""
    removed = []
    for root, _dirs, files in os.walk(folder):
        for name in files:
            if _TEMP_NAME.match(name):
                path = Path(root) / name
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on error remove it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
