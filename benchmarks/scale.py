"""Curation at scale, out of core: `cocu index` and `cocu archive` on N clustered 512-d float16 embeddings.

For each ``--n`` the script writes, part by part (``--rows-per-part`` rows), a run folder in clip-retrieval's
layout: ``emb/img_emb/img_emb_{i:05d}.npy`` (float16, unit rows), ``emb/metadata/metadata_{i:05d}.parquet``
(``image_path``, ``caption``; no caption embeddings: vision-driven curation does not need them) and a
vocabulary folder ``vocab/`` (``concepts.txt``, ``concept_emb.npy``, ``vocab.txt``). The world follows
``benchmarks/curation.py``: images spread over ``n / --cluster-size`` unit centres plus variation in a
shared low-rank subspace plus noise; each centre has a topic of 6 concepts; a caption names 1-5 concepts,
each from its centre's topic with probability 0.85, and ends in a number (so captions are distinct). The
centres come in families (``--family-size``, default 64 a family; cosine about 0.6 between siblings, 0
between families), as CLIP's image embeddings are organised by semantic category; ``--family-size 0`` draws
independent centres (near-orthogonal, nothing above the clusters), a stress case in which an HNSW coarse
quantiser cannot find the nearest centroid (see :mod:`cocu.curation.index`).

Then it runs ``cocu index RUN/emb --out RUN/index --no-caption --max-memory M`` (``--max-memory``, default
4.29 GB = the 4 GiB goal) and ``cocu archive RUN`` as subprocesses, sampling each one's RssAnon from
``/proc/PID/status`` every 50 ms, and reports per stage: seconds, peak anonymous MiB, anchors/s, recall@8 of
the neighbours used (the IVF self-join's measured recall, or the index's when it searched), rows archived,
and where the time went (from the stages' log lines).

Goals (issue 10): at N = 10,000,000, peak anonymous memory <= 4 GiB per stage, every row archived,
recall@8 >= 0.95, archive >= 5,000 anchors/s.

    nice .venv/bin/python benchmarks/scale.py --n 1000000
    nice .venv/bin/python benchmarks/scale.py --n 1000000 10000000 --keep /big/disk/scale
    nice .venv/bin/python benchmarks/scale.py --archive-only /big/disk/scale/n10000000   # the archive stage again

The last line printed is one JSON object (``anchors_per_s_1m``, ``anchors_per_s_10m``, ``index_s_10m``,
``peak_anon_mib_index``, ``peak_anon_mib_archive``, ``recall_at_k``, and ``runs`` per N).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cocu.curation.vocab import Vocabulary
from curation import TOPIC, topic_concepts  # benchmarks/curation.py: the same clustered world

DIM, MAX_CAPTION = 512, 5
COCU = [sys.executable, "-m", "cocu"]
GOAL_ANON_MIB, GOAL_RATE, GOAL_RECALL = 4096, 5000, 0.95
SYLLABLES = [c + v for c in "bdfgklmnprtvz" for v in "aeiou"]


def concept_names(count: int, rng: np.random.Generator) -> list[str]:
    """``count`` distinct made-up three-syllable words (no inflection ambiguity: none ends in ``s``)."""
    names: dict[str, None] = {}
    while len(names) < count:
        names["".join(rng.choice(SYLLABLES, 3))] = None
    return list(names)


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_centres(rng: np.random.Generator, centres: int, family_size: int, spread: float) -> np.ndarray:
    """Unit centres [centres, DIM]: with ``family_size`` > 0, each is its family's random unit direction plus
    ``spread`` times a random unit direction, normalised (about ``family_size`` centres a family); with 0,
    independent random unit vectors (near-orthogonal, no structure above the clusters)."""
    if family_size <= 0:
        return unit_rows(rng.standard_normal((centres, DIM), dtype=np.float32))
    families = unit_rows(rng.standard_normal((max(1, centres // family_size), DIM), dtype=np.float32))
    offsets = unit_rows(rng.standard_normal((centres, DIM), dtype=np.float32))
    return unit_rows(families[rng.integers(0, len(families), centres)] + spread * offsets)


def write_world(run: Path, n: int, rows_per_part: int, cluster_size: int, vocab: int, seed: int,
                family_size: int = 64, spread: float = 0.8) -> dict:
    rng = np.random.default_rng(seed)
    centres = max(16, n // cluster_size)
    centre = make_centres(rng, centres, family_size, spread)
    rank = 16
    basis = np.linalg.qr(rng.standard_normal((DIM, rank)))[0].T.astype(np.float32)  # [rank, DIM]
    popularity, topics, concept_emb = topic_concepts(rng, centre, vocab)
    names = concept_names(vocab, rng)
    (run / "vocab").mkdir(parents=True)
    (run / "vocab" / "concepts.txt").write_text("\n".join(names) + "\n", "utf-8")
    (run / "vocab" / "vocab.txt").write_text("\n".join(Vocabulary(names).to_lines()) + "\n", "utf-8")
    np.save(run / "vocab" / "concept_emb.npy", concept_emb)
    for sub in ("img_emb", "metadata"):
        (run / "emb" / sub).mkdir(parents=True)
    words = np.array(names)
    for part, start in enumerate(range(0, n, rows_per_part)):
        m = min(rows_per_part, n - start)
        prng = np.random.default_rng([seed, part])
        owner = prng.integers(0, centres, m)
        x = centre[owner]
        x += (0.5 / np.sqrt(rank)) * prng.standard_normal((m, rank), dtype=np.float32) @ basis
        x += (0.3 * np.sqrt(12.0 / DIM)) * (prng.random((m, DIM), dtype=np.float32) - 0.5)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        np.save(run / "emb" / "img_emb" / f"img_emb_{part:05d}.npy", x.astype(np.float16))
        count = np.minimum(1 + prng.poisson(1.5, m), MAX_CAPTION)
        from_topic = topics[owner[:, None], prng.integers(0, TOPIC, (m, MAX_CAPTION))]
        other = prng.choice(vocab, (m, MAX_CAPTION), p=popularity)
        ids = np.where(prng.random((m, MAX_CAPTION)) < 0.85, from_topic, other)
        captions = [
            "a photo of " + " and ".join(dict.fromkeys(words[ids[i, : count[i]]].tolist())) + f" number {start + i}"
            for i in range(m)
        ]
        keys = [f"{start + i:09d}" for i in range(m)]
        pq.write_table(pa.table({"image_path": keys, "caption": captions}),
                       run / "emb" / "metadata" / f"metadata_{part:05d}.parquet")
    return {"centres": centres, "family_size": family_size, "parts": -(-n // rows_per_part), "vocab": vocab}


def run_sampled(cmd: list[str], log: Path) -> tuple[float, float, int, datetime]:
    """Run ``cmd`` (stdout and stderr to ``log``); ``(seconds, peak RssAnon MiB, return code, start time)``."""
    peak = [0]
    with open(log, "wb") as out:
        started, start = datetime.now(), time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample() -> None:
            status = Path(f"/proc/{proc.pid}/status")
            while not done.is_set():
                try:
                    found = re.search(r"RssAnon:\s+(\d+) kB", status.read_text())
                except OSError:
                    break
                if found:
                    peak[0] = max(peak[0], int(found.group(1)))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
    return seconds, peak[0] / 1024.0, code, started


PHASES = {
    "index": [("start-up, open and check embeddings", None), ("train", "training "), ("add", "adding "),
              ("exact neighbours of check rows, tuning", "exact neighbours of"), ("write and exit", "wrote ")],
    "archive": [("start-up, open and check embeddings", None), ("caption concepts", "embeddings: "),
                ("keys, duplicates, finished parts", "caption concepts of"),
                ("self-join: exact neighbours of its check rows", "self-join of"),
                ("self-join: fewest lists probed for its recall", "IVF self-join probing"),
                ("self-join", "IVF self-join of every row"),
                ("curate and write parts", "neighbours ready"), ("summary and exit", "wrote ")],
}


def where_time_goes(log: Path, stage: str, started: datetime, total: float) -> dict[str, float]:
    """Seconds per phase of a stage, each from its first log line to the next phase's (1 s resolution)."""
    marks = [(PHASES[stage][0][0], started.replace(microsecond=0))]
    for line in log.read_text("utf-8", errors="replace").splitlines():
        found = re.match(r"^(\d\d:\d\d:\d\d) \S+: (.*)$", line)
        if not found:
            continue
        for name, prefix in PHASES[stage][1:]:
            if found.group(2).startswith(prefix) and name not in dict(marks):
                clock = datetime.strptime(found.group(1), "%H:%M:%S").time()
                marks.append((name, datetime.combine(started.date(), clock)))
    marks.sort(key=lambda mark: mark[1])
    end = started.timestamp() + total
    return {name: round((marks[i + 1][1].timestamp() if i + 1 < len(marks) else end) - at.timestamp(), 1)
            for i, (name, at) in enumerate(marks)}


