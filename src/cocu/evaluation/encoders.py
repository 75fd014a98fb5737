"""Model side of zero-shot evaluation: prompt-ensembled class embeddings, image embeddings and, for
GroupViT, the per-crop grouping (assignment maps, group embeddings) the segmentation protocol needs.

Works on any bundle from :func:`cocu.models.bundle.load_bundle`: our GroupViT/CLIP folders or a
published transformers checkpoint (``nvidia/groupvit-gcc-yfcc``). Text goes through the model's own
``get_text_features`` so evaluation pools text exactly as the model was trained.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from cocu.evaluation.protocol import pixel_group_assignment
from cocu.models.bundle import ModelBundle
from cocu.models.features import pooled_features as _pooled

MAX_LOGIT_SCALE = 100.0


def resolve_device(device: str | None) -> torch.device:
    """``auto``/None -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class CropEncoding:
    """GroupViT outputs for a batch of crops ``[b,3,h,w]``."""

    assignment: torch.Tensor  # [b,G,h,w] soft pixel-to-final-group assignment
    group_emb: torch.Tensor  # [b,G,D] L2-normalised projected group tokens
    image_emb: torch.Tensor  # [b,D] L2-normalised projected mean of the group tokens


class ZeroShotModel:
    """A GroupViT or CLIP in eval mode with its tokenizer and normalisation (the bundle's own until
    :meth:`set_normalization`), on one device."""

    def __init__(self, bundle: ModelBundle, device: str | torch.device | None = None) -> None:
        self.device = resolve_device(device) if not isinstance(device, torch.device) else device
        self.model = bundle.model.to(self.device).eval()
        self.tokenizer = bundle.tokenizer
        self.family = bundle.family
        self.mean = tuple(bundle.preprocess.mean)
        self.std = tuple(bundle.preprocess.std)
        self.preprocess = bundle.preprocess
        vision = self.model.config.vision_config
        self.image_size = int(vision.image_size)
        self.patch_size = int(vision.patch_size)
        text = self.model.config.text_config
        limit = getattr(self.tokenizer, "model_max_length", None) or text.max_position_embeddings
        self.max_text_length = int(min(limit, text.max_position_embeddings))

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Use this image mean/std (segmentation and classification) instead of the bundle's."""
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.preprocess = replace(self.preprocess, mean=self.mean, std=self.std)

    @property
    def logit_scale(self) -> float:
        """exp(learned log scale), clamped at 100 as in training."""
        return float(min(self.model.logit_scale.exp().item(), MAX_LOGIT_SCALE))

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """``[n,D]`` L2-normalised text embeddings."""
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(
                list(texts[i : i + batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_text_length,
                return_tensors="pt",
            )
            feats = _pooled(
                self.model.get_text_features(
                    input_ids=enc["input_ids"].to(self.device), attention_mask=enc["attention_mask"].to(self.device)
                )
            )
            out.append(F.normalize(feats.float(), dim=-1))
        return torch.cat(out)

    @torch.inference_mode()
    def class_embeddings(
        self, names: Sequence[str], templates: Sequence[str], batch_size: int = 256, progress: bool = False
    ) -> torch.Tensor:
        """``[K,D]`` prompt-ensembled class embeddings: every template filled with the class name, each
        embedding normalised, averaged over templates, normalised again."""
        if not names:
            raise ValueError("no class names")
        if not templates:
            raise ValueError("no prompt templates")
        per_batch = max(1, batch_size // len(templates))
        rows = []
        chunks = range(0, len(names), per_batch)
        for i in tqdm(chunks, desc="class embeddings", unit="batch", disable=not progress):
            chunk = names[i : i + per_batch]
            prompts = [t.format(n) for n in chunk for t in templates]
            emb = self.encode_texts(prompts, batch_size=len(prompts)).reshape(len(chunk), len(templates), -1)
            rows.append(F.normalize(emb.mean(dim=1), dim=-1))
        return torch.cat(rows)  # [K,D]

    def require_groupvit(self) -> None:
        if self.family != "groupvit":
            raise ValueError(f"zero-shot segmentation needs a GroupViT model, this one is a {self.family}")

    @torch.inference_mode()
    def encode_crops(self, pixels: torch.Tensor) -> CropEncoding:
        """GroupViT forward on ``pixels [b,3,h,w]`` (any size: position embeddings are interpolated)."""
        self.require_groupvit()
        vision = self.model.vision_model
        pixels = pixels.to(self.device)
        h, w = pixels.shape[-2:]
        if h < self.patch_size or w < self.patch_size:
            raise ValueError(f"crop {h}x{w} is smaller than the {self.patch_size} px patch")
        tokens = vision.embeddings(pixels, interpolate_pos_encoding=True)
        enc = vision.encoder(hidden_states=tokens, output_attentions=True, return_dict=True)
        groups = vision.layernorm(enc.last_hidden_state)  # [b,G,Dv]
        b, g, dv = groups.shape
        group_emb = self.model.visual_projection(groups.reshape(b * g, dv)).reshape(b, g, -1)  # [b,G,D]
        image_emb = self.model.visual_projection(groups.mean(dim=1))  # [b,D]
        grid = (h // self.patch_size, w // self.patch_size)
        assignment = pixel_group_assignment([a.float() for a in enc.attentions], grid, (h, w))  # [b,G,h,w]
        return CropEncoding(
            assignment=assignment,
            group_emb=F.normalize(group_emb.float(), dim=-1),
            image_emb=F.normalize(image_emb.float(), dim=-1),
        )

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[b,D]`` L2-normalised image embeddings of preprocessed ``pixels [b,3,H,W]``."""
        pixels = pixels.to(self.device)
        if self.family == "groupvit":
            return self.encode_crops(pixels).image_emb
        return F.normalize(_pooled(self.model.get_image_features(pixel_values=pixels)).float(), dim=-1)
