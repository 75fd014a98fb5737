"""`cocu vocab --encoder ENC --out VOCAB_DIR [--vocab FILE]`: the concept vocabulary and its text embeddings."""

from __future__ import annotations

import argparse
import sys

from cocu.cli.embed import add_runtime_arguments
from cocu.curation.encoder import load_encoder
from cocu.curation.vocab import load_vocabulary, write_vocab_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "vocab",
        help="write the concept vocabulary (concepts.txt) and its CLIP prompt embeddings (concept_emb.npy)",
        description=(
            "Default vocabulary: the class names of the eight segmentation benchmarks and ImageNet-1k, lower-case "
            "singular. --vocab FILE: one concept a line, optional aliases after a colon (car: automobile, auto). "
            "Each concept is embedded as 'a photo of a {concept}.'."
        ),
    )
    p.add_argument("--encoder", required=True,
                   help="CLIP: a local folder, a cached hub name (openai/clip-vit-base-patch16) or "
                   "random:clip-tiny[@SEED]")
    p.add_argument("--out", required=True, help="vocabulary folder (RUN/vocab)")
    p.add_argument("--vocab", help="vocabulary file (default: the benchmark class names)")
    p.add_argument("--batch-size", type=int, default=256, help="prompts encoded at once (default 256)")
    add_runtime_arguments(p, workers=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        vocab = load_vocabulary(args.vocab)
        encoder = load_encoder(args.encoder, device=args.device, batch_size=args.batch_size, precision=args.precision)
        out = write_vocab_dir(vocab, encoder, args.out)
    except (ValueError, FileNotFoundError) as err:
        print(f"cocu vocab: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(vocab)} concepts ({len(vocab.aliases)} aliases) from {vocab.source} to {out}")
    return 0
