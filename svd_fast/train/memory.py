"""Per-GPU memory estimate of a training run, before launching it.

Static parts are counted exactly from the model (built on the meta device) and the DeepSpeed
config, in the ZeRO paper's terms (Psi = trainable parameters, N = world size):
  parameters   2 or 4 bytes x all UNet parameters           (/N under ZeRO-3, 0 with param offload)
  gradients    2 or 4 bytes x Psi                            (/N under ZeRO-2 and 3)
  optimizer    fp32 master copy (mixed precision, or any ZeRO stage) + Adam's 8 bytes, or 2 bytes with 8-bit AdamW,
               per trainable parameter                       (/N under ZeRO-1..3, 0 with offload)
  EMA          4 bytes x Psi                                 (/N under ZeRO-3, as svd_fast.train.ema keeps it)
  ZeRO-3 working set: the two largest top-level blocks gathered at once (current + prefetched)
  communication buckets: reduce_bucket_size elements of gradients (ZeRO 1..3)
  frozen VAE and image encoder weights (replicated)
Activations are traced, not modelled: the full-width UNet runs the training objective's forward
and backward at the target micro-batch, frames and resolution on FakeTensors
(svd_fast.train.fake_trace), under the recipe's precision, trainable mode and checkpointing, and
the peak of live tensor bytes is read off the real graph. The frozen conditioning pass (VAE
encoding, ENCODE_CHUNK frames at a time) is traced the same way; it runs before the UNet, so the
peak takes the larger of the two on top of the static parts. Live tensor bytes are a lower bound
of what the CUDA allocator reserves (rounding, fragmentation, the CUDA context): keep a margin.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from svd_fast.config import UNetConfig
from svd_fast.train.engine import auto_bucket_values
from svd_fast.train.fake_trace import unet_step_peak, vae_encode_peak
from svd_fast.train.objective import ENCODE_CHUNK
from svd_fast.train.recipe import Recipe
from svd_fast.train.trainable import set_trainable

GIB = 1024**3
LOW_PRECISION = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class MemoryEstimate:
    items: dict[str, float] = field(default_factory=dict)
    """name -> bytes per GPU, static parts"""
    activations: float = 0.0
    conditioning: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def static(self) -> float:
        return sum(self.items.values())

    @property
    def total(self) -> float:
        return self.static + max(self.activations, self.conditioning)

    def table(self) -> str:
        rows = [*self.items.items(), ("activations (traced forward + backward)", self.activations),
                ("frozen conditioning pass (VAE encode; not concurrent)", self.conditioning),
                ("total per GPU", self.total)]
        width = max(len(name) for name, _ in rows)
        unit, scale = ("GiB", GIB) if self.total >= GIB else ("MiB", 1024**2)
        lines = [f"  {name:<{width}}  {value / scale:9.2f} {unit}" for name, value in rows]
        return "\n".join([*lines, *(f"  note: {n}" for n in self.notes)])


def precision_dtypes(recipe: Recipe, deepspeed: bool) -> tuple[torch.dtype, torch.dtype | None]:
    """(stored weight dtype, autocast dtype) of a run: DeepSpeed bf16/fp16 keeps low-precision
    weights (fp32 masters in the optimizer) and runs without autocast; the plain engine keeps fp32
    weights and autocasts."""
    low = LOW_PRECISION.get(recipe.mixed_precision)
    if low is None:
        return torch.float32, None
    return (low, None) if deepspeed else (torch.float32, low)


def latent_size(recipe: Recipe) -> tuple[int, int]:
    factor = recipe.model.vae.downsample_factor
    data = recipe.data
    if data.height % factor or data.width % factor:
        raise ValueError(f"data.height/width {data.height}x{data.width} must be multiples of the VAE's factor {factor}")
    return data.height // factor, data.width // factor


def trace_activations(recipe: Recipe, deepspeed: bool, batch: int | None = None) -> int:
    """Peak activation bytes of one micro-step of `recipe` (batch: clips per GPU, default the recipe's)."""
    weight_dtype, autocast = precision_dtypes(recipe, deepspeed)
    h, w = latent_size(recipe)
    peak = unet_step_peak(recipe.model.unet, recipe.trainable, recipe.lora, recipe.gradient_checkpointing,
                          weight_dtype, autocast, batch or recipe.batch_size, recipe.data.num_frames, h, w)
    return peak["peak"]


def _numel(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def count_parameters(recipe: Recipe) -> dict:
    """Parameter counts from meta-device modules (no memory, no init cost)."""
    from svd_fast.conditioner import build_image_encoder
    from svd_fast.unet import VideoUNet
    from svd_fast.vae import TemporalVAE

    with torch.device("meta"):
        unet = VideoUNet(recipe.model.unet)
        set_trainable(unet, recipe.trainable, recipe.lora)
        frozen = _numel(TemporalVAE(recipe.model.vae)) + _numel(build_image_encoder(recipe.model.image_encoder))
    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    largest = sorted((_numel(b) for b in blocks), reverse=True)[:2]
    return {"unet": _numel(unet), "trainable": _numel(unet, trainable_only=True), "frozen": frozen,
            "largest_blocks": sum(largest), "trainable_numels": [p.numel() for p in unet.parameters() if p.requires_grad]}


def zero_settings(ds_config: dict | None) -> dict:
    """ZeRO stage and offload switches of a DeepSpeed config (None: the plain engine)."""
    zero = (ds_config or {}).get("zero_optimization", {})
    stage = int(zero.get("stage", 0))
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_optimization.stage must be 0..3, got {stage}")
    return {"stage": stage, "bucket": zero.get("reduce_bucket_size", 5e8),
            "offload_optimizer": zero.get("offload_optimizer", {}).get("device", "none") in ("cpu", "nvme"),
            "offload_param": stage == 3 and zero.get("offload_param", {}).get("device", "none") in ("cpu", "nvme")}


def static_memory(recipe: Recipe, ds_config: dict | None, world_size: int, counts: dict | None = None) -> MemoryEstimate:
    """The formula part of the estimate (everything but activations), per GPU."""
    if world_size < 1:
        raise ValueError(f"--world-size must be >= 1, got {world_size}")
    z = zero_settings(ds_config)
    stage, n = z["stage"], world_size
    # DeepSpeed holds bf16/fp16 weights plus fp32 masters; the plain engine autocasts fp32 weights.
    mixed = recipe.mixed_precision != "no" and ds_config is not None
    weight_bytes = 2 if mixed else 4
    counts = counts or count_parameters(recipe)
    psi = counts["trainable"]
    est = MemoryEstimate()
    params = counts["unet"] * weight_bytes
    est.items["UNet parameters"] = 0 if z["offload_param"] else params / (n if stage == 3 else 1)
    est.items["gradients"] = psi * weight_bytes / (n if stage >= 2 else 1)
    adam = 2 if recipe.optim.name == "adamw8bit" else 8
    # ZeRO's optimizer always steps a separate fp32 copy of its partition (a clone even in fp32).
    master = 4 if mixed or (ds_config is not None and stage >= 1) else 0
    optimizer = psi * (adam + master)
    est.items["optimizer states"] = 0 if z["offload_optimizer"] else optimizer / (n if stage >= 1 else 1)
    if recipe.ema_decay:
        est.items["EMA (fp32)"] = 4 * psi / (n if stage == 3 else 1)
    if stage == 3:
        est.items["ZeRO-3 gathered working set"] = 2 * counts["largest_blocks"] * weight_bytes if n > 1 else 0
    if stage >= 1:
        bucket = z["bucket"]
        bucket = auto_bucket_values(counts["trainable_numels"])["reduce_bucket_size"] if bucket == "auto" else float(bucket)
        est.items["communication buckets"] = min(bucket, psi) * weight_bytes
    est.items["frozen VAE + image encoder"] = counts["frozen"] * 4
    if z["offload_optimizer"] or z["offload_param"]:
        est.notes.append("offloaded states live in CPU memory: "
                         f"{(optimizer + (params if z['offload_param'] else 0)) / GIB:.2f} GiB per process")
    return est


def estimate_memory(recipe: Recipe, ds_config: dict | None, world_size: int) -> MemoryEstimate:
    """Per-GPU bytes of a training run of `recipe` under `ds_config` (None: plain engine, no ZeRO)."""
    est = static_memory(recipe, ds_config, world_size)
    est.activations = trace_activations(recipe, ds_config is not None)
    frames = recipe.batch_size * recipe.data.num_frames
    est.conditioning = vae_encode_peak(recipe.model.vae, min(ENCODE_CHUNK, frames), recipe.data.height, recipe.data.width)
    est.notes.append("activations traced on FakeTensors at full width (live tensor bytes; the CUDA allocator "
                     "reserves more: keep a margin)")
    return est


def wide_few_layer_unet(frames: int = 14, levels: int = 2) -> UNetConfig:
    """SVD's widths (320/640/1280, head dim 64, CLIP-H context, 256-wide micro-conditioning, 1280-wide
    time embedding) with one ResBlock per level and the first `levels` levels, all with
    spatiotemporal transformers: full-width GEMMs and convs at a size a CPU can train, for
    measurements where those dominate (bench/train.py) and the estimator's check against a real
    run (tests/train/test_train_memory.py). levels=1 has 52M parameters, 2 has 213M, 3 has 822M."""
    if levels not in (1, 2, 3):
        raise ValueError(f"levels must be 1, 2 or 3, got {levels}")
    return UNetConfig(block_out_channels=(320, 640, 1280)[:levels], attention_levels=(True,) * levels,
                      num_attention_heads=(5, 10, 20)[:levels], layers_per_block=1, num_frames=frames)
