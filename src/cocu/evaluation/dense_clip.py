"""Training-free dense CLIP: per-patch embeddings read off a frozen CLIP image encoder's last block.

Three published read-outs, paraphrased from their papers (no code copied); each changes only the last
transformer block, everything before it runs as trained:

- ``maskclip`` (Zhou et al., ECCV 2022): no query-key attention at all. Each patch token's value
  embedding goes through the attention output projection, then the post-layernorm and the visual
  projection, as the class token would be.
- ``sclip`` (Wang et al., ECCV 2024): correlative self-attention. The attention weights are
  ``softmax(q q^T) + softmax(k k^T)`` (each patch attends to patches similar to itself) instead of
  ``softmax(q k^T)``; the attention output is added to the residual stream, the feed-forward network
  of the last block is skipped.
- ``naclip`` (Hajimiri et al., WACV 2025): neighbourhood attention. Key-key similarity plus a Gaussian
  spatial prior on the patch grid (``-d^2 / (2 sigma^2)`` added to the logits, ``sigma`` = 5 patches),
  and neither the residual connection nor the feed-forward network of the last block.

Attention here runs among patch tokens (the class token is left out of the dense path); the class
token still goes through the unchanged last block to give the whole-image embedding that the
segmentation protocol uses for its top-k class restriction.

:class:`DenseClipModel` has the interface of :class:`cocu.evaluation.encoders.ZeroShotModel` with each
patch as a "group" (one-hot assignment of pixels to their patch), so the GroupViT protocol (sliding
window, background rule, top-k restriction, label spaces, JSON) applies unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cocu.evaluation.encoders import CropEncoding, ZeroShotModel
from cocu.models.bundle import ModelBundle, load_bundle

DENSE_METHODS = ("maskclip", "sclip", "naclip")
SEG_METHODS = ("groupvit", *DENSE_METHODS)
NACLIP_SIGMA = 5.0


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[b,N,D]`` -> ``[b,H,N,D/H]``."""
    b, n, d = x.shape
    return x.reshape(b, n, num_heads, d // num_heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """``[b,H,N,d]`` -> ``[b,N,H*d]``."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def gaussian_prior(grid_hw: tuple[int, int], sigma: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[N,N]`` log of an unnormalised Gaussian over patch-grid distance: ``-|p_i - p_j|^2 / (2 sigma^2)``."""
    gh, gw = grid_hw
    ys, xs = torch.meshgrid(torch.arange(gh, device=device), torch.arange(gw, device=device), indexing="ij")
    pos = torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=-1).float()  # [N,2]
    return -torch.cdist(pos, pos).pow(2) / (2.0 * sigma**2)


