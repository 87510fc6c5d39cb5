"""Per-GPU memory estimate of a training run, before launching it.

Static parts are counted exactly from the model (built on the meta device) and the DeepSpeed
config, in the ZeRO paper's terms (Psi = trainable parameters, N = world size):
  parameters   2 or 4 bytes x all UNet parameters           (/N under ZeRO-3, 0 with param offload)
  gradients    2 or 4 bytes x Psi                            (/N under ZeRO-2 and 3)
  optimizer    fp32 master copy (mixed precision) + Adam's 8 bytes, or 2 bytes with 8-bit AdamW,
               per trainable parameter                       (/N under ZeRO-1..3, 0 with offload)
  EMA          4 bytes x Psi                                 (/N under ZeRO-3, as svd_fast.train.ema keeps it)
  ZeRO-3 working set: the two largest top-level blocks gathered at once (current + prefetched)
  communication buckets: reduce_bucket_size elements of gradients (ZeRO 1..3)
  frozen VAE and image encoder weights (replicated)
Activations are measured, not modelled: a width-reduced copy of the UNet (every width divided by
k so it stays a multiple of 32 groups) runs one forward + backward on CPU at a few small sizes
under the recipe's precision, trainable mode and checkpointing; the CPU profiler's allocation
timeline gives the peak above the weights. Activation memory is linear in B*T*h*w (plus small
per-frame terms) and in the widths, so the fit c0 + c1*B*T + c2*B*T*h*w times k scales to the target. The frozen conditioning pass (VAE
encoding) is measured the same way; it runs before the UNet, so the peak takes the larger of the
two on top of the static parts.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from svd_fast.config import UNetConfig, VAEConfig
from svd_fast.train.engine import auto_bucket_values
from svd_fast.train.objective import ENCODE_CHUNK, DiffusionObjective
from svd_fast.train.recipe import Recipe
from svd_fast.train.trainable import enable_gradient_checkpointing, set_trainable

GIB = 1024**3
CALIBRATION = ((1, 1, 4, 4), (1, 1, 8, 8), (1, 2, 8, 4), (1, 2, 4, 4))
"""(batch, frames, h, w) of the activation measurements, h and w in units of the UNet's total
downsampling factor (2^(levels-1) latent pixels); large enough that feature maps, not fixed-size
buffers, set the peak"""


@dataclass
class MemoryEstimate:
    items: dict[str, float] = field(default_factory=dict)
    """name -> bytes per GPU, static parts"""
    activations: float = 0.0
    conditioning: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.items.values()) + max(self.activations, self.conditioning)

    def table(self) -> str:
        rows = [*self.items.items(), ("activations (measured, scaled)", self.activations),
                ("frozen conditioning pass (VAE encode; not concurrent)", self.conditioning),
                ("total per GPU", self.total)]
        width = max(len(name) for name, _ in rows)
        unit, scale = ("GiB", GIB) if self.total >= GIB else ("MiB", 1024**2)
        lines = [f"  {name:<{width}}  {value / scale:9.2f} {unit}" for name, value in rows]
        return "\n".join([*lines, *(f"  note: {n}" for n in self.notes)])


def _width_factor(widths) -> int:
    """Largest k dividing every width such that widths / k stay multiples of 32."""
    return max(1, math.gcd(*widths) // 32)


def proxy_unet_config(config: UNetConfig) -> tuple[UNetConfig, int]:
    k = _width_factor(config.block_out_channels)
    widths = tuple(w // k for w in config.block_out_channels)
    head_dim = config.block_out_channels[0] // config.num_attention_heads[0]
    heads = tuple(max(1, w // head_dim) for w in widths)
    heads = tuple(h if w % h == 0 else 1 for h, w in zip(heads, widths))
    return dataclasses.replace(config, block_out_channels=widths, num_attention_heads=heads), k


def proxy_vae_config(config: VAEConfig) -> tuple[VAEConfig, int]:
    k = _width_factor(config.block_out_channels)
    return dataclasses.replace(config, block_out_channels=tuple(w // k for w in config.block_out_channels)), k


def profiled_peak(fn) -> int:
    """Peak bytes allocated above the starting point while fn runs (CPU profiler timeline)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak


def _autocast(precision: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.bfloat16}.get(precision)  # CPU autocast: bf16 stands in for fp16
    return torch.autocast("cpu", dtype=dtype, enabled=dtype is not None)


def _fit(points: list[tuple[int, int, int]]) -> np.ndarray:
    """Least-squares coefficients (c0, c1, c2) of bytes = c0 + c1 * frames + c2 * frames * pixels
    from (frames, frames * pixels, bytes) measurements: per-frame vectors (embeddings, norm
    statistics) grow with B*T only, feature maps with B*T*h*w."""
    a = np.array([[1.0, f, n] for f, n, _ in points])
    y = np.array([b for _, _, b in points], dtype=np.float64)
    return np.linalg.lstsq(a, y, rcond=None)[0]


def _predict(coef: np.ndarray, frames: int, elements: int) -> float:
    return float(coef[0] + coef[1] * frames + coef[2] * elements)


