"""`cocu curate` / `cocu archive` end to end: outputs, summary, rejections, resume, option guard, bad input."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cocu.cli import main
from cocu.curation.archive import ArchiveLookup, read_archive
from cocu.data.writer import ShardWriter

WORDS = ["dog", "cat", "grass", "sky", "tree", "car", "road", "boat", "water", "bird"]
ENCODER = "random:clip-tiny"


def _jpeg(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, size=(16, 16, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _make_data(root: Path, n: int = 24) -> tuple[Path, Path, set[str]]:
    """Two shards of ``n`` good samples (json ``concepts`` as ground truth) plus 3 bad ones; a vocab file."""
    rng = np.random.default_rng(0)
    data = root / "data"
    good: set[str] = set()
    with ShardWriter(data, prefix="toy", samples_per_shard=(n + 3) // 2 + 1) as writer:
        for i in range(n):
            key = f"s{i:03d}"
            said = [WORDS[i % 5], WORDS[5 + (i * 3 + 1) % 5]]
            true = said + [WORDS[(i + 2) % 5], "unicorn"]
            meta = {"concepts": {c: 0.2 for c in true}, "caption_concepts": said}
            caption = f"a photo of a {said[0]} and a {said[1]}"
            writer.write(key, {"jpg": _jpeg(rng), "txt": caption.encode(), "json": json.dumps(meta).encode()})
            good.add(key)
        writer.write("bad000", {"jpg": b"not a jpeg", "txt": b"a broken dog"})
        writer.write("bad001", {"jpg": _jpeg(rng)})
        writer.write("bad002", {"jpg": _jpeg(rng), "txt": b"   "})
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(WORDS + ["unused thing"]) + "\n")
    return data, vocab, good


def _curate(data: Path, vocab: Path, out: Path, *extra: str) -> int:
    return main(["curate", str(data), "--encoder", ENCODER, "--out", str(out), "--vocab", str(vocab),
                 "--neighbors", "4", "--chunk-size", "10", *extra])


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("curate")
    data, vocab, good = _make_data(root)
    out = root / "run"
    assert _curate(data, vocab, out) == 0
    return data, vocab, good, out


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, copy_function=shutil.copy2)
    return dst


def _mtimes(run: Path, *names: str) -> dict[str, int]:
    out = {}
    for name in names:
        for path in sorted((run / name).rglob("*")) if (run / name).is_dir() else [run / name]:
            if path.is_file():
                out[str(path.relative_to(run))] = path.stat().st_mtime_ns
    return out


def test_every_input_sample_is_in_the_archive_or_rejected_with_a_reason(base_run, capsys):
    data, vocab, good, out = base_run
    summary = json.loads((out / "summary.json").read_text())
    rows = read_archive(out)
    assert set(rows) == good
    assert summary["samples_in"] == len(good) + 3
    assert summary["samples_written"] == len(good)
    assert summary["rejected"] == {"corrupt_image": 1, "missing_caption": 1, "empty_caption": 1}
    rejected = pq.read_table(out / "emb" / "rejected.parquet").column("key").to_pylist()
    assert sorted(rejected) == ["bad000", "bad001", "bad002"]


def test_archive_rows_hold_own_concepts_neighbors_and_sorted_scored_clusters(base_run):
    data, vocab, good, out = base_run
    rows = read_archive(out)
    parts = sorted((out / "curation").glob("archive-*.parquet"))
    assert [p.name for p in parts] == ["archive-0.parquet", "archive-1.parquet", "archive-2.parquet"]
    for key, row in rows.items():
        i = int(key[1:])
        assert row.caption_concepts == [WORDS[i % 5], WORDS[5 + (i * 3 + 1) % 5]]
        assert len(row.neighbors) == 4 and key not in row.neighbors and set(row.neighbors) <= good
        expected = set(row.caption_concepts)
        for nb in row.neighbors:
            expected |= set(rows[nb].caption_concepts)
        assert set(row.concepts) == expected and len(row.concepts) == len(expected)
        assert row.scores == sorted(row.scores, reverse=True)
        assert len(row.clusters) == len(row.concepts)
        assert set(row.clusters) == set(range(min(3, len(row.concepts))))


def test_archive_lookup_returns_the_rows_of_read_archive(base_run):
    rows = read_archive(base_run[3])
    lookup = ArchiveLookup(base_run[3])
    assert len(lookup) == len(rows)
    for key in sorted(rows, reverse=True):
        assert lookup.get(key) == rows[key]
    assert lookup.get("missing") is None


def test_summary_has_recall_precision_and_options(base_run):
    data, vocab, good, out = base_run
    summary = json.loads((out / "summary.json").read_text())
    for name in ("caption", "archive", "topL", "sampled"):
        for what in ("recall", "precision"):
            assert 0.0 <= summary[f"{name}_{what}"] <= 1.0
    # Each sample has 4 true names, one ("unicorn") not in the vocabulary; the caption names 2 of them.
    assert summary["caption_recall"] == pytest.approx(2 / 4)
    assert summary["caption_precision"] == pytest.approx(1.0)
    assert summary["archive_recall"] >= summary["caption_recall"]
    assert summary["mean_caption_concepts"] == pytest.approx(2.0)
    assert summary["options"]["ranking"] == "t2v" and summary["options"]["neighbors"] == 4
    assert summary["options"]["encoder"] == ENCODER
    assert summary["neighbor_search"] == {
        **summary["neighbor_search"], "method": "exact self-join", "cached": False, "parts": [0, 1, 2]
    }


def test_rerun_after_a_kill_redoes_only_the_missing_part(base_run, tmp_path):
    data, vocab, good, base = base_run
    out = _copy_run(base, tmp_path / "run")
    before = _mtimes(out, "emb", "vocab", "index", "curation/archive-0.parquet", "curation/archive-2.parquet")
    (out / "curation" / "archive-1.parquet").unlink()
    assert _curate(data, vocab, out) == 0
    assert (out / "curation" / "archive-1.parquet").is_file()
    assert _mtimes(out, "emb", "vocab", "index", "curation/archive-0.parquet", "curation/archive-2.parquet") == before
    assert read_archive(out).keys() == good
    # one part of three left: the first run's self-join is reused, not searched again
    searched = json.loads((out / "cache" / "neighbor_search.json").read_text())
    assert searched["method"] == "exact self-join" and searched["cached"] is True and searched["parts"] == [1]
    assert read_archive(out) == read_archive(base)


def test_rerun_without_the_kept_join_searches_the_index_for_the_missing_part(base_run, tmp_path):
    data, vocab, good, base = base_run
    out = _copy_run(base, tmp_path / "run")
    (out / "curation" / "archive-1.parquet").unlink()
    (out / "cache" / "self_join.npy").unlink()
    assert _curate(data, vocab, out) == 0
    # one part of three left: searching the index for it is cheaper than joining every row again
    searched = json.loads((out / "cache" / "neighbor_search.json").read_text())
    assert searched == {"method": "index search", "parts": [1]}
    assert read_archive(out) == read_archive(base)


def test_changed_option_is_refused_then_overwrite_redoes_only_affected_stages(base_run, tmp_path, capsys):
    data, vocab, good, base = base_run
    out = _copy_run(base, tmp_path / "run")
    upstream = _mtimes(out, "emb", "vocab", "index")
    capsys.readouterr()
    assert _curate(data, vocab, out, "--ranking", "naive") == 2
    err = capsys.readouterr().err
    assert "options.json" in err and "--overwrite" in err and "ranking" in err
    assert _curate(data, vocab, out, "--ranking", "naive", "--overwrite") == 0
    assert _mtimes(out, "emb", "vocab", "index") == upstream
    summary = json.loads((out / "summary.json").read_text())
    assert summary["options"]["ranking"] == "naive"
    row = next(iter(read_archive(out).values()))
    emb = np.load(out / "emb" / "img_emb" / "img_emb_00000.npy")
    assert max(row.scores) <= 1.0 + 1e-6 and emb.shape[0] == len(good)


def test_embeddings_disagreeing_with_their_metadata_are_refused_naming_the_file(base_run, tmp_path, capsys):
    data, vocab, good, base = base_run
    out = _copy_run(base, tmp_path / "run")
    path = out / "emb" / "img_emb" / "img_emb_00000.npy"
    np.save(path, np.load(path)[:-2])
    capsys.readouterr()
    assert _curate(data, vocab, out) == 2
    err = capsys.readouterr().err
    assert "img_emb_00000.npy" in err and "rows" in err


def test_index_of_another_dimension_is_refused_before_curation(base_run, tmp_path, capsys):
    import faiss
    data, vocab, good, base = base_run
    out = _copy_run(base, tmp_path / "run")
    shutil.rmtree(out / "curation")
    other = faiss.IndexFlatIP(7)
    other.add(np.ones((len(good), 7), dtype=np.float32))
    faiss.write_index(other, str(out / "index" / "image.index"))
    capsys.readouterr()
    assert _curate(data, vocab, out) == 2
    err = capsys.readouterr().err
    assert "image.index" in err and "dimension" in err
    assert not list((out / "curation").glob("archive-*.parquet"))


def test_foreign_folder_without_options_is_refused(base_run, tmp_path, capsys):
    data, vocab, good, base = base_run
    out = _copy_run(base, tmp_path / "run")
    (out / "options.json").unlink()
    capsys.readouterr()
    assert _curate(data, vocab, out) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_write_shards_adds_a_concepts_json_member_per_sample(base_run, tmp_path):
    data, vocab, good, base = base_run
    out = _copy_run(base, tmp_path / "run")
    curation = _mtimes(out, "curation")
    assert _curate(data, vocab, out, "--write-shards", "--samples-per-shard", "100") == 0
    assert _mtimes(out, "curation") == curation
    rows = read_archive(out)
    shards = sorted((out / "shards").glob("shard-*.tar"))
    assert len(shards) == 1
    with tarfile.open(shards[0]) as tar:
        names = tar.getnames()
        for key in good:
            assert {f"{key}.jpg", f"{key}.txt", f"{key}.json", f"{key}.concepts.json"} <= set(names)
        member = json.loads(tar.extractfile("s005.concepts.json").read())
    assert member["concepts"] == rows["s005"].concepts
    assert member["clusters"] == rows["s005"].clusters
    summary = json.loads((out / "summary.json").read_text())
    assert summary["shards"]["written"] == len(good)
    assert summary["shards"]["skipped_not_curated"] == 1  # the corrupt image: rejected when embedding


def test_lang_expansion_searches_a_caption_index(tmp_path):
    data, vocab, good = _make_data(tmp_path, n=12)
    out = tmp_path / "run"
    assert _curate(data, vocab, out, "--expansion", "lang", "--sampling", "naive") == 0
    assert (out / "index" / "caption.index").is_file()
    rows = read_archive(out)
    assert set(rows) == good
    for row in rows.values():
        assert row.clusters[: min(3, len(row.concepts))] == list(range(min(3, len(row.concepts))))
        assert all(c == -1 for c in row.clusters[3:])


def test_archive_command_curates_stage_outputs_made_elsewhere(base_run, tmp_path, capsys):
    data, vocab, good, base = base_run
    out = tmp_path / "run"
    out.mkdir()
    for name in ("emb", "vocab", "index"):
        shutil.copytree(base / name, out / name)
    assert main(["archive", str(out), "--neighbors", "4", "--chunk-size", "10"]) == 0
    assert "samples written" in capsys.readouterr().out
    ours, theirs = read_archive(out), read_archive(base)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key].concepts == theirs[key].concepts
        assert ours[key].scores == pytest.approx(theirs[key].scores)


def test_synthetic_world_curates_through_the_cli_with_recall_figures(tmp_path, capsys):
    world = tmp_path / "world"
    assert main(["synth", str(world), "--teacher", "8", "--pretrain", "30", "--val", "2", "--classify", "1",
                 "--size", "32", "--samples-per-shard", "15"]) == 0
    out = tmp_path / "run"
    assert main(["curate", str(world / "pretrain"), "--encoder", ENCODER, "--out", str(out),
                 "--vocab", str(world / "vocab.txt")]) == 0
    printed = capsys.readouterr().out
    assert "recall" in printed and "rejected samples" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples_written"] == 30 and summary["truth_samples"] == 30
    for key in ("caption_recall", "caption_precision", "archive_recall", "archive_precision", "topL_recall",
                "topL_precision", "sampled_recall", "sampled_precision"):
        assert summary[key] is not None
    assert summary["archive_recall"] >= summary["caption_recall"]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_split_embedding_and_curation_and_match_one_process(base_run, tmp_path):
    import os
    import subprocess
    import sys

    data, vocab, good, base = base_run
    out = tmp_path / "run"
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    cmd = [sys.executable, "-m", "cocu", "curate", str(data), "--encoder", ENCODER, "--out", str(out),
           "--vocab", str(vocab), "--neighbors", "4", "--chunk-size", "10"]
    procs = [subprocess.Popen(cmd, env={**env, "RANK": str(r)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r in range(2)]
    outputs = [p.communicate(timeout=170)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert (out / "emb" / "rank-0" / "img_emb").is_dir() and (out / "emb" / "rank-1" / "img_emb").is_dir()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples_written"] == len(good) and summary["options"]["world_size"] == 2
    ours, single = read_archive(out), read_archive(base)
    assert ours.keys() == single.keys()
    for key in ours:
        assert ours[key].concepts == single[key].concepts
        # each rank embeds its shards in other batches than one process does: the model's float32 rounding
        # can differ in the last bit (CPU kernels round by batch shape), so scores agree to float32 precision
        assert ours[key].scores == pytest.approx(single[key].scores, rel=1e-5, abs=1e-5)


def test_repeated_key_in_the_embeddings_is_rejected_once_not_curated_twice(base_run, tmp_path):
    import pyarrow as pa
    data, vocab, good, base = base_run
    out = tmp_path / "run"
    out.mkdir()
    for name in ("emb", "vocab", "index"):
        shutil.copytree(base / name, out / name)
    meta = out / "emb" / "metadata" / "metadata_00000.parquet"
    table = pq.read_table(meta)
    keys = table.column("image_path").to_pylist()
    keys[5] = keys[3]
    pq.write_table(table.set_column(0, "image_path", pa.array(keys)), meta)
    assert main(["archive", str(out), "--neighbors", "4", "--chunk-size", "10"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rejected"]["duplicate_key"] == 1
    assert summary["samples_in"] == len(good) + 3 and summary["samples_written"] == len(good) - 1
    parts = sorted((out / "curation").glob("archive-*.parquet"))
    written = [k for p in parts for k in pq.read_table(p, columns=["key"]).column("key").to_pylist()]
    assert len(written) == len(set(written)) == len(good) - 1
