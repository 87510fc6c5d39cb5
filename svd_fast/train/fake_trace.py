"""Peak activation memory of the real training graph, traced with FakeTensors (no memory, no FLOPs).

The full-width UNet is built under torch's FakeTensorMode (tensors with shapes, dtypes and
storages but no data) and runs the training objective's forward and backward at the target batch,
frames and resolution. A dispatch mode sees every op's outputs; each new storage adds its bytes
to a live counter until the storage is freed (a weakref finalizer), exactly as the allocator would
see it, so what autograd saves for backward, what checkpointing recomputes and when each buffer
dies come from the graph itself rather than from a model of it. Views share their storage and are
counted once. Not counted: allocator rounding and fragmentation, and kernel workspaces.

Kernels are traced with the plain-PyTorch reference implementations (svd_fast.kernels
reference backend); attention goes through scaled_dot_product_attention, whose fused path saves
the output and log-sum-exp only, as flash attention does on a GPU.
"""
from __future__ import annotations

import contextlib
import os
import warnings
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


TRACE_BACKEND = os.environ.get("SVD_FAST_TRACE_BACKEND", "native")
"""kernels the UNet trace uses: the fused autograd Functions that the native (CPU) and Triton (GPU)
backends share, which save what those kernels need for backward"""


class LiveBytes(TorchDispatchMode):
    """Bytes of storages created by ops inside the mode that are still alive, and their peak."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # Views and in-place results share an input's storage: no new memory (the input may be a
        # parameter or another tensor allocated outside the mode, which is not counted at all).
        inputs = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = id(storage)
                if key not in self._seen and key not in inputs:
                    nbytes = storage.nbytes()
                    self._seen.add(key)
                    self.live += nbytes
                    weakref.finalize(storage, self._free, key, nbytes)
        self.peak = max(self.peak, self.live)
        return out


@contextlib.contextmanager
def kernel_backend(name: str):
    """Route svd_fast.layers to backend `name` for the duration (restored after)."""
    from svd_fast import kernels

    previous = kernels.get_backend()
    kernels.set_backend(name)
    try:
        yield
    finally:
        kernels.set_backend(previous)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the storage dtype: Module.to() cannot swap fake parameters
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def unet_step_peak(unet_config, trainable: str, lora_config, checkpointing: bool, weight_dtype: torch.dtype,
                   autocast_dtype: torch.dtype | None, batch: int, frames: int, height: int, width: int) -> dict:
    """Peak bytes above the model while the training objective runs forward + backward on a
    (batch, frames, latent channels, height, width) latent. Gradients are handed off as each one is
    complete (dropped here: the static estimate counts their buffer), as ZeRO does; the transient
    gradient tensor of each parameter is part of the peak.

    weight_dtype: dtype of the stored weights (bf16/fp16 under DeepSpeed mixed precision, else fp32);
    autocast_dtype: the plain engine's autocast dtype (None: no autocast).
    Returns {"peak": bytes, "forward_peak": bytes}.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    from svd_fast.train.objective import DiffusionObjective
    from svd_fast.train.trainable import enable_gradient_checkpointing, set_trainable
    from svd_fast.unet import VideoUNet

    with kernel_backend(TRACE_BACKEND), FakeTensorMode(), warnings.catch_warnings():
        # The native conv keys its weight cache on data_ptr(), which a FakeTensor only warns about
        # (no cache entry outlives the trace: the fake weights die with it).
        warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
        with _default_dtype(weight_dtype):
            unet = VideoUNet(unet_config)
        set_trainable(unet, trainable, lora_config)
        if weight_dtype != torch.float32:  # adapters are created in fp32 by attach_lora
            for p in unet.parameters():
                p.data = p.data.to(weight_dtype)
        if checkpointing:
            enable_gradient_checkpointing(unet)
        for p in unet.parameters():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(_drop_grad)
        latent = unet_config.out_channels
        shape = (batch, frames, latent, height, width)
        inputs = dict(latents=torch.randn(shape), noise=torch.randn(shape), sigma=torch.ones(batch),
                      image_latents=torch.randn(batch, frames, unet_config.in_channels - latent, height, width),
                      context=torch.randn(batch, 1, unet_config.cross_attention_dim),
                      added_time_ids=torch.randn(batch, 3), image_only_indicator=torch.zeros(batch, frames))
        objective = DiffusionObjective(unet).train()
        tracker = LiveBytes()
        autocast = torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None)
        with tracker:
            with autocast:
                loss = objective(**inputs).mean()
            forward_peak = tracker.peak
            loss.backward()
    return {"peak": tracker.peak, "forward_peak": forward_peak}


