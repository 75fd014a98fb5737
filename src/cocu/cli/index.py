"""`cocu index EMB_DIR --out INDEX_DIR`: FAISS indexes of the image (and caption) embeddings."""

from __future__ import annotations

import argparse
import logging
import sys

from cocu.curation.index import DEFAULT_EXACT_MAX, KINDS, default_max_memory, index_embeddings
from cocu.curation.store import EmbeddingStore


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "index",
        help="build FAISS indexes (image.index, caption.index) over embeddings made by `cocu embed`",
        description=(
            "Exact inner-product search up to --exact-max vectors, above it an approximate index whose recall@k "
            "against exact search is measured on --n-check sampled rows, printed and stored in "
            "INDEX_DIR/index_info.json."
        ),
    )
    p.add_argument("emb_dir", help="embedding folder (ours or clip-retrieval's)")
    p.add_argument("--out", required=True, help="index folder (RUN/index)")
    p.add_argument("--kind", choices=KINDS, default="auto", help="index kind (default auto)")
    p.add_argument("--exact-max", type=int, default=DEFAULT_EXACT_MAX,
                   help=f"auto: exact search up to this many vectors (default {DEFAULT_EXACT_MAX})")
    p.add_argument("--k-check", type=int, default=8, help="k of the recall@k check (default 8, the expansion's N)")
    p.add_argument("--n-check", type=int, default=1000, help="query rows of the recall check (default 1000)")
    p.add_argument("--target-recall", type=float, default=0.95,
                   help="search parameters are tuned to reach this recall@k (default 0.95)")
    p.add_argument("--nlist", type=int,
                   help="inverted lists (default about 4*sqrt(n) up to 2^20 rows, then about one per 150 rows)")
    p.add_argument("--train-size", type=int,
                   help="k-means training rows (default 40 per list, at most 262144, but at least 8 per list)")
    p.add_argument("--nprobe", type=int, help="fix nprobe instead of tuning it")
    p.add_argument("--k-factor", type=int, help="fix the re-ranking factor instead of tuning it")
    p.add_argument("--ef-search", type=int, help="fix HNSW efSearch instead of tuning it")
    p.add_argument("--threads", type=int, help="faiss threads (default: all cores)")
    p.add_argument("--max-memory", type=float, default=default_max_memory(),
                   help="GB the index may take: auto picks the most accurate kind that fits; a kind that does "
                        "not fit is refused before building (default: half of this machine's RAM)")
    p.add_argument("--no-caption", action="store_true", help="build only image.index")
    p.add_argument("--seed", type=int, default=0, help="seed of the training sample and check queries")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        store = EmbeddingStore([args.emb_dir])
        store.check_finite()
        infos = index_embeddings(
            store.image,
            None if args.no_caption else store.text,
            args.out,
            kind=args.kind,
            exact_max=args.exact_max,
            k_check=args.k_check,
            n_check=args.n_check,
            target_recall=args.target_recall,
            nlist=args.nlist,
            train_size=args.train_size,
            nprobe=args.nprobe,
            k_factor=args.k_factor,
            ef_search=args.ef_search,
            threads=args.threads,
            max_memory=args.max_memory,
            seed=args.seed,
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"cocu index: error: {err}", file=sys.stderr)
        return 2
    for name, info in infos.items():
        recall = "exact" if info.recall_at_k is None else f"recall@{info.k_check} {info.recall_at_k:.4f}"
        qps = "" if info.queries_per_second is None else f", {info.queries_per_second:.0f} queries/s"
        print(f"{name}: {info.kind} over {info.n} x {info.dim} ({recall}{qps}; {info.params}; "
              f"about {info.memory_bytes / 1e9:.2f} GB; built in {info.build_seconds:.1f} s)")
    print(f"wrote {args.out}")
    return 0
