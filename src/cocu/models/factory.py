"""Build GroupViT and CLIP models from named configs kept as data (`cocu/models/configs/*.json`).

The transformers classes are used as they are; this module only turns our compact configs into
theirs, fixes what a from-scratch build needs (token ids, zero-initialised group tokens and
position embeddings) and loads trained folders back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch
from torch import nn
from transformers import (
    CLIPConfig,
    CLIPModel,
    GroupViTConfig,
    GroupViTModel,
    PreTrainedTokenizerBase,
)

from cocu.text.tokenizer import special_token_ids


@dataclass(frozen=True)
class ModelSpec:
    """A named model config: ``family`` is ``groupvit`` or ``clip``; the rest is passed to transformers."""

    name: str
    family: str
    vision: dict[str, Any]
    text: dict[str, Any]
    projection_dim: int
    projection_intermediate_dim: int | None = None
    description: str = ""

    @property
    def image_size(self) -> int:
        return int(self.vision["image_size"])

    @property
    def max_text_length(self) -> int:
        return int(self.text["max_position_embeddings"])


def model_config_names() -> list[str]:
    folder = resources.files("cocu.models").joinpath("configs")
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def get_model_spec(name: str) -> ModelSpec:
    names = model_config_names()
    if name not in names:
        raise ValueError(f"unknown model config {name!r}; known configs: {', '.join(names)}")
    raw = json.loads(resources.files("cocu.models").joinpath(f"configs/{name}.json").read_text("utf-8"))
    return ModelSpec(name=name, **raw)


def _text_config(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    return {**spec.text, "vocab_size": len(tokenizer), **special_token_ids(tokenizer)}


def groupvit_config(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase) -> GroupViTConfig:
    """transformers wants ``num_hidden_layers`` = sum of depths and one output-group count per stage,
    the last stage repeating the previous count."""
    vision = dict(spec.vision)
    depths = list(vision["depths"])
    groups = list(vision["num_output_groups"])
    if len(groups) == len(depths) - 1:
        groups.append(groups[-1])
    if len(groups) != len(depths) or len(vision["num_group_tokens"]) != len(depths):
        raise ValueError(f"{spec.name}: depths, num_group_tokens and num_output_groups disagree in length")
    vision.update(num_output_groups=groups, num_hidden_layers=sum(depths))
    return GroupViTConfig(
        text_config=_text_config(spec, tokenizer),
        vision_config=vision,
        projection_dim=spec.projection_dim,
        projection_intermediate_dim=spec.projection_intermediate_dim or 4 * spec.projection_dim,
    )


def clip_config(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase) -> CLIPConfig:
    return CLIPConfig(
        text_config=_text_config(spec, tokenizer),
        vision_config=dict(spec.vision),
        projection_dim=spec.projection_dim,
    )


def _init_groupvit_zeros(model: GroupViTModel, std: float = 0.02) -> None:
    """GroupViT initialises group tokens and patch position embeddings with a truncated normal;
    transformers leaves both at zero, which makes every group token identical at the start."""
    vision = model.vision_model
    nn.init.trunc_normal_(vision.embeddings.position_embeddings, std=std)
    for stage in vision.encoder.stages:
        if stage.group_token is not None:
            nn.init.trunc_normal_(stage.group_token, std=std)


def _build(name: str, family: str, tokenizer: PreTrainedTokenizerBase, seed: int | None) -> nn.Module:
    """Build a model of ``family`` from its named config; with a seed, torch's global generator is
    seeded for the build and restored afterwards."""
    spec = get_model_spec(name)
    if spec.family != family:
        raise ValueError(f"{name} is a {spec.family} config, not a {family} one")
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        if family == "groupvit":
            model = GroupViTModel(groupvit_config(spec, tokenizer))
            _init_groupvit_zeros(model)
        else:
            model = CLIPModel(clip_config(spec, tokenizer))
    return model


def build_groupvit(name: str, tokenizer: PreTrainedTokenizerBase, seed: int | None = None) -> GroupViTModel:
    return _build(name, "groupvit", tokenizer, seed)


def build_clip(name: str, tokenizer: PreTrainedTokenizerBase, seed: int | None = None) -> CLIPModel:
    return _build(name, "clip", tokenizer, seed)


def build_model(name: str, tokenizer: PreTrainedTokenizerBase, seed: int | None = None) -> nn.Module:
    family = get_model_spec(name).family
    return build_groupvit(name, tokenizer, seed) if family == "groupvit" else build_clip(name, tokenizer, seed)
