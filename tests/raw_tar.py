"""Test helper: tars written member by member as another tool would (no sorting, no name checks), so that
duplicate keys, odd names and unsafe keys can be crafted."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Iterable


def write_raw_tar(path: str | Path, samples: Iterable[tuple[str, dict[str, bytes]]]) -> None:
    """``samples``: ``(key, {ext: bytes})`` written as ``key.ext`` members in the given order."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
