"""`cocu embed` (clip-retrieval layout, resume, rejected accounting) and `cocu index` (exact and approximate)."""

import io
import json
import logging

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from cocu.cli import main
from cocu.curation.embed import embed_dataset, load_embeddings, read_rejected
from cocu.curation.encoder import load_encoder
from cocu.curation.index import (
    build_index,
    index_embeddings,
    load_index,
    make_index,
    read_index_info,
    recall_at_k,
    search,
    searcher_for,
)
from cocu.curation.store import VectorParts
from raw_tar import write_raw_tar

ENCODER = "random:clip-tiny"


def _jpeg(colour, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


def _good(key, i, concepts=None):
    members = {"jpg": _jpeg((20 * i % 256, 80, 255 - 20 * i % 256)), "txt": f"photo number {i}".encode()}
    if concepts is not None:
        members["json"] = json.dumps({"concepts": {c: 0.5 for c in concepts}}).encode()
    return key, members


@pytest.fixture(scope="module")
def encoder():
    return load_encoder(ENCODER)


@pytest.fixture
def shards(tmp_path):
    """Two shards: 7 good samples and 4 bad ones (corrupt image, empty caption, duplicate key, no caption)."""
    data = tmp_path / "data"
    data.mkdir()
    write_raw_tar(
        data / "s-00000.tar",
        [
            _good("a0", 0, ["sky", "tree"]),
            _good("a1", 1, ["dog"]),
            ("a2", {"jpg": b"\xff\xd8 not really a jpeg", "txt": b"broken image"}),
            _good("a3", 3),
            ("a4", {"jpg": _jpeg((1, 2, 3)), "txt": b"   "}),
            _good("a5", 5, []),
        ],
    )
    write_raw_tar(
        data / "s-00001.tar",
        [
            _good("b0", 10),
            _good("a1", 11),  # the same key as in the first shard
            ("b2", {"jpg": _jpeg((9, 9, 9))}),
            _good("b3", 13, ["car"]),
            _good("b4", 14),
        ],
    )
    return data


GOOD_KEYS = ["a0", "a1", "a3", "a5", "b0", "b3", "b4"]
REJECTED = {"a2": "corrupt_image", "a4": "empty_caption", "a1": "duplicate_key", "b2": "missing_caption"}


def _mtimes(folder):
    parts = [*folder.rglob("*_emb_*.npy"), *folder.rglob("metadata_*.parquet")]
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in parts}