def measure_unet_activations(recipe: Recipe) -> tuple[np.ndarray, int]:
    """(fit coefficients (see _fit), width factor k) of the UNet's forward + backward inside the
    training objective (noising, preconditioning and loss included)."""
    from svd_fast.unet import VideoUNet

    proxy, k = proxy_unet_config(recipe.model.unet)
    torch.manual_seed(0)
    unet = VideoUNet(proxy)
    set_trainable(unet, recipe.trainable, recipe.lora)
    if recipe.gradient_checkpointing:
        enable_gradient_checkpointing(unet)
    for p in unet.parameters():  # gradients already exist in a running job: keep them out of the peak
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    unit = 2 ** (len(proxy.block_out_channels) - 1)

    objective = DiffusionObjective(unet)
    latent = proxy.out_channels

    def step(b, t, h, w):
        inputs = dict(latents=torch.randn(b, t, latent, h, w), noise=torch.randn(b, t, latent, h, w),
                      sigma=torch.ones(b), image_latents=torch.randn(b, t, proxy.in_channels - latent, h, w),
                      context=torch.randn(b, 1, proxy.cross_attention_dim), added_time_ids=torch.randn(b, 3),
                      image_only_indicator=torch.zeros(b, t))
        with _autocast(recipe.mixed_precision):
            loss = objective(**inputs).mean()
        loss.backward()

    points = []
    for i, (b, t, hu, wu) in enumerate(CALIBRATION):
        h, w = hu * unit, wu * unit
        if i == 0:
            step(b, t, h, w)  # warm-up: one-time allocations out of the measurement
        points.append((b * t, b * t * h * w, profiled_peak(lambda: step(b, t, h, w))))
    return _fit(points), k


def measure_vae_encode(vae_config: VAEConfig, frames: int, height: int, width: int) -> float:
    """Peak bytes of encoding `frames` frames of height x width with the frozen VAE (no grad)."""
    from svd_fast.vae import TemporalVAE

    proxy, k = proxy_vae_config(vae_config)
    vae = TemporalVAE(proxy).eval()
    unit = 2 ** (len(proxy.block_out_channels) - 1)
    points = []
    for n, s in ((1, 2), (1, 4), (2, 4)):
        x = torch.randn(n, 3, s * unit, s * unit)
        with torch.no_grad():
            vae.encode(x)
            points.append((n, n * s * s * unit * unit, profiled_peak(lambda: vae.encode(x))))
    return k * _predict(_fit(points), frames, frames * height * width)


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


def estimate_memory(recipe: Recipe, ds_config: dict | None, world_size: int) -> MemoryEstimate:
    """Per-GPU bytes of a training run of `recipe` under `ds_config` (None: plain engine, no ZeRO)."""
    if world_size < 1:
        raise ValueError(f"--world-size must be >= 1, got {world_size}")
    ds = ds_config or {}
    zero = ds.get("zero_optimization", {})
    stage = int(zero.get("stage", 0))
    offload_opt = zero.get("offload_optimizer", {}).get("device", "none") in ("cpu", "nvme")
    offload_param = stage == 3 and zero.get("offload_param", {}).get("device", "none") in ("cpu", "nvme")
    # DeepSpeed holds bf16/fp16 weights plus fp32 masters; the plain engine autocasts fp32 weights.
    mixed = recipe.mixed_precision != "no" and ds_config is not None
    weight_bytes = 2 if mixed else 4
    counts = count_parameters(recipe)
    psi, n = counts["trainable"], world_size
    est = MemoryEstimate()
    params = counts["unet"] * weight_bytes
    est.items["UNet parameters"] = 0 if offload_param else params / (n if stage == 3 else 1)
    est.items["gradients"] = psi * weight_bytes / (n if stage >= 2 else 1)
    adam = 2 if recipe.optim.name == "adamw8bit" else 8
    master = 4 if mixed else 0
    optimizer = psi * (adam + master)
    est.items["optimizer states"] = 0 if offload_opt else optimizer / (n if stage >= 1 else 1)
    if recipe.ema_decay:
        est.items["EMA (fp32)"] = 4 * psi / (n if stage == 3 else 1)
    if stage == 3:
        est.items["ZeRO-3 gathered working set"] = 2 * counts["largest_blocks"] * weight_bytes if n > 1 else 0
    if stage >= 1:
        bucket = zero.get("reduce_bucket_size", 5e8)
        bucket = auto_bucket_values(counts["trainable_numels"])["reduce_bucket_size"] if bucket == "auto" else float(bucket)
        est.items["communication buckets"] = min(bucket, psi) * weight_bytes
    est.items["frozen VAE + image encoder"] = counts["frozen"] * 4
    data = recipe.data
    factor = 2 ** (len(recipe.model.vae.block_out_channels) - 1)  # the VAE's downsampling
    latent_h, latent_w = data.height // factor, data.width // factor
    coef, k = measure_unet_activations(recipe)
    frames = recipe.batch_size * data.num_frames
    est.activations = k * _predict(coef, frames, frames * latent_h * latent_w)
    est.conditioning = measure_vae_encode(recipe.model.vae, min(ENCODE_CHUNK, frames), data.height, data.width)
    if offload_opt or offload_param:
        est.notes.append("offloaded states live in CPU memory: "
                         f"{(optimizer + (params if offload_param else 0)) / GIB:.2f} GiB per process")
    est.notes.append(f"activations from a width/{k} proxy measured on CPU at {len(CALIBRATION)} small sizes "
                     "(flash-style attention: linear in tokens)")
    return est
