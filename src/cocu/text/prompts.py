"""Prompt templates: CLIP's 80 ImageNet templates, used for training prompts and zero-shot class embeddings."""

from __future__ import annotations

import functools
from importlib import resources

SIMPLE_TEMPLATE = "a photo of a {}."


@functools.lru_cache(maxsize=None)
def imagenet_templates() -> tuple[str, ...]:
    """The 80 prompt templates of CLIP's ImageNet zero-shot evaluation, each with one ``{}`` slot."""
    text = resources.files("cocu.resources").joinpath("templates/imagenet80.txt").read_text("utf-8")
    return tuple(line for line in text.splitlines() if line.strip())


def fill(template: str, concept: str) -> str:
    return template.format(concept)
