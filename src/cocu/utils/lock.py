"""An exclusive advisory lock on an output folder for the whole of a run: ``with folder_lock(RUN): ...``.

The lock is ``fcntl.flock`` on ``RUN/.cocu.lock``; the holder writes its pid (and host and purpose)
into that file. A second writer that asks for the same folder gets :class:`FolderLocked` at once, with a
message naming the holder's pid, instead of waiting or silently writing over the first run. The
operating system drops the lock when the holder's file descriptor closes: on normal exit, on an
exception, and when the process is killed (even ``kill -9``), so a crashed run never leaves a stale lock.
The lock file itself is left in place (removing it would let two processes lock two different files).

The lock is advisory: readers (evaluation of a trained model, a browser over an archive) do not take it
and are never blocked. On NFS, Linux implements ``flock`` with byte-range locks that hold across
clients; other network file systems may not honour it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path
from typing import Iterator

LOCK_FILE = ".cocu.lock"


class FolderLocked(RuntimeError):
    """Another process holds the folder's lock; ``holder`` is the text it wrote (pid, host, purpose)."""

    def __init__(self, folder: Path, holder: str) -> None:
        self.folder, self.holder = folder, holder
        super().__init__(
            f"{folder} is in use by another cocu run ({holder or 'holder unknown'}); wait for it to end, "
            "stop it, or choose another output folder"
        )

    def __reduce__(self):
        return FolderLocked, (self.folder, self.holder)


def lock_holder(folder: str | os.PathLike) -> str:
    """The holder text written in ``folder``'s lock file ("pid 123 on host, purpose"), ``""`` if none; it
    describes the last holder, who may have finished (the lock itself says whether it is held)."""
    try:
        return (Path(folder) / LOCK_FILE).read_text("utf-8", errors="replace").strip()
    except FileNotFoundError:
        return ""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, purpose: str = "") -> Iterator[Path]:
    """Hold the exclusive lock on ``folder`` (created if missing) for the ``with`` block; yields the lock
    file's path. Raises :class:`FolderLocked` at once if another open file holds it, even in this process."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderLocked(root, lock_holder(root)) from None
        text = f"pid {os.getpid()} on {socket.gethostname()}" + (f", {purpose}" if purpose else "")
        os.ftruncate(fd, 0)
        os.pwrite(fd, (text + "\n").encode("utf-8"), 0)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock
