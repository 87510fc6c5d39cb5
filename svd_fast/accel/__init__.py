"""One entry point for speed: `accelerate(pipe, ...)` on an svd_fast SVDPipeline or a diffusers
StableVideoDiffusionPipeline, and `restore(pipe)` to undo it.

On a diffusers pipeline the UNet, the VAE, the CLIP image tower and its preprocessing are replaced by
svd_fast's (same weights, moved not copied; same outputs and random numbers; the call signature
is diffusers'). Then, on either kind of pipeline:
  compile=True      torch.compile of the UNet and the VAE decoder (accel/compile.py);
  quantize='int8'   int8 weights and dynamic int8 activations for the UNet's convs and linears
                    (x86 CPUs; on CUDA its linears; accel/quantize.py); 'fp8': fp8 linears on CUDA
                    GPUs of compute capability 8.9+. Approximate: see bench/quantize.py.
  cuda_graphs=None  replay the UNet step from CUDA graphs (auto: on CUDA only; accel/graphs.py);
  cache_interval=N  reuse the UNet's deep features on all but every N-th step and the first and
                    last (DeepCache; accel/feature_cache.py). Approximate: see bench/quality.py.
"""
from __future__ import annotations

from svd_fast.accel import compile as _compile
from svd_fast.accel.dtypes import resolve_dtype  # noqa: F401  (re-exported: svd_fast.accel.resolve_dtype)

_STATE = "_svd_fast_accel"  # attribute on an accelerated pipeline: what to undo


def accelerate(pipe, compile: bool = False, cuda_graphs: bool | None = None, numerics: str = "diffusers",
               cache_interval: int | None = None, cache_branch: int = 0,
               quantize: str | None = None):
    """Speed up `pipe` in place and return it. Calling it again adds what is newly asked for.

    numerics (diffusers pipelines only): 'diffusers' keeps diffusers' GroupNorm epsilons so the
    video matches the unaccelerated pipeline; 'sgm' uses those of the released training code.
    quantize: None (exact), 'int8' or 'fp8' (accel/quantize.py; pair it with compile=True for speed).
    cache_interval / cache_branch: feature caching (accel/feature_cache.py; 1 = exact); it runs
    the eager UNet, so it does not combine with compile or CUDA graphs yet.
    """
    if quantize is not None:
        from svd_fast.accel.quantize import check_mode

        check_mode(quantize)
    state = getattr(pipe, _STATE, None)
    caching = cache_interval is not None or (state is not None and "feature_cache" in state)
    if caching and (compile or cuda_graphs or (state is not None and (state["compiled"] or state["graphed"]))):
        raise ValueError("feature caching (cache_interval) runs the eager UNet and cannot be combined with "
                         "compile or cuda_graphs yet")
    if state is None:
        state = {"kind": _kind(pipe), "compiled": False, "graphed": False}
        if state["kind"] == "diffusers":
            _swap_diffusers_components(pipe, numerics, state)
        setattr(pipe, _STATE, state)
    unet_owner, vae = _unet_owner(pipe), _svd_vae(pipe)
    if cache_interval is not None:
        _cache_features(pipe, unet_owner.inner, cache_interval, cache_branch, state)
    if quantize is not None and "quantized" not in state:
        _quantize_unet(unet_owner, quantize, state)
    if compile and not state["compiled"]:
        unet_owner.inner = _compile.compile_unet(unet_owner.inner)
        _compile.compile_vae_decoder(vae)
        state["compiled"] = True
    on_cuda = next(unet_owner.inner.parameters()).device.type == "cuda"
    if (cuda_graphs or (cuda_graphs is None and on_cuda and not caching)) and not state["graphed"]:
        from svd_fast.accel.graphs import graph_unet

        graphed = graph_unet(unet_owner.inner, enabled=cuda_graphs)
        if graphed is not unet_owner.inner:
            state["pre_graph_unet"] = unet_owner.inner
            unet_owner.inner = graphed
            state["graphed"] = True
    return pipe


def restore(pipe):
    """Undo `accelerate`: eager svd_fast models again, or diffusers' own models for a diffusers
    pipeline (rebuilt from the same weights). Returns the pipeline."""
    state = getattr(pipe, _STATE, None)
    if state is None:
        return pipe
    unet_owner, vae = _unet_owner(pipe), _svd_vae(pipe)
    if state.pop("feature_cache", None) is not None:
        _stop_caching_features(pipe, unet_owner.inner, state)
    if state["graphed"]:
        unet_owner.inner.reset()  # free the graphs and their buffers
        unet_owner.inner = state.pop("pre_graph_unet")
    unet_owner.inner = _compile.uncompile(unet_owner.inner)
    if "quantized" in state:
        from svd_fast.accel.quantize import dequantize_unet

        dequantize_unet(state.pop("quantized"))
    _compile.uncompile_vae_decoder(vae)
    if state["kind"] == "diffusers":
        _restore_diffusers_components(pipe, state)
    delattr(pipe, _STATE)
    return pipe


