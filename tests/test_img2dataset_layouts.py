"""img2dataset's other outputs read by cocu.data.reader: the `files` folder layout, parquet with image bytes
(img2dataset's parquet output, Hugging Face parquet exports of webdataset sets), webp/avif images."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, features

from cocu.data import skips as R
from cocu.data.reader import iter_samples, resolve_sources
from cocu.data.skips import SkipCounter
from cocu.train.shards import build_shard_index


def _image(fmt: str, color=(10, 120, 200), size=(7, 5)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def _read(spec) -> tuple[list, SkipCounter]:
    skips = SkipCounter()
    return list(iter_samples(spec, skips=skips)), skips


def _files_output(root: Path) -> Path:
    """img2dataset --output_format files: OUT/00000/{key}.jpg|.txt|.json, OUT/00000.parquet, OUT/00000_stats.json."""
    for shard in range(2):
        folder = root / f"{shard:05d}"
        folder.mkdir(parents=True)
        for i in range(3):
            key = f"{shard:05d}{i:04d}"
            (folder / f"{key}.jpg").write_bytes(_image("JPEG"))
            (folder / f"{key}.txt").write_text(f"photo {shard} {i}")
            (folder / f"{key}.json").write_text(json.dumps({"url": f"http://x/{key}", "key": key}))
        (root / f"{shard:05d}_stats.json").write_text("{}")
        pq.write_table(pa.table({"key": ["x"]}), root / f"{shard:05d}.parquet")
    return root


def test_img2dataset_files_layout_is_read_with_every_file_accounted_for(tmp_path):
    root = _files_output(tmp_path / "out")
    (root / "00001" / "000010002.txt").unlink()  # a sample without its caption
    os.mkfifo(root / "00001" / "000010009.jpg")  # not a regular file: never opened
    samples, skips = _read(root)
    assert [s.key for s in samples] == ["000000000", "000000001", "000000002", "000010000", "000010001"]
    assert samples[4].caption == "photo 1 1" and samples[4].image.size == (7, 5)
    assert samples[0].meta == {"url": "http://x/000000000", "key": "000000000"}
    assert skips.counts == {R.MISSING_CAPTION: 1, R.UNEXPECTED_MEMBER: 1}
    assert resolve_sources(root) == [str(root / "00000") + os.sep, str(root / "00001") + os.sep]
    with pytest.raises(ValueError, match="tar shards"):
        build_shard_index(str(root), progress=False)


def test_img2dataset_parquet_output_with_image_bytes_is_read(tmp_path):
    table = pa.table(
        {
            "key": ["000000000", "000000001", "000000002"],
            "caption": ["a red photo", "a failed download", "a webp photo"],
            "url": ["http://a", "http://b", "http://c"],
            "status": ["success", "failed_to_download", "success"],
            "jpg": pa.array([_image("JPEG", (200, 0, 0)), None, _image("WEBP")], type=pa.binary()),
        }
    )
    pq.write_table(table, tmp_path / "00000.parquet")
    samples, skips = _read(tmp_path / "00000.parquet")
    assert [(s.key, s.caption) for s in samples] == [("000000000", "a red photo"), ("000000002", "a webp photo")]
    assert samples[0].meta == {"url": "http://a", "status": "success"} and samples[1].image.size == (7, 5)
    assert skips.counts == {R.MISSING_IMAGE: 1}


def test_hugging_face_parquet_export_with_image_structs_is_read(tmp_path):
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "jpg": pa.array(
                [{"bytes": _image("JPEG"), "path": None}, {"bytes": _image("PNG"), "path": None}], image_type
            ),
            "txt": ["first caption", "second caption"],
            "__key__": ["cc3m/0001", "cc3m/0002"],
            "__url__": ["shard-0.tar", "shard-0.tar"],
        }
    )
    pq.write_table(table, tmp_path / "train-00000.parquet")
    samples, skips = _read(tmp_path / "train-00000.parquet")
    assert [(s.key, s.caption) for s in samples] == [("cc3m/0001", "first caption"), ("cc3m/0002", "second caption")]
    assert samples[0].meta == {"__url__": "shard-0.tar"} and skips.total == 0


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow build has no AVIF support")
def test_avif_images_in_tars_are_read(tmp_path):
    import tarfile

    data = _image("AVIF")
    with tarfile.open(tmp_path / "a.tar", "w") as archive:
        for name, payload in (("a.avif", data), ("a.txt", b"avif image")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    samples, skips = _read(tmp_path / "a.tar")
    assert [s.key for s in samples] == ["a"] and skips.total == 0


def test_cocu_embed_reads_the_img2dataset_files_layout(tmp_path, capsys):
    from cocu.cli import main

    root = _files_output(tmp_path / "out")
    emb = tmp_path / "emb"
    assert main(["embed", str(root), "--encoder", "random:clip-tiny", "--out", str(emb), "--workers", "0"]) == 0
    assert "embedded 6 samples" in capsys.readouterr().out
    assert main(["embed", str(root), "--encoder", "random:clip-tiny", "--out", str(emb), "--workers", "0"]) == 0


def test_metadata_keeps_img2dataset_url_and_size_columns_as_clip_retrieval_does(tmp_path):
    from cocu.cli import main

    root = _files_output(tmp_path / "out")
    meta = root / "00000" / "000000001.json"
    meta.write_text(json.dumps({"url": "http://x/1", "width": 7, "height": 5, "sha256": "ab", "status": "success"}))
    emb = tmp_path / "emb"
    assert main(["embed", str(root), "--encoder", "random:clip-tiny", "--out", str(emb), "--workers", "0"]) == 0
    table = pq.read_table(emb / "metadata" / "metadata_00000.parquet")
    assert table.column("url").to_pylist() == ["http://x/000000000", "http://x/1", "http://x/000000002",
                                              "http://x/000010000", "http://x/000010001", "http://x/000010002"]
    assert table.column("width").to_pylist() == [None, 7, None, None, None, None]
    assert table.schema.field("width").type == pa.int64()
    assert table.column("sha256").to_pylist()[1] == "ab"
    assert "status" not in table.column_names and "original_width" not in table.column_names
