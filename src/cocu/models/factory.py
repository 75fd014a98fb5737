"""Build GroupViT and CLIP models from named configs kept as data (`cocu/models/configs/*.json`).

The transformers classes are used as they are; this module only turns our compact configs into
theirs, fixes what a from-scratch build needs (token ids, initial weights that depend on the seed
alone, whatever the transformers version) and loads trained folders back.
"""

from __future__ import annotations

import json
import zlib
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
from transformers.models.clip.modeling_clip import CLIPMLP, CLIPAttention, CLIPVisionEmbeddings
from transformers.models.groupvit.modeling_groupvit import GroupViTMLP, GroupViTAttention

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


def _param_generator(seed: int, name: str) -> torch.Generator:
    """One generator per parameter, keyed by its name: the draw does not depend on the order in which a
    transformers version creates or visits modules."""
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode("utf-8"))) % 2**63)


def _tower_config(model: nn.Module, name: str) -> Any:
    return model.config.text_config if name.startswith("text_") else model.config.vision_config


def _weight_std(model: nn.Module, owner: str, parent: nn.Module, child: str, module: nn.Module) -> float:
    """The standard deviation of a Linear/Conv/Embedding weight, following CLIP's and GroupViT's scheme:
    attention and MLP projections scaled by width and depth, the output projections by the tower width,
    everything else 0.02."""
    factor = float(model.config.initializer_factor)
    if isinstance(parent, (CLIPAttention, GroupViTAttention)) and child in ("q_proj", "k_proj", "v_proj", "out_proj"):
        embed_dim = parent.q_proj.in_features
        if child == "out_proj":
            return embed_dim**-0.5 * factor
        return embed_dim**-0.5 * (2 * _tower_config(model, owner).num_hidden_layers) ** -0.5 * factor
    if isinstance(parent, (CLIPMLP, GroupViTMLP)) and child in ("fc1", "fc2"):
        hidden = parent.fc1.in_features
        if child == "fc1":
            return (2 * hidden) ** -0.5 * factor
        return hidden**-0.5 * (2 * _tower_config(model, owner).num_hidden_layers) ** -0.5 * factor
    if isinstance(model, CLIPModel) and owner in ("text_projection", "visual_projection"):
        return module.in_features**-0.5 * factor
    return 0.02 * factor


@torch.no_grad()
def init_weights(model: nn.Module, seed: int) -> None:
    """Set every parameter of a freshly built CLIP or GroupViT from ``seed`` alone.

    transformers 4.x and 5.x draw their initial weights in different orders (5.x also skips torch's
    default init), so the same seed gave different models, and different random:clip-tiny embeddings,
    under each. Here each weight is drawn from its own generator keyed by (seed, parameter name):
    norms start at one, biases at zero, the logit scale at the config's value, group tokens, position
    and class embeddings and all other weights from a normal with the standard deviation of
    :func:`_weight_std` (the CLIP / GroupViT scheme; the GroupViT group tokens and patch position
    embeddings, which transformers leaves at zero, get 0.02)."""
    modules = dict(model.named_modules())
    for name, param in model.named_parameters():
        owner, _, leaf = name.rpartition(".")
        module = modules[owner]
        parent_name, _, child = owner.rpartition(".")
        parent = modules[parent_name] if owner else model
        if isinstance(module, (nn.LayerNorm, nn.BatchNorm1d)) and leaf == "weight":
            param.fill_(1.0)
        elif leaf == "bias":
            param.zero_()
        elif name == "logit_scale":
            param.fill_(float(model.config.logit_scale_init_value))
        else:
            if isinstance(module, CLIPVisionEmbeddings) and leaf == "class_embedding":
                std = module.embed_dim**-0.5 * float(model.config.initializer_factor)
            elif isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
                std = _weight_std(model, owner, parent, child, module)
            else:
                std = 0.02
            draw = torch.randn(param.shape, generator=_param_generator(seed, name), dtype=torch.float32)
            param.copy_(draw * std)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d):
            module.reset_running_stats()


def _build(name: str, family: str, tokenizer: PreTrainedTokenizerBase, seed: int | None) -> nn.Module:
    """Build a model of ``family`` from its named config with weights from :func:`init_weights`; without
    a seed, one is drawn from torch's global generator."""
    spec = get_model_spec(name)
    if spec.family != family:
        raise ValueError(f"{name} is a {spec.family} config, not a {family} one")
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()))
    with torch.random.fork_rng(devices=[]):
        if family == "groupvit":
            model = GroupViTModel(groupvit_config(spec, tokenizer))
        else:
            model = CLIPModel(clip_config(spec, tokenizer))
    init_weights(model, seed)
    return model


def build_groupvit(name: str, tokenizer: PreTrainedTokenizerBase, seed: int | None = None) -> GroupViTModel:
    return _build(name, "groupvit", tokenizer, seed)


def build_clip(name: str, tokenizer: PreTrainedTokenizerBase, seed: int | None = None) -> CLIPModel:
    return _build(name, "clip", tokenizer, seed)


def build_model(name: str, tokenizer: PreTrainedTokenizerBase, seed: int | None = None) -> nn.Module:
    family = get_model_spec(name).family
    return build_groupvit(name, tokenizer, seed) if family == "groupvit" else build_clip(name, tokenizer, seed)
