"""Run folder bookkeeping for curation: options + stage ids, stage completion, data-parallel ranks.

``RUN/options.json`` holds the options of the run and one id (a hash) per stage; a stage's id covers the
options it depends on and the ids of the stages before it, so a changed option changes exactly the ids of
the stages it affects. A stage is finished when ``RUN/state/{stage}.json`` holds its current id and its
outputs exist. Reusing a folder with other options is refused (naming ``options.json`` and the options that
differ) unless ``overwrite`` is set, in which case the stages whose ids changed are deleted and redone.

Data-parallel runs (``torchrun``: env ``RANK``/``WORLD_SIZE``) synchronise with a gloo process group.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

from cocu.utils.atomic import atomic_write_json
from cocu.utils.lock import FolderLocked, folder_lock

logger = logging.getLogger(__name__)

OPTIONS_FILE = "options.json"
STATE_DIR = "state"
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "emb": ("emb",),
    "vocab": ("vocab",),
    "index": ("index",),
    "curation": ("curation", "cache", "summary.json"),
    "shards": ("shards",),
}


class RunMismatchError(ValueError):
    """The output folder holds a run made with other options."""


def stable_hash(obj: Any) -> str:
    """A short hash of a JSON-serialisable object (key order independent)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    """sha256 (16 hex digits) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def folder_fingerprint(folder: str | Path) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of every file under ``folder``, sorted: changes when any file does."""
    root = Path(folder)
    if not root.is_dir():
        return []
    return sorted(
        (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()
    )


class RunState:
    """Options and stage ids of one run folder."""

    def __init__(
        self,
        run_dir: str | Path,
        options: dict[str, Any],
        stage_ids: dict[str, str],
        sources: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.options = options
        self.stage_ids = stage_ids
        self.sources = sources or {}

    @property
    def options_path(self) -> Path:
        return self.run_dir / OPTIONS_FILE

    def _state_path(self, stage: str) -> Path:
        return self.run_dir / STATE_DIR / f"{stage}.json"

    def _previous(self) -> dict[str, Any] | None:
        if not self.options_path.is_file():
            return None
        try:
            return json.loads(self.options_path.read_text("utf-8"))
        except (OSError, ValueError) as err:
            raise RunMismatchError(
                f"{self.options_path} is unreadable ({err}); use a new --out or pass --overwrite"
            ) from err

    def changed_stages(self, inputs: tuple[str, ...] = ()) -> list[str]:
        """Stages whose id differs from the one recorded in ``options.json`` (stages absent there are new).

        Raises :class:`RunMismatchError` when the folder holds outputs of stages other than ``inputs`` (made
        elsewhere and used as they are) but no ``options.json``.
        """
        previous = self._previous()
        if previous is None:
            foreign = [
                name
                for stage, names in STAGE_OUTPUTS.items()
                if stage not in inputs
                for name in names
                if (self.run_dir / name).exists()
            ]
            if foreign:
                raise RunMismatchError(
                    f"{self.run_dir} holds {', '.join(foreign)} but no {OPTIONS_FILE}, so they were not made by "
                    "this command with known options; use a new --out or pass --overwrite to redo them"
                )
            return []
        old_ids = previous.get("stages", {})
        return [s for s, i in self.stage_ids.items() if s in old_ids and old_ids[s] != i]

    def describe_difference(self) -> str:
        previous = self._previous() or {}
        old = previous.get("options", {})
        keys = sorted(set(old) | set(self.options))
        diffs = [f"{k}: {old.get(k)!r} -> {self.options.get(k)!r}" for k in keys if old.get(k) != self.options.get(k)]
        old_sources = previous.get("sources", {})
        diffs += [
            f"input file {path} changed (size or content differs from the data this run was made from)"
            for path, identity in self.sources.items()
            if path in old_sources and old_sources[path] != identity
        ]
        return "; ".join(diffs) if diffs else "the input data or an upstream stage changed"

    def prepare(self, overwrite: bool, inputs: tuple[str, ...] = ()) -> list[str]:
        """Check the folder against the options; returns the stages to redo (to pass to :meth:`reset`).

        Without ``overwrite`` a mismatch raises :class:`RunMismatchError` naming ``options.json``, the options
        that differ and the fix. ``inputs``: stages whose outputs were made elsewhere and are never deleted.
        """
        if overwrite and not self.options_path.is_file():
            return [
                s
                for s, names in STAGE_OUTPUTS.items()
                if s not in inputs and any((self.run_dir / n).exists() for n in names)
            ]
        changed = self.changed_stages(inputs)
        if changed and not overwrite:
            raise RunMismatchError(
                f"{self.options_path} records a run made with other options ({self.describe_difference()}); "
                f"stage(s) {', '.join(changed)} would be stale. Use a new --out or pass --overwrite to redo "
                "them (finished stages that the change does not affect are kept)"
            )
        return changed

    def reset(self, stages: list[str]) -> None:
        """Delete the outputs and state of ``stages`` and record the current options."""
        for stage in stages:
            logger.warning("overwrite: deleting stage %s of %s", stage, self.run_dir)
            for name in STAGE_OUTPUTS[stage]:
                target = self.run_dir / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
            for state_file in (self.run_dir / STATE_DIR).glob(f"{stage}*.json"):
                state_file.unlink()
        previous = self._previous() or {}
        stages = {**previous.get("stages", {}), **self.stage_ids}
        record = {"options": self.options, "stages": stages, "hash": stable_hash(stages)}
        if self.sources:
            record["sources"] = self.sources
        atomic_write_json(self.options_path, record)

    def is_done(self, stage: str, outputs: list[Path], part: str = "") -> bool:
        """Whether ``stage`` (or one rank's ``part`` of it) finished with its current id and its outputs exist."""
        path = self._state_path(stage + part)
        if not path.is_file() or not all(p.exists() for p in outputs):
            return False
        try:
            return json.loads(path.read_text("utf-8")).get("id") == self.stage_ids[stage]
        except (OSError, ValueError):
            return False

    def info(self, stage: str, part: str = "") -> dict[str, Any]:
        path = self._state_path(stage + part)
        return json.loads(path.read_text("utf-8")).get("info", {}) if path.is_file() else {}

    def mark_done(self, stage: str, info: dict[str, Any], part: str = "") -> None:
        atomic_write_json(self._state_path(stage + part), {"id": self.stage_ids[stage], "info": info})


@contextlib.contextmanager
def run_lock(run_dir: Path, ranks: Ranks, purpose: str) -> Iterator[None]:
    """Hold ``run_dir``'s folder lock (:mod:`cocu.utils.lock`) for the ``with`` block. Rank 0 takes it for
    the whole job (a second writer into the folder, from this machine or another, gets
    :class:`~cocu.utils.lock.FolderLocked` naming the holder's pid); every rank raises if it is held."""
    with contextlib.ExitStack() as stack:
        error: FolderLocked | None = None
        if ranks.main:
            try:
                stack.enter_context(folder_lock(run_dir, purpose))
            except FolderLocked as err:
                error = err
        error = ranks.broadcast(error)
        if error is not None:
            raise error
        yield


@dataclass
class Ranks:
    """This process's place in a data-parallel run (``RANK``/``WORLD_SIZE``; 0/1 when not set)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls) -> Ranks:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"bad RANK={rank} / WORLD_SIZE={world}")
        if world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("gloo", timeout=timedelta(hours=12))
        return cls(rank, world)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (picklable objects)."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def share(self, items: list[Any]) -> list[Any]:
        """The contiguous slice of ``items`` that this rank handles."""
        size, extra = divmod(len(items), self.world)
        start = self.rank * size + min(self.rank, extra)
        return items[start : start + size + (1 if self.rank < extra else 0)]
