"""Prompt templates: CLIP's 80 ImageNet templates (training prompts), the 7-template "subset" (zero-shot
classification as GroupViT and CoCu evaluate it) and the single template of their segmentation evaluation."""

from __future__ import annotations

import functools
from importlib import resources

SIMPLE_TEMPLATE = "a photo of a {}."


@functools.lru_cache(maxsize=None)
def _template_file(name: str) -> tuple[str, ...]:
    text = resources.files("cocu.resources").joinpath(f"templates/{name}.txt").read_text("utf-8")
    return tuple(line for line in text.splitlines() if line.strip())


def imagenet_templates() -> tuple[str, ...]:
    """The 80 prompt templates of CLIP's ImageNet zero-shot evaluation, each with one ``{}`` slot."""
    return _template_file("imagenet80")


def subset_templates() -> tuple[str, ...]:
    """The 7 templates GroupViT and CoCu score zero-shot ImageNet with (``evaluate.cls.template: subset``)."""
    return _template_file("subset")


def fill(template: str, concept: str) -> str:
    return template.format(concept)
