"""Counted, logged skips: every sample or member the data readers drop is recorded here with a reason.

Nothing is dropped silently: a reader that cannot use a sample calls :meth:`SkipCounter.add`, which logs
one warning line and counts the reason, and the caller gets the counts back.
"""

from __future__ import annotations

import logging
from collections import Counter

logger = logging.getLogger(__name__)

CORRUPT_IMAGE = "corrupt_image"
"""The image member or file is truncated or cannot be decoded (only detected when decoding)."""
MISSING_IMAGE = "missing_image"
"""The sample has no image member, or the image file named by a captions row cannot be read or is not a
regular file (a FIFO or a device is never opened), or a parquet row holds no image bytes."""
MISSING_CAPTION = "missing_caption"
"""The sample has no caption member (``txt``/``text``), or the captions row has no caption value."""
EMPTY_CAPTION = "empty_caption"
"""The caption is empty or only whitespace and NUL bytes."""
CAPTION_NOT_UTF8 = "caption_not_utf8"
"""The caption bytes are not valid UTF-8."""
DUPLICATE_KEY = "duplicate_key"
"""The key was already seen earlier in the same read; the first occurrence wins."""
UNEXPECTED_MEMBER = "unexpected_member"
"""A tar member with an extension the reader does not use: the member is dropped, the sample kept."""
BAD_JSON = "bad_json"
"""The ``json`` member is not a UTF-8 JSON object: the member is dropped (``meta=None``), the sample kept."""
CORRUPT_SHARD = "corrupt_shard"
"""The tar file itself is truncated or damaged: reading stops there (one count per file); every complete
sample before the damage is kept, a sample cut short is lost with the rest of the file."""
BAD_ROW = "bad_row"
"""A captions-file row that cannot be parsed or lacks the image column."""

ALL_REASONS: tuple[str, ...] = (
    CORRUPT_IMAGE,
    MISSING_IMAGE,
    MISSING_CAPTION,
    EMPTY_CAPTION,
    CAPTION_NOT_UTF8,
    DUPLICATE_KEY,
    UNEXPECTED_MEMBER,
    BAD_JSON,
    CORRUPT_SHARD,
    BAD_ROW,
)


class SkipCounter:
    """Counts skips per reason and logs one warning line for each."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def add(self, reason: str, key: str, source: str, detail: str = "") -> None:
        """Record one skip of ``key`` (a sample key or member name) read from ``source``."""
        self._counts[reason] += 1
        suffix = f": {detail}" if detail else ""
        logger.warning("skip %s key=%r source=%s%s", reason, key, source, suffix)

    @property
    def counts(self) -> dict[str, int]:
        """Skips per reason (only reasons that occurred), in sorted reason order."""
        return {reason: self._counts[reason] for reason in sorted(self._counts)}

    @property
    def total(self) -> int:
        return sum(self._counts.values())

    def merge(self, other: SkipCounter) -> None:
        """Add ``other``'s counts to this counter (without logging them again)."""
        self._counts.update(other._counts)

    def as_dict(self) -> dict[str, int]:
        """JSON-ready counts per reason plus ``"total"``."""
        return {**self.counts, "total": self.total}

    def format_table(self) -> str:
        """A two-column plain-text table of the counts, ending with the total."""
        rows = list(self.counts.items()) + [("total", self.total)]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {count:>8d}" for name, count in rows)

    def __repr__(self) -> str:
        return f"SkipCounter({self.counts!r})"
