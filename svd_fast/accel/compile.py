"""torch.compile of the UNet and the VAE decoder, with the settings that pay on each device.

CPU: inductor with freezing, which constant-folds the weights and prepacks every conv and linear
into oneDNN's blocked layouts once (eager pays a weight reorder per call), and fuses the
elementwise epilogues. CUDA: max-autotune without inductor's own CUDA graphs (svd_fast captures
its own, see accel/graphs.py). Every custom op of svd_fast.kernels is a torch.library op with a
fake implementation, so the graphs have no breaks (fullgraph=True enforces it).

Compiled artefacts go to inductor's on-disk caches (FX graph and AOT autograd caches), kept under
~/.cache/svd_fast/inductor unless TORCHINDUCTOR_CACHE_DIR says otherwise, so a second process
starts warm. Freezing bakes the weights in: change weights (e.g. merge a LoRA) only after
`restore`, or recompile.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

CACHE_DIR = Path(os.environ.get("SVD_FAST_CACHE_DIR", Path.home() / ".cache" / "svd_fast")) / "inductor"


def compile_options(device_type: str) -> dict:
    """Keyword arguments of torch.compile for a device ('cpu' or 'cuda')."""
    if device_type == "cuda":
        return {"mode": "max-autotune-no-cudagraphs"}
    return {"options": {"freezing": True}}


def use_disk_cache() -> None:
    """Point inductor's caches at a persistent folder (unless the user chose one) and switch them on."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(CACHE_DIR))
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    inductor_config.autotune_local_cache = True


class CompiledModule:
    """A module compiled with fullgraph=True and static shapes, timing its compiles.

    The first call for each input signature (shapes, dtypes) compiles; its wall time is kept in
    `compile_seconds` so the CLI and the benchmarks can report cold and warm starts. Everything
    else (parameters(), state_dict(), config, ...) is the wrapped module's: not an nn.Module
    itself, so checkpoints written from a compiled pipeline keep their key names.
    """

    def __init__(self, module: torch.nn.Module, device_type: str):
        from svd_fast.kernels import get_backend

        get_backend()  # resolve the kernel table now, not inside the first trace
        self.inner = module
        self.compiled = torch.compile(module, fullgraph=True, dynamic=False, **compile_options(device_type))
        self.compile_seconds: dict = {}

    def __getattr__(self, name):  # only reached for names this wrapper does not define
        return getattr(self.inner, name)

    def __call__(self, *args, **kwargs):
        key = _signature(args, kwargs)
        if key in self.compile_seconds:
            return self.compiled(*args, **kwargs)
        start = time.perf_counter()
        out = self.compiled(*args, **kwargs)
        self.compile_seconds[key] = time.perf_counter() - start
        return out


def _signature(args, kwargs) -> tuple:
    def sig(value):
        if isinstance(value, torch.Tensor):
            return (tuple(value.shape), value.dtype)
        return value if isinstance(value, (int, float, str, bool, type(None))) else type(value).__name__

    return tuple(sig(a) for a in args) + tuple((k, sig(v)) for k, v in sorted(kwargs.items()))


def compile_unet(unet: torch.nn.Module) -> CompiledModule:
    use_disk_cache()
    return CompiledModule(unet, next(unet.parameters()).device.type)


def compile_vae_decoder(vae: torch.nn.Module) -> None:
    """Compile a TemporalVAE's decoder in place (encode runs once per video and stays eager).

    Left eager when the VAE upcasts fp16 weights to fp32 (it calls the decoder functionally then).
    """
    if vae.compiled_decoder is None and vae.compute_dtype == vae.quant_conv.weight.dtype:
        use_disk_cache()
        vae.compiled_decoder = CompiledModule(vae.decoder, next(vae.parameters()).device.type)


def uncompile(module):
    """The eager module behind a CompiledModule (or the module itself)."""
    return module.inner if isinstance(module, CompiledModule) else module


def uncompile_vae_decoder(vae) -> None:
    vae.compiled_decoder = None


def total_compile_seconds(*modules) -> float:
    return sum(sum(m.compile_seconds.values()) for m in modules if isinstance(m, CompiledModule))
