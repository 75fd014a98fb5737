"""Training-step throughput: our loader + trainer vs. the bare model on tensors already in memory.

    .venv/bin/python benchmarks/train_step.py [--model groupvit-tiny] [--batch 32] [--steps 12] [--workers 1]
        [--device cpu|cuda|auto] [--precision fp32|bf16]

Writes ``--samples`` 64 px JPEG samples as webdataset shards plus a concept archive into a temporary
folder, then measures, in one process:

- ``trainer``: ``cocu.train.trainer.train`` in ``text.mode: cocu`` (shard index, JPEG decoding, random
  resized crop + flip + colour jitter, cluster-guided concept sampling, templates, tokenisation, forward,
  eq. 5 loss, backward, gradient clipping, AdamW, schedule, logging), timed between the ``on_step``
  callbacks of steps ``--warmup`` and ``--steps - 1`` (the last step writes the final checkpoint, which
  falls outside that window);
- ``bare``: the same model's image + text forward, the same loss, backward and AdamW step, repeated on
  one batch taken from the loader beforehand (no data work at all); measured before and after the
  trainer, and averaged, so that background load affects both alike.

Both run on ``--device`` (``auto``: CUDA when present) with ``--precision`` (bf16: autocast, as
``train.precision``); on CUDA each timed bare step ends with a synchronisation.

Prints both rates and their ratio; the last line is a JSON object with ``ratio``, ``trainer_img_per_s``
and ``bare_img_per_s``.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from cocu.curation.archive import SCHEMA
from cocu.data.writer import ShardWriter
from cocu.models.factory import build_model, get_model_spec
from cocu.train.config import load_config
from cocu.train.data import make_loader, prepare_data
from cocu.train.optim import build_optimizer
from cocu.text.tokenizer import load_tokenizer, train_bpe_tokenizer
from cocu.train.distributed import resolve_device
from cocu.train.trainer import TrainModule, batch_to_device, train

CONCEPTS = ["ball", "kite", "house", "tree", "dog", "car", "sky", "grass", "water", "road"]


def _jpeg(rs: np.random.Generator, size: int) -> bytes:
    arr = np.empty((size, size, 3), dtype=np.uint8)
    arr[:] = rs.integers(0, 256, 3)
    for _ in range(3):
        y, x = rs.integers(0, size - size // 4, 2)
        arr[y : y + size // 4, x : x + size // 4] = rs.integers(0, 256, 3)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_data(root: Path, samples: int, size: int, seed: int = 0) -> tuple[Path, Path]:
    rs = np.random.default_rng(seed)
    rows = []
    with ShardWriter(root / "shards", prefix="bench", samples_per_shard=1000) as writer:
        for i in range(samples):
            picked = [CONCEPTS[k] for k in rs.choice(len(CONCEPTS), 6, replace=False)]
            caption = f"a photo of a {picked[0]} next to a {picked[1]}"
            key = f"b{i:06d}"
            writer.write(key, {"jpg": _jpeg(rs, size), "txt": caption.encode()})
            scores = sorted(rs.random(6).tolist(), reverse=True)
            rows.append({
                "key": key, "caption": caption, "caption_concepts": picked[:2], "neighbors": [],
                "concepts": picked, "scores": scores, "clusters": [0, 1, 2, 0, 1, 2],
            })
    (root / "run" / "curation").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), root / "run" / "curation" / "archive-0.parquet")
    return root / "shards", root / "run"


def bare_rate(cfg, module: TrainModule, batch, steps: int) -> float:
    """Images/s of forward + loss + backward + AdamW on one in-memory batch (after one untimed step)."""
    optimizer, _ = build_optimizer(module, cfg.optim, total_steps=1000, steps_per_epoch=100)
    cuda = batch.images.device.type == "cuda"
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = module(batch).total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return batch.images.shape[0] * steps / sum(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="groupvit-tiny")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12, help="trainer steps (the timed window starts after --warmup)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader worker processes (0 = in-process)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--samples", type=int, default=None, help="samples written (default: enough for one epoch)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="as train.device")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="as train.precision")
    args = parser.parse_args()
    timed = args.steps - 1 - args.warmup  # trainer steps timed (and bare steps run)
    if timed < 1:
        parser.error("--steps must exceed --warmup + 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device, local_rank=0)
    spec = get_model_spec(args.model)
    samples = args.samples or args.batch * (args.steps + 1)
    with tempfile.TemporaryDirectory() as tmp:
        train_dir, archive = write_data(Path(tmp), samples, spec.image_size)
        cfg = load_config(None, [
            f"output={tmp}/out", f"data.train={train_dir}", f"data.archive={archive}", "text.mode=cocu",
            f"model.config={args.model}", f"model.tokenizer={tmp}/tokenizer", f"data.num_workers={args.workers}",
            f"train.batch_size={args.batch}", f"train.max_steps={args.steps}", "train.checkpoint_every=100000",
            "train.log_every=100000", "optim.warmup=0", "optim.warmup_unit=steps", f"train.device={device.type}",
            f"train.precision={args.precision}",
        ])
        data = prepare_data(cfg, None, progress=False)
        train_bpe_tokenizer(data.tokenizer_corpus(), vocab_size=512, max_length=spec.max_text_length).save_pretrained(
            f"{tmp}/tokenizer"
        )
        tokenizer = load_tokenizer(f"{tmp}/tokenizer", max_length=spec.max_text_length)
        batch = next(iter(make_loader(data, cfg, tokenizer, spec.image_size, spec.max_text_length, rank=0, world=1,
                                      start_step=0, end_step=1)))
        batch = batch_to_device(batch, device)
        bf16 = args.precision == "bf16"
        module = TrainModule(build_model(args.model, tokenizer, seed=0), multilabel=True, bf16=bf16).to(device).train()
        bare_before = bare_rate(cfg, module, batch, timed)

        stamps: dict[int, float] = {}
        train(cfg, on_step=lambda info: stamps.__setitem__(info.step, time.perf_counter()))
        trainer = args.batch * timed / (stamps[args.steps - 1] - stamps[args.warmup])

        bare_after = bare_rate(cfg, module, batch, timed)
    bare = (bare_before + bare_after) / 2
    ratio = trainer / bare
    threads = torch.get_num_threads()
    print(f"{args.model}, batch {args.batch}, {args.precision} on {device}, {args.workers} loader worker(s), "
          f"{threads} torch thread(s)")
    print(f"trainer: {trainer:.1f} img/s over steps {args.warmup + 1}..{args.steps - 1}")
    print(f"bare:    {bare:.1f} img/s (runs: {bare_before:.1f}, {bare_after:.1f})")
    print(f"ratio:   {ratio:.3f}")
    print(json.dumps({
        "benchmark": "train_step", "model": args.model, "batch": args.batch, "workers": args.workers,
        "device": str(device), "precision": args.precision,
        "threads": torch.get_num_threads(), "trainer_img_per_s": round(trainer, 2), "bare_img_per_s": round(bare, 2),
        "bare_runs_img_per_s": [round(bare_before, 2), round(bare_after, 2)], "ratio": round(ratio, 3),
    }))


if __name__ == "__main__":
    main()
