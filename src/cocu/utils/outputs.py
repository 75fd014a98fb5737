"""One clear line when an output cannot be written (disk full, read-only folder, permissions).

A command that fails to write turns the ``OSError`` into :class:`OutputError`: what could not be written,
why, and what to do; writes are atomic (:mod:`cocu.utils.atomic`), so nothing partial is left for a rerun
to trust.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
from pathlib import Path
from typing import Iterator


class OutputError(ValueError):
    """An output folder cannot be written (disk full, read-only, permissions); nothing partial is left."""


def write_advice(err: OSError, out: Path) -> str:
    """What to do about ``err`` raised while writing under ``out``."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT) or (err.errno is None and "requested and" in str(err)):
        try:
            free = f" ({shutil.disk_usage(out).free / 2**20:.0f} MiB free there now)"
        except OSError:
            free = ""
        return f"the disk holding {out} is full{free}: free some space or choose another --out"
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{out} is not writable: make it writable or choose another --out"
    return f"check {out} or choose another --out"


def output_error(err: OSError, path: Path | str, out: Path) -> OutputError:
    """The one-line :class:`OutputError` for ``err`` raised while writing ``path`` under ``out``."""
    why = err.strerror or str(err)
    return OutputError(
        f"cannot write {path}: {why}; {write_advice(err, out)}, then rerun the same command "
        "(finished parts are kept, nothing partial was left)"
    )


@contextlib.contextmanager
def writing(path: Path, out: Path, error: type[OutputError] = OutputError) -> Iterator[None]:
    """Turn an OSError while writing ``path`` into one ``error`` line (what, where, what to do)."""
    try:
        yield
    except OutputError:
        raise
    except OSError as err:
        raise error(*output_error(err, path, out).args) from err
