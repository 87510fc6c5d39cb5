"""Low-rank adapters (LoRA) on the UNet's Linear layers: attach, save, load, merge, unmerge.

An adapted layer keeps its base weight W and gains two parameters, `lora_A` (rank x in, random)
and `lora_B` (out x rank, zero at start); its class becomes LoRALinear, whose `weight` reads as
W + (alpha / rank) * B @ A. Every code path that uses the layer sees the adapted weight, whether
it calls the module or reads `.weight` directly (fused kernels and in-place fast paths do), and
under ZeRO-3 the adapters are gathered with the layer's own weight. State-dict names of the base
model are unchanged; the adapters are `<layer>.lora_A` / `<layer>.lora_B`. Merging adds the
product into W once (the property then returns W as stored); unmerging subtracts it again.

The paper's camera-motion LoRAs sit in the temporal attention blocks with rank 16 (App. D.4.2):
that is the 'temporal_attention' preset.
"""
from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass

import torch
from torch import nn

PRESETS = {
    "temporal_attention": ("*temporal_transformer_blocks.*.attn1.to_[qkv]", "*temporal_transformer_blocks.*.attn1.to_out.0"),
    "attention": ("*.attn[12].to_[qkv]", "*.attn[12].to_out.0"),
    "all_linear": ("*",),
}
METADATA_KEY = "svd_fast_lora"


@dataclass(frozen=True)
class LoRAConfig:
    """Which Linear layers get adapters and how big they are."""

    rank: int = 16
    alpha: float = 16.0
    """the adapter's product is scaled by alpha / rank"""
    targets: tuple[str, ...] = PRESETS["temporal_attention"]
    """fnmatch patterns on module names (e.g. 'down_blocks.0.*.to_q'), or one preset name"""

    def patterns(self) -> tuple[str, ...]:
        if len(self.targets) == 1 and self.targets[0] in PRESETS:
            return PRESETS[self.targets[0]]
        return tuple(self.targets)

    def validate(self) -> None:
        if self.rank < 1 or self.alpha <= 0:
            raise ValueError(f"lora: rank must be >= 1 and alpha > 0, got rank={self.rank}, alpha={self.alpha}")


class LoRALinear(nn.Linear):
    """nn.Linear whose `weight` is W + scale * B @ A while not merged (attach_lora sets this class)."""

    lora_scale: float
    lora_merged: bool

    @property
    def weight(self) -> torch.Tensor:
        base = self._parameters["weight"]
        if self.lora_merged:
            return base
        return base + self.lora_delta()

    def lora_delta(self) -> torch.Tensor:
        return (self.lora_scale * (self.lora_B @ self.lora_A)).to(self._parameters["weight"].dtype)


