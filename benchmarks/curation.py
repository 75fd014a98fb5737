"""Benchmark of the curation stage (expand, rank, cluster, write) against a per-anchor loop.

Synthetic embeddings with the clustered structure of CLIP image embeddings: ``--centres`` random unit
centres (images spread uniformly over them); an image is its centre plus variation in a shared
``--rank``-dimensional subspace (the within-cluster attributes that make some members nearer than others)
plus isotropic (uniform, zero-mean) noise, L2-normalised (cosine to its centre about 0.85, to a random
member of its cluster about 0.7). Each centre has a topic of 6 concepts drawn from a Zipf-like popularity
over the ``--vocab`` concepts; a caption holds 1-5 distinct concepts, each from its centre's topic with
probability 0.85 or else from the overall popularity. A concept's prompt embedding is the normalised sum
of the centres whose topic holds it plus a random direction of twice that weight (image-text cosines of
about 0.1-0.4).

Measured in one run (``--threads`` faiss threads; wall clock and process CPU time are both reported, as
the machine may be shared):

1. ``--n-exact`` images, exact index (:func:`cocu.curation.index.make_index` kind ``exact``): our
   batched curation of ``--exact-anchors`` anchors (all by default, as ``cocu curate`` does: neighbours by
   the exact self-join of :mod:`cocu.curation.knn`, then expansion, ranking, clustering, archive part
   writing) vs. a plain loop written from the paper's equations (one index query per anchor, a Python loop
   over its concepts) on ``--loop-anchors`` of them; both must give the same scores. Goal: >= 40x.
2. ``--n-approx`` images, approximate index tuned to recall@k >= 0.95 (``--approx-kind``, default ``auto``): anchors/s
   of our curation over ``--approx-anchors`` anchors (0 = all) end to end (neighbours by the IVF self-join
   of :mod:`cocu.curation.knn`, as ``cocu curate`` does; ``--per-query`` searches the index per anchor
   instead), the recall@k of the neighbours it used against exact search on 1000 anchors, and the peak
   memory. The index build is not timed (``cocu index`` is its own stage). Goal: >= 10,000 anchors/s.

    .venv/bin/python benchmarks/curation.py            # both goals, default sizes (about 8 minutes on 2 cores)
    .venv/bin/python benchmarks/curation.py --n-exact 20000 --n-approx 100000   # quick

The last line printed is one JSON object (``speedup_vs_loop``, ``anchors_per_s``, ``recall_at_k``, ``n``...).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from cocu.curation.archive import archive_table, part_path, write_part
from cocu.curation.engine import Curator, CurationParams
from cocu.curation.expand import CaptionConcepts, find_neighbors
from cocu.curation.index import Searcher, exact_neighbors, faiss_threads, make_index, recall_at_k, searcher_for
from cocu.curation.knn import self_join, self_neighbors, worth_self_join
from cocu.curation.pipeline import index_search
from cocu.curation.rank import EPS
from cocu.curation.store import VectorParts

TOPIC = 6
MAX_CAPTION = 5


def topic_concepts(rng: np.random.Generator, centre: np.ndarray, vocab: int):
    """Concepts of a clustered world: a Zipf-like ``popularity`` [vocab], ``TOPIC`` concepts per centre
    (``topics`` [centres, TOPIC]) and unit concept embeddings [vocab, d] near the centres they describe."""
    popularity = 1.0 / np.arange(1, vocab + 1) ** 0.8
    popularity /= popularity.sum()
    topics = np.stack([rng.choice(vocab, size=TOPIC, replace=False, p=popularity) for _ in range(len(centre))])
    concept_emb = np.zeros((vocab, centre.shape[1]), dtype=np.float32)
    np.add.at(concept_emb, topics.reshape(-1), np.repeat(centre, TOPIC, axis=0))
    weight = np.maximum(np.linalg.norm(concept_emb, axis=1, keepdims=True), 1.0)
    noise = rng.standard_normal((vocab, centre.shape[1]), dtype=np.float32)
    concept_emb += 2.0 * weight * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    concept_emb /= np.linalg.norm(concept_emb, axis=1, keepdims=True)
    return popularity, topics, concept_emb


def make_world(n: int, dim: int, centres: int, vocab: int, rank: int, seed: int, block: int = 100_000):
    """``(images [n, dim], captions CSR, concept_emb [vocab, dim])`` as described in the module docstring."""
    rng = np.random.default_rng(seed)
    centre = rng.standard_normal((centres, dim), dtype=np.float32)
    centre /= np.linalg.norm(centre, axis=1, keepdims=True)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, rank)))
    basis = basis.T.astype(np.float32)  # [rank, dim]
    owner = rng.integers(0, centres, n)
    images = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, block):
        m = min(block, n - start)
        x = centre[owner[start : start + m]]
        x += (0.5 / np.sqrt(rank)) * rng.standard_normal((m, rank), dtype=np.float32) @ basis
        noise = rng.random((m, dim), dtype=np.float32)  # uniform, variance 1/12 (cheaper than Gaussian)
        x += (0.3 * np.sqrt(12.0 / dim)) * (noise - 0.5)
        images[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)

    popularity, topics, concept_emb = topic_concepts(rng, centre, vocab)

    count = np.minimum(1 + rng.poisson(1.5, n), MAX_CAPTION)  # [n]
    from_topic = topics[owner[:, None], rng.integers(0, TOPIC, (n, MAX_CAPTION))]
    ids = np.where(rng.random((n, MAX_CAPTION)) < 0.85, from_topic, rng.choice(vocab, (n, MAX_CAPTION), p=popularity))
    ids = np.sort(np.where(np.arange(MAX_CAPTION)[None, :] < count[:, None], ids, vocab), axis=1)
    keep = ids < vocab
    keep[:, 1:] &= ids[:, 1:] != ids[:, :-1]  # a repeated draw counts once
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(keep.sum(axis=1), out=indptr[1:])
    captions = CaptionConcepts(indptr, ids[keep].astype(np.int32))
    return images, captions, concept_emb


def loop_scores(index, images, captions, concept_emb, anchor: int, k: int) -> dict[int, float]:
    """The t2v scores of one anchor, written directly from eq. 6-8 (authors' normalisation s_a / m + s_b), with
    cosines in float64 as ours (eq. 7 is ill-conditioned for cosines near its floor)."""
    _, found = index.search(images[anchor : anchor + 1], k + 1)
    neighbours = [int(j) for j in found[0] if j != anchor and j >= 0][:k]
    caption_sets = {j: set(captions.row(j).tolist()) for j in neighbours}
    archive = list(dict.fromkeys(captions.row(anchor).tolist() + [c for j in neighbours for c in caption_sets[j]]))
    s_a, refs = {}, {}
    largest = -np.inf
    for c in archive:
        text = concept_emb[c].astype(np.float64)
        s_a[c] = float(np.dot(text, images[anchor]))
        refs[c] = [float(np.dot(text, images[j])) for j in neighbours if c in caption_sets[j]]
        largest = max([largest, s_a[c], *refs[c]])
    m = max(largest, EPS)
    scores = {}
    for c in archive:
        own = max(s_a[c], EPS)
        s_b = 1.0 if not refs[c] else (1 + len(refs[c])) * own / (own + sum(max(r, EPS) for r in refs[c]))
        scores[c] = s_a[c] / m + s_b
    return scores


def curate_timed(
    curator: Curator, anchors: np.ndarray, chunk: int, out: Path, n: int, vocab: int
) -> tuple[float, float, list]:
    """Curate ``anchors`` in chunks and write each archive part; returns (wall s, process CPU s, results)."""
    keys = pa.array([f"{i:08d}" for i in range(n)], pa.string())
    captions = pa.array([""] * n, pa.string())
    names = pa.array([f"c{i}" for i in range(vocab)], pa.string())
    results = []
    start, cpu = time.perf_counter(), time.process_time()
    chunks = ((part, anchors[lo : lo + chunk]) for part, lo in enumerate(range(0, len(anchors), chunk)))
    for part, result in curator.curate_chunks(chunks, seed=0):
        rows = result.rows
        _, _, cap = curator.captions.gather(rows)
        table = archive_table(keys, captions, rows, curator.captions.lengths[rows], cap, result.neighbor_ids,
                              result.archive, result.clusters, names)
        write_part(part_path(out, part), table, {"start": int(rows[0]), "stop": int(rows[-1]) + 1})
        results.append(result)
    return time.perf_counter() - start, time.process_time() - cpu, results


def time_search(
    searcher: Searcher, threads: int, images: np.ndarray, anchors: np.ndarray, k: int, chunk: int
) -> tuple[float, float]:
    """(wall s, process CPU s) per anchor of searching chunk by chunk (the per-query path)."""
    search = index_search(searcher, threads)
    start, cpu = time.perf_counter(), time.process_time()
    for lo in range(0, len(anchors), chunk):
        rows = anchors[lo : lo + chunk]
        find_neighbors(search, images[rows], rows, k)
    return (time.perf_counter() - start) / len(anchors), (time.process_time() - cpu) / len(anchors)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def exact_goal(args, out: Path) -> dict:
    t0 = time.perf_counter()
    images, captions, concept_emb = make_world(args.n_exact, args.dim, args.centres, args.vocab, args.rank, args.seed)
    print(f"[exact] world {args.n_exact} x {args.dim} in {time.perf_counter() - t0:.1f} s; "
          f"{captions.indices.shape[0] / args.n_exact:.2f} concepts per caption", flush=True)
    index, _ = make_index(images, kind="exact", threads=args.threads)
    params = CurationParams(neighbors=args.neighbors, labels=args.labels)
    count = args.n_exact if args.exact_anchors <= 0 else min(args.exact_anchors, args.n_exact)
    rng = np.random.default_rng(args.seed + 1)
    anchors = np.sort(rng.choice(args.n_exact, size=count, replace=False))
    # the pipeline's rule (cocu.curation.pipeline): the exact self-join when at least half the rows are anchors
    self_join = 2 * count >= args.n_exact
    with faiss_threads(args.threads):
        start, cpu = time.perf_counter(), time.process_time()
        table = self_neighbors(images, args.neighbors, threads=args.threads) if self_join else None
        search = None if self_join else index_search(Searcher(index), args.threads)
        curator = Curator(images, captions, concept_emb, search, params, neighbor_table=table)
        setup_s, setup_cpu = time.perf_counter() - start, time.process_time() - cpu
        ours_s, ours_cpu, results = curate_timed(curator, anchors, args.chunk, out / "exact", args.n_exact, args.vocab)
        ours_s, ours_cpu = ours_s + setup_s, ours_cpu + setup_cpu
        search_wall, search_cpu = time_search(Searcher(index), args.threads, images, anchors[:2048], args.neighbors,
                                              args.chunk)
        loop_anchors = anchors[:: max(1, len(anchors) // args.loop_anchors)][: args.loop_anchors]
        start, cpu = time.perf_counter(), time.process_time()
        reference = {
            int(a): loop_scores(index, images, captions, concept_emb, int(a), args.neighbors) for a in loop_anchors
        }
        loop_s, loop_cpu = time.perf_counter() - start, time.process_time() - cpu
    position = {int(a): i for i, a in enumerate(anchors)}
    worst = 0.0
    for a, expected in reference.items():
        chunk_i, local = divmod(position[a], args.chunk)
        arch = results[chunk_i].archive
        mine = arch.valid[local]
        got = {int(c): float(s) for c, s in zip(arch.concept[local][mine], arch.score[local][mine])}
        assert got.keys() == expected.keys(), f"anchor {a}: archive {sorted(got)} != loop {sorted(expected)}"
        for c, value in expected.items():
            assert abs(got[c] - value) <= 1e-4 * max(1.0, abs(value)), f"anchor {a} concept {c}: {got[c]} != {value}"
            worst = max(worst, abs(got[c] - value))
    ours_per, loop_per = ours_s / len(anchors), loop_s / len(loop_anchors)
    speedup = loop_per / ours_per
    cpu_speedup = (loop_cpu / len(loop_anchors)) / (ours_cpu / len(anchors))
    how = "exact self-join" if self_join else "batched exact search"
    print(f"[exact] ours ({how}): {len(anchors)} anchors in {ours_s:.1f} s wall / {ours_cpu:.1f} s CPU "
          f"({1 / ours_per:.0f}/s; neighbour search {setup_s:.1f} s of it); loop: {len(loop_anchors)} anchors in "
          f"{loop_s:.1f} s wall / {loop_cpu:.1f} s CPU ({1 / loop_per:.1f}/s); speedup {speedup:.1f}x wall, "
          f"{cpu_speedup:.1f}x CPU; scores agree (max |diff| {worst:.2e})", flush=True)
    print(f"[exact] batched exact search by chunks (the path for fewer anchors): {search_wall * 1e3:.2f} ms wall, "
          f"{search_cpu * 1e3:.2f} ms CPU per anchor", flush=True)
    return {"n": args.n_exact, "anchors": len(anchors), "loop_anchors": len(loop_anchors), "self_join": self_join,
            "ours_s": round(ours_s, 2), "ours_cpu_s": round(ours_cpu, 2), "neighbor_search_s": round(setup_s, 2),
            "loop_s": round(loop_s, 2), "loop_cpu_s": round(loop_cpu, 2),
            "anchors_per_s": round(1 / ours_per, 1), "loop_anchors_per_s": round(1 / loop_per, 2),
            "speedup_vs_loop": round(speedup, 1), "speedup_vs_loop_cpu": round(cpu_speedup, 1),
            "chunked_search_ms_per_anchor": round(search_wall * 1e3, 3),
            "chunked_search_cpu_ms_per_anchor": round(search_cpu * 1e3, 3), "max_score_diff": worst}


def approx_goal(args, out: Path) -> dict:
    t0 = time.perf_counter()
    images, captions, concept_emb = make_world(args.n_approx, args.dim, args.centres, args.vocab, args.rank, args.seed)
    print(f"[approx] world {args.n_approx} x {args.dim} in {time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    index, info = make_index(images, kind=args.approx_kind, k_check=args.neighbors, threads=args.threads,
                             seed=args.seed, nlist=args.nlist, nprobe=args.nprobe, k_factor=args.k_factor)
    build_s = time.perf_counter() - t0
    print(f"[approx] index {info.kind} {info.params} built and tuned in {build_s:.1f} s: recall@{args.neighbors} "
          f"{info.recall_at_k}, {info.queries_per_second} queries/s", flush=True)
    params = CurationParams(neighbors=args.neighbors, labels=args.labels)
    count = args.n_approx if args.approx_anchors <= 0 else min(args.approx_anchors, args.n_approx)
    anchors = np.arange(count, dtype=np.int64)
    with faiss_threads(args.threads):
        t0, cpu0 = time.perf_counter(), time.process_time()
        # the pipeline's rule (cocu.curation.pipeline): a self-join when at least half the rows are anchors
        searcher = searcher_for(index, VectorParts.from_array(images), info.params)
        table = np.empty((args.n_approx, args.neighbors), dtype=np.int64)
        joined = self_join(index, images, args.neighbors, table, threads=args.threads, seed=args.seed) \
            if worth_self_join(args.n_approx, count) and not args.per_query else None
        search = None if joined is not None else index_search(searcher, args.threads)
        table = None if joined is None else table
        curator = Curator(images, captions, concept_emb, search, params, neighbor_table=table)
        setup_s, setup_cpu = time.perf_counter() - t0, time.process_time() - cpu0
        how = "per-query index search" if joined is None else f"{joined.method} self-join {joined.params}"
        print(f"[approx] neighbours by {how}: {setup_s:.1f} s wall before the first chunk"
              + ("" if joined is None else f" (self-join recall@{args.neighbors} {joined.recall_at_k} on "
                                           f"{joined.n_check} rows)"), flush=True)
        ours_s, ours_cpu, results = curate_timed(
            curator, anchors, args.chunk, out / "approx", args.n_approx, args.vocab
        )
        search_wall, search_cpu = time_search(
            searcher, args.threads, images, anchors[: min(count, 4 * args.chunk)], args.neighbors, args.chunk
        )
        check = np.random.default_rng(args.seed + 2).choice(count, size=min(1000, count), replace=False)
        _, truth = exact_neighbors(images, images[check], args.neighbors + 1)
    found = np.concatenate([r.neighbor_ids for r in results])[check]
    truth = np.stack([row[row != a][: args.neighbors] for row, a in zip(truth, check)])
    recall = recall_at_k(found, truth, args.neighbors)
    rate = count / (ours_s + setup_s)
    cpu_rate = count / (ours_cpu + setup_cpu)
    print(f"[approx] ours: {count} anchors in {ours_s:.1f} s + {setup_s:.1f} s setup wall ({rate:.0f} anchors/s), "
          f"{ours_cpu + setup_cpu:.1f} s CPU ({cpu_rate:.0f} anchors per CPU-second); recall@{args.neighbors} of the "
          f"neighbours used {recall:.4f}; peak RSS {peak_rss_mb():.0f} MiB", flush=True)
    rest_cpu = ours_cpu / count
    print(f"[approx] per-query index search alone: {search_wall * 1e6:.0f} us wall, {search_cpu * 1e6:.0f} us CPU per "
          f"anchor; neighbours before the first chunk: {setup_s / count * 1e6:.0f} us wall per anchor; the chunks "
          f"(expand, rank, cluster, write{'' if joined is not None else ', overlapped search'}): "
          f"{rest_cpu * 1e6:.0f} us CPU per anchor", flush=True)
    return {"n": args.n_approx, "anchors": count, "ours_s": round(ours_s, 2), "setup_s": round(setup_s, 2),
            "cpu_s": round(ours_cpu + setup_cpu, 2), "anchors_per_s": round(rate, 1),
            "anchors_per_cpu_s": round(cpu_rate, 1), "per_query_search_us_per_anchor": round(search_wall * 1e6, 1),
            "per_query_search_cpu_us_per_anchor": round(search_cpu * 1e6, 1),
            "chunks_cpu_us_per_anchor": round(rest_cpu * 1e6, 1),
            "recall_at_k": round(recall, 4), "index": info.to_dict(),
            "neighbor_search": "per-query index search" if joined is None else joined.info(),
            "index_build_s": round(build_s, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-exact", type=int, default=200_000, help="images of goal 1 (exact index)")
    p.add_argument("--exact-anchors", type=int, default=0,
                   help="anchors our curation times in goal 1 (0 = all, as curation does; at least half of the "
                        "images uses the exact self-join, fewer the batched exact search by chunks)")
    p.add_argument("--loop-anchors", type=int, default=300, help="anchors the per-anchor loop times in goal 1")
    p.add_argument("--n-approx", type=int, default=1_000_000, help="images of goal 2 (approximate index); 0 = skip")
    p.add_argument("--approx-anchors", type=int, default=0, help="anchors timed in goal 2 (0 = all)")
    p.add_argument("--approx-kind", default="auto",
                   help="index kind of goal 2 (make_index kinds; auto = the index module's choice)")
    p.add_argument("--nlist", type=int, help="inverted lists of goal 2's index (default: make_index's)")
    p.add_argument("--per-query", action="store_true",
                   help="goal 2 searches the index per anchor (chunk by chunk) instead of the IVF self-join")
    p.add_argument("--nprobe", type=int, help="fix goal 2's nprobe instead of tuning it")
    p.add_argument("--k-factor", type=int, help="fix goal 2's re-ranking factor instead of tuning it")
    p.add_argument("--dim", type=int, default=512, help="embedding dimension (512 = ViT-B/16)")
    p.add_argument("--centres", type=int, default=3000)
    p.add_argument("--rank", type=int, default=32, help="dimension of the within-cluster variation")
    p.add_argument("--vocab", type=int, default=1500, help="concepts")
    p.add_argument("--neighbors", type=int, default=8)
    p.add_argument("--labels", type=int, default=3)
    p.add_argument("--chunk", type=int, default=8192, help="anchors per archive part")
    p.add_argument("--threads", type=int, default=2, help="faiss threads")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    report: dict = {"dim": args.dim, "k": args.neighbors, "threads": args.threads}
    with tempfile.TemporaryDirectory(prefix="cocu-bench-") as tmp:
        if args.n_exact > 0:
            report["exact"] = exact_goal(args, Path(tmp))
        if args.n_approx > 0:
            report["approx"] = approx_goal(args, Path(tmp))
    report["peak_rss_mb"] = round(peak_rss_mb(), 1)
    report["speedup_vs_loop"] = report.get("exact", {}).get("speedup_vs_loop")
    main_run = report.get("approx") or report.get("exact", {})
    report["anchors_per_s"] = main_run.get("anchors_per_s")
    report["recall_at_k"] = report.get("approx", {}).get("recall_at_k", 1.0 if "exact" in report else None)
    report["n"] = main_run.get("n")
    report["goals"] = {
        "speedup_vs_loop>=40": report["speedup_vs_loop"] is not None and report["speedup_vs_loop"] >= 40,
        "anchors_per_s>=10000": "approx" in report and report["anchors_per_s"] >= 10_000,
        "recall_at_k>=0.95": "approx" in report and report["recall_at_k"] >= 0.95,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
