"""The exact self-join (:mod:`cocu.curation.knn`) against brute force, and the curator using its table."""

import faiss
import numpy as np
import pytest

from cocu.curation.engine import Curator, CurationParams
from cocu.curation.expand import CaptionConcepts, find_neighbors
from cocu.curation.index import make_index, search
from cocu.curation.knn import ivf_self_knn, self_join, self_knn, self_neighbors
from cocu.curation.store import VectorParts


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("block,sub_block", [(64, 16), (100, 100), (1000, 7)])
def test_self_knn_equals_brute_force_for_any_tiling(block, sub_block):
    # 333 rows: blocks of 64 leave a ragged last block, so row, column and diagonal updates all occur.
    x = _unit(333, 24, seed=0)
    scores, ids = self_knn(x, 6, block=block, sub_block=sub_block)
    sims = x @ x.T  # [n, n]
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :6]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(sims, expected, axis=1), rtol=1e-5, atol=1e-6)


def test_self_knn_pads_with_minus_one_when_the_set_is_smaller_than_k():
    x = _unit(3, 8, seed=1)
    scores, ids = self_knn(x, 5, block=2, sub_block=1)
    assert ids.shape == (3, 5)
    np.testing.assert_array_equal(ids[:, 3:], -1)
    assert np.isneginf(scores[:, 3:]).all()
    assert sorted(ids[0, :3].tolist()) == [0, 1, 2]


def test_self_neighbors_equal_exact_index_search_without_the_row_itself():
    x = _unit(500, 16, seed=2)
    index, _ = make_index(x, kind="exact")
    rows = np.arange(500)
    expected, _ = find_neighbors(lambda q, k: search(index, q, k), x, rows, 8)
    np.testing.assert_array_equal(self_neighbors(x, 8), expected)


def test_curator_with_a_neighbour_table_gives_the_same_archive_as_with_search():
    x = _unit(300, 16, seed=3)
    rng = np.random.default_rng(4)
    captions = CaptionConcepts.from_lists([rng.choice(20, size=rng.integers(1, 4), replace=False) for _ in range(300)])
    concepts = _unit(20, 16, seed=5)
    params = CurationParams(neighbors=5, labels=3)
    index, _ = make_index(x, kind="exact")
    with_search = Curator(x, captions, concepts, lambda q, k: search(index, q, k), params)
    with_table = Curator(x, captions, concepts, None, params, neighbor_table=self_neighbors(x, 5))
    rows = np.arange(0, 300, 3)
    a = with_search.curate_rows(rows, np.random.default_rng(0))
    b = with_table.curate_rows(rows, np.random.default_rng(0))
    np.testing.assert_array_equal(a.neighbor_ids, b.neighbor_ids)
    np.testing.assert_array_equal(a.archive.concept, b.archive.concept)
    np.testing.assert_array_equal(a.archive.score, b.archive.score)
    np.testing.assert_array_equal(a.clusters, b.clusters)


def test_curator_rejects_a_neighbour_table_of_the_wrong_shape():
    x = _unit(10, 4, seed=6)
    captions = CaptionConcepts.from_lists([[0]] * 10)
    with pytest.raises(ValueError, match="neighbour table has shape"):
        Curator(x, captions, _unit(2, 4, seed=7), None, CurationParams(neighbors=3), neighbor_table=np.zeros((10, 2)))


