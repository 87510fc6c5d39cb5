"""The sgm single-file layout (`svd.safetensors`, `svd_xt.safetensors`) as key maps to diffusers names.

Our modules use diffusers' parameter names, so this file only maps names (svd_facts 2.1-2.5):
- UNet: `model.diffusion_model.*` (the rules of diffusers' convert_svd_to_diffusers, made
  order-independent and written in the diffusers -> sgm direction, which is a plain function);
- EMA UNet: `model_ema.<name without dots>` (sgm's LitEma stores one buffer per parameter of
  `DiffusionEngine.model`, named with the dots removed: `model_ema.diffusion_modelinput_blocks00weight`);
- VAE: encoder + quant_conv from the conditioner's image encoder
  (`conditioner.embedders.3.encoder.{encoder,quant_conv}.*`), decoder from `first_stage_model.decoder.*`.
  Writing also puts the encoder at `first_stage_model.encoder.*` (the first stage has no quant_conv).
  This is the correct mapping, not the buggy one in diffusers' script (svd_facts 2.4);
- CLIP: see open_clip.py.
Reading an sgm file without our metadata infers the configuration from tensor shapes.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import torch

from svd_fast.checkpoints import open_clip, text_encoder
from svd_fast.checkpoints.io import CheckpointError, Plan, TensorSource, describe_keys
from svd_fast.config import ImageEncoderConfig, SVDConfig, UNetConfig, VAEConfig

UNET_PREFIX = "model.diffusion_model."
EMA_PREFIX = "model_ema."
EMA_BUFFERS = ("model_ema.decay", "model_ema.num_updates")  # LitEma's own state, not weights
VAE_COND_PREFIX = "conditioner.embedders.3.encoder."  # AutoencoderKLModeOnly of the cond-frame embedder
VAE_FIRST_STAGE = "first_stage_model."
CONFIG_METADATA = "svd_fast_config"  # safetensors metadata entry holding our SVDConfig as JSON
SCHEDULER_METADATA = "svd_fast_scheduler"
"""safetensors metadata entry holding the scheduler config as JSON, written when it is not SVD's
default (a model that samples from another sigma_max, a consistency schedule): the diffusers layout
keeps it in scheduler/scheduler_config.json"""

# consumed prefixes: every tensor under them must be used, or it is reported as unexpected
UNET_CONSUMED = (UNET_PREFIX,)
VAE_CONSUMED = (VAE_COND_PREFIX + "encoder.", VAE_COND_PREFIX + "quant_conv.", VAE_FIRST_STAGE + "decoder.")
CLIP_CONSUMED = (open_clip.PREFIX,)

# ------------------------------------------------------------------------------------------ UNet

_UNET_FIXED = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
# ResBlock layers: diffusers name -> sgm index inside in_layers / emb_layers / out_layers
_RESBLOCK = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def _unet_resnet(rest: str) -> str:
    """Inside a SpatioTemporalResBlock: spatial layers are the block itself, temporal ones `time_stack`."""
    if rest == "time_mixer.mix_factor":
        return rest
    part, layer, param = rest.split(".")
    stack = {"spatial_res_block": "", "temporal_res_block": "time_stack."}[part]
    return f"{stack}{_RESBLOCK[layer]}.{param}"


def _unet_transformer(rest: str) -> str:
    rest = re.sub(r"^temporal_transformer_blocks\.", "time_stack.", rest)
    return re.sub(r"^time_pos_embed\.linear_([12])\.", lambda m: f"time_pos_embed.{2 * int(m.group(1)) - 2}.", rest)


def _unet_block_part(kind: str, rest: str) -> str:
    """sgm sub-index .0 holds a level's ResBlock, .1 its transformer."""
    return f"0.{_unet_resnet(rest)}" if kind == "resnets" else f"1.{_unet_transformer(rest)}"


def unet_key(key: str, config: UNetConfig) -> str:
    """diffusers UNet parameter name -> sgm name (without `model.diffusion_model.`)."""
    n, levels = config.layers_per_block, len(config.block_out_channels)
    module, _, param = key.rpartition(".")
    try:
        if module in _UNET_FIXED:
            return f"{_UNET_FIXED[module]}.{param}"
        if key == "mask_embedding":  # SVD-FI's learned mask embedding (UNetConfig.mask_embedding): our own name
            return key
        if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            level, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            assert level < levels and layer < n
            return f"input_blocks.{1 + level * (n + 1) + layer}.{_unet_block_part(kind, rest)}"
        if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
            assert int(m[1]) < levels - 1
            return f"input_blocks.{1 + int(m[1]) * (n + 1) + n}.0.op.{m[2]}"
        if m := re.fullmatch(r"mid_block\.resnets\.([01])\.(.+)", key):
            return f"middle_block.{2 * int(m[1])}.{_unet_resnet(m[2])}"
        if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            return f"middle_block.1.{_unet_transformer(m[1])}"
        if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            level, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            assert level < levels and layer < n + 1
            return f"output_blocks.{level * (n + 1) + layer}.{_unet_block_part(kind, rest)}"
        if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
            level = int(m[1])
            assert level < levels - 1
            # the upsampler follows the level's last ResBlock, after its transformer if it has one
            slot = 2 if config.attention_levels[levels - 1 - level] else 1
            return f"output_blocks.{level * (n + 1) + n}.{slot}.conv.{m[2]}"
    except (AssertionError, KeyError, ValueError):
        pass
    raise KeyError(f"{key!r} is not a parameter of the SVD UNet described by {config}")