def _drop_grad(param: torch.Tensor) -> None:
    param.grad = None


def vae_encode_peak(vae_config, frames: int, height: int, width: int, dtype: torch.dtype = torch.float32) -> int:
    """Peak bytes of the frozen VAE encoding `frames` frames (no grad), traced on fake tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from svd_fast.vae import TemporalVAE

    with kernel_backend("reference"), FakeTensorMode():
        with _default_dtype(dtype):
            vae = TemporalVAE(vae_config).eval()
        x = torch.randn(frames, 3, height, width, dtype=dtype)
        tracker = LiveBytes()
        with tracker, torch.no_grad():
            vae.encode(x)
    return tracker.peak


def diffusers_unet_step_peak(unet_config, checkpointing: bool, weight_dtype: torch.dtype,
                             autocast_dtype: torch.dtype | None, batch: int, frames: int, height: int, width: int,
                             lora_config=None) -> dict:
    """unet_step_peak for diffusers' UNetSpatioTemporalConditionModel trained the way diffusers-based
    SVD fine-tuning scripts (SVD_Xtend) do: every weight trainable, the same EDM v-objective, and
    diffusers' own gradient checkpointing (which recomputes the ResBlocks but keeps the attention
    blocks' activations). The graph of the published memory figures, traced like ours.
    lora_config: train only LoRA adapters on the matched Linear layers (svd_fast.adapters; diffusers'
    layer names are the same as ours), else every weight."""
    from diffusers import UNetSpatioTemporalConditionModel
    from torch._subclasses.fake_tensor import FakeTensorMode

    from svd_fast.denoiser import v_scalings
    from svd_fast.train.objective import loss_weight

    with FakeTensorMode():
        with _default_dtype(weight_dtype):
            cfg = {k: v for k, v in unet_config.to_diffusers().items() if not k.startswith("_")}
            unet = UNetSpatioTemporalConditionModel(**cfg).train()
        if lora_config is not None:
            from svd_fast.train import lora as lora_lib

            lora_lib.attach_lora(unet, lora_config)
            lora_lib.mark_only_lora_trainable(unet)
        if checkpointing:
            unet.enable_gradient_checkpointing()
        for p in unet.parameters():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(_drop_grad)
        latent = unet_config.out_channels
        shape = (batch, frames, latent, height, width)
        x0, noise, sigma = torch.randn(shape), torch.randn(shape), torch.ones(batch)
        image_latents = torch.randn(batch, frames, unet_config.in_channels - latent, height, width)
        context, time_ids = torch.randn(batch, 1, unet_config.cross_attention_dim), torch.randn(batch, 3)
        tracker = LiveBytes()
        autocast = torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None)
        with tracker:
            with autocast:
                c_skip, c_out, c_in, c_noise = (s.reshape(-1, 1, 1, 1, 1) for s in v_scalings(sigma))
                x = x0 + sigma.reshape(-1, 1, 1, 1, 1) * noise
                sample = torch.cat([x * c_in, image_latents], dim=2).to(weight_dtype)
                out = unet(sample, c_noise.flatten(), context.to(weight_dtype), time_ids).sample
                denoised = c_skip * x + c_out * out.float()
                loss = (loss_weight(sigma) * (denoised - x0).pow(2).mean(dim=(1, 2, 3, 4))).mean()
            forward_peak = tracker.peak
            loss.backward()
    return {"peak": tracker.peak, "forward_peak": forward_peak}