def _clustered(n: int, d: int, centres: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = _unit(centres, d, seed + 100)
    x = c[rng.integers(0, centres, n)] + 0.15 * rng.normal(size=(n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_ivf_self_knn_probing_every_list_is_exact():
    x = _clustered(2000, 16, 20, seed=8)
    index, _ = make_index(x, kind="ivf", nlist=16, nprobe=1)
    scores, ids = ivf_self_knn(x, index, 5, lists_probed=16)
    sims = x @ x.T
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(sims, expected, axis=1), rtol=1e-5, atol=1e-6)


def test_ivf_self_knn_with_one_list_scans_only_the_rows_own_list():
    x = _clustered(2000, 16, 20, seed=9)
    index, _ = make_index(x, kind="ivf", nlist=16, nprobe=1)
    _, ids = ivf_self_knn(x, index, 5, lists_probed=1)
    _, assigned = faiss.extract_index_ivf(index).quantizer.search(x, 1)  # [n, 1] each row's list
    assert (ids >= 0).all()
    np.testing.assert_array_equal(assigned[ids, 0], np.repeat(assigned, 5, axis=1))


def test_self_join_picks_exact_for_a_flat_index_and_reports_ivf_recall():
    x = _clustered(3000, 16, 30, seed=10)
    flat, _ = make_index(x, kind="exact")
    exact_table = np.zeros((3000, 6), dtype=np.int64)
    exact = self_join(flat, x, 6, exact_table)
    assert exact is not None and exact.method == "exact" and exact.recall_at_k is None
    np.testing.assert_array_equal(exact_table, self_neighbors(x, 6))
    ivf, _ = make_index(x, kind="ivfsq", nlist=32)
    table = np.zeros((3000, 6), dtype=np.int64)
    joined = self_join(ivf, x, 6, table, n_check=300)
    assert joined is not None and joined.method == "ivf"
    assert 2 <= joined.params["lists_probed"] <= max(4, 2 * (faiss.extract_index_ivf(ivf).nprobe + 1))
    truth = exact_table[np.sort(np.random.default_rng(0).choice(3000, 300, replace=False))]
    found = table[np.sort(np.random.default_rng(0).choice(3000, 300, replace=False))]
    measured = np.mean([len(set(a) & set(b)) / 6 for a, b in zip(found, truth)])
    assert joined.recall_at_k == pytest.approx(measured, abs=1e-4)
    assert joined.recall_at_k >= 0.95


def test_self_join_declines_an_hnsw_index_and_a_join_below_the_recall_floor():
    x = _clustered(1500, 16, 15, seed=11)
    hnsw, _ = make_index(x, kind="hnsw")
    table = np.zeros((1500, 5), dtype=np.int64)
    assert self_join(hnsw, x, 5, table) is None
    ivf, _ = make_index(x, kind="ivf", nlist=16, nprobe=1)
    assert self_join(ivf, x, 5, table, min_recall=1.01) is None


def test_ivf_self_join_split_over_two_ranks_fills_the_same_table_as_one():
    x = _clustered(2000, 16, 20, seed=12)
    ivf, _ = make_index(x, kind="ivfsq", nlist=16)
    single = np.full((2000, 5), -7, dtype=np.int64)
    self_join(ivf, x, 5, single)
    split = np.full((2000, 5), -7, dtype=np.int64)
    infos = [self_join(ivf, x, 5, split, rank=r, world=2).info() for r in range(2)]
    assert infos[0]["recall_at_k"] == infos[1]["recall_at_k"]
    np.testing.assert_array_equal(split, single)
    assert (single != -7).all()


def test_ivf_self_knn_of_a_subset_equals_those_rows_of_the_full_join():
    x = _clustered(1500, 16, 15, seed=13)
    ivf, _ = make_index(x, kind="ivf", nlist=16, nprobe=2)
    scores, ids = ivf_self_knn(x, ivf, 6, 3)
    rows = np.array([3, 40, 41, 777, 1499])
    sub_scores, sub_ids = ivf_self_knn(VectorParts.from_array(x), ivf, 6, 3, rows=rows)
    np.testing.assert_array_equal(sub_ids, ids[rows])
    np.testing.assert_array_equal(sub_scores, scores[rows])


def test_ivf_self_join_probes_the_fewest_lists_that_reach_its_recall_target():
    x = _clustered(3000, 16, 30, seed=14)
    ivf, _ = make_index(x, kind="ivf", nlist=32, nprobe=8)
    joined = self_join(ivf, x, 6, np.zeros((3000, 6), dtype=np.int64))
    assert joined is not None and joined.recall_at_k >= 0.97
    assert joined.params["lists_probed"] < 9  # fewer than the index's nprobe + 1


def test_compact_index_with_hnsw_coarse_quantiser_is_mapped_joined_and_reranked(tmp_path, monkeypatch):
    from cocu.curation import index as index_mod
    from cocu.curation.store import VectorParts

    monkeypatch.setattr(index_mod, "HNSW_COARSE_NLIST", 16)  # the 10M-row layout, at 3000 rows
    x = _clustered(3000, 16, 30, seed=15)
    built, info = make_index(x, kind="ivfpq", nlist=16, n_check=200, target_recall=0.95)
    assert info.params["factory"] == "IVF16_HNSW32,PQ4x4fs" and info.recall_at_k >= 0.95
    index_mod.write_index(built, tmp_path / "image.index")
    mapped = index_mod.load_index(tmp_path / "image.index", 16, 3000, mmap=True)
    table = np.zeros((3000, 5), dtype=np.int64)
    assert self_join(mapped, x, 5, table) is not None
    exact = self_neighbors(x, 5)
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(table, exact)]) >= 0.95
    _, ids = index_mod.searcher_for(mapped, VectorParts.from_array(x), info.params)(x[:50], 6)
    assert np.mean([len(set(a[1:]) & set(b)) / 5 for a, b in zip(ids, exact[:50])]) >= 0.9
