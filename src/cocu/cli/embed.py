"""`cocu embed DATA --encoder ENC --out EMB_DIR`: CLIP image and caption embeddings in clip-retrieval's layout."""

from __future__ import annotations

import argparse
import sys

from cocu.curation.embed import DTYPES, embed_dataset
from cocu.curation.embed_loader import default_workers
from cocu.curation.encoder import PRECISIONS, load_encoder


def add_runtime_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup, workers: bool = True) -> None:
    """``--device``, ``--precision`` (and ``--workers``): how the frozen CLIP runs; results do not depend on them
    beyond the precision's rounding."""
    p.add_argument("--device", default="auto",
                   help="torch device of the encoder (default auto: cuda, this rank's GPU under torchrun, when "
                   "present, else cpu)")
    p.add_argument("--precision", choices=list(PRECISIONS),
                   help="autocast precision of the encoder (default bf16 on cuda, fp32 on cpu)")
    if workers:
        p.add_argument("--workers", type=int, default=default_workers(),
                       help="DataLoader processes that decode and preprocess images (0: in the main process; "
                       "default: the cores minus one, at most 8; here %(default)s)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "embed",
        help="embed a dataset's images and captions with a frozen CLIP (clip-retrieval layout, resumable)",
        description=(
            "Write EMB_DIR/img_emb/img_emb_{i:05d}.npy, text_emb/text_emb_{i:05d}.npy and "
            "metadata/metadata_{i:05d}.parquet "
            "(image_path = sample key, caption, true_concepts when the samples carry them), L2-normalised and "
            "row-aligned, plus rejected.parquet (every sample that could not be used, with its reason). A rerun "
            "into the same folder keeps the finished parts (their captions checked against the data) and "
            "embeds the rest."
        ),
    )
    p.add_argument("data", help="webdataset shards (brace pattern, folder, .tar) or a captions file")
    p.add_argument("--encoder", required=True,
                   help="CLIP: a local folder, a cached hub name (openai/clip-vit-base-patch16) or "
                   "random:clip-tiny[@SEED]")
    p.add_argument("--out", required=True, help="embedding folder (RUN/emb)")
    p.add_argument("--batch-size", type=int, default=256, help="samples encoded at once (default 256)")
    p.add_argument("--rows-per-part", type=int, default=100_000, help="rows per part file (default 100000)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="stored dtype (default float32)")
    add_runtime_arguments(p)
    p.add_argument("--overwrite", action="store_true",
                   help="delete the folder's earlier parts and embed from scratch (needed when it was made from "
                   "other data or with another encoder)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        encoder = load_encoder(args.encoder, device=args.device, batch_size=args.batch_size, precision=args.precision)
        result = embed_dataset(
            args.data,
            encoder,
            args.out,
            batch_size=args.batch_size,
            rows_per_part=args.rows_per_part,
            dtype=args.dtype,
            workers=args.workers,
            overwrite=args.overwrite,
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"cocu embed: error: {err}", file=sys.stderr)
        return 2
    print(f"embedded {result.embedded} samples into {result.out_dir} (dim {result.dim}): "
          f"{result.new_rows} new, {result.kept_rows} kept from finished parts")
    print(f"parts written {result.parts_written or '-'}, kept {result.parts_kept or '-'}")
    print(f"rejected {result.rejected_total} samples (listed in {result.out_dir / 'rejected.parquet'})")
    if result.skips.total:
        print(result.skips.format_table())
    if result.embedded == 0:
        print("cocu embed: error: no sample could be embedded", file=sys.stderr)
        return 1
    return 0
