"""svd_fast.kernels: the implementations behind svd_fast.layers, chosen per backend.

Backends:
  "reference"  plain PyTorch (kernels/reference.py), the ground truth;
  "triton"     the Triton kernels (CUDA tensors; CPU tensors only under TRITON_INTERPRET=1);
  "native"     the C++ CPU kernels of svd_fast._C (CPU tensors);
  "auto"       (default) per op, device and call signature, the fastest implementation available
               (on CUDA also PyTorch's own GroupNorm in the input dtype, kernels/torch_ops.py),
               timed on this machine at the first call and cached on disk (kernels/tuning.py);
               AUTO_CHOICES is the starting order. `python -m svd_fast.kernels --list` shows both.
`set_backend(name)` switches; the environment variable SVD_FAST_BACKEND sets the starting choice.
`get_op(name)` returns the callable the current backend uses. Importing this package is cheap:
triton and the extension are imported only when a backend needs them, and a missing one is
reported once (a warning) and replaced by the reference.
"""
from __future__ import annotations

if __name__ != "svd_fast.kernels":
    # Reached as a top-level `kernels` because the repository root is on sys.path (python -m or
    # pytest from the checkout). That name belongs to Hugging Face's `kernels` library, which
    # transformers, diffusers and bitsandbytes probe for: without a __file__ or __version__ this
    # module reads to them as a stray namespace folder, i.e. "not installed" (raising would break
    # their imports); where the library is installed, it takes this module's place (at the end).
    del __file__

import importlib
import importlib.util
import os
import warnings

from . import reference

BACKENDS = ("reference", "triton", "native", "auto")
OPS = tuple(reference.OPS)
DEVICES = ("cpu", "cuda")

# Which module provides each op's Triton implementation (function of the same name).
TRITON_MODULES = {
    "group_norm": "group_norm",
    "temporal_attention": "temporal_attention",
    "temporal_conv": "temporal_conv",
    "alpha_blend": "elementwise",
    "alpha_blend_residual": "elementwise",
    "geglu": "elementwise",
}

# "auto": per (op, device) the starting order, each with why it is preferred: what is used where
# nothing is timed (torch.compile tracing without a cached choice, SVD_FAST_TUNE=0) and the tie-break
# of the measured choice (kernels/tuning.py), which times these and every other available candidate.
# CPU: bench/results/kernels-cpu-2026-11-23.json (2 threads; speedup from min times over the PyTorch
# op sequence, small-latent and 576x1024 shapes). CUDA: bench/results/kernels-triton-svd-shapes-h200-
# 2026-12-04.json (NVIDIA H200, fp16/bf16 at the 576x1024 shapes, against the PyTorch ops).
AUTO_CHOICES = {
    ("group_norm", "cpu"): [
        ("native", "fused stats + affine + SiLU reading channels-last in place: bf16 1.3-12x the unfused PyTorch "
                   "ops at small latents (1.0-1.5x at 576x1024, memory bound), fp32 0.8-13x"),
    ],
    ("temporal_attention", "cpu"): [
        ("native", "T x T softmax per position in registers on the (B*T, S, C) layout, no permute copies: "
                   "bf16 4.8-10x the permute + SDPA path, fp32 3.3-4.9x"),
    ],
    ("temporal_conv", "cpu"): [
        ("reference", "oneDNN conv3d on the channels-last view beats the native shifted GEMMs "
                      "(native 0.8-0.95x in bf16, 0.3-0.5x in fp32)"),
    ],
    ("geglu", "cpu"): [
        ("native", "one pass, exact GELU through an exp-free erf: bf16 1.9-3.4x PyTorch, fp32 1.8-2.0x"),
    ],
    ("alpha_blend", "cpu"): [
        ("native", "one fused pass with fp32 math: bf16 2.8-4.0x the PyTorch expression, fp32 1.8-2.8x"),
    ],
    ("alpha_blend_residual", "cpu"): [
        ("native", "one fused pass with fp32 math: bf16 1.9-3.0x the PyTorch expression, fp32 1.1-1.9x"),
    ],
    ("spatial_attention", "cpu"): [
        ("reference", "torch SDPA (its flash CPU kernel); no faster CPU kernel in this package"),
    ],
    ("conv3x3", "cpu"): [
        ("native", "Winograd F(2x2, 3x3), 4 multiply-adds per output instead of 9, as 16 MKL GEMMs between "
                   "channels-last transforms: fp32 1.9-9.8x oneDNN's channels-last conv at 16x16 to 2x2 maps "
                   "with 640-2560 input channels, par at 320 channels and at 64x64 (Xeon, AVX-512 VNNI)"),
        ("reference", "oneDNN's direct convolution"),
    ],
    ("group_norm", "cuda"): [
        ("triton", "fused split-reduction GroupNorm + SiLU, both layouts in place: 0.8-3.1x PyTorch's GroupNorm "
                   "+ SiLU in the input dtype on an H200 (timed per shape)"),
        ("torch", "PyTorch's GroupNorm + SiLU in the input dtype, as diffusers runs them: 1.3-1.5x the reference's "
                  "fp32 copy on an H200, and faster than the Triton kernel at the deepest level"),
    ],
    ("temporal_attention", "cuda"): [("triton", "one program per (clip, position, head) on the (B*T, S, C) layout: "
                                               "7.3-12x the permute + SDPA path on an H200")],
    ("temporal_conv", "cuda"): [("reference", "cuDNN conv3d: the Triton implicit GEMM is 0.23-0.43x of it on an H200")],
    ("geglu", "cuda"): [("triton", "one fused elementwise pass: 2.6-3.1x PyTorch on an H200")],
    ("alpha_blend", "cuda"): [("triton", "one fused elementwise pass: 1.2-2.7x PyTorch on an H200")],
    ("alpha_blend_residual", "cuda"): [("triton", "one fused elementwise pass: 0.96-1.7x PyTorch on an H200")],
    ("conv3x3", "cuda"): [("reference", "cuDNN picks its own algorithm (Winograd and FFT included)")],
    ("spatial_attention", "cuda"): [
        ("flash", "flash-attn reads the (N, L, heads, d) view of the token layout with no copies"),
        ("reference", "torch SDPA (flash / memory-efficient CUDA kernels)"),
    ],
}

