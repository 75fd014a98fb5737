"""The one tar scanner (cocu.data.tarscan): the curation reader and the training index find the same samples
and skips on damaged shards; truncated tars keep every complete sample; odd tar layouts and captions."""

from __future__ import annotations

import io
import os
import tarfile
import threading
from pathlib import Path

import pytest
from PIL import Image

from cocu.data import skips as R
from cocu.data.reader import iter_samples
from cocu.data.skips import SkipCounter
from cocu.data.tarscan import read_entries
from cocu.train.shards import build_shard_index


def _jpeg(color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), color).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _tar_bytes(members: list[tuple[str, bytes]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _good(key: str, caption: str = "a caption") -> list[tuple[str, bytes]]:
    return [(f"{key}.jpg", _jpeg()), (f"{key}.txt", caption.encode())]


def _offsets(raw: bytes) -> list[tarfile.TarInfo]:
    return list(tarfile.open(fileobj=io.BytesIO(raw)))


def _both(spec) -> tuple[list[str], dict[str, int], list[str], dict[str, int]]:
    """Keys and skip counts as the curation reader (no decoding) and as the training index see them."""
    reader_skips = SkipCounter()
    reader_keys = [s.key for s in iter_samples(spec, decode_images=False, skips=reader_skips)]
    index = build_shard_index(spec, progress=False, workers=1)
    return reader_keys, reader_skips.counts, index.keys.to_list(), index.skipped


def _cut_in_header(path: Path) -> Path:
    """a, b complete; the file ends 100 bytes into the header of c.txt (c.jpg was read)."""
    raw = _tar_bytes(_good("a") + _good("b") + _good("c"))
    header_of_c_txt = _offsets(raw)[5].offset
    path.write_bytes(raw[: header_of_c_txt + 100])
    return path


def _cut_after_complete_sample(path: Path) -> Path:
    """a, b complete and the file ends right after b.txt (no further member, no end-of-archive marker)."""
    raw = _tar_bytes(_good("a") + _good("b"))
    b_txt = _offsets(raw)[3]
    path.write_bytes(raw[: b_txt.offset_data + 512 * ((b_txt.size + 511) // 512)])
    return path


def test_reader_and_training_index_agree_on_damaged_shards(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "d-00000.tar").write_bytes(
        _tar_bytes(
            _good("ok1", "one")
            + [("dupe.jpg", _jpeg())]  # no caption: unusable, yet it claims the key "dupe"
            + [("nul.jpg", _jpeg()), ("nul.txt", b"\x00\x00\x00")]
            + [("bj.jpg", _jpeg()), ("bj.txt", b"bad json"), ("bj.json", b"{nope")]
            + [("cj.jpg", _jpeg()), ("cj.txt", b"curated"), ("cj.concepts.json", b"[1]")]
            + [("two.jpg", _jpeg()), ("two.png", b"png?"), ("two.txt", b"two images")]
            + [("odd.jpg", _jpeg()), ("odd.txt", b"odd"), ("odd.cls", b"3")]
            + [("lat.jpg", _jpeg()), ("lat.txt", "caf\u00e9".encode("latin-1"))]
            + [("noimg.txt", b"no image")]
        )
    )
    _cut_in_header(folder / "d-00001.tar")
    (folder / "d-00002.tar").write_bytes(_tar_bytes(_good("dupe", "good but later") + _good("ok2")))
    _cut_after_complete_sample(folder / "d-00003.tar")  # keys a, b again: duplicates of d-00001
    (folder / "d-00004.tar").write_bytes(b"not a tar at all" * 64)
    (folder / "d-00005.tar").write_bytes(b"")
    reader_keys, reader_counts, index_keys, index_counts = _both(str(folder))
    assert reader_keys == index_keys == ["ok1", "bj", "cj", "two", "odd", "a", "b", "ok2"]
    assert reader_counts == index_counts == {
        R.BAD_JSON: 2,
        R.CAPTION_NOT_UTF8: 1,
        R.CORRUPT_SHARD: 4,
        R.DUPLICATE_KEY: 3,
        R.EMPTY_CAPTION: 1,
        R.MISSING_CAPTION: 1,
        R.MISSING_IMAGE: 1,
        R.UNEXPECTED_MEMBER: 2,
    }


def test_tar_cut_inside_a_member_header_is_corrupt_shard_with_the_complete_samples_kept(tmp_path):
    shard = _cut_in_header(tmp_path / "cut.tar")
    reader_keys, reader_counts, index_keys, index_counts = _both(str(shard))
    assert reader_keys == index_keys == ["a", "b"]
    assert reader_counts == index_counts == {R.CORRUPT_SHARD: 1}  # c (image only) is lost with the shard's tail


def test_tar_cut_just_after_a_complete_sample_keeps_that_sample(tmp_path):
    shard = _cut_after_complete_sample(tmp_path / "cut.tar")
    reader_keys, reader_counts, index_keys, index_counts = _both(str(shard))
    assert reader_keys == index_keys == ["a", "b"]
    assert reader_counts == index_counts == {R.CORRUPT_SHARD: 1}
    index = build_shard_index(str(shard), progress=False, workers=1)
    assert index.captions.to_list() == ["a caption", "a caption"] and index.image_bytes(1) == _jpeg()


def test_parallel_index_equals_the_serial_index(tmp_path):
    for s in range(5):
        members = [m for i in range(4) for m in _good(f"s{s}-{i}", f"caption {s} {i}")]
        (tmp_path / f"p-{s:05d}.tar").write_bytes(_tar_bytes(members + _good("s0-0", "repeated key")))
    serial = build_shard_index(str(tmp_path), progress=False, workers=1)
    parallel = build_shard_index(str(tmp_path), progress=False, workers=2)
    assert serial.keys.to_list() == parallel.keys.to_list() and len(serial) == 20
    assert serial.captions.to_list() == parallel.captions.to_list()
    assert (serial.image_offset == parallel.image_offset).all() and (serial.key_hash == parallel.key_hash).all()
    assert serial.skipped == parallel.skipped == {R.DUPLICATE_KEY: 5}


@pytest.mark.parametrize(
    "fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT], ids=["pax", "gnu", "ustar"]
)
def test_long_member_names_of_every_tar_format_are_read(tmp_path, fmt):
    key = "deep/" * 12 + "0001" if fmt != tarfile.USTAR_FORMAT else "d/" * 60 + "0001"  # > 100 characters
    raw = _tar_bytes(_good(key, "long name"), fmt=fmt)
    (tmp_path / "long.tar").write_bytes(raw)
    entries, damage = read_entries(raw)
    assert damage == ""
    assert [(name, offset) for name, _, offset, _ in entries] == [
        (f"{key}.jpg", _offsets(raw)[0].offset_data),
        (f"{key}.txt", _offsets(raw)[1].offset_data),
    ]
    reader_keys, _, index_keys, _ = _both(str(tmp_path / "long.tar"))
    assert reader_keys == index_keys == [key]


def test_webp_images_in_tars_are_read(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (9, 5), (0, 90, 200)).save(buf, format="WEBP")
    (tmp_path / "w.tar").write_bytes(_tar_bytes([("w.webp", buf.getvalue()), ("w.txt", b"webp")]))
    skips = SkipCounter()
    (sample,) = list(iter_samples(str(tmp_path / "w.tar"), skips=skips))
    assert sample.image.size == (9, 5) and skips.total == 0


def test_caption_of_only_nul_bytes_is_empty(tmp_path):
    (tmp_path / "n.tar").write_bytes(_tar_bytes(_good("n", "\x00 \x00 \x00") + _good("k", "kept\x00 ok")))
    reader_keys, reader_counts, index_keys, index_counts = _both(str(tmp_path / "n.tar"))
    assert reader_keys == index_keys == ["k"]
    assert reader_counts == index_counts == {R.EMPTY_CAPTION: 1}


def test_captions_file_naming_a_fifo_skips_it_as_missing_image(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "good.jpg").write_bytes(_jpeg())
    (tmp_path / "caps.csv").write_text("image,caption\npipe.jpg,a pipe\ngood.jpg,a photo\n")
    skips = SkipCounter()
    found: list[str] = []
    reading = threading.Thread(
        target=lambda: found.extend(s.key for s in iter_samples(str(tmp_path / "caps.csv"), skips=skips)),
        daemon=True,  # a reader that opens the FIFO blocks forever; the test must fail, not hang
    )
    reading.start()
    reading.join(timeout=20)
    assert not reading.is_alive(), "reading a FIFO named by a captions file hangs"
    assert found == ["good"]
    assert skips.counts == {R.MISSING_IMAGE: 1}


def test_shards_are_read_without_mmap_where_the_file_system_has_none(tmp_path, monkeypatch):
    import mmap

    (tmp_path / "m.tar").write_bytes(_tar_bytes(_good("m1") + _good("m2")))

    def no_mmap(*args, **kwargs):
        raise OSError("mmap not supported")

    monkeypatch.setattr(mmap, "mmap", no_mmap)
    reader_keys, reader_counts, index_keys, index_counts = _both(str(tmp_path / "m.tar"))
    assert reader_keys == index_keys == ["m1", "m2"] and reader_counts == index_counts == {}
