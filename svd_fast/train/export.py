"""Export a training checkpoint as a model in the diffusers or sgm layout."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from svd_fast.config import ImageEncoderConfig, SVDConfig, UNetConfig, VAEConfig
from svd_fast.train import checkpoint as ckpt_lib
from svd_fast.train import lora as lora_lib


def _build(cls, values: dict):
    """Dataclass from its asdict() form (JSON lists back to tuples)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            value = values[f.name]
            kwargs[f.name] = tuple(value) if isinstance(value, list) and "tuple" in str(hints[f.name]) else value
    return cls(**kwargs)


def svd_config_from_dict(values: dict) -> SVDConfig:
    parts = {"unet": UNetConfig, "vae": VAEConfig, "image_encoder": ImageEncoderConfig}
    nested = {name: _build(cls, values[name]) for name, cls in parts.items()}
    rest = {k: v for k, v in values.items() if k not in parts}
    return SVDConfig(**nested, **rest)


def export_checkpoint(path, out, layout: str = "diffusers", which: str = "ema") -> None:
    """Write the checkpoint's UNet (EMA weights by default, LoRA adapters merged) together with the
    run's frozen VAE and image encoder (from recipe.components) as one model."""
    from svd_fast.checkpoints import load_components, save_components
    from svd_fast.unet import VideoUNet

    ckpt = ckpt_lib.resolve_checkpoint(path)
    recipe = ckpt_lib.read_trainer_state(ckpt)["recipe"]
    if not recipe.get("components"):
        raise ValueError(f"{ckpt}: the run used randomly initialised VAE / image encoder (recipe.components "
                         "is empty), so there is no complete model to export")
    config = svd_config_from_dict(recipe["model"])
    parts = load_components(recipe["components"])
    unet = VideoUNet(config.unet)
    unet.load_state_dict(ckpt_lib.checkpoint_unet_weights(ckpt, which), strict=True)
    lora_path = ckpt / "lora.safetensors"
    if lora_path.is_file():
        lora_config, adapters = lora_lib.read_lora(lora_path)
        ema_path = ckpt / "ema.safetensors"
        if which == "ema" and ema_path.is_file():
            adapters = {k: v for k, v in ckpt_lib.read_tensors(ema_path).items() if lora_lib.is_lora_name(k)}
        lora_lib.apply_lora(unet, lora_config, adapters, merge=True, what=str(lora_path))
    weights = lora_lib.base_state_dict(unet)
    components = {"config": config, "unet": weights, "vae": parts["vae"], "image_encoder": parts["image_encoder"],
                  "scheduler_config": parts["scheduler_config"]}
    save_components(components, Path(out), layout=layout, overwrite=True)