def test_embed_writes_clip_retrieval_layout_and_accounts_for_every_sample(shards, tmp_path, encoder):
    out = tmp_path / "emb"
    result = embed_dataset(shards, encoder, out, batch_size=2, rows_per_part=3)
    assert result.embedded == result.new_rows == 7 and result.kept_rows == 0
    assert result.parts_written == [0, 1, 2]
    for i, rows in enumerate([3, 3, 1]):
        img = np.load(out / "img_emb" / f"img_emb_{i:05d}.npy")
        txt = np.load(out / "text_emb" / f"text_emb_{i:05d}.npy")
        meta = pq.read_table(out / "metadata" / f"metadata_{i:05d}.parquet")
        assert img.shape == txt.shape == (rows, encoder.dim) and img.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
        assert meta.num_rows == rows and meta.column_names[:2] == ["image_path", "caption"]
    emb = load_embeddings(out)
    assert emb.keys == GOOD_KEYS
    assert emb.captions[0] == "photo number 0"
    assert emb.true_concepts == [["sky", "tree"], ["dog"], [], [], [], ["car"], []]
    # the rows are the encoder's own embeddings of that sample
    np.testing.assert_allclose(emb.text[4], encoder.encode_texts(["photo number 10"])[0], atol=1e-5)
    rejected = read_rejected(out).to_pylist()
    assert {r["key"]: r["reason"] for r in rejected} == REJECTED
    assert all(r["source"].endswith(".tar") for r in rejected)
    assert len(emb) + len(rejected) == 11
    assert result.rejected == {"corrupt_image": 1, "duplicate_key": 1, "empty_caption": 1, "missing_caption": 1}
    info = json.loads((out / "embed_info.json").read_text())
    assert info["encoder"] == ENCODER and info["embedded"] == 7 and info["rejected"] == 4
    assert info["environment"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_embed_resumed_in_another_environment_says_so(shards, tmp_path, encoder, caplog):
    out = tmp_path / "emb"
    embed_dataset(shards, encoder, out, batch_size=4, rows_per_part=3)
    with caplog.at_level(logging.WARNING, logger="cocu.curation.embed"):
        embed_dataset(shards, encoder, out, batch_size=4, rows_per_part=3)
    assert "another environment" not in caplog.text
    info = json.loads((out / "embed_info.json").read_text())
    info["environment"]["cpu_capability"] = "SOMETHING_ELSE"
    (out / "embed_info.json").write_text(json.dumps(info))
    (out / "metadata" / "metadata_00001.parquet").unlink()
    with caplog.at_level(logging.WARNING, logger="cocu.curation.embed"):
        embed_dataset(shards, encoder, out, batch_size=4, rows_per_part=3)
    assert "embedded in another environment" in caplog.text and "SOMETHING_ELSE kernels" in caplog.text


def test_embed_rerun_keeps_finished_parts_and_redoes_only_a_broken_one(shards, tmp_path, encoder):
    out = tmp_path / "emb"
    embed_dataset(shards, encoder, out, batch_size=4, rows_per_part=3)
    before = _mtimes(out)
    again = embed_dataset(shards, encoder, out, batch_size=4, rows_per_part=3)
    assert again.parts_written == [] and again.parts_kept == [0, 1, 2] and again.new_rows == 0
    assert again.embedded == 7 and _mtimes(out) == before
    assert {r["key"] for r in read_rejected(out).to_pylist()} == set(REJECTED)
    first = load_embeddings(out)
    (out / "metadata" / "metadata_00001.parquet").unlink()  # an interrupted part: its metadata never landed
    third = embed_dataset(shards, encoder, out, batch_size=4, rows_per_part=3)
    assert third.parts_written == [1] and third.new_rows == 3 and third.kept_rows == 4
    after = _mtimes(out)
    untouched = {k for k in before if "_00001." not in str(k)}
    assert untouched and all(after[k] == before[k] for k in untouched)
    assert (out / "metadata" / "metadata_00001.parquet").is_file()
    rebuilt = load_embeddings(out)
    assert rebuilt.keys == first.keys
    np.testing.assert_allclose(rebuilt.image, first.image, atol=1e-6)


def test_embed_refuses_a_folder_made_with_another_encoder(shards, tmp_path, encoder):
    out = tmp_path / "emb"
    embed_dataset(shards, encoder, out, rows_per_part=100)
    other = load_encoder("random:clip-tiny@1")
    with pytest.raises(ValueError, match="random:clip-tiny.*another --out"):
        embed_dataset(shards, other, out)


def test_float16_embeddings_load_as_unit_float32(shards, tmp_path, encoder):
    out = tmp_path / "emb16"
    embed_dataset(shards, encoder, out, dtype="float16")
    assert np.load(out / "img_emb" / "img_emb_00000.npy").dtype == np.float16
    emb = load_embeddings(out)
    assert emb.image.dtype == np.float32 and emb.text.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb.image, axis=1), 1.0, atol=1e-6)