def one_size(args, n: int, root: Path) -> dict:
    run = root / f"n{n}"
    if run.exists():
        shutil.rmtree(run)
    start = time.perf_counter()
    world = write_world(run, n, args.rows_per_part, args.cluster_size, args.vocab, args.seed,
                        args.family_size, args.family_spread)
    write_s = time.perf_counter() - start
    print(f"[{n}] wrote {n} x {DIM} float16 embeddings in {world['parts']} parts + captions in {write_s:.0f} s",
          flush=True)
    index_cmd = COCU + ["index", str(run / "emb"), "--out", str(run / "index"), "--no-caption",
                        "--max-memory", str(args.max_memory)]
    for flag, value in (("--nlist", args.nlist), ("--train-size", args.train_size)):
        if value:
            index_cmd += [flag, str(value)]
    index_s, index_mib, code, index_start = run_sampled(index_cmd, run / "index.log")
    if code:
        raise SystemExit(f"cocu index failed ({code}):\n{(run / 'index.log').read_text()[-3000:]}")
    info = json.loads((run / "index" / "index_info.json").read_text())["image"]
    print(f"[{n}] cocu index: {index_s:.0f} s, peak anon {index_mib:.0f} MiB; {info['kind']} {info['params']} "
          f"recall@{info['k_check']} {info['recall_at_k']}", flush=True)
    result = {
        "n": n, "write_s": round(write_s, 1),
        "index_s": round(index_s, 1), "peak_anon_mib_index": round(index_mib, 1), "index": info,
        "index_time": where_time_goes(run / "index.log", "index", index_start, index_s),
        **archive_stage(run, n, info),
    }
    print(f"[{n}] where the time goes: index {result['index_time']}; archive {result['archive_time']}", flush=True)
    if not args.keep:
        shutil.rmtree(run)
    return result


