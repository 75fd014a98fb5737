"""Generate the synthetic semantic-gap world: every split, the inventory, the statistics, a contact sheet.

Each image is drawn with its own random generator seeded from ``(seed, split, index)`` (classification
images from ``(seed, split, class, index)``), so an image does not depend on the split sizes, on the
order of generation or on the number of worker processes: the same settings give the same bytes.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image
from tqdm import tqdm

from cocu.data.writer import ShardWriter
from cocu.synth.captions import Caption, make_caption
from cocu.synth.concepts import CONCEPTS, THING_NAMES, class_names, vocabulary_lines
from cocu.synth.contact import contact_sheet
from cocu.synth.scene import SCENE_TYPES, Scene, compose_scene
from cocu.synth.stats import SplitStats
from cocu.utils.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

SPLITS = ("teacher", "pretrain", "val", "classify")
_SPLIT_IDS = {"teacher": 1, "pretrain": 2, "val": 3, "classify": 4}
OUTPUTS = ("teacher", "pretrain", "val", "classify", "world.json", "vocab.txt", "contact_sheet.png")
"""Everything ``generate_world`` writes under its output folder (and removes first with ``overwrite``)."""


@dataclass(frozen=True)
class WorldConfig:
    """Settings of one synthetic world.

    ``teacher``/``pretrain``/``val`` are image counts, ``classify`` is images per thing class.
    ``thing_scale`` scales every thing's size; ``mention_scale`` every caption mention probability
    (caption recall); ``irrelevant_share`` is the share of captions unrelated to their image.
    ``workers`` (processes) changes the speed only, never the bytes.
    """

    seed: int = 0
    size: int = 64
    teacher: int = 4000
    pretrain: int = 4000
    val: int = 200
    classify: int = 20
    thing_scale: float = 1.0
    mention_scale: float = 1.0
    irrelevant_share: float = 0.05
    jpeg_quality: int = 95
    samples_per_shard: int = 1000
    contact_sheet: int = 36
    workers: int = 1

    def validate(self) -> None:
        for name in ("teacher", "pretrain", "val", "classify", "contact_sheet"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.size < 32:
            raise ValueError(f"size must be at least 32 px, got {self.size}")
        if not 0.25 <= self.thing_scale <= 3.0:
            raise ValueError(f"thing_scale must be in [0.25, 3], got {self.thing_scale}")
        if self.mention_scale < 0:
            raise ValueError(f"mention_scale must be >= 0, got {self.mention_scale}")
        if not 0.0 <= self.irrelevant_share <= 1.0:
            raise ValueError(f"irrelevant_share must be in [0, 1], got {self.irrelevant_share}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if self.samples_per_shard <= 0 or self.workers <= 0:
            raise ValueError("samples_per_shard and workers must be positive")

    def settings(self) -> dict[str, Any]:
        """The settings that determine the bytes (everything but ``workers``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "workers"}


@dataclass
class Sample:
    """One generated image with its truth: ``label`` [S,S] uint8 class indices, pixel fractions, caption."""

    key: str
    split: str
    scene: Scene
    fractions: dict[str, float]
    caption: Caption

    @property
    def image(self) -> np.ndarray:
        return self.scene.image

    @property
    def label(self) -> np.ndarray:
        return self.scene.label

    def meta(self) -> dict[str, Any]:
        """The sample's json member."""
        return {
            "concepts": self.fractions,
            "caption_concepts": list(self.caption.concepts),
            "irrelevant": self.caption.irrelevant,
            "scene": self.scene.scene_type,
        }


def pixel_fractions(label: np.ndarray) -> dict[str, float]:
    """Share of the pixels of each concept present in ``label`` [S,S], in class order (sums to 1)."""
    counts = np.bincount(label.ravel(), minlength=len(CONCEPTS))
    total = float(label.size)
    return {CONCEPTS[i].name: counts[i] / total for i in np.flatnonzero(counts)}


def sample_rng(cfg: WorldConfig, split: str, index: int, class_index: int | None = None) -> np.random.Generator:
    """The random generator of one image: seeded from (seed, split[, class], index) only."""
    parts = [cfg.seed, _SPLIT_IDS[split]] + ([class_index] if class_index is not None else []) + [index]
    return np.random.default_rng(parts)


def sample_key(split: str, index: int, thing: str | None = None) -> str:
    return f"{split}-{thing}-{index:04d}" if thing is not None else f"{split}-{index:06d}"


