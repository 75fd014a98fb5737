"""Training loader at scale: seconds to the first batch and peak anonymous memory, 10k vs 1M samples.

    nice .venv/bin/python benchmarks/loader.py [--n 10000 1000000] [--per-shard 1000] [--root /tmp/x]

For each size N, writes N tiny synthetic samples (a 16 px JPEG and a caption) as webdataset shards of
``--per-shard`` samples plus an N-row concept archive in parts of 100,000 rows (cocu's archive schema,
captions equal to the shards'), then starts the training process as a subprocess: it resolves a
``text.mode: cocu`` config, runs ``prepare_data`` with the shard index and archive join cached in its
output folder (as ``cocu train`` does), builds ``make_loader`` (batch 64, ``--workers`` loader workers,
64 px images, a byte-level tokenizer: no BPE training, no model) and takes one batch. Measured from the
parent: wall seconds from starting the subprocess to the batch being ready (interpreter start and imports
included), and peak RssAnon (anonymous memory, sampled every 20 ms from /proc) of the training process
(``peak_anon_mib_*``) and of it with its loader and indexing workers (``peak_anon_tree_mib_*``). A second
start on the same output folder measures the run that reuses the caches (``first_batch_cached_s_*``).

Goals (issue 10): first batch at 1M <= 2 x the time at 10k + 30 s; peak anonymous memory at 1M <= 1.5 GiB
above the 10k run. The data (~2 KiB of tar per sample) is written under ``--root`` (default: a new folder
in /tmp) and deleted afterwards unless ``--keep``. The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

CONCEPTS = ["ball", "kite", "house", "tree", "dog", "car", "sky", "grass", "water", "road"]
ARCHIVE_PART_ROWS = 100_000
BATCH = 64


def _tiny_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 60, 200)).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def _header(name: str, size: int) -> bytes:
    """A ustar header block for a regular file (names here are short)."""
    block = bytearray(512)
    block[0 : len(name)] = name.encode()
    block[100:108] = b"0000644\0"
    block[108:116] = b"0000000\0"
    block[116:124] = b"0000000\0"
    block[124:136] = f"{size:011o}\0".encode()
    block[136:148] = b"00000000000\0"
    block[148:156] = b"        "
    block[156:157] = b"0"
    block[257:265] = b"ustar\x0000"
    block[148:156] = f"{sum(block):06o}\0 ".encode()
    return bytes(block)


def _member(name: str, data: bytes) -> bytes:
    return _header(name, len(data)) + data + bytes(-len(data) % 512)


def _caption(i: int) -> str:
    return f"a {CONCEPTS[i % 10]} next to a {CONCEPTS[(i // 10) % 10]} number {i}"


def write_world(root: Path, n: int, per_shard: int) -> None:
    """``root/shards/*.tar``, ``root/run/curation/archive-*.parquet`` and ``root/vocab.txt``."""
    jpeg = _tiny_jpeg()
    (root / "shards").mkdir(parents=True)
    for shard, lo in enumerate(range(0, n, per_shard)):
        chunks = []
        for i in range(lo, min(n, lo + per_shard)):
            key = f"{i:09d}"
            chunks.append(_member(f"{key}.jpg", jpeg))
            chunks.append(_member(f"{key}.txt", _caption(i).encode()))
        chunks.append(bytes(1024))
        (root / "shards" / f"bench-{shard:05d}.tar").write_bytes(b"".join(chunks))
    from cocu.curation.archive import SCHEMA

    (root / "run" / "curation").mkdir(parents=True)
    names = pa.array(CONCEPTS)
    for part, lo in enumerate(range(0, n, ARCHIVE_PART_ROWS)):
        idx = np.arange(lo, min(n, lo + ARCHIVE_PART_ROWS))
        b = idx.shape[0]
        picks = np.stack([idx % 10, (idx // 10) % 10, (idx + 3) % 10], axis=1).reshape(-1)  # [b*3]
        offsets = pa.array(np.arange(0, 3 * b + 1, 3, dtype=np.int32))
        empty = pa.array(np.zeros(b + 1, dtype=np.int32))
        table = pa.Table.from_arrays(
            [
                pa.array([f"{i:09d}" for i in idx.tolist()]),
                pa.array([_caption(i) for i in idx.tolist()]),
                pa.ListArray.from_arrays(empty, pa.array([], pa.string())),
                pa.ListArray.from_arrays(empty, pa.array([], pa.string())),
                pa.ListArray.from_arrays(offsets, names.take(pa.array(picks))),
                pa.ListArray.from_arrays(offsets, pa.array(np.tile([2.0, 1.0, 0.5], b).astype(np.float32))),
                pa.ListArray.from_arrays(offsets, pa.array(np.tile([0, 1, 2], b).astype(np.int32))),
            ],
            schema=SCHEMA,
        )
        pq.write_table(table, root / "run" / "curation" / f"archive-{part}.parquet")
    (root / "vocab.txt").write_text("\n".join(CONCEPTS) + "\n")


def child(root: Path, out: Path, workers: int) -> None:
    """The training process: config, prepare_data (caches in ``out``), make_loader, one batch."""
    started = time.perf_counter()
    from cocu.text.tokenizer import byte_level_tokenizer
    from cocu.train.config import load_config
    from cocu.train.data import make_loader, prepare_data

    imported = time.perf_counter()
    cfg = load_config(
        None,
        [
            f"output={out}",
            f"data.train={root / 'shards'}",
            f"data.archive={root / 'run'}",
            f"text.vocab={root / 'vocab.txt'}",
            "text.mode=cocu",
            f"data.num_workers={workers}",
            f"train.batch_size={BATCH}",
        ],
    )
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(cfg, str(out / "data_index.npz"), progress=False)
    prepared = time.perf_counter()
    loader = make_loader(data, cfg, byte_level_tokenizer(32), 64, 32, rank=0, world=1, start_step=0, end_step=2)
    batch = next(iter(loader))
    done = time.perf_counter()
    assert batch.images.shape == (BATCH, 3, 64, 64)
    timing = {"import_s": imported - started, "prepare_s": prepared - imported, "loader_s": done - prepared}
    print("FIRST_BATCH " + json.dumps({**timing, "samples": len(data)}), flush=True)


def _anon_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            tasks = Path(f"/proc/{current}/task").iterdir()
            kids = [int(k) for task in tasks for k in (task / "children").read_text().split()]
        except OSError:
            kids = []
        found.extend(kids)
        todo.extend(kids)
    return found


def measure(root: Path, out: Path, workers: int) -> dict:
    """Start the training process; seconds to its first batch and its peak anonymous memory (MiB)."""
    cmd = [sys.executable, __file__, "--child", str(root), str(out), "--workers", str(workers)]
    peak = {"main": 0, "tree": 0}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            main = _anon_kib(proc.pid)
            peak["main"] = max(peak["main"], main)
            peak["tree"] = max(peak["tree"], main + sum(_anon_kib(p) for p in _descendants(proc.pid)))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    report, seconds = None, None
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("FIRST_BATCH "):
            seconds = time.perf_counter() - started
            report = json.loads(line.split(" ", 1)[1])
    rc = proc.wait()
    stop.set()
    sampler.join()
    if rc != 0 or report is None or seconds is None:
        raise SystemExit(f"the training process failed (exit {rc})")
    return {
        "first_batch_s": seconds,
        "peak_anon_mib": peak["main"] / 1024,
        "peak_anon_tree_mib": peak["tree"] / 1024,
        **report,
    }


def _label(n: int) -> str:
    return f"{n // 1_000_000}m" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10_000, 1_000_000], help="sample counts (small first)")
    parser.add_argument("--per-shard", type=int, default=1000, help="samples per shard")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers of the training process")
    parser.add_argument("--root", type=Path, default=None, help="folder for the generated data (default: /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    parser.add_argument("--child", nargs=2, type=Path, metavar=("ROOT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args.child[0], args.child[1], args.workers)
        return 0
    base = args.root or Path(tempfile.mkdtemp(prefix="cocu-loader-bench-"))
    results: dict[str, float] = {}
    try:
        for n in args.n:
            root = base / f"n{n}"
            t = time.perf_counter()
            write_world(root, n, args.per_shard)
            shards = -(-n // args.per_shard)
            print(f"N={n}: wrote {shards} shards and the archive in {time.perf_counter() - t:.1f} s", flush=True)
            cold = measure(root, root / "out", args.workers)
            warm = measure(root, root / "out", args.workers)
            label = _label(n)
            results[f"first_batch_s_{label}"] = round(cold["first_batch_s"], 2)
            results[f"peak_anon_mib_{label}"] = round(cold["peak_anon_mib"], 1)
            results[f"peak_anon_tree_mib_{label}"] = round(cold["peak_anon_tree_mib"], 1)
            results[f"first_batch_cached_s_{label}"] = round(warm["first_batch_s"], 2)
            print(
                f"N={n}: first batch {cold['first_batch_s']:.1f} s (imports {cold['import_s']:.1f}, index + join "
                f"{cold['prepare_s']:.1f}, loader {cold['loader_s']:.1f}); cached {warm['first_batch_s']:.1f} s; "
                f"peak anon {cold['peak_anon_mib']:.0f} MiB (with workers {cold['peak_anon_tree_mib']:.0f} MiB)",
                flush=True,
            )
            if not args.keep:
                shutil.rmtree(root)
    finally:
        if not args.keep and args.root is None:
            shutil.rmtree(base, ignore_errors=True)
    if len(args.n) >= 2:
        small, large = _label(args.n[0]), _label(args.n[-1])
        t_small, t_large = results[f"first_batch_s_{small}"], results[f"first_batch_s_{large}"]
        m_small, m_large = results[f"peak_anon_mib_{small}"], results[f"peak_anon_mib_{large}"]
        print(
            f"first batch {large} / ({small} x 2 + 30 s): {t_large / (2 * t_small + 30):.2f} (goal <= 1); "
            f"peak anon {large} - {small}: {m_large - m_small:.0f} MiB (goal <= 1536)"
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
