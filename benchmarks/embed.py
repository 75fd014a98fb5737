"""Embedding throughput: the bare model, the loader alone and the whole `cocu embed` pipeline, side by side.

On the same synthetic JPEG shards (256 x 256, img2dataset's default size and JPEG quality 95), for
``random:clip-tiny`` and a ViT-B/16-sized CLIP with random weights (``random:clip-vit-b16``):

- model: samples/s of the image and text towers on ready inputs (preprocessed pixel tensors, caption
  strings), i.e. all the work the model does per sample in the pipeline;
- loader: samples/s of the DataLoader alone (read, decode, EXIF-fix, preprocess) with 0 and N workers;
- pipeline: samples/s of ``embed_dataset`` (loader + model + writing the parts) with 0 and N workers.

Goals (issue 10): ViT-B/16 pipeline (N workers) >= 0.9 x its bare model (``pipeline_vs_model``);
clip-tiny pipeline with N = 2 workers >= 1.4 x with 0 workers (``workers_speedup``).

    python benchmarks/embed.py                      # the goal run (minutes on 2 cores)
    python benchmarks/embed.py --tiny-samples 256 --b16-samples 16   # a quick look

The last line is JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from cocu.curation.embed import embed_dataset
from cocu.curation.embed_loader import SampleBatches, batch_loader
from cocu.curation.encoder import FrozenClip, load_encoder
from cocu.data.writer import write_tar

IMAGE_SIZE = 256
JPEG_QUALITY = 95
SAMPLES_PER_SHARD = 100
WORDS = ("red", "dog", "on", "grass", "a", "photo", "of", "the", "blue", "sky", "over", "city", "cat", "tree")


def _image(rng: np.random.Generator) -> bytes:
    """A photo-like 256 x 256 JPEG: a smooth two-colour gradient with shapes and mild noise."""
    ramp = np.linspace(0.0, 1.0, IMAGE_SIZE, dtype=np.float32)[None, :, None]  # [1,W,1]
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    pixels = a * (1 - ramp) + b * ramp + rng.normal(0, 6, (IMAGE_SIZE, IMAGE_SIZE, 3))  # [H,W,3]
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x, y = rng.integers(0, IMAGE_SIZE - 40, 2)
        w, h = rng.integers(20, 120, 2)
        draw.ellipse((int(x), int(y), int(x + w), int(y + h)), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _caption(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(6, 14))))


def write_shards(folder: Path, n: int, seed: int = 0) -> tuple[Path, list[str]]:
    """``n`` samples in shards of 100; returns the folder and the captions in order."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    captions: list[str] = []
    for shard, start in enumerate(range(0, n, SAMPLES_PER_SHARD)):
        samples = []
        for i in range(start, min(n, start + SAMPLES_PER_SHARD)):
            captions.append(_caption(rng))
            samples.append((f"{i:08d}", {"jpg": _image(rng), "txt": captions[-1].encode()}))
        write_tar(folder / f"{shard:05d}.tar", samples)
    return folder, captions