def render_sample(cfg: WorldConfig, split: str, index: int, thing: str | None = None) -> Sample:
    """Draw image ``index`` of ``split`` (for ``classify``, the ``index``-th image of class ``thing``)."""
    if split == "classify":
        if thing not in THING_NAMES:
            raise ValueError(f"classify images need a thing class, got {thing!r}")
        rng = sample_rng(cfg, split, index, THING_NAMES.index(thing))
    else:
        rng = sample_rng(cfg, split, index)
    scene = compose_scene(rng, cfg.size, cfg.thing_scale, dominant=thing)
    fractions = pixel_fractions(scene.label)
    caption = make_caption(rng, scene, fractions, cfg.irrelevant_share, cfg.mention_scale)
    return Sample(sample_key(split, index, thing), split, scene, fractions, caption)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def encode_png(label: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(label, mode="L").save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class _Encoded:
    """What a worker sends back: the files of one sample and the truth the statistics need."""

    key: str
    thing: str | None
    jpg: bytes
    txt: bytes
    meta: dict[str, Any]
    png: bytes | None


def _encode(job: tuple[WorldConfig, str, int, str | None]) -> _Encoded:
    cfg, split, index, thing = job
    s = render_sample(cfg, split, index, thing)
    return _Encoded(s.key, thing, encode_jpeg(s.image, cfg.jpeg_quality), s.caption.text.encode("utf-8"),
                    s.meta(), encode_png(s.label) if split == "val" else None)


def _run(cfg: WorldConfig, jobs: list[tuple[WorldConfig, str, int, str | None]], desc: str) -> Iterator[_Encoded]:
    """Encode ``jobs`` in order, in ``cfg.workers`` processes (results come back in job order)."""
    bar = tqdm(total=len(jobs), desc=desc, unit="img", leave=False)
    try:
        if cfg.workers == 1 or len(jobs) < 64:
            for job in jobs:
                yield _encode(job)
                bar.update()
            return
        # fork: workers inherit the loaded modules; spawn would re-run `python -m cocu`'s __main__ in each child
        with multiprocessing.get_context("fork").Pool(cfg.workers) as pool:
            for enc in pool.imap(_encode, jobs, chunksize=32):
                yield enc
                bar.update()
    finally:
        bar.close()


def _write_shards(out: Path, cfg: WorldConfig, split: str, count: int) -> SplitStats:
    stats = SplitStats()
    jobs = [(cfg, split, i, None) for i in range(count)]
    with ShardWriter(out / split, prefix=split, samples_per_shard=cfg.samples_per_shard) as writer:
        for enc in _run(cfg, jobs, split):
            writer.write(enc.key, {"jpg": enc.jpg, "txt": enc.txt, "json": _json_bytes(enc.meta)})
            stats.add(enc.meta, enc.txt.decode("utf-8"))
    return stats


def _write_val(out: Path, cfg: WorldConfig) -> SplitStats:
    root = out / "val"
    stats = SplitStats()
    keys: list[str] = []
    lines: list[str] = []
    for enc in _run(cfg, [(cfg, "val", i, None) for i in range(cfg.val)], "val"):
        assert enc.png is not None
        atomic_write_bytes(root / "JPEGImages" / f"{enc.key}.jpg", enc.jpg)
        atomic_write_bytes(root / "SegmentationClass" / f"{enc.key}.png", enc.png)
        keys.append(enc.key)
        caption = enc.txt.decode("utf-8")
        lines.append(json.dumps({"key": enc.key, "caption": caption, **enc.meta}))
        stats.add(enc.meta, caption)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / "ImageSets" / "Segmentation" / "val.txt", "".join(k + "\n" for k in keys))
    atomic_write_text(root / "classes.txt", "".join(n + "\n" for n in class_names()))
    atomic_write_text(root / "meta.jsonl", "".join(line + "\n" for line in lines))
    return stats


def _write_classify(out: Path, cfg: WorldConfig) -> SplitStats:
    root = out / "classify"
    stats = SplitStats()
    jobs = [(cfg, "classify", i, thing) for thing in THING_NAMES for i in range(cfg.classify)]
    for enc in _run(cfg, jobs, "classify"):
        assert enc.thing is not None
        atomic_write_bytes(root / enc.thing / f"{enc.key}.jpg", enc.jpg)
        stats.add(enc.meta, enc.txt.decode("utf-8"), dominant=enc.thing)
    for thing in THING_NAMES:
        (root / thing).mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / "classes.txt", "".join(n + "\n" for n in THING_NAMES))
    return stats


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=False).encode("utf-8")


def _prepare(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output folder {out} is not empty; pass overwrite (--overwrite) to replace a world")
        if not (out / "world.json").is_file():
            raise FileExistsError(f"{out} is not empty and holds no world.json: refusing to overwrite it")
        for name in OUTPUTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def world_inventory() -> dict[str, Any]:
    """The concepts (name, kind, synonyms, colour ranges, look, size) and scene types of the world."""
    return {
        "classes": class_names(),
        "concepts": [c.to_dict() for c in CONCEPTS],
        "scene_types": [asdict(k) for k in SCENE_TYPES],
    }


def generate_world(out_dir: str | Path, cfg: WorldConfig, overwrite: bool = False,
                   on_split: Callable[[str, SplitStats], None] | None = None) -> dict[str, Any]:
    """Write every split of the world under ``out_dir``; returns the statistics (also in ``world.json``).

    ``on_split(name, stats)`` is called after each split is written (e.g. to log progress).
    """
    cfg.validate()
    out = Path(out_dir)
    _prepare(out, overwrite)
    # an unfinished world is marked as such (and may be overwritten) until the final world.json replaces this
    atomic_write_json(out / "world.json", {"version": 1, "complete": False, "settings": cfg.settings()})
    writers: dict[str, Callable[[], SplitStats]] = {
        "teacher": lambda: _write_shards(out, cfg, "teacher", cfg.teacher),
        "pretrain": lambda: _write_shards(out, cfg, "pretrain", cfg.pretrain),
        "val": lambda: _write_val(out, cfg),
        "classify": lambda: _write_classify(out, cfg),
    }
    stats: dict[str, Any] = {}
    for split in SPLITS:
        split_stats = writers[split]()
        stats[split] = split_stats.summary()
        if on_split is not None:
            on_split(split, split_stats)
    atomic_write_text(out / "vocab.txt", "".join(line + "\n" for line in vocabulary_lines()))
    _write_contact_sheet(out / "contact_sheet.png", cfg)
    world = {"version": 1, "complete": True, "settings": cfg.settings(), **world_inventory(), "stats": stats}
    atomic_write_json(out / "world.json", world)
    logger.info("synthetic world written to %s", out)
    return stats


def _write_contact_sheet(path: Path, cfg: WorldConfig) -> None:
    samples = [render_sample(cfg, "val", i) for i in range(cfg.contact_sheet)]
    sheet = contact_sheet([s.image for s in samples], [s.label for s in samples]) if samples else contact_sheet([], [])
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
