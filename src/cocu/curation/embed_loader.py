"""The input side of ``cocu embed``: decode, EXIF-fix and preprocess samples in DataLoader worker processes.

:class:`SampleBatches` is a ``torch.utils.data.IterableDataset`` that cuts the validated sample stream of
:func:`cocu.data.reader.iter_samples` into *units* of ``batch_size`` samples (the samples still to embed;
samples whose keys are already embedded are counted as kept and their captions checked). Each worker reads
the whole stream (reading tars is cheap next to decoding) but decodes only the units ``u`` with
``u % num_workers == worker_id``; the DataLoader collects the workers' outputs round-robin, so units
arrive in stream order and the rows, rejections and part files are identical to a serial run
(``num_workers=0``, where the main process runs the same code). Every skip the reader records while a unit
is assembled, and every image that fails to decode, travels with that unit (owner only), so each is
reported exactly once and in stream order.
"""

from __future__ import annotations

import io
import logging
import os
import re
from typing import Any, Iterator, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from cocu.data import skips as reasons
from cocu.data.reader import Sample, iter_samples
from cocu.data.skips import SkipCounter
from cocu.data.transforms import Preprocess, exif_to_rgb

logger = logging.getLogger(__name__)

MAX_DEFAULT_WORKERS = 8
_OBJECT_ADDRESS = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


def default_workers() -> int:
    """This process's cores (shared by the ranks of one machine under torchrun) minus one, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ranks_here = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(MAX_DEFAULT_WORKERS, cores // ranks_here - 1))


class _SilentRecords(SkipCounter):
    """Counts and keeps skips without logging them: the main process logs each one when its unit arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict[str, str]] = []

    def add(self, reason: str, key: str, source: str, detail: str = "") -> None:
        self._counts[reason] += 1
        self.records.append({"reason": reason, "key": key, "source": source, "detail": detail})

    def take(self) -> list[dict[str, str]]:
        records, self.records = self.records, []
        return records


def _true_concepts(meta: dict | None) -> list[str] | None:
    if not meta or "concepts" not in meta:
        return None
    value = meta["concepts"]
    if isinstance(value, (dict, list, tuple)):
        return [str(name) for name in value]
    return None


SOURCE_COLUMNS: dict[str, str] = {
    "url": "string",
    "width": "int64",
    "height": "int64",
    "original_width": "int64",
    "original_height": "int64",
    "sha256": "string",
}
"""img2dataset's per-sample fields that the metadata parquet keeps (with these Arrow types) when a sample's json
member (or a captions file's extra columns) has them, as clip-retrieval does: retrieval front-ends read ``url``."""


def _source_columns(meta: dict | None) -> dict[str, Any]:
    """The :data:`SOURCE_COLUMNS` values of one sample; a value of another type is left out (null)."""
    if not isinstance(meta, dict):
        return {}
    out: dict[str, Any] = {}
    for name, kind in SOURCE_COLUMNS.items():
        value = meta.get(name)
        if kind == "string" and isinstance(value, str):
            out[name] = value
        elif kind == "int64" and isinstance(value, int) and not isinstance(value, bool):
            out[name] = value
    return out


class SampleBatches(IterableDataset):
    """Units of preprocessed samples; each item is a dict:

    - ``pixels``: ``[b,3,S,S]`` float32, the decodable images of the unit;
    - ``rows``: ``b`` dicts ``key``, ``caption``, ``true_concepts``, ``source_columns`` (row-aligned with
      ``pixels``);
    - ``records``: the skips recorded while the unit was read (``reason``, ``key``, ``source``, ``detail``);
    - ``kept``: samples of the unit's stretch whose keys are in ``done`` (not decoded again);
    - ``mismatches``: kept samples whose caption differs from ``done``'s (``None`` there: not checked) (``key``, ``source``, ``stored``,
      ``caption``): the folder was made from other data.
    """

    def __init__(
        self,
        data_spec: str | os.PathLike | Sequence[str | os.PathLike],
        preprocess: Preprocess,
        batch_size: int,
        done: dict[str, str | None],
    ) -> None:
        super().__init__()
        self.data_spec, self.preprocess, self.batch_size, self.done = data_spec, preprocess, batch_size, done

    def _unit(self, samples: list[Sample], records: _SilentRecords, kept: int, mismatches: list) -> dict[str, Any]:
        pixels: list[torch.Tensor] = []
        rows: list[dict[str, Any]] = []
        for sample in samples:
            try:
                img = Image.open(io.BytesIO(sample.image_bytes))
                img.load()
                tensor = self.preprocess(exif_to_rgb(img))  # [3,S,S]
            except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, bombs)
                detail = _OBJECT_ADDRESS.sub("the image bytes", f"{type(exc).__name__}: {exc}")  # same in every run
                records.add(reasons.CORRUPT_IMAGE, sample.key, sample.source, detail)
                continue
            pixels.append(tensor)
            rows.append({
                "key": sample.key,
                "caption": sample.caption,
                "true_concepts": _true_concepts(sample.meta),
                "source_columns": _source_columns(sample.meta),
            })
        size = self.preprocess.size
        return {
            "pixels": torch.stack(pixels) if pixels else torch.empty((0, 3, size, size)),  # [b,3,S,S]
            "rows": rows,
            "records": records.take(),
            "kept": kept,
            "mismatches": mismatches,
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        records = _SilentRecords()
        samples: list[Sample] = []
        kept, mismatches, unit = 0, [], 0
        for sample in iter_samples(self.data_spec, decode_images=False, skips=records):
            if sample.key in self.done:
                kept += 1
                stored = self.done[sample.key]
                if stored is not None and stored != sample.caption and unit % workers == worker:
                    mismatches.append(
                        {"key": sample.key, "source": sample.source, "stored": stored, "caption": sample.caption}
                    )
                continue
            samples.append(sample)
            if len(samples) < self.batch_size:
                continue
            if unit % workers == worker:
                yield self._unit(samples, records, kept, mismatches)
            records.take()
            samples, kept, mismatches, unit = [], 0, [], unit + 1
        if (samples or kept or records.records) and unit % workers == worker:
            yield self._unit(samples, records, kept, mismatches)


def _quiet_worker(worker_id: int) -> None:
    """Only worker 0 logs the reader's end-of-read summary (every worker reads the whole stream)."""
    if worker_id > 0:
        logging.getLogger("cocu.data.reader").setLevel(logging.ERROR)


def batch_loader(dataset: SampleBatches, workers: int, pin_memory: bool) -> DataLoader:
    """A DataLoader over ``dataset``'s units: ``workers`` processes (0: in this process), in stream order."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
        worker_init_fn=_quiet_worker if workers else None,
        prefetch_factor=2 if workers else None,
    )
