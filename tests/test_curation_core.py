"""The math of concept curation: expansion, ranking (eq. 6-8), clustering, sampling, archive parts, metrics."""

from __future__ import annotations

import numpy as np
import pytest

from cocu.curation.archive import ArchiveRow, archive_table, pad_sorted, read_archive, read_part_meta, write_part
from cocu.curation.cluster import ConceptGram, cluster_archives, kmeans_gram
from cocu.curation.engine import Curator, CurationParams, TrueConcepts, summarize_stats
from cocu.curation.expand import CaptionConcepts, drop_self, expand_chunk, find_neighbors
from cocu.curation.rank import reference_cos, score_chunk
from cocu.curation.sampling import draw_padded, sample_concepts

CAT, GRASS, HORSE, SKY = 0, 1, 2, 3


def _unit_rows(first: list[list[float]]) -> np.ndarray:
    """Rows whose first 4 components are given cosines to the 4 axis concepts; a 5th component makes them unit."""
    head = np.asarray(first, dtype=np.float64)
    rest = np.sqrt(1.0 - (head**2).sum(axis=1, keepdims=True))
    return np.concatenate([head, rest], axis=1).astype(np.float32)


def _brute_search(vectors: np.ndarray):
    def search(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sims = queries @ vectors.T
        ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        found = np.take_along_axis(sims, ids, axis=1)
        pad = k - ids.shape[1]  # like faiss: -1 ids when the index holds fewer than k vectors
        return np.pad(found, ((0, 0), (0, pad))), np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)

    return search


@pytest.fixture()
def tiny_world():
    # Concept c's prompt embedding is axis c, so cos(t_c, x) is simply x's component c.
    concept_emb = np.eye(5, dtype=np.float32)[:4]
    images = _unit_rows(
        [
            [0.5, 0.5, 0.1, 0.3],  # A: caption "cat, sky"
            [0.7, 0.1, 0.1, 0.2],  # B: caption "cat, grass"
            [0.1, 0.3, 0.6, 0.0],  # C: caption "grass, horse"
        ]
    )
    captions = CaptionConcepts.from_lists([[CAT, SKY], [CAT, GRASS], [GRASS, HORSE]])
    return images, captions, concept_emb


def _scores_by_concept(images, captions, concept_emb, method, anchor):
    rows = np.array([anchor])
    ids, _ = find_neighbors(_brute_search(images), images[rows], rows, 2)
    chunk = expand_chunk(rows, ids, captions, concept_emb.shape[0])
    every = np.arange(images.shape[0])
    scores = score_chunk(chunk, images[rows], concept_emb, reference_cos(chunk, images, every, captions, concept_emb),
                         method)
    return {int(c): float(s) for c, s in zip(chunk.pair_concept, scores)}


def test_t2v_scores_match_hand_computed_eq_6_to_8_with_max_cosine_normalisation(tiny_world):
    # Anchor A, neighbours B and C. Largest cosine seen for A: 0.7 (cat on reference image B).
    # cat: s_a=.5, refs {B: .7} -> s_b = 2*.5/(.5+.7); grass: s_a=.5, refs {B: .1, C: .3} -> 3*.5/(.5+.4)
    # horse: s_a=.1, refs {C: .6} -> 2*.1/(.1+.6); sky: own concept in no neighbour caption -> s_b = 1.
    got = _scores_by_concept(*tiny_world, "t2v", anchor=0)
    expected = {
        CAT: 0.5 / 0.7 + 1.0 / 1.2,
        GRASS: 0.5 / 0.7 + 1.5 / 0.9,
        HORSE: 0.1 / 0.7 + 0.2 / 0.7,
        SKY: 0.3 / 0.7 + 1.0,
    }
    assert got.keys() == expected.keys()
    for concept, value in expected.items():
        assert got[concept] == pytest.approx(value, rel=1e-5)


def test_t2v_paper_scores_are_s_a_plus_s_b(tiny_world):
    got = _scores_by_concept(*tiny_world, "t2v-paper", anchor=0)
    expected = {CAT: 0.5 + 1.0 / 1.2, GRASS: 0.5 + 1.5 / 0.9, HORSE: 0.1 + 0.2 / 0.7, SKY: 0.3 + 1.0}
    for concept, value in expected.items():
        assert got[concept] == pytest.approx(value, rel=1e-5)
    # Anchor B: neighbours A and C; sky is on reference image A (.3): s_b = 2*.2/(.2+.3) = .8.
    got_b = _scores_by_concept(*tiny_world, "t2v-paper", anchor=1)
    assert got_b[SKY] == pytest.approx(0.2 + 0.8, rel=1e-5)
    assert got_b[HORSE] == pytest.approx(0.1 + 2 * 0.1 / (0.1 + 0.6), rel=1e-5)