_backend: str | None = None
_table: dict = {}
_choices: dict = {}  # (op, device) -> (implementation name, reason), for --list
_warned: set = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _load_native():
    """The native op table, or None (with the reason warned once) when svd_fast._C is unavailable."""
    from . import native

    try:
        return native.load().OPS
    except ImportError as err:
        _warn_once("native", f"svd_fast.kernels: {err}; using the reference (PyTorch) ops instead")
        return None


def _load_triton():
    """The Triton op table, or None (with the reason warned once) when Triton cannot run here."""
    import torch

    if importlib.util.find_spec("triton") is None:
        reason = "triton is not installed"
    elif not (torch.cuda.is_available() or triton_interpreted()):
        reason = "there is no CUDA device and TRITON_INTERPRET=1 is not set"
    else:
        table = dict(reference.OPS)
        for op, module in TRITON_MODULES.items():
            table[op] = getattr(importlib.import_module(f"{__name__}.{module}"), op)
        return table
    _warn_once("triton", f"svd_fast.kernels: Triton kernels cannot run ({reason}); using the reference ops instead")
    return None


def _load_flash():
    """flash-attn's spatial attention when importable (GPU builds only), else None."""
    if importlib.util.find_spec("flash_attn") is None:
        return None
    from .spatial_attention import flash_spatial_attention

    return {"spatial_attention": flash_spatial_attention}


def _route(per_device: dict, fallback):
    """One callable that picks the implementation by the device of the first tensor argument."""
    if len({id(f) for f in per_device.values()} | {id(fallback)}) == 1:
        return fallback

    def op(*args, **kwargs):
        return per_device.get(args[0].device.type, fallback)(*args, **kwargs)

    return op


def _resolve_native(ref: dict) -> tuple[dict, dict]:
    native = _load_native()
    table = native or ref
    choices = {(op, "cpu"): ("native", "requested") if native else ("reference", "svd_fast._C not built") for op in OPS}
    choices.update({(op, "cuda"): ("reference", "native kernels are CPU-only") for op in OPS})
    return {op: _route({"cpu": table[op]}, ref[op]) for op in OPS}, choices


def _resolve_triton(ref: dict) -> tuple[dict, dict]:
    triton = _load_triton()
    table = triton or ref
    on_cpu = triton is not None and triton_interpreted()
    choices = {(op, "cuda"): ("triton", "requested") if triton else ("reference", "Triton unavailable") for op in OPS}
    choices.update({(op, "cpu"): ("triton", "TRITON_INTERPRET=1") if on_cpu
                    else ("reference", "Triton runs on CPU only interpreted") for op in OPS})
    return {op: _route({"cuda": table[op], "cpu": table[op] if on_cpu else ref[op]}, ref[op]) for op in OPS}, choices