def _fake_part(out, i, rows_img, rows_meta, dim=4, pad=""):
    for sub in ("img_emb", "text_emb", "metadata"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(i)
    np.save(out / "img_emb" / f"img_emb_{pad}{i}.npy", rng.standard_normal((rows_img, dim)).astype(np.float32))
    np.save(out / "text_emb" / f"text_emb_{pad}{i}.npy", rng.standard_normal((rows_img, dim)).astype(np.float32))
    import pyarrow as pa

    keys = [f"k{i}_{j}" for j in range(rows_meta)]
    pq.write_table(pa.table({"image_path": keys, "caption": keys}), out / "metadata" / f"metadata_{pad}{i}.parquet")


def test_load_embeddings_rejects_row_count_mismatch_naming_the_file(tmp_path):
    out = tmp_path / "emb"
    _fake_part(out, 0, 5, 5)
    _fake_part(out, 1, 4, 3)
    with pytest.raises(ValueError, match=r"img_emb_1\.npy has 4 rows but .*metadata_1\.parquet has 3"):
        load_embeddings(out)


def test_load_embeddings_reads_parts_in_numeric_order_without_true_concepts(tmp_path):
    out = tmp_path / "emb"
    for i in (0, 2, 10):
        _fake_part(out, i, 2, 2)
    emb = load_embeddings(out)
    assert emb.keys == ["k0_0", "k0_1", "k2_0", "k2_1", "k10_0", "k10_1"]
    assert emb.true_concepts is None and emb.dim == 4


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_index_neighbours_equal_brute_force(tmp_path):
    rng = np.random.default_rng(0)
    x, q = _unit(rng, 500, 16), _unit(rng, 37, 16)
    info = build_index(x, tmp_path / "image.index")
    assert info.kind == "exact" and info.recall_at_k is None and (info.n, info.dim) == (500, 16)
    index = load_index(tmp_path / "image.index", expected_dim=16, expected_n=500)
    scores, ids = search(index, q, k=5, batch_size=10)
    sims = q @ x.T  # [37,500]
    want = np.argsort(-sims, axis=1)[:, :5]
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_allclose(scores, np.take_along_axis(sims, want, axis=1), atol=1e-5)
    assert scores.dtype == np.float32 and ids.dtype == np.int64


def _clustered(rng, n, d, centres, noise=0.6):
    c = _unit(rng, centres, d)
    x = c[rng.integers(0, centres, n)] + noise * rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize(("kind", "fixed"), [("ivf", {}), ("ivfsq", {}), ("ivfpq", {"k_factor": 32}), ("hnsw", {})])
def test_approximate_index_recall_is_measured_and_reaches_the_target(kind, fixed):
    rng = np.random.default_rng(1)
    x = _clustered(rng, 4000, 32, 40)
    index, info = make_index(x, kind=kind, n_check=200, k_check=8, target_recall=0.9, **fixed)
    assert info.kind == kind and info.n_check == 200 and info.recall_at_k >= 0.9
    assert info.params["factory"].startswith(("IVF", "HNSW")) and info.queries_per_second > 0
    queries = np.arange(0, 4000, 37)
    _, found = searcher_for(index, VectorParts.from_array(x), info.params)(x[queries], 9)
    truth = np.argsort(-(x[queries] @ x.T), axis=1)[:, :9]
    assert recall_at_k(found, truth, 8, queries) >= 0.85


def test_auto_switches_to_approximate_above_exact_max_and_stores_info(tmp_path):
    rng = np.random.default_rng(2)
    x = _clustered(rng, 3000, 32, 40)
    infos = index_embeddings(x, x[:100], tmp_path / "index", exact_max=1000, n_check=100)
    assert infos["image"].kind != "exact" and infos["caption"].kind == "exact"
    stored = read_index_info(tmp_path / "index")
    assert stored["image"].recall_at_k == infos["image"].recall_at_k >= 0.95
    assert stored["image"].params["nprobe"] >= 1
    index = load_index(tmp_path / "index" / "image.index", 32)
    assert index.ntotal == 3000
    # nprobe travels in the index file; the re-ranking factor (re-ranked from the parts) in index_info.json
    assert faiss.extract_index_ivf(index).nprobe == stored["image"].params["nprobe"]
    assert stored["image"].params["k_factor"] >= 2


def test_recall_at_k_ignores_the_query_itself():
    truth = np.array([[5, 1, 2, 3]])
    assert recall_at_k(np.array([[1, 5, 2, 9]]), truth, 3, np.array([5])) == pytest.approx(2 / 3)
    assert recall_at_k(np.array([[5, 1, 2, 9]]), truth, 2) == 1.0


def test_load_index_rejects_other_dimension_and_size(tmp_path):
    rng = np.random.default_rng(3)
    build_index(_unit(rng, 50, 8), tmp_path / "image.index")
    with pytest.raises(ValueError, match=r"image\.index has dimension 8 but the embeddings have 16.*cocu index"):
        load_index(tmp_path / "image.index", 16)
    with pytest.raises(ValueError, match="holds 50 vectors but the embeddings have 60"):
        load_index(tmp_path / "image.index", 8, expected_n=60)
    with pytest.raises(FileNotFoundError, match="cocu index"):
        load_index(tmp_path / "missing.index", 8)


def test_cli_embed_then_index(shards, tmp_path, capsys):
    emb, idx = tmp_path / "run" / "emb", tmp_path / "run" / "index"
    assert main(["embed", str(shards), "--encoder", ENCODER, "--out", str(emb), "--rows-per-part", "4"]) == 0
    out = capsys.readouterr().out
    assert "embedded 7 samples" in out and "rejected 4 samples" in out and "duplicate_key" in out
    assert main(["index", str(emb), "--out", str(idx)]) == 0
    out = capsys.readouterr().out
    assert "image: exact over 7 x 128" in out and "caption: exact" in out
    assert (idx / "image.index").is_file() and (idx / "caption.index").is_file()
    assert set(json.loads((idx / "index_info.json").read_text())) == {"image", "caption"}


def test_cli_embed_reports_an_unresolvable_encoder(shards, tmp_path, capsys):
    code = main(["embed", str(shards), "--encoder", str(tmp_path / "no-such-clip"), "--out", str(tmp_path / "e")])
    assert code == 2
    err = capsys.readouterr().err
    assert "no-such-clip" in err and "does not resolve" in err and "Fix:" in err
