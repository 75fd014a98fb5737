"""Statistics of a synthetic split: caption recall, concept frequencies, pixel fractions, caption noise."""

from __future__ import annotations

from collections import Counter
from typing import Any

from cocu.synth.concepts import CONCEPTS, STUFF, THING, concept


def _r(x: float) -> float:
    return round(float(x), 6)


class SplitStats:
    """Accumulate the json members (``meta``) and captions of one split; :meth:`summary` reports them.

    Caption recall of an image is the share of its concepts that its caption names; the split's figure
    is the mean over all its images (irrelevant captions included).
    """

    def __init__(self) -> None:
        self.count = 0
        self.recall_sum = 0.0
        self.relevant = 0
        self.relevant_recall_sum = 0.0
        self.irrelevant = 0
        self.concepts_sum = 0
        self.named_sum = 0
        self.captions: set[str] = set()
        self.present: Counter[str] = Counter()
        self.named_present: Counter[str] = Counter()
        self.fraction_sum: Counter[str] = Counter()
        self.scenes: Counter[str] = Counter()
        self.per_class: Counter[str] = Counter()
        self.dominant_largest = 0

    def add(self, meta: dict[str, Any], caption: str, dominant: str | None = None) -> None:
        fractions: dict[str, float] = meta["concepts"]
        named = set(meta["caption_concepts"])
        hits = named & set(fractions)
        recall = len(hits) / len(fractions)
        self.count += 1
        self.recall_sum += recall
        if meta["irrelevant"]:
            self.irrelevant += 1
        else:
            self.relevant += 1
            self.relevant_recall_sum += recall
        self.concepts_sum += len(fractions)
        self.named_sum += len(named)
        self.captions.add(caption)
        self.scenes[meta["scene"]] += 1
        for name, frac in fractions.items():
            self.present[name] += 1
            self.fraction_sum[name] += frac
        for name in hits:
            self.named_present[name] += 1
        if dominant is not None:
            self.per_class[dominant] += 1
            things = {n: f for n, f in fractions.items() if concept(n).kind == THING}
            if things and max(things, key=things.get) == dominant:
                self.dominant_largest += 1

    @property
    def caption_recall(self) -> float:
        return self.recall_sum / self.count if self.count else 0.0

    def _kind_mention_rate(self, kind: str) -> float:
        names = [c.name for c in CONCEPTS if c.kind == kind]
        present = sum(self.present[n] for n in names)
        return sum(self.named_present[n] for n in names) / present if present else 0.0

    def summary(self) -> dict[str, Any]:
        n = max(self.count, 1)
        out: dict[str, Any] = {
            "count": self.count,
            "caption_recall": _r(self.caption_recall),
            "caption_recall_relevant": _r(self.relevant_recall_sum / max(self.relevant, 1)),
            "irrelevant_share": _r(self.irrelevant / n),
            "unique_caption_share": _r(len(self.captions) / n),
            "mean_concepts_per_image": _r(self.concepts_sum / n),
            "mean_caption_concepts": _r(self.named_sum / n),
            "thing_mention_rate": _r(self._kind_mention_rate(THING)),
            "stuff_mention_rate": _r(self._kind_mention_rate(STUFF)),
            "max_concept_frequency": _r(max(self.present.values(), default=0) / n),
            "concepts": {
                c.name: {
                    "frequency": _r(self.present[c.name] / n),
                    "mean_pixel_fraction": _r(self.fraction_sum[c.name] / max(self.present[c.name], 1)),
                    "mention_rate": _r(self.named_present[c.name] / max(self.present[c.name], 1)),
                }
                for c in CONCEPTS
            },
            "scene_types": dict(sorted(self.scenes.items())),
        }
        if self.per_class:
            out["per_class"] = dict(self.per_class)
            out["dominant_is_largest_thing"] = _r(self.dominant_largest / n)
        return out

    def format_table(self) -> str:
        """Per-concept frequency, mean pixel fraction (when present) and mention rate, one line each."""
        s = self.summary()
        lines = [f"{'concept':<10} {'kind':<6} {'freq':>6} {'pixels':>7} {'named':>6}"]
        for c in CONCEPTS:
            row = s["concepts"][c.name]
            lines.append(f"{c.name:<10} {c.kind:<6} {row['frequency']:>6.3f} {row['mean_pixel_fraction']:>7.3f} "
                         f"{row['mention_rate']:>6.3f}")
        return "\n".join(lines)
