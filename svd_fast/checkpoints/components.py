"""load_components / save_components: a whole SVD model from and to either checkpoint layout."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from svd_fast.checkpoints import diffusers as diffusers_layout
from svd_fast.checkpoints import open_clip, sgm
from svd_fast.checkpoints import text_encoder as text_tower
from svd_fast.checkpoints.io import (
    CheckpointError,
    TensorSource,
    assign_weights,
    atomic_folder,
    build_on_meta,
    check_plan,
    describe_keys,
    expected_shapes,
    identity_plan,
    open_tensors,
    read_plan,
    save_safetensors,
)
from svd_fast.config import NUMERICS, SVDConfig

LAYOUTS = ("diffusers", "sgm")
_WHAT = {"unet": "SVD UNet", "vae": "SVD temporal VAE", "image_encoder": "CLIP image encoder"}


def detect_layout(path) -> str:
    """'diffusers' for a pipeline folder (model_index.json), 'sgm' for a single SVD file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.is_dir():
        if diffusers_layout.is_pipeline_folder(path):
            return "diffusers"
        hint = " (it looks like one component folder; pass the pipeline folder above it)" if (path / "config.json").exists() else ""
        raise CheckpointError(f"{path}: not a diffusers pipeline folder: no model_index.json{hint}")
    keys = open_tensors(path).keys()
    if any(k.startswith(sgm.UNET_PREFIX) and ".time_stack." in k for k in keys):
        return "sgm"
    raise CheckpointError(f"{path}: not an SVD checkpoint: {describe_keys(keys)}")


IGNORED = {"unet": (), "vae": (), "image_encoder": ("vision_model.embeddings.position_ids",)}
"""tensors a diffusers folder may hold that carry no weights (transformers < 4.31 saved CLIP's
position ids, arange(n), as a persistent buffer)"""


def _factories(config: SVDConfig) -> dict:
    from svd_fast.conditioner import build_image_encoder
    from svd_fast.unet import VideoUNet
    from svd_fast.vae import TemporalVAE

    return {
        "unet": lambda: VideoUNet(config.unet),
        "vae": lambda: TemporalVAE(config.vae),
        "image_encoder": lambda: build_image_encoder(config.image_encoder),
    }


def _sources(path: Path, layout: str, config: SVDConfig | None, numerics: str, use_ema: bool):
    """(config, scheduler config, {component: (source, plan function, consumed prefixes, ignored prefixes)})."""
    if layout == "diffusers":
        file_config, scheduler = diffusers_layout.read_config(path, numerics)
        unet_folder = "unet_ema" if use_ema else "unet"
        if use_ema and not (path / unet_folder).is_dir():
            raise CheckpointError(f"{path}: no EMA weights (no unet_ema/ folder)")
        config = config or file_config
        folders = [("unet", unet_folder), ("vae", "vae")]
        if config.conditioning != "text":  # a text model's conditioner is its text tower (text_encoder.py)
            folders.append(("image_encoder", "image_encoder"))
        specs = {
            name: (diffusers_layout.open_component(path, folder), identity_plan, ("",), IGNORED[name])
            for name, folder in folders
        }
        return config, scheduler, specs
    source = open_tensors(path)
    config = config or sgm.read_config(source, numerics)
    if use_ema and not any(k.startswith(sgm.EMA_PREFIX) for k in source.keys()):
        raise CheckpointError(f"{path}: no EMA weights (no {sgm.EMA_PREFIX}* tensors)")
    unet_consumed = (sgm.EMA_PREFIX,) if use_ema else sgm.UNET_CONSUMED
    specs = {
        "unet": (source, lambda keys: sgm.unet_plan(keys, config.unet, use_ema), unet_consumed, sgm.EMA_BUFFERS),
        "vae": (source, lambda keys: sgm.vae_plan(keys, config.vae), sgm.VAE_CONSUMED, ()),
    }
    if config.conditioning != "text":
        specs["image_encoder"] = (source, open_clip.read_plan, sgm.CLIP_CONSUMED, ())
    return config, sgm.read_scheduler(source, diffusers_layout.DEFAULT_SCHEDULER_CONFIG), specs


