"""Cached demo stages: each finished stage leaves a done-marker, so a rerun skips it.

A marker (``DIR/stages/<name>.json``) records the stage's fingerprint (a hash of the settings it used
and of the fingerprints of the stages it read from), how long it took and what it returned. A stage
is skipped when its marker exists, its fingerprint matches and all its outputs are present; otherwise
its outputs are removed and it runs again (a changed budget never reuses a stale model). ``force``
reruns every stage. ``collect_only`` runs no heavy stage (world, training, curation): one not done
raises :class:`StageNotRun`, so that a caller can report a partly finished run without finishing it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from cocu.utils.atomic import atomic_write_json

logger = logging.getLogger(__name__)

MARKER_DIR = "stages"


def fingerprint(payload: Any) -> str:
    """A short stable hash of a JSON-able payload (keys sorted)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass
class StageRecord:
    """What one stage did: its wall time (of the run that produced the outputs) and its returned info."""

    name: str
    fingerprint: str
    seconds: float
    cached: bool
    info: dict[str, Any]

    def timing(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 3), "cached": self.cached}


class StageNotRun(RuntimeError):
    """A heavy stage that has not run (or whose inputs changed) was asked for under ``collect_only``."""

    def __init__(self, name: str) -> None:
        super().__init__(f"stage {name} has not run (collect-only: nothing is trained)")
        self.name = name


class StageRunner:
    """Runs named stages under ``out_dir`` with done-markers and collects their timings."""

    def __init__(self, out_dir: str | Path, force: bool = False, collect_only: bool = False) -> None:
        self.out_dir = Path(out_dir)
        self.force = force and not collect_only
        self.collect_only = collect_only
        self.records: dict[str, StageRecord] = {}

    def marker_path(self, name: str) -> Path:
        return self.out_dir / MARKER_DIR / f"{name}.json"

    def _cached(self, name: str, key: str, outputs: Sequence[Path]) -> StageRecord | None:
        path = self.marker_path(name)
        if self.force or not path.is_file():
            return None
        try:
            marker = json.loads(path.read_text("utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            logger.warning("stage %s: unreadable marker %s (%s); running it again", name, path, err)
            return None
        if marker.get("fingerprint") != key:
            logger.info("stage %s: settings changed since the last run; running it again", name)
            return None
        missing = [str(p) for p in outputs if not p.exists()]
        if missing:
            logger.info("stage %s: outputs missing (%s); running it again", name, ", ".join(missing))
            return None
        return StageRecord(name, key, float(marker.get("seconds", 0.0)), True, dict(marker.get("info") or {}))

    def run(
        self,
        name: str,
        payload: Any,
        fn: Callable[[], dict[str, Any] | None],
        outputs: Sequence[Path] = (),
        heavy: bool = False,
    ) -> StageRecord:
        """Run ``fn`` unless a matching done-marker says it already ran; ``outputs`` are cleared before a run.

        ``payload`` is everything the stage's result depends on (settings and upstream fingerprints).
        ``heavy``: the stage makes data or trains (under ``collect_only`` it raises :class:`StageNotRun`
        instead of running).
        """
        key = fingerprint(payload)
        record = self._cached(name, key, outputs)
        if record is not None:
            logger.info("stage %s: done already (%.1f s when it ran), skipped", name, record.seconds)
            self.records[name] = record
            return record
        if heavy and self.collect_only:
            raise StageNotRun(name)
        self.marker_path(name).unlink(missing_ok=True)
        for path in outputs:
            _remove(path)
        logger.info("stage %s: running", name)
        start = time.perf_counter()
        info = fn() or {}
        seconds = time.perf_counter() - start
        atomic_write_json(
            self.marker_path(name),
            {"name": name, "fingerprint": key, "seconds": seconds, "finished": time.time(), "info": info},
        )
        logger.info("stage %s: finished in %.1f s", name, seconds)
        record = StageRecord(name, key, seconds, False, info)
        self.records[name] = record
        return record

    def timings(self) -> dict[str, dict[str, Any]]:
        return {name: rec.timing() for name, rec in self.records.items()}


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
