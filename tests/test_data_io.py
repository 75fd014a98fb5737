"""cocu.data reader / writer / skip counting on small hand-made shards and captions files."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from cocu.data import skips as R
from cocu.data.reader import expand_braces, iter_samples, resolve_sources
from cocu.data.skips import SkipCounter
from cocu.data.writer import ShardWriter


def _jpeg(color=(200, 30, 30), size=(8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _png(color=(10, 200, 30), size=(5, 7), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def _tar_bytes(members: list[tuple[str, bytes | None]]) -> bytes:
    """A tar with the given members in order; ``None`` data means a directory entry."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _write_tar(path: Path, members: list[tuple[str, bytes | None]]) -> Path:
    path.write_bytes(_tar_bytes(members))
    return path


def _good(key: str, caption: str = "a caption") -> list[tuple[str, bytes | None]]:
    return [(f"{key}.jpg", _jpeg()), (f"{key}.txt", caption.encode())]


def _read(spec, **kwargs) -> tuple[list, SkipCounter]:
    skips = SkipCounter()
    return list(iter_samples(spec, skips=skips, **kwargs)), skips


# --- skip counter -------------------------------------------------------------------------------------


def test_skip_counter_counts_per_reason_logs_each_skip_and_merges(caplog):
    a, b = SkipCounter(), SkipCounter()
    with caplog.at_level(logging.WARNING, logger="cocu.data.skips"):
        a.add(R.CORRUPT_IMAGE, "k1", "s.tar", "truncated")
        a.add(R.CORRUPT_IMAGE, "k2", "s.tar")
        b.add(R.EMPTY_CAPTION, "k3", "t.tar")
    assert len(caplog.records) == 3
    assert "corrupt_image" in caplog.records[0].getMessage() and "truncated" in caplog.records[0].getMessage()
    a.merge(b)
    assert a.counts == {"corrupt_image": 2, "empty_caption": 1}
    assert a.total == 3
    assert a.as_dict() == {"corrupt_image": 2, "empty_caption": 1, "total": 3}
    assert a.format_table().splitlines() == [
        "corrupt_image         2",
        "empty_caption         1",
        "total                 3",
    ]


# --- tar shards: every skip reason ----------------------------------------------------------------------