def ema_key(sgm_unet_key: str) -> str:
    """sgm UNet name -> LitEma buffer name (parameter of DiffusionEngine.model, dots removed)."""
    return EMA_PREFIX + ("diffusion_model." + sgm_unet_key).replace(".", "")


def unet_plan(keys, config: UNetConfig, use_ema: bool = False) -> Plan:
    if use_ema:
        return {k: ((ema_key(unet_key(k, config)),), None) for k in keys}
    return {k: ((UNET_PREFIX + unet_key(k, config),), None) for k in keys}


# ------------------------------------------------------------------------------------------- VAE

_VAE_SPATIAL = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
_VAE_TEMPORAL = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_FIXED = {
    "encoder.conv_in": "encoder.conv_in",
    "encoder.conv_norm_out": "encoder.norm_out",
    "encoder.conv_out": "encoder.conv_out",
    "quant_conv": "quant_conv",
    "decoder.conv_in": "decoder.conv_in",
    "decoder.conv_norm_out": "decoder.norm_out",
    "decoder.conv_out": "decoder.conv_out",
    "decoder.time_conv_out": "decoder.conv_out.time_mix_conv",
}
_VAE_ATTENTION_WEIGHT = re.compile(r".*\.mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight")


def _vae_resnet(rest: str) -> str:
    """Encoder ResBlocks are plain; decoder ones split into spatial / time_stack / mix_factor."""
    if rest == "time_mixer.mix_factor":
        return "mix_factor"
    if rest.startswith("temporal_res_block."):
        layer, param = rest.split(".")[1:]
        return f"time_stack.{_VAE_TEMPORAL[layer]}.{param}"
    layer, param = rest.removeprefix("spatial_res_block.").split(".")
    return f"{_VAE_SPATIAL[layer]}.{param}"


def vae_key(key: str, config: VAEConfig) -> str:
    """diffusers VAE parameter name -> sgm autoencoder name (`encoder.*`, `decoder.*`, `quant_conv.*`)."""
    levels = len(config.block_out_channels)
    module, _, param = key.rpartition(".")
    try:
        if module in _VAE_FIXED:
            return f"{_VAE_FIXED[module]}.{param}"
        if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            assert int(m[1]) < levels and int(m[2]) < config.layers_per_block
            return f"encoder.down.{m[1]}.block.{m[2]}.{_vae_resnet(m[3])}"
        if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
            assert int(m[1]) < levels - 1
            return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            return f"{m[1]}.mid.block_{int(m[2]) + 1}.{_vae_resnet(m[3])}"
        if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(\w+)", key):
            return f"{m[1]}.mid.attn_1.{_VAE_ATTENTION[m[2]]}.{m[3]}"
        # sgm builds the decoder's up levels from the lowest resolution and stores them by level:
        # diffusers up_blocks.i is sgm up.{levels - 1 - i}
        if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            assert int(m[1]) < levels and int(m[2]) < config.layers_per_block + 1
            return f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{_vae_resnet(m[3])}"
        if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
            assert int(m[1]) < levels - 1
            return f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    except (AssertionError, KeyError, ValueError):
        pass
    raise KeyError(f"{key!r} is not a parameter of the SVD VAE described by {config}")


def vae_file_keys(key: str, config: VAEConfig) -> tuple[str, ...]:
    """Where a VAE parameter lives in an sgm file; the first entry is where loading reads it."""
    name = vae_key(key, config)
    if name.startswith("encoder."):
        return VAE_COND_PREFIX + name, VAE_FIRST_STAGE + name
    if name.startswith("quant_conv."):
        return (VAE_COND_PREFIX + name,)
    return (VAE_FIRST_STAGE + name,)


def _squeeze_1x1(w: torch.Tensor) -> torch.Tensor:
    """sgm's attention projections are 1x1 convs (C, C, 1, 1); diffusers uses Linear (C, C)."""
    return w.flatten(1)


