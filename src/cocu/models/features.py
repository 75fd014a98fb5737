"""The projected features of ``get_image_features`` / ``get_text_features`` under transformers 4.x and 5.x."""

from __future__ import annotations

import torch


def pooled_features(output: torch.Tensor | object) -> torch.Tensor:
    """``get_*_features`` return the projected features ``[n,d]`` as a tensor in transformers 4.x and as
    the ``pooler_output`` of an output object in 5.x; accept both."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if not isinstance(pooled, torch.Tensor):
        raise TypeError(f"unexpected feature output of type {type(output).__name__}")
    return pooled
