"""Out-of-core curation: memory-mapped parts equal the in-memory result, ranks split the work without changing
the archive, indexes must number rows as the embedding folder does, damaged or partial folders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from cocu.cli import main
from cocu.curation.archive import SCHEMA, read_archive
from cocu.curation.embed import load_embeddings
from cocu.curation.engine import Curator, CurationParams
from cocu.curation.expand import CaptionConcepts
from cocu.curation.index import choose_kind, estimate_memory
from cocu.curation.knn import self_neighbors
from cocu.curation.store import EmbeddingStore, VectorParts, first_occurrences
from cocu.curation.vocab import Vocabulary, read_vocab_dir

ENCODER = "random:clip-tiny"
SAMPLES, ROWS_PER_PART, CHUNK = 48, 4, 16


@pytest.fixture(scope="module")
def world_run(tmp_path_factory):
    """The synthetic world curated into a run whose embeddings have 12 parts (more than 10)."""
    root = tmp_path_factory.mktemp("outofcore")
    world = root / "world"
    assert main(["synth", str(world), "--teacher", "8", "--pretrain", str(SAMPLES), "--val", "2", "--classify", "1",
                 "--size", "32", "--samples-per-shard", "12"]) == 0
    run = root / "run"
    assert main(["curate", str(world / "pretrain"), "--encoder", ENCODER, "--out", str(run), "--vocab",
                 str(world / "vocab.txt"), "--rows-per-part", str(ROWS_PER_PART), "--chunk-size", str(CHUNK)]) == 0
    return run


def _stage_copy(run: Path, dst: Path, names=("emb", "vocab", "index")) -> Path:
    dst.mkdir()
    for name in names:
        shutil.copytree(run / name, dst / name)
    return dst


def _archive(out: Path, *extra: str) -> int:
    return main(["archive", str(out), "--chunk-size", str(CHUNK), *extra])


def _table(run: Path):
    return ds.dataset(run / "curation", format="parquet").to_table().sort_by("key")


def test_memory_mapped_curation_equals_in_memory_curation_on_the_synthetic_world(world_run):
    emb = load_embeddings(world_run / "emb")  # every row in memory, float32, Python lists
    assert len(list((world_run / "emb" / "img_emb").iterdir())) == SAMPLES // ROWS_PER_PART
    vocab = Vocabulary.from_file(world_run / "vocab" / "vocab.txt")
    _, concept_emb = read_vocab_dir(world_run / "vocab")
    captions = CaptionConcepts.from_lists([[vocab.index_of(c) for c in vocab.extract(t)] for t in emb.captions])
    curator = Curator(emb.image, captions, concept_emb, None, CurationParams(),
                      neighbor_table=self_neighbors(emb.image, 8))
    archive = read_archive(world_run)
    assert len(archive) == SAMPLES
    for start in range(0, SAMPLES, CHUNK):
        rows = np.arange(start, min(SAMPLES, start + CHUNK))
        result = curator.curate_rows(rows, np.random.default_rng(0))
        for b, row in enumerate(rows):
            got = archive[emb.keys[row]]
            valid = result.archive.valid[b]
            assert got.caption == emb.captions[row]
            assert got.neighbors == [emb.keys[i] for i in result.neighbor_ids[b] if i >= 0]
            assert got.concepts == [vocab.concepts[c] for c in result.archive.concept[b][valid]]
            assert got.scores == result.archive.score[b][valid].tolist()  # bit for bit
            assert got.clusters == result.clusters[b][valid].tolist()


def test_store_reads_parts_in_integer_order_and_rows_as_load_embeddings(world_run, tmp_path):
    emb_dir = _stage_copy(world_run, tmp_path / "run", names=("emb",)) / "emb"
    for sub, stem, ext in (("img_emb", "img_emb", "npy"), ("text_emb", "text_emb", "npy"),
                           ("metadata", "metadata", "parquet")):
        for path in (emb_dir / sub).iterdir():  # clip-retrieval's zero padding
            path.rename(path.with_name(f"{stem}_{int(path.stem.split('_')[-1]):05d}.{ext}"))
    store, emb = EmbeddingStore([emb_dir]), load_embeddings(world_run / "emb")
    assert store.keys.to_pylist() == emb.keys and store.captions.to_pylist() == emb.captions
    np.testing.assert_array_equal(store.image.rows(np.arange(SAMPLES)[::-1]), emb.image[::-1])
    np.testing.assert_array_equal(store.text.slice(3, 40), emb.text[3:40])
    assert first_occurrences(store.keys).tolist() == list(range(SAMPLES))


def test_first_occurrences_keeps_the_first_row_of_each_key():
    import pyarrow as pa

    keys = pa.chunked_array([["b", "a", "b"], ["c", "a", "d"]])
    assert first_occurrences(keys).tolist() == [0, 1, 3, 5]


def test_archive_with_two_gloo_ranks_equals_one_rank_row_for_row(world_run, tmp_path):
    one = _stage_copy(world_run, tmp_path / "one", names=("emb", "vocab"))
    assert main(["index", str(one / "emb"), "--out", str(one / "index"), "--kind", "ivf", "--nlist", "4",
                 "--no-caption", "--n-check", "20"]) == 0
    two = _stage_copy(one, tmp_path / "two")
    assert _archive(one) == 0
    port = _free_port()
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    cmd = [sys.executable, "-m", "cocu", "archive", str(two), "--chunk-size", str(CHUNK)]
    procs = [subprocess.Popen(cmd, env={**env, "RANK": str(r)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r in range(2)]
    outputs = [p.communicate(timeout=170)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert json.loads((two / "cache" / "neighbor_search.json").read_text())["method"] == \
        json.loads((one / "cache" / "neighbor_search.json").read_text())["method"]
    assert _table(two).equals(_table(one))
    assert json.loads((two / "summary.json").read_text())["samples_written"] == SAMPLES


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _unpadded(emb_dir: Path) -> list[Path]:
    """Rename the parts to clip-retrieval-1.x / old cocu names (``img_emb_10.npy``); the parts in name order."""
    for sub, stem, ext in (("img_emb", "img_emb", "npy"), ("text_emb", "text_emb", "npy"),
                           ("metadata", "metadata", "parquet")):
        for path in (emb_dir / sub).iterdir():
            path.rename(path.with_name(f"{stem}_{int(path.stem.split('_')[-1])}.{ext}"))
    return sorted((emb_dir / "img_emb").iterdir(), key=lambda p: p.name)


def test_archive_refuses_a_foreign_index_built_over_name_sorted_parts(world_run, tmp_path, capsys):
    out = _stage_copy(world_run, tmp_path / "run")
    by_name = _unpadded(out / "emb")
    assert [p.stem for p in by_name][:3] == ["img_emb_0", "img_emb_1", "img_emb_10"]
    vectors = np.concatenate([np.load(p) for p in by_name]).astype(np.float32)
    faiss.normalize_L2(vectors)
    foreign = faiss.IndexFlatIP(vectors.shape[1])
    foreign.add(vectors)
    faiss.write_index(foreign, str(out / "index" / "image.index"))
    (out / "index" / "index_info.json").unlink()  # another tool wrote it: no fingerprint
    capsys.readouterr()
    assert _archive(out) == 2
    err = capsys.readouterr().err
    assert "row order" in err and "cocu index" in err
    assert not list(out.glob("curation/archive-*.parquet"))
    # the same index over the parts in integer order passes the spot check and gives cocu's archive
    in_order = np.concatenate([np.load(out / "emb" / "img_emb" / f"img_emb_{i}.npy") for i in range(len(by_name))])
    in_order = in_order.astype(np.float32)
    faiss.normalize_L2(in_order)
    foreign.reset()
    foreign.add(in_order)
    faiss.write_index(foreign, str(out / "index" / "image.index"))
    assert _archive(out, "--overwrite") == 0  # the index folder changed since the refused run
    assert _table(out).equals(_table(world_run))


def test_archive_refuses_a_cocu_index_whose_fingerprint_differs(world_run, tmp_path, capsys):
    out = _stage_copy(world_run, tmp_path / "run")
    info_path = out / "index" / "index_info.json"
    info = json.loads(info_path.read_text())
    info["image"]["fingerprint"] = "0" * 32
    info_path.write_text(json.dumps(info))
    capsys.readouterr()
    assert _archive(out) == 2
    assert "row fingerprint mismatch" in capsys.readouterr().err


def test_index_refuses_nan_embeddings_with_the_archive_error(world_run, tmp_path, capsys):
    out = _stage_copy(world_run, tmp_path / "run")
    part = out / "emb" / "img_emb" / sorted(p.name for p in (out / "emb" / "img_emb").iterdir())[1]
    values = np.load(part)
    values[2, 5] = np.nan
    np.save(part, values)
    capsys.readouterr()
    assert main(["index", str(out / "emb"), "--out", str(tmp_path / "index")]) == 2
    index_err = capsys.readouterr().err
    assert _archive(out) == 2
    archive_err = capsys.readouterr().err
    assert "1 embedding row(s)" in index_err and "not finite" in index_err
    assert index_err.split("error: ")[1] == archive_err.split("error: ")[1]
    assert not (tmp_path / "index" / "image.index").exists()


def test_folder_without_caption_embeddings_curates_by_vision_and_lang_is_refused(world_run, tmp_path, capsys):
    out = _stage_copy(world_run, tmp_path / "run", names=("emb", "vocab"))
    shutil.rmtree(out / "emb" / "text_emb")  # clip-retrieval --enable_text False
    assert main(["index", str(out / "emb"), "--out", str(out / "index")]) == 0
    assert not (out / "index" / "caption.index").exists()
    assert _archive(out) == 0
    assert _table(out).equals(_table(world_run))
    capsys.readouterr()
    assert _archive(out, "--expansion", "lang", "--overwrite") == 2
    err = capsys.readouterr().err
    assert "caption embeddings" in err and "--expansion vision" in err


def test_curation_folder_holds_only_the_archive_and_reads_as_one_dataset(world_run):
    names = sorted(p.name for p in (world_run / "curation").iterdir())
    assert names == sorted(f"archive-{i}.parquet" for i in range(SAMPLES // CHUNK))
    table = ds.dataset(world_run / "curation", format="parquet").to_table()
    assert table.num_rows == SAMPLES and table.schema.names == SCHEMA.names
    assert sorted(table.column("key").to_pylist()) == sorted(read_archive(world_run))
    assert (world_run / "cache" / "concept_lists.npz").is_file()
    assert pq.read_table(world_run / "curation").num_rows == SAMPLES


def test_index_kind_is_sized_to_max_memory_and_refused_when_nothing_fits(world_run, tmp_path, capsys):
    n, d = 10_000_000, 512
    assert choose_kind("auto", n, d, 100_000, max_memory=8.0) == "ivfsq"
    assert choose_kind("auto", n, d, 100_000, max_memory=3.0) == "ivfpq"
    assert estimate_memory("ivfpq", n, d) < 3.0e9 < 5.0e9 < estimate_memory("ivfsq", n, d)
    with pytest.raises(ValueError, match="needs about"):
        choose_kind("ivfsq", n, d, 100_000, max_memory=3.0)
    capsys.readouterr()
    out = tmp_path / "index"
    assert main(["index", str(world_run / "emb"), "--out", str(out), "--kind", "exact", "--max-memory", "1e-6"]) == 2
    assert "needs about" in capsys.readouterr().err and not out.exists()


def test_reranked_search_reads_full_vectors_from_the_parts(world_run):
    from cocu.curation.index import make_index, searcher_for

    store = EmbeddingStore([world_run / "emb"])
    index, info = make_index(store.image, kind="ivfsq", nlist=1, n_check=20, target_recall=1.0)
    assert info.recall_at_k == 1.0 and "RFlat" not in info.params["factory"]
    x = store.image.slice(0, SAMPLES)
    scores, ids = searcher_for(index, store.image, info.params)(x[:5], 4)
    truth = np.argsort(-(x[:5] @ x.T), axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(ids, truth)
    np.testing.assert_allclose(scores, np.take_along_axis(x[:5] @ x.T, truth, axis=1), rtol=1e-6)
    assert isinstance(store.image, VectorParts) and isinstance(store.image.arrays[0], np.memmap)


def test_inverted_lists_grow_with_the_data_beyond_a_million_rows():
    from cocu.curation.index import _lists, default_nlist, default_train_size

    assert [default_nlist(n) for n in (10_000, 1_000_000, 10_000_000, 29_000_000)] == [512, 4096, 65536, 262144]
    assert 10_000_000 / default_nlist(10_000_000) < 160  # lists of ~150 rows: the self-join and searches stay cheap
    assert default_train_size(10_000_000, _lists(10_000_000, None)) == 524_288  # 8 rows per list
    assert default_train_size(1_000_000, _lists(1_000_000, None)) == 163_840  # 40 rows per list


def test_hnsw_coarse_quantiser_puts_rows_in_their_nearest_centroids_list(monkeypatch, tmp_path):
    from cocu.curation import index as index_mod
    from cocu.curation.knn import _ivf_lists

    rng = np.random.default_rng(0)
    dim, n = 64, 24_000
    families = rng.standard_normal((12, dim)).astype(np.float32)
    centres = families[rng.integers(0, 12, 600)] + 0.8 * rng.standard_normal((600, dim)).astype(np.float32) / 8
    x = centres[rng.integers(0, 600, n)] + 0.05 * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    monkeypatch.setattr(index_mod, "HNSW_COARSE_NLIST", 256)
    built, _ = index_mod.make_index(x, kind="ivfsq", nlist=512, n_check=100, threads=1)
    index_mod.write_index(built, tmp_path / "image.index")
    loaded = index_mod.load_index(tmp_path / "image.index", dim, n)
    ivf = faiss.extract_index_ivf(loaded)
    quantizer = faiss.downcast_index(ivf.quantizer)
    assert isinstance(quantizer, faiss.IndexHNSWFlat) and quantizer.hnsw.efSearch == index_mod.COARSE_EF_SEARCH
    centroids = quantizer.reconstruct_n(0, ivf.nlist)
    nearest = np.argmax(x @ centroids.T, axis=1)
    offsets, members = _ivf_lists(ivf)
    owner = np.empty(n, dtype=np.int64)
    owner[members] = np.repeat(np.arange(ivf.nlist), np.diff(offsets))
    assert (owner == nearest).mean() >= 0.99