def vae_plan(keys, config: VAEConfig) -> Plan:
    return {k: ((vae_file_keys(k, config)[0],), _squeeze_1x1 if _VAE_ATTENTION_WEIGHT.fullmatch(k) else None) for k in keys}


# --------------------------------------------------------------------------------------- writing


def to_sgm(config: SVDConfig, unet: dict, vae: dict, image_encoder: dict, ema_unet: dict | None = None) -> dict:
    """diffusers-named state dicts -> the tensors of an sgm single file."""
    out = {UNET_PREFIX + unet_key(k, config.unet): t for k, t in unet.items()}
    if ema_unet is not None:
        out.update({ema_key(unet_key(k, config.unet)): t for k, t in ema_unet.items()})
    for key, tensor in vae.items():
        if _VAE_ATTENTION_WEIGHT.fullmatch(key):
            tensor = tensor[:, :, None, None]
        for i, name in enumerate(vae_file_keys(key, config.vae)):
            out[name] = tensor.clone() if i else tensor  # safetensors refuses shared storage
    out.update(open_clip.to_open_clip(image_encoder))
    return out


def config_to_json(config: SVDConfig) -> str:
    return json.dumps(dataclasses.asdict(config), sort_keys=True)


def config_from_json(text: str, where: str) -> SVDConfig:
    def fields(cls, d):
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    try:
        d = json.loads(text)
        return SVDConfig(
            unet=fields(UNetConfig, d.pop("unet")),
            vae=fields(VAEConfig, d.pop("vae")),
            image_encoder=fields(ImageEncoderConfig, d.pop("image_encoder")),
            **d,
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{where}: corrupt '{CONFIG_METADATA}' metadata: {exc}") from exc


def read_scheduler(source: TensorSource, default: dict) -> dict:
    """The scheduler config the file carries (SCHEDULER_METADATA), else a copy of `default` (SVD's)."""
    if SCHEDULER_METADATA not in source.metadata:
        return dict(default)
    try:
        scheduler = json.loads(source.metadata[SCHEDULER_METADATA])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{source.name}: corrupt '{SCHEDULER_METADATA}' metadata: {exc}") from exc
    if not isinstance(scheduler, dict):
        raise CheckpointError(f"{source.name}: '{SCHEDULER_METADATA}' metadata is not a JSON object")
    return scheduler


# ------------------------------------------------------------------------- config from the shapes


def _indices(source: TensorSource, pattern: str) -> list[int]:
    """Sorted distinct integers captured by `pattern` (one group) over the source's keys."""
    regex = re.compile(pattern)
    return sorted({int(m[1]) for k in source.keys() if (m := regex.match(k))})


def _shape(source: TensorSource, key: str) -> tuple[int, ...]:
    if key not in source:
        raise CheckpointError(
            f"{source.name}: cannot infer the model configuration: {key} is missing. "
            f"(Is this an SVD checkpoint? Pass config= to load_components to skip inference.)"
        )
    return source.shapes[key]


def infer_unet_config(source: TensorSource) -> UNetConfig:
    """Widths, levels, ResBlocks per level and attention levels from the UNet's tensors.

    Head counts do not change any shape: like sgm's configs (num_head_channels: 64) we assume
    64-dimensional heads.
    """
    p = UNET_PREFIX
    blocks = _indices(source, re.escape(p) + r"input_blocks\.(\d+)\.")
    widths, attention, counts = [], [], [0]
    for i in blocks[1:]:
        if f"{p}input_blocks.{i}.0.op.weight" in source:  # downsampler: next level starts
            counts.append(0)
            continue
        width = _shape(source, f"{p}input_blocks.{i}.0.out_layers.3.weight")[0]
        has_attention = f"{p}input_blocks.{i}.1.proj_in.weight" in source
        if counts[-1] == 0:
            widths.append(width)
            attention.append(has_attention)
        counts[-1] += 1
    if not widths or len(set(counts)) != 1 or len(counts) != len(widths):
        raise CheckpointError(f"{source.name}: cannot infer the UNet layout from input_blocks (ResBlocks per level: {counts})")
    if any(w % 64 for w in widths):
        raise CheckpointError(f"{source.name}: widths {widths} are not multiples of 64-channel heads; pass config=")
    depth = len(_indices(source, re.escape(p) + r"middle_block\.1\.transformer_blocks\.(\d+)\."))
    label = _shape(source, p + "label_emb.0.0.weight")[1]
    ids = vector_ids(label, source.name)
    return UNetConfig(
        in_channels=_shape(source, p + "input_blocks.0.0.weight")[1],
        out_channels=_shape(source, p + "out.2.weight")[0],
        block_out_channels=tuple(widths),
        attention_levels=tuple(attention),
        layers_per_block=counts[0],
        num_attention_heads=tuple(w // 64 for w in widths),
        transformer_layers_per_block=depth,
        cross_attention_dim=_shape(source, p + "middle_block.1.transformer_blocks.0.attn2.to_k.weight")[1],
        addition_time_embed_dim=label // ids,
        projection_class_embeddings_input_dim=label,
        mask_embedding=p + "mask_embedding" in source,
    )


def vector_ids(label_width: int, name: str) -> int:
    """Entries of the vector conditioning from label_emb's input width (entries x sinusoid width):
    SVD's 3 (fps, motion bucket, noise augmentation), or SVD-MV's 4 (+ elevation,
    conditioner.multiview_time_ids) when the width is not a multiple of 3. A file saved by
    svd_fast carries its config in the metadata and never needs this guess."""
    for ids in (3, 4):
        if label_width % ids == 0:
            return ids
    raise CheckpointError(f"{name}: label_emb takes {label_width} inputs, not 3 or 4 sinusoidal embeddings; pass config=")


def inferred_conditioning(unet: UNetConfig) -> str:
    """The conditioning a metadata-less sgm UNet was trained for: SVD-FI has the mask embedding,
    SVD-MV a fourth vector entry, anything else is image-to-video (text models are told apart by
    their text tower, in read_config)."""
    if unet.mask_embedding:
        return "interpolation"
    ids = unet.projection_class_embeddings_input_dim // unet.addition_time_embed_dim
    return "multiview" if ids == 4 else "image"


def infer_vae_config(source: TensorSource) -> VAEConfig:
    enc, dec = VAE_COND_PREFIX + "encoder.", VAE_FIRST_STAGE + "decoder."
    levels = _indices(source, re.escape(enc) + r"down\.(\d+)\.")
    if not levels:
        raise CheckpointError(f"{source.name}: no VAE encoder tensors under {enc}")
    return VAEConfig(
        in_channels=_shape(source, enc + "conv_in.weight")[1],
        out_channels=_shape(source, dec + "conv_out.weight")[0],
        latent_channels=_shape(source, dec + "conv_in.weight")[1],
        block_out_channels=tuple(_shape(source, f"{enc}down.{i}.block.0.conv1.weight")[0] for i in levels),
        layers_per_block=len(_indices(source, re.escape(enc) + r"down\.0\.block\.(\d+)\.")),
    )


# OpenCLIP head widths by tower width (ViT-H/14, ViT-g/14, ViT-bigG/14 use 16 heads; others 64-d heads)
_OPEN_CLIP_HEADS = {1280: 16, 1408: 16, 1664: 16}


def infer_image_encoder_config(source: TensorSource) -> ImageEncoderConfig:
    p = open_clip.PREFIX
    width, _, patch, _ = _shape(source, p + "conv1.weight")
    positions = _shape(source, p + "positional_embedding")[0]
    grid = round((positions - 1) ** 0.5)
    return ImageEncoderConfig(
        hidden_size=width,
        num_hidden_layers=len(_indices(source, re.escape(p) + r"transformer\.resblocks\.(\d+)\.")),
        num_attention_heads=_OPEN_CLIP_HEADS.get(width, max(width // 64, 1)),
        intermediate_size=_shape(source, p + "transformer.resblocks.0.mlp.c_fc.weight")[0],
        patch_size=patch,
        image_size=grid * patch,
        projection_dim=_shape(source, p + "proj")[1],
    )


def read_config(source: TensorSource, numerics: str) -> SVDConfig:
    """Our metadata when present; otherwise inferred from shapes, with the frame count of the
    release the file name suggests ('xt' -> svd_xt's 25 frames, else svd's 14)."""
    if CONFIG_METADATA in source.metadata:
        config = config_from_json(source.metadata[CONFIG_METADATA], source.name)
    else:
        if not any(k.startswith(UNET_PREFIX) for k in source.keys()):
            raise CheckpointError(f"{source.name}: not an sgm SVD checkpoint: {describe_keys(source.keys())}")
        preset = SVDConfig.from_name("svd_xt" if "xt" in Path(source.name).stem.lower() else "svd")
        unet = dataclasses.replace(infer_unet_config(source), num_frames=preset.num_frames)
        if not any(k.startswith(open_clip.PREFIX) for k in source.keys()) and any(
                text_encoder.is_text_tower_key(k) for k in source.keys()):  # a text model (checkpoints/text_encoder.py)
            return dataclasses.replace(preset, unet=dataclasses.replace(unet, numerics=numerics),
                                       vae=infer_vae_config(source), conditioning="text")
        config = dataclasses.replace(
            preset, unet=unet, vae=infer_vae_config(source), image_encoder=infer_image_encoder_config(source),
            conditioning=inferred_conditioning(unet))
    return dataclasses.replace(config, unet=dataclasses.replace(config.unet, numerics=numerics))

