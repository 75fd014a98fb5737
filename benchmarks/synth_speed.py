"""Speed of the synthetic world generator: images per second, end to end (draw, caption, encode, shard).

    .venv/bin/python benchmarks/synth_speed.py [--images 10000] [--size 64] [--workers 1]

Writes a pretrain split of ``--images`` images into a temporary folder (no other split) and prints the
rate; the last line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from cocu.synth.world import WorldConfig, generate_world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cfg = WorldConfig(seed=args.seed, size=args.size, teacher=0, pretrain=args.images, val=0, classify=0,
                      contact_sheet=0, workers=args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        wall = time.perf_counter()
        cpu = time.process_time()
        stats = generate_world(os.path.join(tmp, "world"), cfg)
        cpu = time.process_time() - cpu
        wall = time.perf_counter() - wall
    rate = args.images / wall
    print(f"{args.images} images at {args.size} px, {args.workers} worker(s): {wall:.1f} s wall "
          f"({rate:.0f} images/s), {cpu:.1f} s CPU in the main process")
    print(json.dumps({
        "benchmark": "synth_speed", "images": args.images, "size": args.size, "workers": args.workers,
        "seconds": round(wall, 3), "cpu_seconds_main": round(cpu, 3), "images_per_s": round(rate, 1),
        "caption_recall": stats["pretrain"]["caption_recall"],
    }))


if __name__ == "__main__":
    main()