def test_naive_scores_are_the_anchor_cosine(tiny_world):
    got = _scores_by_concept(*tiny_world, "naive", anchor=2)
    assert got == pytest.approx({CAT: 0.1, GRASS: 0.3, HORSE: 0.6, SKY: 0.0}, abs=1e-6)


def test_eq7_floors_non_positive_cosines_so_s_b_stays_in_range():
    concept_emb = np.eye(5, dtype=np.float32)[:4]
    captions = CaptionConcepts.from_lists([[GRASS], [CAT]])
    # Anchor unrelated to "cat" (cos -.5) but its reference image related (.4): s_b ~ 0, not a sign flip.
    images = _unit_rows([[-0.5, 0.1, 0.1, 0.1], [0.4, 0.1, 0.1, 0.1]])
    got = _scores_by_concept(images, captions, concept_emb, "t2v-paper", anchor=0)
    assert 0.0 <= got[CAT] - (-0.5) < 1e-4
    # Anchor and reference both unrelated: both floored, s_b = 2 * eps / (2 * eps) = 1 (neutral).
    images = _unit_rows([[-0.5, 0.1, 0.1, 0.1], [-0.2, 0.1, 0.1, 0.1]])
    got = _scores_by_concept(images, captions, concept_emb, "t2v-paper", anchor=0)
    assert got[CAT] - (-0.5) == pytest.approx(1.0)


def test_drop_self_removes_the_anchor_or_else_the_last_result():
    ids = np.array([[5, 3, 9], [4, 8, 1], [2, 7, 7]])
    scores = np.array([[0.9, 0.8, 0.7], [0.6, 0.5, 0.4], [0.3, 0.2, 0.1]])
    out_ids, out_scores = drop_self(ids, scores, np.array([3, 0, 2]))
    np.testing.assert_array_equal(out_ids, [[5, 9], [4, 8], [7, 7]])
    np.testing.assert_allclose(out_scores, [[0.9, 0.7], [0.6, 0.5], [0.2, 0.1]])


def test_neighbors_equal_brute_force_on_exact_index():
    from cocu.curation.index import make_index, search

    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index, info = make_index(x, kind="exact")
    assert info.kind == "exact"
    rows = np.arange(0, 400, 7)
    ids, scores = find_neighbors(lambda q, k: search(index, q, k, batch_size=16), x[rows], rows, 8)
    sims = x[rows] @ x.T
    sims[np.arange(rows.shape[0]), rows] = -np.inf
    expected = np.argsort(-sims, axis=1)[:, :8]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(sims, expected, axis=1), rtol=1e-5)


def test_archive_is_exactly_own_concepts_plus_neighbor_concepts():
    rng = np.random.default_rng(2)
    n, v = 300, 40
    captions = CaptionConcepts.from_lists([rng.choice(v, size=rng.integers(0, 5), replace=False) for _ in range(n)])
    rows = np.arange(50, 120)
    neighbors = rng.integers(-1, n, size=(rows.shape[0], 6))
    chunk = expand_chunk(rows, neighbors, captions, v)
    for local, row in enumerate(rows):
        own = set(captions.row(row).tolist())
        expected = own | {c for j in neighbors[local] if j >= 0 for c in captions.row(j).tolist()}
        mine = chunk.pair_anchor == local
        assert set(chunk.pair_concept[mine].tolist()) == expected
        assert set(chunk.pair_concept[mine & chunk.pair_own].tolist()) == own
        for pair in np.nonzero(mine)[0]:
            concept = chunk.pair_concept[pair]
            refs = chunk.ref_image[chunk.ref_pair == pair]
            holders = [j for j in neighbors[local] if j >= 0 and concept in captions.row(j)]
            assert sorted(refs.tolist()) == sorted(holders)


def test_pad_sorted_orders_by_score_then_first_appearance():
    padded = pad_sorted(
        2,
        pair_anchor=np.array([0, 0, 0, 1]),
        pair_concept=np.array([4, 7, 9, 2]),
        pair_first=np.array([2, 0, 1, 3]),
        scores=np.array([0.5, 0.5, 0.9, 0.1], dtype=np.float32),
    )
    np.testing.assert_array_equal(padded.concept, [[9, 7, 4], [2, -1, -1]])
    np.testing.assert_array_equal(padded.size, [3, 1])


