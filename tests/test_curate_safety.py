"""`cocu curate` / `cocu archive` never give a silent wrong result: content-checked reuse, a locked run
folder, shard member names kept, unsafe keys refused before any work, one clear line on a failed write."""

from __future__ import annotations

import errno
import io
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from cocu.cli import main
from cocu.curation import pipeline
from cocu.curation.archive import ArchiveLookup
from cocu.data.writer import ShardWriter
from cocu.utils.lock import folder_lock
from raw_tar import write_raw_tar

ENCODER = "random:clip-tiny"
WORDS = ["dog", "cat", "grass", "sky", "tree"]


def _image(rng: np.random.Generator, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, size=(16, 16, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def _shards(folder: Path, seed: int, n: int = 12) -> Path:
    """One shard of ``n`` samples whose captions depend on ``seed`` (same sizes for every seed)."""
    rng = np.random.default_rng(seed)
    with ShardWriter(folder, prefix="toy", samples_per_shard=n) as writer:
        for i in range(n):
            word = WORDS[(i + seed) % len(WORDS)]
            caption = f"a photo of a {word:<5} number {i:03d}"
            writer.write(f"s{i:03d}", {"jpg": _image(rng), "txt": caption.encode()})
    return folder


def _vocab(root: Path) -> Path:
    path = root / "vocab.txt"
    path.write_text("\n".join(WORDS) + "\n")
    return path


def _curate(data: Path, out: Path, vocab: Path, *extra: str) -> int:
    return main(["curate", str(data), "--encoder", ENCODER, "--out", str(out), "--vocab", str(vocab),
                 "--neighbors", "3", "--chunk-size", "8", "--workers", "0", *extra])


def test_same_size_shards_with_other_content_are_refused_naming_the_file(tmp_path, capsys):
    data, vocab, out = _shards(tmp_path / "data", seed=0), _vocab(tmp_path), tmp_path / "run"
    assert _curate(data, out, vocab) == 0
    shard = data / "toy-00000.tar"
    size = shard.stat().st_size
    shutil.rmtree(data)
    _shards(data, seed=1)
    assert shard.stat().st_size == size  # a replacement the old size-only check could not see
    capsys.readouterr()
    assert _curate(data, out, vocab) == 2
    err = capsys.readouterr().err
    assert f"input file {shard} changed" in err and "--overwrite" in err
    assert _curate(data, out, vocab, "--overwrite") == 0
    table = ArchiveLookup(out)
    assert table.get("s000").caption.startswith("a photo of a cat")  # seed 1's captions, not seed 0's


def test_a_touched_but_unchanged_shard_reuses_the_run(tmp_path, capsys):
    data, vocab, out = _shards(tmp_path / "data", seed=0), _vocab(tmp_path), tmp_path / "run"
    assert _curate(data, out, vocab) == 0
    archive = out / "curation" / "archive-0.parquet"
    before = archive.stat().st_mtime_ns
    os.utime(data / "toy-00000.tar", ns=(1, 1))
    assert _curate(data, out, vocab) == 0
    assert archive.stat().st_mtime_ns == before


def test_a_second_writer_into_a_locked_run_folder_gets_the_holders_pid(tmp_path, capsys):
    data, vocab, out = _shards(tmp_path / "data", seed=0), _vocab(tmp_path), tmp_path / "run"
    assert _curate(data, out, vocab) == 0
    archive = out / "curation" / "archive-0.parquet"
    before = archive.stat().st_mtime_ns
    with folder_lock(out, "cocu curate"):
        assert _curate(data, out, vocab, "--overwrite", "--neighbors", "2") == 2
        assert f"pid {os.getpid()}" in capsys.readouterr().err
        assert main(["archive", str(out), "--overwrite", "--neighbors", "2"]) == 2
        assert f"pid {os.getpid()}" in capsys.readouterr().err
        assert archive.stat().st_mtime_ns == before  # the holder's archive is untouched
    assert _curate(data, out, vocab, "--overwrite", "--neighbors", "2") == 0  # released: the next run goes ahead


def test_write_shards_keeps_the_original_member_names(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    with ShardWriter(data, prefix="toy", samples_per_shard=10) as writer:
        for i in range(6):
            fmt = "PNG" if i % 2 else "JPEG"  # a PNG stored under .jpg, as some scrapers do
            writer.write(f"s{i:03d}", {"jpg": _image(rng, fmt), "text": f"a dog number {i}".encode()})
    out = tmp_path / "run"
    assert _curate(data, out, _vocab(tmp_path), "--write-shards") == 0
    with tarfile.open(out / "shards" / "shard-00000.tar") as tar:
        names = set(tar.getnames())
    for i in range(6):
        assert {f"s{i:03d}.jpg", f"s{i:03d}.text", f"s{i:03d}.concepts.json"} <= names
    assert not any(n.endswith((".png", ".txt")) for n in names)


def test_write_shards_refuses_an_unsafe_key_before_any_embedding(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    write_raw_tar(data / "toy-00000.tar", [(key, {"jpg": _image(rng), "txt": b"a dog"})
                                           for key in ("s000", "../../x/s001", "s002")])
    out = tmp_path / "run"
    assert _curate(data, out, _vocab(tmp_path), "--write-shards") == 2
    assert "'../../x/s001'" in capsys.readouterr().err
    assert not (out / "emb").exists()


def test_a_full_disk_in_the_archive_stage_ends_with_one_clear_line(tmp_path, capsys, monkeypatch):
    data, vocab, out = _shards(tmp_path / "data", seed=0), _vocab(tmp_path), tmp_path / "run"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "curation" / "archive-0.parquet"))

    monkeypatch.setattr(pipeline, "write_part", full)
    assert _curate(data, out, vocab) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in err
    assert "cocu curate: error: cannot write " in errors[0]
    assert "archive-0.parquet" in errors[0] and "is full" in errors[0] and "rerun" in errors[0]
    monkeypatch.undo()
    assert _curate(data, out, vocab) == 0  # the rerun finishes; nothing partial was trusted


def test_stale_temporary_files_of_a_killed_run_are_removed_on_start(tmp_path):
    data, vocab, out = _shards(tmp_path / "data", seed=0), _vocab(tmp_path), tmp_path / "run"
    assert _curate(data, out, vocab) == 0
    stale = out / "curation" / ".archive-1.parquet.ab12cd_9.tmp"
    stale.write_bytes(b"")
    mine = out / "notes.tmp"
    mine.write_text("a user's file")
    assert _curate(data, out, vocab) == 0
    assert not stale.exists() and mine.read_text() == "a user's file"
    assert {p.suffix for p in (out / "curation").iterdir()} == {".parquet"}