def _crafted_shard(path: Path) -> Path:
    full = _jpeg()
    members = [
        ("a.jpg", full), ("a.txt", b"good one"), ("a.json", b'{"concepts": {"dog": 0.5}}'),
        ("b.jpg", full[: len(full) // 2]), ("b.txt", b"truncated image"),
        ("c.txt", b"no image here"),
        ("d.jpg", full),
        ("e.jpg", full), ("e.txt", b"  \n\t "),
        ("f.jpg", full), ("f.txt", b"caf\xe9 latin-1"),
        ("a.jpg", full), ("a.txt", b"same key again"),
        ("g.jpg", full), ("g.txt", b"has an extra member"), ("g.cls", b"3"),
        ("h.jpg", full), ("h.txt", b"bad json"), ("h.json", b"{not json"),
        ("i.png", _png()), ("i.text", "yfcc style caption \u00e9".encode()),
        ("j.jpeg", full), ("j.txt", b"json is a list"), ("j.json", b"[1, 2]"),
        ("subdir", None),
        ("README", b"no extension"),
        ("k.jpg", b"not an image at all"), ("k.txt", b"undecodable"),
    ]
    return _write_tar(path, members)


def test_every_skip_reason_is_counted_and_good_samples_are_kept(tmp_path):
    shard = _crafted_shard(tmp_path / "s-00000.tar")
    samples, skips = _read(shard)
    assert [s.key for s in samples] == ["a", "g", "h", "i", "j"]
    assert skips.counts == {
        R.BAD_JSON: 2,
        R.CAPTION_NOT_UTF8: 1,
        R.CORRUPT_IMAGE: 2,
        R.DUPLICATE_KEY: 1,
        R.EMPTY_CAPTION: 1,
        R.MISSING_CAPTION: 1,
        R.MISSING_IMAGE: 1,
        R.UNEXPECTED_MEMBER: 2,
    }
    by_key = {s.key: s for s in samples}
    assert by_key["a"].caption == "good one" and by_key["a"].meta == {"concepts": {"dog": 0.5}}
    assert by_key["h"].meta is None and by_key["j"].meta is None
    assert by_key["i"].caption == "yfcc style caption \u00e9"
    assert by_key["i"].image.mode == "RGB" and by_key["i"].image.size == (5, 7)
    assert [s.index for s in samples] == [0, 1, 2, 3, 4]
    assert all(s.source == str(shard) for s in samples)
    assert by_key["a"].image_bytes == _jpeg()


def test_decode_images_false_does_not_decode_so_corrupt_images_pass(tmp_path):
    shard = _crafted_shard(tmp_path / "s-00000.tar")
    samples, skips = _read(shard, decode_images=False)
    assert [s.key for s in samples] == ["a", "b", "g", "h", "i", "j", "k"]
    assert all(s.image is None for s in samples)
    assert R.CORRUPT_IMAGE not in skips.counts


def test_second_image_or_caption_member_is_counted_and_first_kind_kept(tmp_path):
    shard = _write_tar(
        tmp_path / "s.tar",
        [("x.png", _png()), ("x.jpg", _jpeg()), ("x.text", b"second"), ("x.txt", b"first")],
    )
    samples, skips = _read(shard)
    assert [(s.key, s.caption, s.image.size) for s in samples] == [("x", "first", (8, 6))]
    assert skips.counts == {R.UNEXPECTED_MEMBER: 2}


def test_repeated_member_in_a_group_starts_a_duplicate_sample(tmp_path):
    shard = _write_tar(tmp_path / "s.tar", _good("x", "one") + [("x.jpg", _jpeg()), ("x.txt", b"two")])
    samples, skips = _read(shard)
    assert [s.caption for s in samples] == ["one"]
    assert skips.counts == {R.DUPLICATE_KEY: 1}


def test_duplicate_key_across_shards_is_skipped(tmp_path):
    first = _write_tar(tmp_path / "p-00000.tar", _good("k", "first"))
    second = _write_tar(tmp_path / "p-00001.tar", _good("k", "second") + _good("m"))
    samples, skips = _read([first, second])
    assert [(s.key, s.caption) for s in samples] == [("k", "first"), ("m", "a caption")]
    assert skips.counts == {R.DUPLICATE_KEY: 1}


def test_exif_orientation_is_applied_by_the_reader(tmp_path):
    img = Image.new("RGB", (8, 4), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, format="PNG", exif=exif)
    shard = _write_tar(tmp_path / "s.tar", [("r.png", buf.getvalue()), ("r.txt", b"rotated")])
    (sample,), _ = _read(shard)
    assert sample.image.size == (4, 8)


# --- damaged tar files -----------------------------------------------------------------------------------


def test_tar_cut_mid_member_counts_corrupt_shard_and_reads_next_shard(tmp_path):
    raw = _tar_bytes(_good("a") + _good("b") + _good("c"))
    offsets = [info.offset_data for info in tarfile.open(fileobj=io.BytesIO(raw))]
    broken = tmp_path / "d-00000.tar"
    broken.write_bytes(raw[: offsets[3] + 4])  # inside b.txt's data ("a caption")
    _write_tar(tmp_path / "d-00001.tar", _good("z"))
    samples, skips = _read(tmp_path)
    assert [s.key for s in samples] == ["a", "z"]
    assert skips.counts == {R.CORRUPT_SHARD: 1}


def test_tar_cut_at_a_member_boundary_is_detected(tmp_path):
    raw = _tar_bytes(_good("a") + _good("b"))
    infos = list(tarfile.open(fileobj=io.BytesIO(raw)))
    end_of_b_jpg = infos[2].offset_data + 512 * ((infos[2].size + 511) // 512)
    shard = tmp_path / "cut.tar"
    shard.write_bytes(raw[:end_of_b_jpg])
    samples, skips = _read(shard)
    assert [s.key for s in samples] == ["a"]
    assert skips.counts == {R.CORRUPT_SHARD: 1}


@pytest.mark.parametrize("content", [b"", b"this is not a tar file" * 40], ids=["empty", "garbage"])
def test_unreadable_tar_file_counts_corrupt_shard(tmp_path, content):
    (tmp_path / "x-00000.tar").write_bytes(content)
    _write_tar(tmp_path / "x-00001.tar", _good("ok"))
    samples, skips = _read(tmp_path)
    assert [s.key for s in samples] == ["ok"]
    assert skips.counts == {R.CORRUPT_SHARD: 1}


# --- sources ---------------------------------------------------------------------------------------------


def test_expand_braces_ranges_lists_and_padding():
    assert expand_braces("d/c3-{00000..00003}.tar") == [f"d/c3-0000{i}.tar" for i in range(4)]
    assert expand_braces("{a,b}-{9..11}") == ["a-9", "a-10", "a-11", "b-9", "b-10", "b-11"]
    assert expand_braces("x{3..1}") == ["x3", "x2", "x1"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    assert expand_braces("keep{this}.tar") == ["keep{this}.tar"]


def test_directory_source_lists_tars_in_name_order_and_ignores_other_files(tmp_path):
    for name in ("c3-00001.tar", "c3-00000.tar", "c3-00010.tar"):
        _write_tar(tmp_path / name, _good(name.split(".")[0]))
    (tmp_path / "c3-00000.parquet").write_bytes(b"PAR1")
    (tmp_path / "c3-00000_stats.json").write_text("{}")
    names = [Path(p).name for p in resolve_sources(tmp_path)]
    assert names == ["c3-00000.tar", "c3-00001.tar", "c3-00010.tar"]
    samples, skips = _read(tmp_path)
    assert [s.key for s in samples] == ["c3-00000", "c3-00001", "c3-00010"]
    assert skips.total == 0


def test_brace_pattern_and_list_sources(tmp_path):
    for i in range(4):
        _write_tar(tmp_path / f"c3-{i:05d}.tar", _good(f"k{i}"))
    samples, _ = _read(str(tmp_path / "c3-{00001..00003}.tar"))
    assert [s.key for s in samples] == ["k1", "k2", "k3"]
    listed = [tmp_path / "c3-00003.tar", str(tmp_path / "c3-{00000..00001}.tar")]
    assert [Path(p).name for p in resolve_sources(listed)] == ["c3-00003.tar", "c3-00000.tar", "c3-00001.tar"]
    samples, _ = _read(listed)
    assert [s.key for s in samples] == ["k3", "k0", "k1"]
    with pytest.raises(FileNotFoundError, match="c3-00004.tar"):
        resolve_sources(str(tmp_path / "c3-{00000..00004}.tar"))


def test_unsupported_or_empty_sources_raise_clear_errors(tmp_path):
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(ValueError, match="unsupported data source"):
        resolve_sources(tmp_path / "notes.md")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .tar files"):
        resolve_sources(tmp_path / "empty")


# --- folder of images + captions file --------------------------------------------------------------------


def _captions_folder(root: Path) -> None:
    (root / "img" / "sub").mkdir(parents=True)
    (root / "img" / "one.jpg").write_bytes(_jpeg())
    (root / "img" / "sub" / "two.png").write_bytes(_png())
    (root / "img" / "three.jpg").write_bytes(b"broken jpeg")
    (root / "img" / "four.jpg").write_bytes(_jpeg((1, 2, 3)))


def _rows() -> list[dict]:
    return [
        {"image": "img/one.jpg", "caption": "first image", "key": "", "source": "web"},
        {"image": "img/sub/two.png", "caption": "second image", "key": "custom-2", "source": "web"},
        {"image": "img/missing.jpg", "caption": "file is gone", "key": "", "source": "web"},
        {"image": "img/three.jpg", "caption": "cannot decode", "key": "", "source": "web"},
        {"image": "img/four.jpg", "caption": "   ", "key": "", "source": "web"},
    ]


def _write_captions(root: Path, fmt: str) -> Path:
    rows = _rows()
    if fmt == "csv":
        path = root / "captions.csv"
        lines = ["image,caption,key,source"] + [
            f'{r["image"]},"{r["caption"]}",{r["key"]},{r["source"]}' for r in rows
        ]
        lines.append("img/one.jpg,too,many,fields,here")
        path.write_bytes(("\n".join(lines) + "\n").encode() + b'img/four.jpg,"caf\xe9",latin1,web\n')
    elif fmt == "tsv":
        path = root / "captions.tsv"
        lines = ["image\tcaption\tkey\tsource"] + [
            f'{r["image"]}\t{r["caption"]}\t{r["key"]}\t{r["source"]}' for r in rows
        ]
        lines.append("only-one-field")
        path.write_bytes(("\n".join(lines) + "\n").encode() + b"img/four.jpg\tcaf\xe9\tlatin1\tweb\n")
    elif fmt == "jsonl":
        path = root / "captions.jsonl"
        lines = [json.dumps(r).encode() for r in rows]
        lines.append(b"{this is not json")
        lines.append(b'{"image": "img/four.jpg", "caption": "caf\xe9", "key": "latin1", "source": "web"}')
        path.write_bytes(b"\n".join(lines) + b"\n")
    else:
        path = root / "captions.parquet"
        table_rows = rows + [{"image": None, "caption": "no image path", "key": "", "source": "web"}]
        table_rows.append({"image": "img/four.jpg", "caption": None, "key": "nocap", "source": "web"})
        pq.write_table(pa.Table.from_pylist(table_rows), path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_folder_plus_captions_reader_for_each_format(tmp_path, fmt):
    _captions_folder(tmp_path)
    captions = _write_captions(tmp_path, fmt)
    samples, skips = _read(captions)
    assert [(s.key, s.caption) for s in samples] == [("img/one", "first image"), ("custom-2", "second image")]
    assert samples[0].image.size == (8, 6) and samples[1].image.size == (5, 7)
    assert samples[0].meta == {"source": "web"}
    assert samples[1].image_bytes == (tmp_path / "img" / "sub" / "two.png").read_bytes()
    assert all(s.source == str(captions) for s in samples)
    expected = {R.MISSING_IMAGE: 1, R.CORRUPT_IMAGE: 1, R.EMPTY_CAPTION: 1, R.BAD_ROW: 1}
    expected[R.MISSING_CAPTION if fmt == "parquet" else R.CAPTION_NOT_UTF8] = 1
    assert skips.counts == expected


def test_captions_file_without_required_columns_is_a_clear_error(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("path,text\na.jpg,hello\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['image', 'caption'\]"):
        list(iter_samples(path))


def test_absolute_image_paths_in_captions_file(tmp_path):
    image = tmp_path / "elsewhere.jpg"
    image.write_bytes(_jpeg())
    captions = tmp_path / "sub" / "c.jsonl"
    captions.parent.mkdir()
    captions.write_text(json.dumps({"image": str(image), "caption": "abs"}) + "\n")
    samples, skips = _read(captions)
    assert [s.caption for s in samples] == ["abs"] and samples[0].meta is None and skips.total == 0


# --- writer ----------------------------------------------------------------------------------------------


def _write_set(out: Path, order: list[int], per_shard: int = 3) -> list[Path]:
    with ShardWriter(out, prefix="c3", samples_per_shard=per_shard) as writer:
        for i in order:
            pixels = np.full((4, 6, 3), i * 20, dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG")
            writer.write(
                f"{i:06d}",
                {"txt": f"caption {i}".encode(), "png": buf.getvalue(), "json": json.dumps({"i": i}).encode()},
            )
    return writer.paths


def test_writer_round_trip_through_our_reader_and_webdataset(tmp_path):
    paths = _write_set(tmp_path / "out", list(range(7)))
    assert [p.name for p in paths] == ["c3-00000.tar", "c3-00001.tar", "c3-00002.tar"]
    samples, skips = _read(tmp_path / "out")
    assert skips.total == 0
    assert [s.key for s in samples] == [f"{i:06d}" for i in range(7)]
    assert [s.caption for s in samples] == [f"caption {i}" for i in range(7)]
    assert [s.meta for s in samples] == [{"i": i} for i in range(7)]
    assert [int(np.asarray(s.image)[0, 0, 0]) for s in samples] == [i * 20 for i in range(7)]
    member_counts = []
    for path in paths:
        with tarfile.open(path) as archive:
            member_counts.append(len(archive.getmembers()))
    assert member_counts == [9, 9, 3]
    dataset = wds.WebDataset([str(p) for p in paths], shardshuffle=False)
    got = [(s["__key__"], s["txt"].decode(), sorted(k for k in s if not k.startswith("__"))) for s in dataset]
    assert got == [(f"{i:06d}", f"caption {i}", ["json", "png", "txt"]) for i in range(7)]


def test_writer_bytes_are_deterministic_and_members_sorted(tmp_path):
    first = _write_set(tmp_path / "a", [0, 1, 2, 3])
    second = _write_set(tmp_path / "b", [2, 0, 1, 3])
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    with tarfile.open(first[0]) as archive:
        infos = archive.getmembers()
    assert [i.name for i in infos] == [f"00000{k}.{e}" for k in range(3) for e in ("json", "png", "txt")]
    assert {(i.mtime, i.uid, i.gid, i.uname, i.gname, i.mode) for i in infos} == {(0, 0, 0, "", "", 0o644)}


def test_failed_shard_write_leaves_no_partial_file(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = tarfile.TarFile.addfile

    def failing_addfile(self, tarinfo, fileobj=None):
        calls["n"] += 1
        if calls["n"] == 5:  # the second member of the second shard
            raise OSError("disk full")
        return original(self, tarinfo, fileobj)

    monkeypatch.setattr(tarfile.TarFile, "addfile", failing_addfile)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        with ShardWriter(out, samples_per_shard=3) as writer:
            for i in range(6):
                writer.write(f"k{i}", {"txt": b"x"})
    assert sorted(p.name for p in out.iterdir()) == ["shard-00000.tar"]
    assert writer.paths == [out / "shard-00000.tar"]
    with tarfile.open(out / "shard-00000.tar") as archive:
        assert archive.getnames() == ["k0.txt", "k1.txt", "k2.txt"]


def test_error_inside_with_block_keeps_complete_shards_and_discards_pending(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="producer failed"):
        with ShardWriter(out, samples_per_shard=2) as writer:
            for i in range(3):
                writer.write(f"k{i}", {"txt": b"x"})
            raise RuntimeError("producer failed")
    assert sorted(p.name for p in out.iterdir()) == ["shard-00000.tar"]


def test_writer_rejects_bad_keys_members_and_duplicates(tmp_path):
    with ShardWriter(tmp_path) as writer:
        with pytest.raises(ValueError, match="would not read back"):
            writer.write("has.dot", {"txt": b"x"})
        with pytest.raises(ValueError, match="would not read back"):
            writer.write("k", {"TXT": b"x"})
        with pytest.raises(ValueError, match="relative path"):
            writer.write("../up", {"txt": b"x"})
        with pytest.raises(TypeError, match="must be bytes"):
            writer.write("k", {"txt": "text"})
        writer.write("k", {"txt": b"x"})
        with pytest.raises(ValueError, match="duplicate key"):
            writer.write("k", {"txt": b"y"})
    with pytest.raises(RuntimeError, match="closed"):
        writer.write("later", {"txt": b"x"})
    assert writer.num_samples == 1 and len(writer.paths) == 1


def test_curated_concepts_member_is_read_into_meta_not_skipped(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format="JPEG")
    with ShardWriter(tmp_path, prefix="cur", samples_per_shard=10) as writer:
        writer.write("k0", {"jpg": buf.getvalue(), "txt": b"a red square", "json": b'{"concepts": {"sky": 1.0}}',
                            "concepts.json": b'{"concepts": ["sky"], "scores": [0.5]}'})
    skips = SkipCounter()
    (sample,) = list(iter_samples(str(tmp_path), skips=skips))
    assert skips.total == 0
    assert sample.meta == {"concepts": {"sky": 1.0}, "curated": {"concepts": ["sky"], "scores": [0.5]}}
