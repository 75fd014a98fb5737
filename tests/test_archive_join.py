"""The training loader's archive join (cocu.train.archive_join): streamed by parts, checked on captions,
cached and memory-mapped in the training output folder."""

from __future__ import annotations

import numpy as np
import pytest

from cocu.cli import main
from cocu.curation.archive import read_archive
from cocu.train.archive_join import ARCHIVE_CAPTION_MISMATCH, CACHE_DIR, MISSING_ARCHIVE_ROW
from cocu.train.config import load_config
from cocu.train.data import prepare_data
from test_train_world import SHAPES, archive_row, make_world, sample, tiny_run_overrides, write_archive, write_shards


def _cfg(paths, out, *overrides):
    base = [
        f"output={out}",
        f"data.train={paths['train']}",
        f"data.archive={paths['archive']}",
        f"text.vocab={paths['vocab']}",
        "text.mode=cocu",
    ]
    return load_config(None, base + list(overrides))


def _rows(indices, caption=lambda i: sample(i)[1]["txt"].decode()):
    return [
        archive_row(sample(i)[0], [SHAPES[i % 3], "sky", f"c{i}"], [2.0, 1.0, 0.5], [0, 1, 2], caption(i))
        for i in indices
    ]


def test_join_over_several_parts_equals_the_archive_rows_by_key(tmp_path):
    paths = make_world(tmp_path, n=12, per_shard=5)
    part_dir = tmp_path / "run" / "curation"
    write_archive(part_dir / "archive-0.parquet", _rows([11, 3, 7, 0, 5]))
    write_archive(part_dir / "archive-1.parquet", _rows([2, 9, 1, 8, 10, 4, 6]))
    data = prepare_data(_cfg(paths, tmp_path / "out"), None, progress=False)
    expected = read_archive(paths["archive"])
    assert len(data) == 12 and data.skips == {}
    for i in range(len(data)):
        key = data.index.keys[int(data.rows[i])]
        row = data.texts.archive.row(i, key, "cap")
        assert (row.concepts, row.scores, row.clusters) == (
            expected[key].concepts,
            expected[key].scores,
            expected[key].clusters,
        )


def test_archive_from_another_world_with_overlapping_keys_stops_training(tmp_path, capsys):
    paths = make_world(tmp_path, n=16)
    write_archive(
        tmp_path / "run" / "curation" / "archive-0.parquet", _rows(range(16), caption=lambda i: f"another photo {i}")
    )
    with pytest.raises(ValueError, match="not curated from these shards: 16 of the 16"):
        prepare_data(_cfg(paths, tmp_path / "out"), None, progress=False)
    config = tmp_path / "cfg.yaml"
    config.write_text("{}\n")
    rc = main(["train", str(config), *tiny_run_overrides(paths, tmp_path / "run_out", 2)])
    assert rc == 2
    assert "was not curated from these shards" in capsys.readouterr().err


def test_a_few_caption_mismatches_are_counted_and_their_rows_not_used(tmp_path):
    write_shards(tmp_path / "shards", 200, per_shard=50)
    paths = {"train": tmp_path / "shards", "archive": tmp_path / "run", "vocab": tmp_path / "vocab.txt"}
    paths["vocab"].write_text("ball\nkite\nhouse\nsky\n")
    write_archive(
        tmp_path / "run" / "curation" / "archive-0.parquet",
        _rows(range(1, 200), caption=lambda i: "edited" if i == 7 else sample(i)[1]["txt"].decode()),
    )
    dropped = prepare_data(_cfg(paths, tmp_path / "out"), None, progress=False)
    assert dropped.skips == {ARCHIVE_CAPTION_MISMATCH: 1, MISSING_ARCHIVE_ROW: 1}
    kept_keys = [dropped.index.keys[int(r)] for r in dropped.rows]
    assert len(kept_keys) == 198 and "s0007" not in kept_keys and "s0000" not in kept_keys
    fallback = prepare_data(_cfg(paths, tmp_path / "out", "text.missing_archive=caption"), None, progress=False)
    assert len(fallback) == 200 and fallback.texts.archive.row(7, "s0007", "c") is None
    assert fallback.texts.archive.row(8, "s0008", "c").concepts == ["house", "sky", "c8"]


def test_join_is_cached_memory_mapped_and_rebuilt_when_the_archive_changes(tmp_path):
    paths = make_world(tmp_path, n=8)
    out = tmp_path / "out"
    out.mkdir()
    cfg = _cfg(paths, out)
    first = prepare_data(cfg, str(out / "data_index.npz"), progress=False)
    manifest = out / CACHE_DIR / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    assert isinstance(first.texts.archive.concept_id, np.memmap)
    again = prepare_data(cfg, str(out / "data_index.npz"), progress=False)
    assert manifest.stat().st_mtime_ns == stamp
    assert again.texts.archive.row(3, "s0003", "c") == first.texts.archive.row(3, "s0003", "c")
    write_archive(tmp_path / "run" / "curation" / "archive-0.parquet", _rows(range(8)))
    rebuilt = prepare_data(cfg, str(out / "data_index.npz"), progress=False)
    assert manifest.stat().st_mtime_ns != stamp
    assert rebuilt.texts.archive.row(3, "s0003", "c").concepts == ["ball", "sky", "c3"]
    assert sorted(p.name for p in (out / CACHE_DIR).iterdir()) == [
        "cluster.bin",
        "concept_id.bin",
        "count.npy",
        "manifest.json",
        "score.bin",
        "start.npy",
        "status.npy",
    ]
