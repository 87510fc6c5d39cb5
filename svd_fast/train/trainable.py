"""Which UNet parameters train, and gradient checkpointing per block.

Modes:
- full: every UNet parameter (the paper trains all layers);
- temporal: only the temporal layers (temporal ResBlocks, temporal transformer blocks, frame
  position embeddings, the AlphaBlender mix factors): an AnimateDiff-style motion module
  (svd_fast.motion_module saves and loads exactly these);
- spatial: everything except those;
- lora: only adapter weights (svd_fast.train.lora).
"""
from __future__ import annotations

import torch.utils.checkpoint
from torch import nn

from svd_fast.motion_module import is_temporal  # one definition, shared with inference
from svd_fast.train import lora as lora_lib

MODES = ("full", "temporal", "spatial", "lora")


def set_trainable(unet: nn.Module, mode: str, lora_config: lora_lib.LoRAConfig | None = None) -> list[str]:
    """Set requires_grad for `mode` (attaching adapters for 'lora'); returns the trainable names."""
    if mode not in MODES:
        raise ValueError(f"trainable mode must be one of {MODES}, got {mode!r}")
    if mode == "lora":
        lora_lib.attach_lora(unet, lora_config or lora_lib.LoRAConfig())
        lora_lib.mark_only_lora_trainable(unet)
    else:
        for name, param in unet.named_parameters():
            param.requires_grad_(mode == "full" or (mode == "temporal") == is_temporal(name))
    names = [name for name, p in unet.named_parameters() if p.requires_grad]
    if not names:
        raise ValueError(f"trainable mode {mode!r} leaves no parameter to train")
    return names


def checkpointed_blocks(unet: nn.Module) -> list[nn.Module]:
    """The per-block units that gradient checkpointing recomputes: every spatiotemporal ResBlock
    and every spatiotemporal transformer (pure functions of (x, context))."""
    from svd_fast.unet import SpatioTemporalResBlock, TransformerSpatioTemporalModel

    return [m for m in unet.modules() if isinstance(m, (SpatioTemporalResBlock, TransformerSpatioTemporalModel))]


def enable_gradient_checkpointing(unet: nn.Module) -> int:
    """Recompute each block's activations in the backward pass instead of keeping them.

    Wraps the instance's forward (module hooks, which DeepSpeed ZeRO-3 uses to gather weights,
    still run around it, and run again during recomputation). Returns the number of blocks.
    """
    blocks = checkpointed_blocks(unet)
    for block in blocks:
        if getattr(block, "_checkpointed", False):
            continue
        inner = block.forward

        def forward(*args, _inner=inner, **kwargs):
            if not torch.is_grad_enabled():
                return _inner(*args, **kwargs)
            return torch.utils.checkpoint.checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward
        block._checkpointed = True
    return len(blocks)