def model_rate(encoder: FrozenClip, data: Path, captions: list[str], n: int, batch_size: int) -> float:
    """Samples/s of both towers on ready inputs (one preprocessed batch, encoded until ``n`` samples)."""
    ready = next(iter(batch_loader(SampleBatches(data, encoder.preprocess, batch_size, {}), 0, False)))
    pixels = ready["pixels"]  # [b,3,S,S]
    texts = captions[: pixels.shape[0]]
    encoder.encode_pixels(pixels[:2])  # warm-up
    encoder.encode_texts(texts[:2])
    rounds = max(1, n // pixels.shape[0])
    start = time.perf_counter()
    for _ in range(rounds):
        encoder.encode_pixels(pixels)
        encoder.encode_texts(texts)
    return rounds * pixels.shape[0] / (time.perf_counter() - start)


def loader_rate(encoder: FrozenClip, data: Path, n: int, batch_size: int, workers: int) -> float:
    start = time.perf_counter()
    loader = batch_loader(SampleBatches(data, encoder.preprocess, batch_size, {}), workers, False)
    rows = sum(len(unit["rows"]) for unit in loader)
    assert rows == n, (rows, n)
    return n / (time.perf_counter() - start)


def pipeline_rate(encoder: FrozenClip, data: Path, n: int, batch_size: int, workers: int, scratch: Path) -> float:
    out = scratch / f"emb-{encoder.spec.replace(':', '_')}-{workers}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    result = embed_dataset(data, encoder, out, batch_size=batch_size, workers=workers)
    seconds = time.perf_counter() - start
    assert result.new_rows == n, (result.new_rows, n)
    shutil.rmtree(out)
    return n / seconds


def measure(spec: str, n: int, batch_size: int, workers: int, scratch: Path) -> dict[str, float]:
    encoder = load_encoder(spec, device="auto", batch_size=batch_size)
    data, captions = write_shards(scratch / f"shards-{n}", n)
    rates = {"model": model_rate(encoder, data, captions, n, min(batch_size, n))}
    for w in (0, workers):
        rates[f"loader_{w}w"] = loader_rate(encoder, data, n, batch_size, w)
    for w in (0, workers):
        rates[f"pipeline_{w}w"] = pipeline_rate(encoder, data, n, batch_size, w, scratch)
    return rates


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny-samples", type=int, default=2048, help="samples for random:clip-tiny")
    parser.add_argument("--b16-samples", type=int, default=128, help="samples for random:clip-vit-b16")
    parser.add_argument("--tiny-batch", type=int, default=256, help="batch size for clip-tiny (default 256)")
    parser.add_argument("--b16-batch", type=int, default=32, help="batch size for ViT-B/16 (default 32)")
    parser.add_argument("--workers", type=int, default=2, help="N, the worker count compared with 0 (default 2)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="cocu-embed-bench-") as tmp:
        scratch = Path(tmp)
        tiny = measure("random:clip-tiny", args.tiny_samples, args.tiny_batch, args.workers, scratch)
        b16 = {}
        if args.b16_samples:
            b16 = measure("random:clip-vit-b16", args.b16_samples, args.b16_batch, args.workers, scratch)
    n = args.workers
    print(f"{'samples/s':<22}{'model':>10}{'loader 0w':>11}{f'loader {n}w':>11}{'pipe 0w':>10}{f'pipe {n}w':>10}")
    for name, rates in (("random:clip-tiny", tiny), ("random:clip-vit-b16", b16) if b16 else ("", {})):
        if not rates:
            continue
        cells = [rates[k] for k in ("model", "loader_0w", f"loader_{n}w", "pipeline_0w", f"pipeline_{n}w")]
        print(f"{name:<22}" + "".join(f"{v:>10.1f} " for v in cells))
    result: dict[str, object] = {
        "pipeline_vs_model": round(b16[f"pipeline_{n}w"] / b16["model"], 3) if b16 else None,
        "workers_speedup": round(tiny[f"pipeline_{n}w"] / tiny["pipeline_0w"], 3),
        # the most N workers can give when the model keeps all its cores: bare model rate / 0-worker pipeline
        "workers_speedup_ceiling": round(tiny["model"] / tiny["pipeline_0w"], 3),
        "workers": n,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "tiny_samples": args.tiny_samples,
        "b16_samples": args.b16_samples,
        **{f"clip_tiny_{k}_per_s": round(v, 1) for k, v in tiny.items()},
        **{f"vit_b16_{k}_per_s": round(v, 2) for k, v in b16.items()},
    }
    result["goals_met"] = bool(b16) and result["pipeline_vs_model"] >= 0.9 and result["workers_speedup"] >= 1.4
    print(f"ViT-B/16 pipeline ({n} workers) / bare model: {result['pipeline_vs_model']} (goal >= 0.9)")
    print(f"clip-tiny pipeline {n} workers / 0 workers: {result['workers_speedup']} (goal >= 1.4; "
          f"ceiling with the model alone on the cores: {result['workers_speedup_ceiling']})")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