def compile_seconds(pipe) -> float:
    """Wall time spent compiling so far (first calls of each shape), 0 when not compiled."""
    if getattr(pipe, _STATE, None) is None:
        return 0.0
    state, vae = getattr(pipe, _STATE), _svd_vae(pipe)
    unet = state.get("pre_graph_unet", _unet_owner(pipe).inner)  # the compiled UNet sits inside the graph runner
    return _compile.total_compile_seconds(unet, vae.compiled_decoder)


# ----------------------------------------------------------------------------------- plumbing
def _kind(pipe) -> str:
    from svd_fast.pipeline import SVDPipeline

    if isinstance(pipe, SVDPipeline):
        return "svd_fast"
    if type(pipe).__name__ == "StableVideoDiffusionPipeline" and hasattr(pipe, "unet"):
        return "diffusers"
    raise TypeError(f"accelerate takes an svd_fast SVDPipeline or a diffusers StableVideoDiffusionPipeline, "
                    f"not {type(pipe).__name__}")


class _Holder:
    """Gives an SVDPipeline's UNet slot the same `.inner` handle as the diffusers wrapper."""

    def __init__(self, pipe):
        self.pipe = pipe

    @property
    def inner(self):
        return self.pipe.unet

    @inner.setter
    def inner(self, module):
        self.pipe.unet = module


def _unet_owner(pipe):
    from svd_fast.diffusers_bridge import DiffusersUNet

    return pipe.unet if isinstance(pipe.unet, DiffusersUNet) else _Holder(pipe)


def _svd_vae(pipe):
    from svd_fast.diffusers_bridge import DiffusersVAE

    return pipe.vae.inner if isinstance(pipe.vae, DiffusersVAE) else pipe.vae


def _cache_features(pipe, unet, interval: int, branch: int, state: dict) -> None:
    from svd_fast.accel import feature_cache

    cache = feature_cache.attach(unet, interval, branch)
    if state["kind"] == "diffusers":  # diffusers' pipeline has no step hook of ours: follow its scheduler
        feature_cache.unfollow_scheduler(pipe.unet)
        feature_cache.follow_scheduler(pipe.unet, pipe, cache)
    state["feature_cache"] = cache


def _stop_caching_features(pipe, unet, state: dict) -> None:
    from svd_fast.accel import feature_cache

    feature_cache.detach(unet)
    if state["kind"] == "diffusers":
        feature_cache.unfollow_scheduler(pipe.unet)


def _quantize_unet(unet_owner, mode: str, state: dict) -> None:
    """Quantize the eager UNet; what was built from its float layers is built again: a UNet compiled
    earlier is compiled around it, CUDA graphs captured earlier (which replay the float kernels) are
    dropped and captured on the next call."""
    from svd_fast.accel.quantize import quantize_unet

    holder, attr = unet_owner, "inner"
    if state["graphed"]:
        unet_owner.inner.reset()
        holder, attr = unet_owner.inner, "module"
    eager = _compile.uncompile(getattr(holder, attr))
    state["quantized"] = quantize_unet(eager, mode)
    if state["compiled"]:
        setattr(holder, attr, _compile.compile_unet(eager))
        if state["graphed"]:
            state["pre_graph_unet"] = holder.module


def _swap_diffusers_components(pipe, numerics: str, state: dict) -> None:
    from svd_fast.diffusers_bridge import (DiffusersUNet, DiffusersVAE, encode_image_for_diffusers, svd_image_encoder,
                                           svd_unet, svd_vae)

    state["unet_config"], state["vae_config"] = dict(pipe.unet.config), dict(pipe.vae.config)
    pipe.unet = DiffusersUNet(svd_unet(pipe.unet, numerics), pipe.unet.config)
    pipe.vae = DiffusersVAE(svd_vae(pipe.vae), pipe.vae.config)
    pipe.image_encoder = svd_image_encoder(pipe.image_encoder)
    pipe._encode_image = encode_image_for_diffusers.__get__(pipe)  # and our preprocessing


def _restore_diffusers_components(pipe, state: dict) -> None:
    from svd_fast.diffusers_bridge import diffusers_unet, diffusers_vae, transformers_image_encoder

    pipe.unet = diffusers_unet(pipe.unet.inner, state["unet_config"])
    pipe.vae = diffusers_vae(pipe.vae.inner, state["vae_config"])
    pipe.image_encoder = transformers_image_encoder(pipe.image_encoder)
    del pipe._encode_image  # the class's method again


__all__ = ["accelerate", "restore", "compile_seconds", "resolve_dtype"]
