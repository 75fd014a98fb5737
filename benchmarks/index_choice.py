"""Measure FAISS index kinds for curation's image-to-image expansion: build time, recall@k, queries/s.

Data: ``--n`` L2-normalised ``--dim``-d vectors around ``--centres`` random unit centres with Gaussian
noise (``--noise`` = noise norm / centre norm; 0.75 puts two members of a cluster at cosine ~0.64, a
member and its centre at ~0.8). Queries are database rows, as in curation (each anchor looks up its
own neighbours). For every kind, :func:`cocu.curation.index.make_index` trains, fills and tunes the
index to ``--target`` recall@k on ``--check`` rows (the query row itself left out). Then, in
``--rounds`` rounds that interleave the kinds (so that all see the same machine load), each tuned index
answers ``--queries`` rows with ``--threads`` faiss threads; throughput is reported by the wall clock
(best round) and per busy core (queries / (process CPU seconds / threads), median round): the latter is
what ``--threads`` dedicated cores would do when the machine is shared with other work.

    .venv/bin/python benchmarks/index_choice.py --n 1000000 --dim 512 --threads 2

Prints one line per kind and, last, one JSON line with every measurement.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np

from cocu.curation.index import exact_neighbors, faiss_threads, make_index, recall_at_k, searcher_for
from cocu.curation.store import VectorParts


def clustered(n: int, dim: int, centres: int, noise: float, seed: int, chunk: int = 100_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim), dtype=np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        noise_rows = (noise / np.sqrt(dim)) * rng.standard_normal((m, dim), dtype=np.float32)
        block = c[rng.integers(0, centres, m)] + noise_rows
        x[start : start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return x


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--centres", type=int, default=3000)
    p.add_argument("--noise", type=float, default=0.75)
    p.add_argument("--k", type=int, default=8, help="recall@k (the expansion's N)")
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--check", type=int, default=1000, help="rows of the recall check / tuning")
    p.add_argument("--queries", type=int, default=20_000, help="rows of the throughput measurement")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--kinds", default="ivf,ivfsq,ivfpq,hnsw")
    p.add_argument("--nlist", type=int, help="lists of the IVF kinds (default: make_index's)")
    p.add_argument("--rounds", type=int, default=3, help="throughput rounds (kinds interleaved)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")

    t0 = time.perf_counter()
    x = clustered(args.n, args.dim, args.centres, args.noise, args.seed)
    print(f"data: {args.n} x {args.dim}, {args.centres} centres, noise {args.noise} ({time.perf_counter() - t0:.1f} s)")
    rng = np.random.default_rng(args.seed + 1)
    q_ids = np.sort(rng.choice(args.n, size=min(args.queries, args.n), replace=False))
    eval_ids = q_ids[: min(args.check, len(q_ids))]
    results: dict[str, dict] = {}
    with faiss_threads(args.threads):
        start = time.perf_counter()
        _, truth = exact_neighbors(x, x[eval_ids], args.k + 1)
        exact_qps = len(eval_ids) / (time.perf_counter() - start)
        results["exact"] = {"queries_per_second": round(exact_qps, 1), "recall": 1.0, "build_s": 0.0}
        print(f"exact: {exact_qps:.0f} q/s (brute force over {args.n}; {len(eval_ids)} rows)")
    built = {}
    for kind in [k.strip() for k in args.kinds.split(",") if k.strip()]:
        start, cpu_start = time.perf_counter(), time.process_time()
        index, info = make_index(
            x, kind=kind, k_check=args.k, n_check=args.check, target_recall=args.target, nlist=args.nlist,
            threads=args.threads, seed=args.seed,
        )
        build_s, build_cpu = time.perf_counter() - start, time.process_time() - cpu_start
        searcher = searcher_for(index, VectorParts.from_array(x), info.params)  # re-ranked kinds read full rows
        with faiss_threads(args.threads):
            _, found = searcher(x[eval_ids], args.k + 1)
        recall = recall_at_k(found, truth, args.k, eval_ids)
        built[kind] = searcher
        results[kind] = {"build_s": round(build_s, 1), "build_cpu_s": round(build_cpu, 1), "recall": round(recall, 4),
                         "params": info.params, "wall_qps": [], "cpu_qps": []}
        print(f"{kind}: build {build_s:.1f} s wall / {build_cpu:.1f} s CPU, recall@{args.k} {recall:.4f}, "
              f"{info.params}")
    # Throughput rounds interleave the kinds so that every kind sees the same machine load.
    with faiss_threads(args.threads):
        for _ in range(args.rounds):
            for kind, searcher in built.items():
                searcher(x[q_ids[:500]], args.k + 1)  # warm-up
                start, cpu_start = time.perf_counter(), time.process_time()
                searcher(x[q_ids], args.k + 1)
                wall = time.perf_counter() - start
                cpu = max((time.process_time() - cpu_start) / args.threads, 1e-9)
                results[kind]["wall_qps"].append(round(len(q_ids) / wall, 1))
                results[kind]["cpu_qps"].append(round(len(q_ids) / cpu, 1))
    for kind in built:
        r = results[kind]
        r["queries_per_second"] = max(r["wall_qps"])
        r["queries_per_second_cpu"] = round(float(np.median(r["cpu_qps"])), 1)
        print(f"{kind}: {r['queries_per_second']:.0f} q/s wall (best of {args.rounds}), "
              f"{r['queries_per_second_cpu']:.0f} q/s per {args.threads} busy core(s) (median), recall@{args.k} "
              f"{r['recall']:.4f}")
    print(json.dumps({"n": args.n, "dim": args.dim, "centres": args.centres, "noise": args.noise, "k": args.k,
                      "threads": args.threads, "target": args.target, "results": results}))


if __name__ == "__main__":
    main()