def target_names(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Names of the nn.Linear modules matched by the config's patterns."""
    patterns = config.patterns()
    return [
        name for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(fnmatch.fnmatch(name, p) for p in patterns)
    ]


def attach_lora(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Add adapters to every matched Linear; returns their names. Only adapter weights train after
    `mark_only_lora_trainable`. Raises if nothing matches or adapters are already attached."""
    config.validate()
    names = target_names(model, config)
    if not names:
        raise ValueError(f"lora: no nn.Linear module matches {list(config.patterns())}")
    modules = dict(model.named_modules())
    for name in names:
        layer = modules[name]
        if isinstance(layer, LoRALinear):
            raise ValueError(f"lora: {name} already has an adapter")
        weight = layer._parameters["weight"]
        a = torch.empty(config.rank, layer.in_features, device=weight.device, dtype=weight.dtype)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # as nn.Linear initialises a weight
        layer.lora_A = nn.Parameter(a)
        layer.lora_B = nn.Parameter(torch.zeros(layer.out_features, config.rank, device=weight.device, dtype=weight.dtype))
        layer.__class__ = LoRALinear  # the adapted model starts equal to the base model (B = 0)
        layer.lora_scale = config.alpha / config.rank
        layer.lora_merged = False
    model.lora_config = config
    return names


def _adapted(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def is_lora_name(name: str) -> bool:
    return name.endswith((".lora_A", ".lora_B"))


def mark_only_lora_trainable(model: nn.Module) -> None:
    for name, param in model.named_parameters():
        param.requires_grad_(is_lora_name(name))


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.state_dict().items() if is_lora_name(name)}


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's own weights without adapter tensors (unmerged base weights if not merged)."""
    return {name: p for name, p in model.state_dict().items() if not is_lora_name(name)}


def save_lora_tensors(tensors: dict[str, torch.Tensor], config: LoRAConfig, path) -> None:
    """Write adapter tensors with their config to a safetensors file (atomically)."""
    from svd_fast.checkpoints.io import save_safetensors

    meta = {"rank": config.rank, "alpha": config.alpha, "targets": list(config.targets)}
    save_safetensors(tensors, path, metadata={METADATA_KEY: json.dumps(meta)})


def save_lora(model: nn.Module, path) -> None:
    config = getattr(model, "lora_config", None)
    if config is None:
        raise ValueError("save_lora: the model has no LoRA adapters")
    save_lora_tensors(lora_state_dict(model), config, path)


def read_lora(path) -> tuple[LoRAConfig, dict[str, torch.Tensor]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = (handle.metadata() or {}).get(METADATA_KEY)
        if meta is None:
            raise ValueError(f"{path}: not an svd_fast LoRA file (no '{METADATA_KEY}' metadata)")
        fields = json.loads(meta)
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    config = LoRAConfig(rank=int(fields["rank"]), alpha=float(fields["alpha"]), targets=tuple(fields["targets"]))
    return config, tensors


@torch.no_grad()
def _copy_adapters(model: nn.Module, tensors: dict[str, torch.Tensor], path) -> None:
    """Copy adapter tensors into the model's attached adapters, which must match them exactly."""
    params = {name: p for name, p in model.named_parameters() if is_lora_name(name)}
    missing, unexpected = params.keys() - tensors.keys(), tensors.keys() - params.keys()
    if missing or unexpected:
        raise ValueError(f"{path}: LoRA tensors do not fit this model: missing {sorted(missing)[:4]}, "
                         f"unexpected {sorted(unexpected)[:4]}")
    for key, value in tensors.items():
        if params[key].shape != value.shape:
            raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, the model needs {tuple(params[key].shape)}")
        params[key].copy_(value)


def load_lora(model: nn.Module, path, merge: bool = False) -> LoRAConfig:
    """Attach the adapters stored in `path` to a base model and load their weights.

    The file's layer names must match exactly the layers its patterns select in this model.
    With merge=True the adapters are folded into the base weights at once.
    """
    config, tensors = read_lora(path)
    apply_lora(model, config, tensors, merge, str(path))
    return config


def apply_lora(model: nn.Module, config: LoRAConfig, tensors: dict[str, torch.Tensor], merge: bool = False,
               what: str = "LoRA") -> None:
    """Attach adapters of `config` and fill them with `tensors` (optionally merging them)."""
    attach_lora(model, config)
    _copy_adapters(model, tensors, what)
    if merge:
        merge_lora(model)


def load_lora_weights(model: nn.Module, path) -> None:
    """Load adapter weights into adapters already attached with the same config (resuming)."""
    config, tensors = read_lora(path)
    if config != getattr(model, "lora_config", None):
        raise ValueError(f"{path}: adapter config {config} differs from the model's {getattr(model, 'lora_config', None)}")
    _copy_adapters(model, tensors, path)


@torch.no_grad()
def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight (W += scale * B @ A)."""
    for layer in _adapted(model).values():
        if not layer.lora_merged:
            layer._parameters["weight"] += layer.lora_delta()
            layer.lora_merged = True


@torch.no_grad()
def unmerge_lora(model: nn.Module) -> None:
    """Undo merge_lora (W -= scale * B @ A), applying the adapters on the fly again."""
    for layer in _adapted(model).values():
        if layer.lora_merged:
            layer._parameters["weight"] -= layer.lora_delta()
            layer.lora_merged = False
