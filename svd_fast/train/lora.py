"""LoRA for training: which parameters train, and resuming adapter weights.

The adapters themselves (LoRALinear, attach / fuse / unfuse, svd_fast's LoRA file format) live in
svd_fast.adapters, shared with sampling; they are re-exported here under the names training code
uses. A training run has one adapter, named 'default' (parameters `<layer>.lora_A_default`).
"""
from __future__ import annotations

from torch import nn

from svd_fast.adapters import (  # noqa: F401  (re-exported for training code)
    DEFAULT_ADAPTER, METADATA_KEY, PRESETS, LoRAConfig, LoRALinear, apply_lora, attach_lora, base_state_dict,
    is_lora_name, load_lora, read_lora, save_lora, save_lora_tensors, target_names,
)
from svd_fast.adapters import copy_adapter
from svd_fast.adapters import fuse as merge_lora  # noqa: F401  (W += scale * B @ A)
from svd_fast.adapters import unfuse as unmerge_lora  # noqa: F401


def mark_only_lora_trainable(model: nn.Module) -> None:
    for name, param in model.named_parameters():
        param.requires_grad_(is_lora_name(name))


def load_lora_weights(model: nn.Module, path) -> None:
    """Load adapter weights into the adapter already attached with the same config (resuming)."""
    config, tensors = read_lora(path)
    attached = getattr(model, "lora_configs", {}).get(DEFAULT_ADAPTER)
    if config != attached:
        raise ValueError(f"{path}: adapter config {config} differs from the model's {attached}")
    copy_adapter(model, tensors, path)