def load_components(path, dtype: torch.dtype | None = None, device=None, numerics: str = "sgm",
                    use_ema: bool = False, config: SVDConfig | None = None, tokenizer=None) -> dict:
    """Load an SVD model from a diffusers pipeline folder or an sgm single file (auto-detected).

    Returns dict(config=SVDConfig, unet=VideoUNet, vae=TemporalVAE,
    image_encoder=svd_fast.clip_vision.CLIPVisionTower, scheduler_config=dict), modules in eval mode.
    - dtype: cast floating-point weights (None keeps the stored dtypes); device: where they go.
    - numerics: 'sgm' or 'diffusers' UNet epsilons (svd_fast.config.NUMERICS).
    - use_ema: take the UNet from the EMA weights (sgm `model_ema.*`, diffusers `unet_ema/`).
    - config: use this SVDConfig instead of the checkpoint's (sgm files from elsewhere carry none
      and get one inferred from tensor shapes, assuming 64-dim UNet heads).
    - text models (config.conditioning 'text') have text_encoder (transformers CLIPTextModel[WithProjection])
      and tokenizer instead of image_encoder; tokenizer= (object or folder) replaces the checkpoint's.
    Modules are built on the meta device and the tensors assigned, so peak memory is about one
    copy of the weights. Every name and shape is checked before any tensor data is read.
    """
    if numerics not in NUMERICS:
        raise ValueError(f"numerics must be one of {NUMERICS}, got {numerics!r}")
    if config is not None:
        config = dataclasses.replace(config, unet=dataclasses.replace(config.unet, numerics=numerics))
    path = Path(path)
    config, scheduler_config, specs = _sources(path, detect_layout(path), config, numerics, use_ema)
    factories = _factories(config)
    prepared = {}
    for name, (source, plan_for, consumed, ignored) in specs.items():  # check all before reading any
        module = build_on_meta(factories[name])
        shapes = expected_shapes(module)
        plan = plan_for(shapes.keys())
        check_plan(plan, source, shapes, _WHAT[name], consumed, ignored)
        prepared[name] = (module, plan, source)
    out = {"config": config, "scheduler_config": scheduler_config}
    for name, (module, plan, source) in prepared.items():
        state = read_plan(plan, source, dtype, device)
        out[name] = assign_weights(module, state, _WHAT[name])
    if config.conditioning == "text":
        if path.is_dir():
            out["text_encoder"], out["tokenizer"] = text_tower.read_folder(path, dtype, device, tokenizer)
        else:
            out["text_encoder"], out["tokenizer"] = text_tower.read_sgm(open_tensors(path), dtype, device, tokenizer)
    return out


def _state(components: dict, name: str) -> dict[str, torch.Tensor]:
    if name not in components:
        raise CheckpointError(f"save_components: components lack {name!r} (need config, unet, vae, image_encoder)")
    value = components[name]
    return dict(value.state_dict()) if hasattr(value, "state_dict") else dict(value)  # modules and wrappers


def _check_states(config: SVDConfig, states: dict[str, dict]) -> None:
    """Names and shapes must be exactly those of the modules the config describes."""
    factories = _factories(config)
    for name, state in states.items():
        shapes = expected_shapes(build_on_meta(factories[name if name != "ema_unet" else "unet"]))
        source = TensorSource.from_state_dict(state, f"save_components({name})")
        check_plan(identity_plan(shapes), source, shapes, _WHAT.get(name, "EMA UNet"))


def save_components(components: dict, path, layout: str = "diffusers", overwrite: bool = False,
                    ema_unet=None) -> None:
    """Write components (as load_components returns them; modules or state dicts) to `path`.

    layout='diffusers': a pipeline folder (diffusers' StableVideoDiffusionPipeline.from_pretrained
    loads it); layout='sgm': one .safetensors file in sgm names, with our SVDConfig in its metadata.
    ema_unet (module or state dict): also write EMA UNet weights (sgm `model_ema.*`, diffusers `unet_ema/`).
    The write is atomic; an existing target is refused unless overwrite=True.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    config = components.get("config")
    if not isinstance(config, SVDConfig):
        raise CheckpointError("save_components: components['config'] must be an SVDConfig")
    text = config.conditioning == "text"  # text_encoder (a transformers module) + tokenizer instead of image_encoder
    states = {name: _state(components, name) for name in ("unet", "vae") + (() if text else ("image_encoder",))}
    if text and not all(hasattr(components.get(k), "save_pretrained") for k in ("text_encoder", "tokenizer")):
        raise CheckpointError("save_components: a text model needs components['text_encoder'] and ['tokenizer'] "
                              "(transformers objects)")
    if ema_unet is not None:
        states["ema_unet"] = _state({"ema_unet": ema_unet}, "ema_unet")
    _check_states(config, states)
    path = Path(path)
    if layout == "diffusers":
        scheduler_config = components.get("scheduler_config") or diffusers_layout.DEFAULT_SCHEDULER_CONFIG
        with atomic_folder(path, overwrite) as tmp:
            diffusers_layout.write_folder(tmp, config, **states, scheduler_config=scheduler_config)
            if text:
                text_tower.write_folder(tmp, components["text_encoder"], components["tokenizer"])
        return
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: sgm checkpoints are written as .safetensors files")
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path}: already exists (pass overwrite=True / --overwrite to replace it)")
    tensors = sgm.to_sgm(config, states["unet"], states["vae"], states.get("image_encoder", {}), states.get("ema_unet"))
    metadata = {sgm.CONFIG_METADATA: sgm.config_to_json(config)}
    scheduler_config = {**diffusers_layout.DEFAULT_SCHEDULER_CONFIG, **(components.get("scheduler_config") or {})}
    if scheduler_config != diffusers_layout.DEFAULT_SCHEDULER_CONFIG:  # only what differs from SVD's needs saying
        metadata[sgm.SCHEDULER_METADATA] = json.dumps(scheduler_config, sort_keys=True)
    if text:
        tower = components["text_encoder"]
        tensors.update(text_tower.to_sgm({k: v for k, v in tower.state_dict().items() if not k.endswith("position_ids")}))
        metadata.update(text_tower.metadata(tower, components["tokenizer"]))
    save_safetensors(tensors, path, metadata=metadata)