# Implementations "auto" considers per device: native wrappers hand non-CPU tensors to the reference,
# and interpreted Triton is far slower than PyTorch. "torch" (kernels/torch_ops.py: PyTorch's own ops in
# the input dtype, as diffusers runs them) is a candidate on CUDA, where it was measured to win shapes.
AUTO_CANDIDATES = {"cpu": ("reference", "native"), "cuda": ("reference", "triton", "flash", "torch")}


def _auto_candidates(op: str, device: str, available: dict) -> list[tuple[str, object]]:
    """[(name, fn)] of op on device: AUTO_CHOICES' preferences first, then the other available ones
    (each function once: e.g. native's spatial_attention is the reference's)."""
    prefs = [name for name, _ in AUTO_CHOICES.get((op, device), [])]
    out, seen = [], set()
    for name in prefs + [n for n in AUTO_CANDIDATES[device] if n not in prefs]:
        fn = (available.get(name) or {}).get(op)
        if name in AUTO_CANDIDATES[device] and fn is not None and id(fn) not in seen:
            out.append((name, fn))
            seen.add(id(fn))
    return out


def _resolve_auto(ref: dict) -> tuple[dict, dict]:
    """Each op: a tuning dispatcher over the candidates of each device; choices report the starting one."""
    import torch

    from . import torch_ops, tuning

    available = {"reference": ref, "native": _load_native(), "torch": {"group_norm": torch_ops.group_norm}}
    if torch.cuda.is_available():
        available["triton"], available["flash"] = _load_triton(), _load_flash()
    measured = tuning.tuning_enabled()
    table, choices = {}, {}
    for op in OPS:
        candidates = {device: _auto_candidates(op, device, available) for device in DEVICES}
        for device, options in candidates.items():
            impl = options[0][0]
            reason = dict(AUTO_CHOICES.get((op, device), [])).get(impl, "no faster implementation available")
            others = [name for name, _ in options[1:]]
            if others:
                reason += (f" [starting choice; timed per call shape against {', '.join(others)}]" if measured
                           else " [SVD_FAST_TUNE=0: not timed]")
            choices[(op, device)] = (impl, reason)
        if all(len(options) == 1 for options in candidates.values()):
            table[op] = _route({device: options[0][1] for device, options in candidates.items()}, ref[op])
        else:
            table[op] = tuning.TunedOp(op, candidates, ref[op])
    return table, choices


def _resolve(name: str) -> tuple[dict, dict]:
    """(op table, (op, device) -> (implementation, reason)) for a backend name."""
    ref = dict(reference.OPS)
    if name == "reference":
        return ref, {(op, d): ("reference", "requested") for op in OPS for d in DEVICES}
    return {"native": _resolve_native, "triton": _resolve_triton, "auto": _resolve_auto}[name](ref)


def set_backend(name: str) -> None:
    """Select the implementation set used by svd_fast.layers from now on."""
    global _backend, _table, _choices
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; available: {', '.join(BACKENDS)}")
    _table, _choices = _resolve(name)
    _backend = name


def get_backend() -> str:
    if _backend is None:
        name = os.environ.get("SVD_FAST_BACKEND", "auto")
        if name not in BACKENDS:
            raise ValueError(f"environment variable SVD_FAST_BACKEND={name!r} is not one of {', '.join(BACKENDS)}")
        set_backend(name)
    return _backend


def get_op(name: str):
    get_backend()
    return _table[name]


def describe() -> list[tuple[str, str, str, str]]:
    """(op, device, implementation, reason) for the current backend; for "auto" the starting choice
    (the measured ones, per call shape: svd_fast.kernels.tuning.measured())."""
    get_backend()
    return [(op, device, *_choices[(op, device)]) for op in OPS for device in DEVICES]


def _hand_over_to_the_installed_library() -> None:
    """Put Hugging Face's `kernels` library, when installed, in sys.modules in this module's place:
    an import statement returns sys.modules' entry once the module has run (transformers >= 5.25
    requires the library and imports names from it). This package's submodules loaded under the
    top-level name are dropped with it. Not installed: this module stays, reading as a namespace."""
    import importlib.machinery
    import sys

    checkout = os.path.dirname(os.path.abspath(__path__[0]))
    elsewhere = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != checkout]
    spec = importlib.machinery.PathFinder.find_spec(__name__, elsewhere)
    if spec is None:
        return
    for name in [n for n in sys.modules if n.startswith(__name__ + ".")]:
        del sys.modules[name]
    library = importlib.util.module_from_spec(spec)
    sys.modules[__name__] = library
    spec.loader.exec_module(library)


if __name__ != "svd_fast.kernels":
    _hand_over_to_the_installed_library()