def standard_block(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An unchanged CLIP encoder block on ``x [b,1+N,Dv]``: pre-norm attention and MLP, both residual
    (written out so that it runs the same under transformers 4 and 5)."""
    attended = x + layer.self_attn(hidden_states=layer.layer_norm1(x))[0]
    return attended + layer.mlp(layer.layer_norm2(attended))


def dense_last_block(
    layer: nn.Module, x: torch.Tensor, method: str, grid_hw: tuple[int, int], sigma: float = NACLIP_SIGMA
) -> torch.Tensor:
    """Patch tokens ``[b,N,Dv]`` after the last block read densely by ``method`` (input ``x [b,1+N,Dv]``
    holds the class token first, then the patches in row-major grid order)."""
    attn = layer.self_attn
    y = layer.layer_norm1(x)[:, 1:]  # [b,N,Dv]
    values = attn.v_proj(y)  # [b,N,Dv]
    if method == "maskclip":
        return attn.out_proj(values)
    heads = attn.num_heads
    v = _heads(values, heads)  # [b,H,N,d]
    k = _heads(attn.k_proj(y), heads)  # [b,H,N,d]
    if method == "sclip":
        q = _heads(attn.q_proj(y), heads)  # [b,H,N,d]
        weights = (q @ q.transpose(-1, -2) * attn.scale).softmax(dim=-1)
        weights = weights + (k @ k.transpose(-1, -2) * attn.scale).softmax(dim=-1)  # [b,H,N,N]
        return x[:, 1:] + attn.out_proj(_merge(weights @ v))
    if method == "naclip":
        logits = k @ k.transpose(-1, -2) * attn.scale + gaussian_prior(grid_hw, sigma, x.device)  # [b,H,N,N]
        return attn.out_proj(_merge(logits.softmax(dim=-1) @ v))
    raise ValueError(f"unknown dense method {method!r}; choose from {', '.join(DENSE_METHODS)}")


def patch_assignment(grid_hw: tuple[int, int], patch_size: int, crop_hw: tuple[int, int]) -> torch.Tensor:
    """``[N,h,w]`` one-hot map of each crop pixel to the patch that covers it (pixels past the last whole
    patch, which the patch embedding drops, go to the nearest patch)."""
    gh, gw = grid_hw
    h, w = crop_hw
    rows = (torch.arange(h) // patch_size).clamp(max=gh - 1)  # [h]
    cols = (torch.arange(w) // patch_size).clamp(max=gw - 1)  # [w]
    index = rows[:, None] * gw + cols[None, :]  # [h,w]
    return F.one_hot(index, gh * gw).permute(2, 0, 1).float()  # [N,h,w]


class DenseClipModel(ZeroShotModel):
    """A frozen CLIP read densely by one of :data:`DENSE_METHODS`; each patch is a segmentation group."""

    def __init__(
        self,
        bundle: ModelBundle,
        method: str,
        device: str | torch.device | None = None,
        sigma: float = NACLIP_SIGMA,
    ) -> None:
        if bundle.family != "clip":
            raise ValueError(f"--method {method} reads a CLIP densely; this model is a {bundle.family}")
        if method not in DENSE_METHODS:
            raise ValueError(f"unknown dense method {method!r}; choose from {', '.join(DENSE_METHODS)}")
        super().__init__(bundle, device)
        self.method = method
        self.sigma = sigma

    def require_groupvit(self) -> None:
        """Dense read-outs give per-patch groups, so every GroupViT segmentation path accepts this model."""

    @torch.inference_mode()
    def encode_crops(self, pixels: torch.Tensor) -> CropEncoding:
        """Dense forward on ``pixels [b,3,h,w]``: patch groups, their embeddings and the class-token
        image embedding. Position embeddings are interpolated when the crop is not the native size."""
        vision = self.model.vision_model
        pixels = pixels.to(self.device)
        h, w = pixels.shape[-2:]
        if h < self.patch_size or w < self.patch_size:
            raise ValueError(f"crop {h}x{w} is smaller than the {self.patch_size} px patch")
        native = (h, w) == (self.image_size, self.image_size)
        x = vision.pre_layrnorm(vision.embeddings(pixels, interpolate_pos_encoding=not native))  # [b,1+N,Dv]
        layers = vision.encoder.layers
        for layer in layers[:-1]:
            x = standard_block(layer, x)
        grid = (h // self.patch_size, w // self.patch_size)
        patches = dense_last_block(layers[-1], x, self.method, grid, self.sigma)  # [b,N,Dv]
        cls = standard_block(layers[-1], x)[:, 0]  # [b,Dv]
        group_emb = self.model.visual_projection(vision.post_layernorm(patches))  # [b,N,D]
        image_emb = self.model.visual_projection(vision.post_layernorm(cls))  # [b,D]
        assignment = patch_assignment(grid, self.patch_size, (h, w)).to(self.device)  # [N,h,w]
        return CropEncoding(
            assignment=assignment.expand(pixels.shape[0], *assignment.shape),  # [b,N,h,w], a view
            group_emb=F.normalize(group_emb.float(), dim=-1),
            image_emb=F.normalize(image_emb.float(), dim=-1),
        )


def load_seg_model(model: str, method: str, device: str | torch.device | None = None) -> ZeroShotModel:
    """The model that segments with ``method``: a GroupViT as trained (``groupvit``) or a CLIP read
    densely (:data:`DENSE_METHODS`)."""
    if method not in SEG_METHODS:
        raise ValueError(f"unknown segmentation method {method!r}; choose from {', '.join(SEG_METHODS)}")
    bundle = load_bundle(model)
    if method == "groupvit":
        return ZeroShotModel(bundle, device)
    return DenseClipModel(bundle, method, device)


def default_crop(zs: ZeroShotModel, crop: int | None) -> int | None:
    """The sliding-window crop for ``zs``: the given one, else a dense CLIP's native input size (None
    leaves the protocol's own default, for GroupViT)."""
    if crop is not None or not isinstance(zs, DenseClipModel):
        return crop
    return zs.image_size
