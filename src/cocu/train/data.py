"""The training data loader: shards + concept archive -> batches of images, captions and L prompt texts.

Reproducibility and resumption. Everything random about a batch is a pure function of the run seed and
the global step, whatever the number of worker processes and wherever a run was stopped:

- samples are addressed through a :class:`~cocu.train.shards.ShardIndex` (map-style, random access; built
  once by parallel header scans and cached in the output folder, with the memory-mapped archive join of
  :mod:`cocu.train.archive_join` the loader's only per-sample state: a few dozen bytes per sample);
- epoch ``e`` visits the samples in ``permutation(seed, e)``; global step ``s`` is epoch
  ``s // steps_per_epoch`` and takes the next ``batch_size`` entries of that permutation (the tail that
  does not fill a batch is dropped); data-parallel rank ``r`` of ``R`` takes the ``r``-th of ``R`` equal
  slices of it;
- dataset sample ``i`` drawn in epoch ``e`` gets its own generators seeded from ``(seed, e, i)``: a
  ``torch.Generator`` for the image augmentation and a numpy ``Generator`` for the concept sampling and
  template choice.

A resumed run therefore builds its sampler at the checkpoint's step and continues with exactly the
batches an uninterrupted run would have seen. A DataLoader gets its own generator, so it does not draw
from torch's global generator (the model's Gumbel noise does).

Texts per sample (``text.mode``): ``none``: the caption only (L = 0). Otherwise L prompt texts,
each a concept wrapped in one of CLIP's 80 ImageNet templates drawn per slot, slots without a concept
repeating the caption:

- ``caption-nouns`` (GroupViT's baseline): the vocabulary concepts found in the caption, shuffled, up to L;
- ``cocu``: ``cocu.curation.sampling.sample_concepts`` on the sample's curated archive row (cluster-guided
  or naive per ``text.sampling``), joined by key and checked on the caption by
  :mod:`cocu.train.archive_join` (which reads the archive part by part and keeps the joined rows in flat,
  memory-mapped arrays). A sample without an archive row (``missing_archive_row``) or whose row has another
  caption (``archive_caption_mismatch``; more than 1 % stops the run) is counted, one log line each, and
  dropped, or with ``text.missing_archive: caption`` kept with caption-nouns texts;
- ``oracle``: the sample's true concepts (the ``concepts`` mapping of its ``json`` member, concept ->
  pixel fraction): up to L drawn without replacement, with probability proportional to the pixel fraction
  (``text.oracle_pick: weighted``) or uniformly (``uniform``). A sample without usable concepts gets the
  caption in every slot.

An image that fails to decode is counted (``corrupt_image``) and replaced by the next sample of the
index (deterministically); the replacements are reported with the batch.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from cocu.curation.sampling import sample_concepts
from cocu.curation.vocab import Vocabulary, load_vocabulary
from cocu.data import skips as reasons
from cocu.data.randaugment import RandAugment
from cocu.data.skips import SkipCounter
from cocu.data.transforms import NORMALIZATIONS, TrainAugment, exif_to_rgb
from cocu.text.prompts import imagenet_templates
from cocu.train.archive_join import CACHE_DIR, PackedArchive, join_archive
from cocu.train.config import TrainConfig
from cocu.train.shards import ShardIndex, load_or_build_index

logger = logging.getLogger(__name__)

MAX_SUBSTITUTES = 32
_TAG_PERMUTATION = 1
_TAG_SAMPLE = 2


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The visiting order of ``n`` samples in ``epoch``: int64 [n]."""
    return np.random.default_rng([seed, _TAG_PERMUTATION, epoch]).permutation(n)


def sample_generators(seed: int, epoch: int, index: int) -> tuple[torch.Generator, np.random.Generator]:
    """The augmentation and text generators of dataset sample ``index`` in ``epoch``."""
    aug_seed, text_seed = np.random.SeedSequence([seed, _TAG_SAMPLE, epoch, index]).generate_state(2, np.uint64)
    return torch.Generator().manual_seed(int(aug_seed) >> 1), np.random.default_rng(int(text_seed))