def _three_groups(rng: np.random.Generator, per_group: int = 3) -> np.ndarray:
    centres = np.eye(8, dtype=np.float32)[:3]
    pts = np.repeat(centres, per_group, axis=0) + 0.05 * rng.normal(size=(3 * per_group, 8)).astype(np.float32)
    return pts / np.linalg.norm(pts, axis=1, keepdims=True)


def test_clustering_separates_obviously_separated_points_and_is_deterministic():
    rng = np.random.default_rng(3)
    concept_emb = _three_groups(rng)  # concepts 0-2 group a, 3-5 group b, 6-8 group c
    gram = ConceptGram(concept_emb)
    archives = np.array([[4, 0, 8, 1, 5, 6, 2, 3, 7], [7, 6, 8, 0, 3, -1, -1, -1, -1]])
    valid = archives >= 0
    labels = cluster_archives(archives, valid, gram, num_clusters=3)
    again = cluster_archives(archives, valid, gram, num_clusters=3)
    np.testing.assert_array_equal(labels, again)
    group = np.where(valid, archives // 3, -1)
    for row in range(2):
        mapping = {}
        for g, lab in zip(group[row][valid[row]], labels[row][valid[row]]):
            assert mapping.setdefault(g, lab) == lab
        assert len(set(mapping.values())) == len(mapping)
    # Cluster 0 holds the top-ranked concept; ids are numbered by best member.
    np.testing.assert_array_equal(labels[0], [0, 1, 2, 1, 0, 2, 1, 0, 2])
    np.testing.assert_array_equal(labels[1, :5], [0, 0, 0, 1, 2])
    assert (labels[1, 5:] == -1).all()


def test_clustering_uses_min_of_labels_and_archive_size():
    concept_emb = np.eye(4, dtype=np.float32)
    labels = kmeans_gram(ConceptGram(concept_emb).blocks(np.array([[2, 1, 0]])), np.array([[True, True, False]]), 3)
    np.testing.assert_array_equal(labels, [[0, 1, -1]])


def test_gram_lookup_equals_gathered_products():
    rng = np.random.default_rng(4)
    emb = rng.normal(size=(30, 6)).astype(np.float32)
    ids = rng.integers(0, 30, size=(5, 4))
    blocks = ConceptGram(emb).blocks(ids)
    np.testing.assert_allclose(blocks, np.einsum("pid,pjd->pij", emb[ids], emb[ids]), rtol=1e-5)


def test_sampler_draws_one_concept_per_cluster():
    row = ArchiveRow("k", "c", [], [], ["a", "b", "c", "d", "e"], [2.0, 1.9, 1.5, 1.0, 0.2], [0, 1, 0, 2, 1])
    rng = np.random.default_rng(0)
    for _ in range(200):
        picked = sample_concepts(row, 3, "cluster", 0.5, rng)
        assert len(picked) == 3
        assert picked[0] in {"a", "c"} and picked[1] in {"b", "e"} and picked[2] == "d"
    assert sample_concepts(row, 2, "cluster", 0.5, rng)[1] in {"b", "e"}
    assert sample_concepts(row, 3, "naive", 0.5, rng) == ["a", "b", "c"]
    empty = ArchiveRow("k", "c", [], [], [], [], [])
    assert sample_concepts(empty, 3, "cluster", 0.1, rng) == []


def test_sampler_follows_softmax_of_score_over_tau_within_a_cluster():
    tau = 0.25
    scores = np.array([1.0, 0.8, 0.3, 2.0, 1.0], dtype=np.float32)
    clusters = np.array([0, 0, 0, 1, 1])
    draws = 40000
    picks = draw_padded(
        np.tile(scores, (draws, 1)), np.tile(clusters, (draws, 1)), 2, "cluster", tau, np.random.default_rng(7)
    )
    for k in range(2):
        member = np.nonzero(clusters == k)[0]
        logits = scores[member] / tau
        expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        freq = np.array([(picks[:, k] == j).mean() for j in member])
        np.testing.assert_allclose(freq, expected, atol=0.01)
    row = ArchiveRow("k", "c", [], [], list("vwxyz"), scores.tolist(), clusters.tolist())
    rng = np.random.default_rng(8)
    first = [sample_concepts(row, 2, "cluster", tau, rng)[0] for _ in range(3000)]
    logits = scores[:3] / tau
    p_v = np.exp(logits[0]) / np.exp(logits).sum()
    assert first.count("v") / 3000 == pytest.approx(p_v, abs=0.03)


def test_naive_curation_marks_the_top_labels_and_sampler_returns_them():
    scores = np.array([[0.9, 0.5, 0.4, 0.1], [0.3, np.nan, np.nan, np.nan]], dtype=np.float32)
    clusters = np.array([[0, 1, 2, -1], [0, -1, -1, -1]])
    picks = draw_padded(scores, clusters, 3, "naive", 0.1, np.random.default_rng(0))
    np.testing.assert_array_equal(picks, [[0, 1, 2], [0, -1, -1]])


def test_true_concepts_not_in_vocabulary_count_as_missed():
    truth = TrueConcepts.from_names([["cat", "unicorn", "cat"], None, []], {"cat": 0, "dog": 1})
    np.testing.assert_array_equal(truth.unmapped, [1, 0, 0])
    np.testing.assert_array_equal(truth.known, [True, False, True])
    assert truth.ids.row(0).tolist() == [0]


def test_curator_metrics_are_micro_averaged_against_truth(tiny_world):
    images, captions, concept_emb = tiny_world
    truth = TrueConcepts.from_names(
        [["cat", "grass", "tree"], ["cat"], None], {"cat": CAT, "grass": GRASS, "horse": HORSE, "sky": SKY}
    )
    params = CurationParams(neighbors=2, ranking="t2v", sampling="naive", labels=2)
    curator = Curator(images, captions, concept_emb, _brute_search(images), params, truth)
    result = curator.curate_rows(np.arange(3), np.random.default_rng(0))
    summary = summarize_stats([result.stats])
    # Truth counted over A and B only. A: true {cat, grass, tree(unmapped)} = 3, caption {cat, sky} -> 1 hit;
    # archive {cat, sky, grass, horse} -> 2 hits; top-2 by t2v: grass (2.38), cat (1.55) -> 2 hits.
    # B: true {cat}; caption {cat, grass} -> 1 hit; archive {cat, grass, sky, horse} -> 1 hit; top-2 cat, ...
    assert summary["truth_samples"] == 2
    assert summary["caption_recall"] == pytest.approx(2 / 4)
    assert summary["caption_precision"] == pytest.approx(2 / 4)
    assert summary["archive_recall"] == pytest.approx(3 / 4)
    assert summary["archive_precision"] == pytest.approx(3 / 8)
    assert summary["topL_recall"] == pytest.approx(3 / 4)
    assert summary["topL_precision"] == pytest.approx(3 / 4)
    assert summary["sampled_recall"] == summary["topL_recall"]
    assert summary["samples_written"] == 3
    assert summary["mean_archive_size"] == pytest.approx(4.0)


def test_archive_part_round_trips_through_parquet(tmp_path, tiny_world):
    import pyarrow as pa
    images, captions, concept_emb = tiny_world
    params = CurationParams(neighbors=2)
    curator = Curator(images, captions, concept_emb, _brute_search(images), params)
    result = curator.curate_rows(np.arange(3), np.random.default_rng(0))
    owner, _, cap_ids = captions.gather(result.rows)
    table = archive_table(
        pa.array(["a", "b", "c"]),
        pa.array(["cat sky", "cat grass", "grass horse"]),
        result.rows,
        captions.lengths[result.rows],
        cap_ids,
        result.neighbor_ids,
        result.archive,
        result.clusters,
        pa.array(["cat", "grass", "horse", "sky"]),
    )
    path = tmp_path / "curation" / "archive-0.parquet"
    write_part(path, table, {"start": 0, "stop": 3})
    assert read_part_meta(path) == {"start": 0, "stop": 3}
    rows = read_archive(tmp_path)
    assert set(rows) == {"a", "b", "c"}
    a = rows["a"]
    assert a.caption_concepts == ["cat", "sky"]
    assert a.neighbors == ["b", "c"] or a.neighbors == ["c", "b"]
    assert a.concepts == ["grass", "cat", "sky", "horse"]
    assert a.scores == pytest.approx([0.5 / 0.7 + 1.5 / 0.9, 0.5 / 0.7 + 1 / 1.2, 0.3 / 0.7 + 1, 0.3 / 0.7], rel=1e-5)
    assert len(a.clusters) == 4 and a.clusters[0] == 0 and set(a.clusters) == {0, 1, 2}


def test_clustering_keeps_min_labels_clusters_when_points_coincide():
    concept_emb = np.tile(np.eye(4, dtype=np.float32)[:1], (6, 1))  # six identical concept embeddings
    ids = np.array([[0, 1, 2, 3, 4, 5], [4, 5, -1, -1, -1, -1]])
    labels = cluster_archives(ids, ids >= 0, ConceptGram(concept_emb), num_clusters=3)
    assert set(labels[0].tolist()) == {0, 1, 2}
    assert labels[1].tolist() == [0, 1, -1, -1, -1, -1]
