"""A hand-made training world for the cocu.train tests (shards + concept archive), checked against the
readers it must satisfy. The other tests/test_train_*.py import the helpers from here."""

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from cocu.curation.archive import SCHEMA, read_archive
from cocu.data.reader import iter_samples
from cocu.data.writer import ShardWriter

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
SHAPES = ("ball", "kite", "house")
VOCAB_LINES = ["ball", "kite", "house", "sky: heavens", "grass"]


def jpeg(rgb, size: int = 24, seed: int = 0) -> bytes:
    """A small JPEG: a colour field with a darker square (so crops and flips change the pixels)."""
    arr = np.empty((size, size, 3), dtype=np.uint8)
    arr[:] = rgb
    rs = np.random.default_rng(seed)
    y, x = rs.integers(0, size // 2, 2)
    arr[y : y + size // 3, x : x + size // 3] //= 3
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def sample(i: int) -> tuple[str, dict[str, bytes], dict]:
    """Sample ``i``: key, members (jpg/txt/json) and its true concepts (json ``concepts``)."""
    color = list(COLORS)[i % len(COLORS)]
    shape = SHAPES[i % len(SHAPES)]
    concepts = {shape: 0.3, "sky": 0.5, "grass": 0.2 if i % 2 else 0.0}
    caption = f"a {color} {shape} under the sky"
    members = {
        "jpg": jpeg(COLORS[color], seed=i),
        "txt": caption.encode(),
        "json": json.dumps({"concepts": concepts, "caption_concepts": [shape, "sky"]}).encode(),
    }
    return f"s{i:04d}", members, concepts


def write_shards(folder: Path, n: int, per_shard: int = 8, start: int = 0) -> list[Path]:
    with ShardWriter(folder, prefix="train", samples_per_shard=per_shard) as writer:
        for i in range(start, start + n):
            key, members, _ = sample(i)
            writer.write(key, members)
    return writer.paths


def archive_row(key: str, concepts: list[str], scores: list[float], clusters: list[int], caption: str = "") -> dict:
    return {
        "key": key,
        "caption": caption,
        "caption_concepts": [],
        "neighbors": [],
        "concepts": concepts,
        "scores": scores,
        "clusters": clusters,
    }


def write_archive(path: Path, rows: list[dict]) -> Path:
    """One archive part with the ArchiveRow columns (cocu.curation.archive.SCHEMA)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path)
    return path


def default_archive(folder: Path, n: int, skip: tuple[int, ...] = ()) -> Path:
    """Archive rows for samples 0..n-1 (minus ``skip``): the shape, "sky" and "grass", three clusters."""
    rows = []
    for i in range(n):
        if i in skip:
            continue
        key, members, _ = sample(i)
        caption = members["txt"].decode()
        rows.append(archive_row(key, [SHAPES[i % 3], "sky", "grass"], [2.0, 1.5, 0.5], [0, 1, 2], caption))
    return write_archive(folder / "curation" / "archive-0.parquet", rows)


def write_vocab(folder: Path) -> Path:
    path = folder / "vocab.txt"
    path.write_text("\n".join(VOCAB_LINES) + "\n", "utf-8")
    return path


def make_world(root: Path, n: int = 16, per_shard: int = 8) -> dict[str, Path]:
    """Shards, a full archive and a vocabulary under ``root``."""
    write_shards(root / "shards", n, per_shard)
    default_archive(root / "run", n)
    return {"train": root / "shards", "archive": root / "run", "vocab": write_vocab(root)}


def test_hand_made_world_reads_back_through_the_data_and_archive_readers(tmp_path):
    paths = make_world(tmp_path, n=10, per_shard=4)
    samples = list(iter_samples(paths["train"]))
    assert [s.key for s in samples] == [f"s{i:04d}" for i in range(10)]
    assert samples[1].caption == "a green kite under the sky"
    assert samples[1].meta["concepts"] == {"kite": 0.3, "sky": 0.5, "grass": 0.2}
    archive = read_archive(paths["archive"])
    assert sorted(archive) == [s.key for s in samples]
    assert archive["s0002"].concepts == ["house", "sky", "grass"] and archive["s0002"].clusters == [0, 1, 2]


def tiny_run_overrides(world: dict, out: Path, steps: int) -> list[str]:
    """Config overrides shared by the trainer tests: groupvit-tiny in ``cocu`` mode on ``world``, batch 4,
    ``steps`` steps, a checkpoint every 2, CPU, no loader workers."""
    return [
        f"output={out}",
        f"data.train={world['train']}",
        f"data.archive={world['archive']}",
        f"text.vocab={world['vocab']}",
        "text.mode=cocu",
        "model.config=groupvit-tiny",
        "model.bpe_vocab_size=400",
        "data.num_workers=0",
        "train.batch_size=4",
        f"train.max_steps={steps}",
        "train.checkpoint_every=2",
        "train.device=cpu",
    ]
