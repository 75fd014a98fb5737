"""`cocu curate --write-shards`: the input samples written again as webdataset tars, each with a
``{key}.concepts.json`` member holding its archive row; every input member keeps its original name."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from cocu.curation.archive import ArchiveLookup
from cocu.data.reader import TAR_SUFFIX, iter_samples
from cocu.data.skips import SkipCounter
from cocu.data.tarscan import scan_tar
from cocu.data.writer import ShardWriter, check_key

CONCEPTS_MEMBER = "concepts.json"
NOT_CURATED = "not_curated"
"""A sample read from the data that has no archive row (rejected when embedding)."""


def _image_ext(data: bytes) -> str:
    return "png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "jpg"


def check_shard_keys(sources: list[str]) -> None:
    """Before any long work of ``--write-shards``: every key of the data must make a safe member name
    (a relative path without ``..``); tar headers are walked without reading member data."""
    skips = SkipCounter()
    for source in sources:
        if source.endswith(TAR_SUFFIX):
            keys = (scanned.key for scanned in scan_tar(source, skips, load=frozenset()))
        else:
            keys = (sample.key for sample in iter_samples(source, decode_images=False, skips=skips))
        for key in keys:
            try:
                check_key(key)
            except ValueError as err:
                raise ValueError(f"--write-shards cannot write sample {key!r} of {source}: {err}") from None


def write_curated_shards(data_spec, run: Path, out_dir: Path, samples_per_shard: int) -> dict[str, int]:
    """Write the input samples again with a ``{key}.concepts.json`` member (the archive row as JSON)."""
    rows = ArchiveLookup(run)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    skipped: Counter[str] = Counter()
    written = 0
    with ShardWriter(out_dir, prefix="shard", samples_per_shard=samples_per_shard) as writer:
        samples = iter_samples(data_spec, decode_images=False, skips=SkipCounter())
        for sample in tqdm(samples, desc="shards", unit="sample"):
            row = rows.get(sample.key)
            if row is None:
                skipped[NOT_CURATED] += 1
                continue
            image_ext = sample.image_ext or _image_ext(sample.image_bytes)  # a tar's own member names are kept
            members = {image_ext: sample.image_bytes, sample.caption_ext or "txt": sample.caption.encode("utf-8")}
            if sample.meta is not None:
                members["json"] = json.dumps(sample.meta, ensure_ascii=False).encode("utf-8")
            members[CONCEPTS_MEMBER] = row.to_json().encode("utf-8")
            writer.write(sample.key, members)
            written += 1
    return {"written": written, "shards": len(writer.paths), **{f"skipped_{k}": v for k, v in skipped.items()}}
