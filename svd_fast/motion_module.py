"""Motion modules: a UNet's temporal layers saved on their own and put onto another spatial base.

SVD inserts temporal layers into an image UNet: a temporal ResBlock after each spatial one,
temporal transformer blocks with a frame-position embedding beside each spatial transformer, and
the AlphaBlender mix factors that blend the two paths. AnimateDiff showed that such "motion"
weights, trained once on a frozen spatial base, animate other bases of the same architecture.

    save_motion_module(unet, "motion.safetensors")   # only the temporal parameters
    load_motion_module(other_unet, "motion.safetensors")

The file is safetensors; its metadata holds a manifest of the base config the module fits (the
UNetConfig fields that set the temporal layers' shapes and meaning). Loading checks the manifest
field by field, then every key and shape, and names the first mismatch; nothing is changed then.
Both accept a UNet or a pipeline (a pipeline's graphs / compiled code are then refreshed).
"""
from __future__ import annotations

import dataclasses
import json

import torch
from torch import nn

TEMPORAL_PARTS = ("temporal_res_block.", "temporal_transformer_blocks.", "time_pos_embed.", "time_mixer.")
MANIFEST_KEY = "svd_fast_motion_module"
BASE_FIELDS = ("block_out_channels", "attention_levels", "layers_per_block", "num_attention_heads",
               "transformer_layers_per_block", "cross_attention_dim", "norm_num_groups")
"""UNetConfig fields a motion module depends on: widths and levels (shapes), heads and groups (meaning)"""


def is_temporal(name: str) -> bool:
    """True for parameters of the layers SVD inserts into the image UNet (the motion module)."""
    return any(part in name for part in TEMPORAL_PARTS)


def temporal_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The motion module's tensors: temporal parameters, without LoRA adapter tensors."""
    from svd_fast.adapters import is_lora_name

    return {k: v for k, v in unet.state_dict().items() if is_temporal(k) and not is_lora_name(k)}


def manifest(unet: nn.Module) -> dict:
    config = dataclasses.asdict(unet.config)
    return {"format": 1, "base": {field: _jsonable(config[field]) for field in BASE_FIELDS}}


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def save_motion_module(unet, path) -> None:
    """Write the temporal parameters of `unet` (a UNet or a pipeline) with their manifest (atomically)."""
    from svd_fast.checkpoints.io import save_safetensors

    unet = _unet_of(unet)
    save_safetensors(temporal_state_dict(unet), path, metadata={MANIFEST_KEY: json.dumps(manifest(unet))})


def load_motion_module(target, path) -> list[str]:
    """Replace the temporal parameters of `target` (a UNet or a pipeline) with those in `path`;
    returns their names. Spatial parameters are untouched."""
    if hasattr(target, "unet") and not isinstance(target, nn.Module):
        from svd_fast.adapters import edit

        return edit(target, _load, path)
    return _load(target, path)


@torch.no_grad()
def _load(unet: nn.Module, path) -> list[str]:
    from svd_fast.adapters import read_file

    tensors, metadata = read_file(path)
    if MANIFEST_KEY not in metadata:
        raise ValueError(f"{path}: not a motion module (no '{MANIFEST_KEY}' metadata)")
    stored = json.loads(metadata[MANIFEST_KEY])["base"]
    wanted = manifest(unet)["base"]
    for field in BASE_FIELDS:
        if stored.get(field) != wanted[field]:
            raise ValueError(f"{path}: made for a UNet with {field}={stored.get(field)}, this one has {wanted[field]}")
    own = temporal_state_dict(unet)
    for key in sorted(own.keys() | tensors.keys()):
        if key not in tensors:
            raise ValueError(f"{path}: {key}: missing (this UNet has it)")
        if key not in own:
            raise ValueError(f"{path}: {key}: not a temporal parameter of this UNet")
        if tensors[key].shape != own[key].shape:
            raise ValueError(f"{path}: {key}: shape {tuple(tensors[key].shape)}, this UNet needs {tuple(own[key].shape)}")
    for key, value in own.items():
        value.copy_(tensors[key])  # in place: dtype and device stay the UNet's
    return sorted(own)


def _unet_of(target) -> nn.Module:
    if isinstance(target, nn.Module):
        return target
    from svd_fast.adapters import plain_unet

    return plain_unet(target)