def archive_stage(run: Path, n: int, info: dict) -> dict:
    """Run ``cocu archive RUN`` on a run folder with ``emb/``, ``vocab/``, ``index/`` and report its figures."""
    archive_s, archive_mib, code, archive_start = run_sampled(COCU + ["archive", str(run)], run / "archive.log")
    if code:
        raise SystemExit(f"cocu archive failed ({code}):\n{(run / 'archive.log').read_text()[-3000:]}")
    summary = json.loads((run / "summary.json").read_text())
    searched = summary.get("neighbor_search", {})
    recall = searched.get("recall_at_k") if searched.get("method") != "index search" else info["recall_at_k"]
    if searched.get("method") == "exact self-join":
        recall = 1.0
    archived = sum(pq.ParquetFile(p).metadata.num_rows for p in (run / "curation").glob("archive-*.parquet"))
    rate = archived / archive_s
    print(f"[{n}] cocu archive: {archive_s:.0f} s ({rate:.0f} anchors/s), peak anon {archive_mib:.0f} MiB, "
          f"{archived} of {n} rows archived, recall@8 of the neighbours used {recall} ({searched.get('method')})",
          flush=True)
    return {
        "archive_s": round(archive_s, 1), "peak_anon_mib_archive": round(archive_mib, 1),
        "anchors_per_s": round(rate, 1), "recall_at_k": recall, "rows_archived": archived,
        "all_rows_archived": archived == n, "neighbor_search": searched,
        "archive_time": where_time_goes(run / "archive.log", "archive", archive_start, archive_s),
    }


ARCHIVE_INPUTS = ("emb", "vocab", "index", "index.log")