@dataclass
class TextSampler:
    """Picks the L prompt texts of one sample (see the module docstring for the modes)."""

    mode: str
    num_labels: int
    templates: tuple[str, ...]
    vocab: Vocabulary | None = None
    archive: PackedArchive | None = None
    sampling: str = "cluster"
    tau: float = 0.1
    oracle_pick: str = "weighted"

    @property
    def labels_per_sample(self) -> int:
        return 0 if self.mode == "none" else self.num_labels

    def _caption_concepts(self, caption: str, rng: np.random.Generator) -> list[str]:
        assert self.vocab is not None
        found = self.vocab.extract(caption)
        return [found[k] for k in rng.permutation(len(found))[: self.num_labels]]

    def _oracle_concepts(self, meta: Any, rng: np.random.Generator) -> list[str]:
        raw = meta.get("concepts") if isinstance(meta, dict) else None
        if not isinstance(raw, dict):
            return []
        names = [k for k, v in raw.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0]
        if not names:
            return []
        weights = np.array([float(raw[k]) for k in names], dtype=np.float64)
        take = min(self.num_labels, len(names))
        if self.oracle_pick == "weighted" and weights.sum() > 0:
            positive = int((weights > 0).sum())
            picks = rng.choice(len(names), size=min(take, positive), replace=False, p=weights / weights.sum())
        else:
            picks = rng.choice(len(names), size=take, replace=False)
        return [str(names[int(k)]) for k in picks]

    def concepts(self, i: int, key: str, caption: str, meta: Any, rng: np.random.Generator) -> list[str]:
        """The concepts (at most L) of dataset sample ``i`` for this draw."""
        if self.mode == "caption-nouns":
            return self._caption_concepts(caption, rng)
        if self.mode == "cocu":
            assert self.archive is not None
            row = self.archive.row(i, key, caption)
            if row is None:
                return self._caption_concepts(caption, rng)
            return sample_concepts(row, self.num_labels, self.sampling, self.tau, rng)[: self.num_labels]
        if self.mode == "oracle":
            return self._oracle_concepts(meta, rng)
        return []

    def texts(self, i: int, key: str, caption: str, meta: Any, rng: np.random.Generator) -> list[str]:
        """Exactly :attr:`labels_per_sample` prompt texts; slots without a concept repeat the caption."""
        if self.mode == "none":
            return []
        concepts = self.concepts(i, key, caption, meta, rng)
        prompts = [self.templates[int(rng.integers(len(self.templates)))].format(c) for c in concepts]
        return prompts + [caption] * (self.num_labels - len(prompts))


@dataclass
class TrainData:
    """The samples a run trains on: ``rows[i]`` is the index row of dataset sample ``i``."""

    index: ShardIndex
    rows: np.ndarray
    texts: TextSampler
    skips: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def tokenizer_corpus(self) -> Iterator[str]:
        """Texts to train a BPE tokenizer on: the captions, concept names and template words."""
        for i in range(len(self)):
            yield self.index.captions[int(self.rows[i])]
        if self.texts.vocab is not None:
            yield from self.texts.vocab.concepts
        if self.texts.archive is not None:
            yield from self.texts.archive.names
        yield from (t.replace("{}", "").strip() for t in self.texts.templates)


def prepare_data(cfg: TrainConfig, index_cache: str | None, progress: bool = True) -> TrainData:
    """Index the shards and join the archive (cached beside ``index_cache`` when given), set up the texts.

    With ``index_cache`` (a file in the training output folder) the shard index is saved there and the
    archive join in the folder :data:`~cocu.train.archive_join.CACHE_DIR` next to it; both are reused while
    their inputs are unchanged, and nothing is written anywhere else.
    """
    counter = SkipCounter()
    mode = cfg.text.mode
    index, fingerprint = load_or_build_index(cfg.data.train, index_cache, skips=counter, progress=progress)
    skips = dict(index.skipped)
    rows = np.arange(len(index), dtype=np.int64)
    need_vocab = mode == "caption-nouns" or (mode == "cocu" and cfg.text.missing_archive == "caption")
    vocab = load_vocabulary(cfg.text.vocab) if need_vocab or cfg.text.vocab is not None else None
    archive = None
    if mode == "cocu":
        assert cfg.data.archive is not None
        cache_dir = Path(index_cache).parent / CACHE_DIR if index_cache is not None else None
        join = join_archive(index, cfg.data.archive, cache_dir, fingerprint)
        unjoined = SkipCounter()
        join.check_and_count(index, str(cfg.data.archive), unjoined)
        if unjoined.total:
            action = "dropped" if cfg.text.missing_archive == "drop" else "trained with caption-nouns texts"
            logger.warning(
                "%d of %d training samples have no usable archive row (%s): %s",
                unjoined.total,
                len(index),
                action,
                unjoined.counts,
            )
            skips.update(unjoined.counts)
        rows = join.kept_rows(cfg.text.missing_archive)
        archive = join.archive.select(rows)
    texts = TextSampler(
        mode=mode,
        num_labels=cfg.text.num_labels,
        templates=imagenet_templates(),
        vocab=vocab,
        archive=archive,
        sampling=cfg.text.sampling,
        tau=cfg.text.tau,
        oracle_pick=cfg.text.oracle_pick,
    )
    return TrainData(index=index, rows=rows, texts=texts, skips=skips)


@dataclass
class TrainItem:
    image: torch.Tensor
    caption: str
    labels: list[str]
    skipped: list[tuple[str, str, str, str]]


