"""OpenCLIP vision tower (sgm's image embedder) <-> transformers CLIPVisionModelWithProjection names.

svd_facts 2.5 (verified numerically): renames, plus two real transforms:
- open_clip fuses q, k, v into `attn.in_proj_{weight,bias}` (q, k, v order along dim 0);
- open_clip's `proj` (width, projection) is applied as x @ proj; transformers' `visual_projection`
  is a Linear, whose weight is its transpose.
"""
from __future__ import annotations

import re

import torch

from svd_fast.checkpoints.io import Plan

# sgm single file: conditioner.embedders.0 is FrozenOpenCLIPImagePredictionEmbedder -> .open_clip.model
PREFIX = "conditioner.embedders.0.open_clip.model.visual."

_FIXED = {
    "vision_model.embeddings.patch_embedding.weight": "conv1.weight",
    "vision_model.embeddings.class_embedding": "class_embedding",
    "vision_model.embeddings.position_embedding.weight": "positional_embedding",
    "vision_model.pre_layrnorm.weight": "ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "ln_pre.bias",
    "vision_model.post_layernorm.weight": "ln_post.weight",
    "vision_model.post_layernorm.bias": "ln_post.bias",
    "visual_projection.weight": "proj",
}
_LAYER_RENAMES = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_QKV = ("q", "k", "v")
_LAYER = re.compile(r"vision_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def resblock_name(layer: str, module: str, param: str) -> tuple[str, int | None] | None:
    """A transformers encoder layer's parameter -> (OpenCLIP name, q/k/v chunk index or None), the
    same in the vision and the text tower; None for a module OpenCLIP does not have."""
    block = f"transformer.resblocks.{layer}."
    qkv = re.fullmatch(r"self_attn\.([qkv])_proj", module)
    if qkv:
        return f"{block}attn.in_proj_{param}", _QKV.index(qkv.group(1))
    if module in _LAYER_RENAMES:
        return f"{block}{_LAYER_RENAMES[module]}.{param}", None
    return None


def open_clip_name(key: str) -> tuple[str, int | None]:
    """transformers key -> (open_clip key without PREFIX, q/k/v chunk index or None)."""
    if key in _FIXED:
        return _FIXED[key], None
    match = _LAYER.fullmatch(key)
    if match and (name := resblock_name(*match.groups())):
        return name
    raise KeyError(f"{key!r} is not a parameter of a CLIP vision tower with projection")


def _chunk(index: int):
    return lambda fused: fused.chunk(3, dim=0)[index]


def _transpose(w: torch.Tensor) -> torch.Tensor:
    return w.t()


def read_plan(keys) -> Plan:
    """transformers keys -> how to make each from the sgm file's open_clip tensors."""
    plan = {}
    for key in keys:
        name, index = open_clip_name(key)
        fn = _transpose if key == "visual_projection.weight" else None if index is None else _chunk(index)
        plan[key] = ((PREFIX + name,), fn)
    return plan


def to_open_clip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIP vision state dict -> sgm file tensors (prefixed, q/k/v fused, proj transposed)."""
    return fused_state(state, open_clip_name, PREFIX, "visual_projection.weight", "CLIP state dict", KeyError)


def fused_state(state: dict[str, torch.Tensor], name_of, prefix: str, projection_key: str, what: str,
                error: type[Exception]) -> dict[str, torch.Tensor]:
    """A transformers CLIP tower's state dict in OpenCLIP names (`name_of`: key -> (name, q/k/v
    index or None)) under `prefix`: q/k/v fused along dim 0, the projection transposed."""
    out, fused = {}, {}
    for key, tensor in state.items():
        name, index = name_of(key)
        if index is not None:
            fused.setdefault(name, [None] * 3)[index] = tensor
        else:
            out[prefix + name] = tensor.t().contiguous() if key == projection_key else tensor.contiguous()
    for name, parts in fused.items():
        if any(p is None for p in parts):
            raise error(f"{what} lacks one of q/k/v for {name}")
        out[prefix + name] = torch.cat(parts, dim=0)
    return out
