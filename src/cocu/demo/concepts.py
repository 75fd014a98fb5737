"""Ground-truth concept statistics of each ablation row on the pretrain split.

For each row: the concepts the model is trained on (the caption's vocabulary concepts for the baseline,
the curated archive for rows #1-#4, the true concepts for the oracle) and the concepts the training
loader actually samples per step, both scored against the true concepts of every image (which only a
synthetic world can give). The per-step draws use the trainer's own :class:`cocu.train.data.TextSampler`
with the row's settings, so they are what training sees, not a re-implementation of it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cocu.curation.archive import ArchiveRow
from cocu.demo.metrics import score_concepts
from cocu.demo.settings import ARCHIVE, CAPTION, TRUTH, AblationRow
from cocu.demo.steps import TEXT_MODES

logger = logging.getLogger(__name__)

DRAWS = 10
"""Per-step draws scored per image for the sampled figures (the samplers are random): ``sampled_recall`` /
``sampled_precision`` pool them, ``sampled_coverage`` is the recall of their union (what ten steps show)."""


@dataclass
class PretrainSample:
    """One pretrain image's caption and truth: ``truth`` maps concept -> pixel fraction (all > 0)."""

    key: str
    caption: str
    truth: dict[str, float]


def read_pretrain(pretrain_dir: Path) -> list[PretrainSample]:
    """Keys, captions and true concepts of the pretrain shards, in data order (images not decoded)."""
    from cocu.data.reader import iter_samples
    from cocu.data.skips import SkipCounter

    skips = SkipCounter()
    out = []
    no_truth = 0
    for s in iter_samples(str(pretrain_dir), decode_images=False, skips=skips):
        raw = (s.meta or {}).get("concepts")
        if not isinstance(raw, dict):
            no_truth += 1
            continue
        truth = {str(k): float(v) for k, v in raw.items() if isinstance(v, (int, float)) and v > 0}
        out.append(PretrainSample(s.key, s.caption, truth))
    if skips.total or no_truth:
        logger.warning("pretrain split: %d samples skipped (%s), %d without true concepts", skips.total,
                       skips.as_dict(), no_truth)
    if not out:
        raise ValueError(f"{pretrain_dir}: no sample with true concepts (is it a synthetic world's pretrain split?)")
    return out


def trained_concepts(
    row: AblationRow, samples: list[PretrainSample], archive: dict[str, ArchiveRow] | None, vocab: Any
) -> dict[str, list[str]]:
    """Per key, the concepts the row's model can be trained on (samples without an archive row are left out)."""
    if row.concepts == CAPTION:
        return {s.key: vocab.extract(s.caption) for s in samples}
    if row.concepts == TRUTH:
        return {s.key: list(s.truth) for s in samples}
    assert archive is not None
    return {s.key: list(archive[s.key].concepts) for s in samples if s.key in archive}


def sampled_concepts(
    row: AblationRow,
    samples: list[PretrainSample],
    archive: dict[str, ArchiveRow] | None,
    vocab: Any,
    num_labels: int,
    tau: float,
    oracle_pick: str,
    seed: int,
    draws: int = DRAWS,
) -> list[dict[str, list[str]]]:
    """``draws`` rounds of the concepts the training loader picks for one step of each sample."""
    from cocu.text.prompts import imagenet_templates
    from cocu.train.data import PackedArchive, TextSampler

    kept = samples if row.concepts != ARCHIVE else [s for s in samples if archive is not None and s.key in archive]
    packed = PackedArchive.pack([archive[s.key] for s in kept]) if row.concepts == ARCHIVE else None
    sampler = TextSampler(
        mode=TEXT_MODES[row.concepts],
        num_labels=num_labels,
        templates=imagenet_templates(),
        vocab=vocab,
        archive=packed,
        sampling=row.sampling or "naive",
        tau=tau,
        oracle_pick=oracle_pick,
    )
    out = []
    for d in range(draws):
        draw = {}
        for i, s in enumerate(kept):
            rng = np.random.default_rng([seed, d, i])
            draw[s.key] = sampler.concepts(i, s.key, s.caption, {"concepts": s.truth}, rng)
        out.append(draw)
    return out


def row_concept_stats(
    row: AblationRow,
    samples: list[PretrainSample],
    archive: dict[str, ArchiveRow] | None,
    vocab: Any,
    num_labels: int,
    tau: float,
    oracle_pick: str,
    seed: int,
) -> dict[str, Any]:
    """``recall``/``precision`` of the trained-on concepts, ``sampled_recall``/``sampled_precision`` of the
    per-step draws and ``sampled_coverage`` (recall of the :data:`DRAWS` draws' union), plus the raw counts."""
    truth = {s.key: s.truth.keys() for s in samples}
    full = score_concepts(trained_concepts(row, samples, archive, vocab), truth)
    draws = sampled_concepts(row, samples, archive, vocab, num_labels, tau, oracle_pick, seed)
    sampled = score_concepts(draws, truth)
    union = {key: set().union(*(draw[key] for draw in draws if key in draw)) for key in draws[0]}
    return {
        "recall": full.recall,
        "precision": full.precision,
        "sampled_recall": sampled.recall,
        "sampled_precision": sampled.precision,
        "sampled_coverage": score_concepts(union, truth).recall,
        "counts": full.as_dict(),
        "sampled_counts": sampled.as_dict(),
    }