class TrainDataset(Dataset):
    """Map-style: item ``(epoch, index)`` -> dataset sample ``index`` augmented for ``epoch``.

    The sampler applies the epoch's permutation; the generators are seeded from ``(seed, epoch, index)``.
    If the image of ``index`` cannot be decoded, the next samples are tried in turn (same generators)."""

    def __init__(self, data: TrainData, augment: TrainAugment, seed: int) -> None:
        self.data = data
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.data)

    def _decode(self, row: int) -> Image.Image:
        img = Image.open(io.BytesIO(self.data.index.image_bytes(row)))
        img.load()
        return exif_to_rgb(img)

    def _meta(self, row: int) -> Any:
        raw = self.data.index.json_bytes(row)
        return json.loads(raw.decode("utf-8")) if raw is not None else None

    def __getitem__(self, item: tuple[int, int]) -> TrainItem:
        epoch, first = item
        aug_gen, text_rng = sample_generators(self.seed, epoch, first)
        skipped: list[tuple[str, str, str, str]] = []
        shards = self.data.index
        n = len(self.data)
        for attempt in range(MAX_SUBSTITUTES):
            i = (first + attempt) % n
            row = int(self.data.rows[i])
            try:
                img = self._decode(row)
            except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, bombs)
                source = shards.shards[int(shards.shard_id[row])]
                skipped.append((reasons.CORRUPT_IMAGE, shards.keys[row], source, f"{type(exc).__name__}: {exc}"))
                continue
            key, caption = shards.keys[row], shards.captions[row]
            meta = self._meta(row) if self.data.texts.mode == "oracle" else None
            labels = self.data.texts.texts(i, key, caption, meta, text_rng)
            return TrainItem(image=self.augment(img, aug_gen), caption=caption, labels=labels, skipped=skipped)
        raise RuntimeError(
            f"{MAX_SUBSTITUTES} consecutive training images failed to decode from sample {first}: "
            f"{skipped[-1]}; the shards look damaged"
        )


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields this rank's items for global steps ``start_step .. end_step - 1`` (see the module docstring)."""

    def __init__(
        self, n: int, batch_size: int, rank: int, world: int, seed: int, start_step: int, end_step: int
    ) -> None:
        if batch_size % world:
            raise ValueError(f"the global batch size {batch_size} is not divisible by {world} data-parallel ranks")
        if n < batch_size:
            raise ValueError(f"{n} training samples do not fill one batch of {batch_size}; lower train.batch_size")
        self.n, self.batch_size, self.rank, self.world, self.seed = n, batch_size, rank, world, seed
        self.start_step, self.end_step = start_step, end_step
        self.local = batch_size // world

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        cached_epoch, order = -1, np.empty(0, dtype=np.int64)
        for step in range(self.start_step, self.end_step):
            epoch, k = divmod(step, self.steps_per_epoch)
            if epoch != cached_epoch:
                cached_epoch, order = epoch, epoch_permutation(self.seed, epoch, self.n)
            lo = k * self.batch_size + self.rank * self.local
            yield [(epoch, int(p)) for p in order[lo : lo + self.local]]


@dataclass
class Batch:
    """``images`` [b,3,H,W]; ``input_ids``/``attention_mask`` [b*(1+L),T] sample-major (the caption, then
    the L prompt texts of each sample); ``skipped``: replaced samples (reason, key, source, detail)."""

    images: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    num_labels: int
    skipped: list[tuple[str, str, str, str]]

    def pin_memory(self) -> Batch:
        return Batch(
            self.images.pin_memory(),
            self.input_ids.pin_memory(),
            self.attention_mask.pin_memory(),
            self.num_labels,
            self.skipped,
        )


class Collate:
    """Stack images and tokenise all texts of a batch (in the worker process)."""

    def __init__(self, tokenizer: Any, max_length: int, num_labels: int) -> None:
        self.tokenizer, self.max_length, self.num_labels = tokenizer, max_length, num_labels

    def __call__(self, items: list[TrainItem]) -> Batch:
        texts = [text for item in items for text in [item.caption, *item.labels]]
        enc = self.tokenizer(texts, padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt")
        return Batch(
            images=torch.stack([item.image for item in items]),  # [b,3,H,W]
            input_ids=enc["input_ids"],  # [b*(1+L),T]
            attention_mask=enc["attention_mask"],  # [b*(1+L),T]
            num_labels=self.num_labels,
            skipped=[s for item in items for s in item.skipped],
        )


def make_augment(cfg: TrainConfig, image_size: int) -> TrainAugment:
    aug = cfg.data.augment
    randaugment = RandAugment.from_spec(aug.randaugment) if aug.randaugment else None
    mean, std = NORMALIZATIONS[cfg.data.normalize]
    return TrainAugment(size=image_size, scale=(aug.scale_min, 1.0), flip=aug.flip, color_jitter=aug.color_jitter,
                        randaugment=randaugment, erase_prob=aug.erase_prob, mean=mean, std=std)


def make_loader(
    data: TrainData,
    cfg: TrainConfig,
    tokenizer: Any,
    image_size: int,
    max_length: int,
    *,
    rank: int,
    world: int,
    start_step: int,
    end_step: int,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over steps ``start_step .. end_step - 1`` of this rank."""
    sampler = StepBatchSampler(len(data), cfg.train.batch_size, rank, world, cfg.seed, start_step, end_step)
    workers = cfg.data.num_workers
    return DataLoader(
        TrainDataset(data, make_augment(cfg, image_size), cfg.seed),
        batch_sampler=sampler,
        collate_fn=Collate(tokenizer, max_length, data.texts.labels_per_sample),
        num_workers=workers,
        prefetch_factor=cfg.data.prefetch_factor if workers > 0 else None,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