def archive_only(runs: list[str]) -> int:
    """``--archive-only``: the archive stage again, from scratch (every other file of the run folder, its
    cache included, removed first), on run folders an earlier ``--keep`` run wrote; one JSON line."""
    results = {}
    for folder in map(Path, runs):
        if not (folder / "index" / "index_info.json").is_file() or not (folder / "vocab").is_dir():
            raise SystemExit(f"{folder}: not a run folder of `scale.py --keep` (no index/index_info.json or vocab/)")
        for entry in folder.iterdir():
            if entry.name in ARCHIVE_INPUTS:
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        info = json.loads((folder / "index" / "index_info.json").read_text())["image"]
        results[str(info["n"])] = {"n": info["n"], "index": info, **archive_stage(folder, info["n"], info)}
        print(f"[{info['n']}] where the time goes: archive {results[str(info['n'])]['archive_time']}", flush=True)
    print(json.dumps({"archive_only": True, "cpus": len(os.sched_getaffinity(0)), "runs": results}))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=[1_000_000], help="embedding rows, one run each")
    p.add_argument("--rows-per-part", type=int, default=100_000, help="rows per embedding part (default 100000)")
    p.add_argument("--cluster-size", type=int, default=300, help="images per centre (default 300)")
    p.add_argument("--family-size", type=int, default=64,
                   help="centres per family (default 64; 0 = independent near-orthogonal centres)")
    p.add_argument("--family-spread", type=float, default=0.8,
                   help="a centre is its family's direction plus this times a random one (default 0.8: cosine "
                        "about 0.78 to the family, 0.6 between siblings)")
    p.add_argument("--nlist", type=int, help="cocu index --nlist (default: cocu's own choice)")
    p.add_argument("--train-size", type=int, help="cocu index --train-size (default: cocu's own choice)")
    p.add_argument("--vocab", type=int, default=1000, help="concepts (default 1000)")
    p.add_argument("--max-memory", type=float, default=GOAL_ANON_MIB * 2**20 / 1e9,
                   help="cocu index --max-memory in GB (default 4.29 = the 4 GiB goal)")
    p.add_argument("--keep", help="write the run folders here and keep them (default: a temporary folder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--archive-only", nargs="+", metavar="RUN",
                   help="only measure `cocu archive` again, from scratch, on run folders a --keep run wrote "
                        "(e.g. KEEP/n10000000); everything in them but emb/, vocab/, index/ is removed first")
    args = p.parse_args(argv)
    if args.archive_only:
        return archive_only(args.archive_only)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cocu-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        runs = {str(n): one_size(args, n, root) for n in args.n}
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    largest = runs[str(max(args.n))]

    def pick(n: int, key: str):
        return runs[str(n)][key] if str(n) in runs else None

    report = {
        "anchors_per_s_1m": pick(1_000_000, "anchors_per_s"),
        "anchors_per_s_10m": pick(10_000_000, "anchors_per_s"),
        "index_s_10m": pick(10_000_000, "index_s"),
        "peak_anon_mib_index": largest["peak_anon_mib_index"],
        "peak_anon_mib_archive": largest["peak_anon_mib_archive"],
        "recall_at_k": largest["recall_at_k"],
        "n": max(args.n),
        "goals": {"peak_anon_mib": GOAL_ANON_MIB, "anchors_per_s": GOAL_RATE, "recall_at_k": GOAL_RECALL},
        "cpus": len(os.sched_getaffinity(0)),
        "runs": runs,
    }
    for n, r in runs.items():
        print(f"N={n}: index {r['index_s']} s / {r['peak_anon_mib_index']} MiB anon "
              f"({r['peak_anon_mib_index'] / GOAL_ANON_MIB:.2f} x goal); archive {r['archive_s']} s / "
              f"{r['peak_anon_mib_archive']} MiB anon ({r['peak_anon_mib_archive'] / GOAL_ANON_MIB:.2f} x goal), "
              f"{r['anchors_per_s']} anchors/s ({r['anchors_per_s'] / GOAL_RATE:.2f} x goal), recall@8 "
              f"{r['recall_at_k']}, all rows archived: {r['all_rows_archived']}")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
