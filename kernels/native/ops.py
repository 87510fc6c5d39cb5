"""Op wrappers around torch.ops.svd_fast_native (the C++ kernels of svd_fast._C).

Imported only once svd_fast._C is loaded (see `load()` in this package). Each op: a fake (meta)
implementation so torch.compile can trace it, the shared autograd.Function (kernels/autograd.py)
around the native forward and backward kernels, and a wrapper with the reference signature that
hands inputs the C++ kernels do not take (non-CPU tensors, float64, NCHW input to the temporal
conv) to the reference.
"""
from __future__ import annotations

import torch
import torch.utils.flop_counter

from .. import autograd, reference

NATIVE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_ops = torch.ops.svd_fast_native


def _native_ok(*tensors) -> bool:
    return all(t.device.type == "cpu" and t.dtype in NATIVE_DTYPES for t in tensors)


def _dense(x):
    """x in a layout the C++ kernels read in place (NCHW- or channels-last-contiguous), else a
    contiguous copy: made here, not in C++, so the fake implementations (empty_like) see the same
    input layout as the kernel and torch.compile's layout checks hold for any input strides."""
    if x.is_contiguous() or (x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last)):
        return x
    return x.contiguous()


# ---- fake implementations (shapes, dtypes and layouts of the C++ outputs) ----


@torch.library.register_fake("svd_fast_native::group_norm_fwd")
def _group_norm_fwd_fake(x, groups, weight, bias, eps, silu, frames_per_unit):
    units = x.shape[0] // frames_per_unit
    return (
        torch.empty_like(x),
        x.new_empty((units, groups), dtype=torch.float32),
        x.new_empty((units, groups), dtype=torch.float32),
    )


@torch.library.register_fake("svd_fast_native::group_norm_bwd")
def _group_norm_bwd_fake(grad, x, mean, rstd, weight, bias, silu, groups, frames_per_unit):
    c = x.shape[1]
    return torch.empty_like(x), x.new_empty((c,), dtype=torch.float32), x.new_empty((c,), dtype=torch.float32)


@torch.library.register_fake("svd_fast_native::temporal_attention_fwd")
def _temporal_attention_fwd_fake(q, k, v, num_frames, heads):
    return q.new_empty(q.shape)


@torch.library.register_fake("svd_fast_native::temporal_attention_bwd")
def _temporal_attention_bwd_fake(grad, q, k, v, num_frames, heads):
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)


def _channels_last_empty(like, channels):
    n, _, h, w = like.shape
    return torch.empty((n, channels, h, w), dtype=like.dtype, device=like.device, memory_format=torch.channels_last)


@torch.library.register_fake("svd_fast_native::temporal_conv_fwd")
def _temporal_conv_fwd_fake(x, weight, bias, num_frames):
    return _channels_last_empty(x, weight.shape[0])


@torch.library.register_fake("svd_fast_native::temporal_conv_bwd")
def _temporal_conv_bwd_fake(grad, x, weight, num_frames):
    return (
        _channels_last_empty(x, x.shape[1]),
        weight.new_empty(weight.shape),
        weight.new_empty((weight.shape[0],), dtype=torch.float32),
    )


@torch.library.register_fake("svd_fast_native::geglu_fwd")
def _geglu_fwd_fake(x):
    return x.new_empty(x.shape[:-1] + (x.shape[-1] // 2,))


@torch.library.register_fake("svd_fast_native::geglu_bwd")
def _geglu_bwd_fake(grad, x):
    return x.new_empty(x.shape)


@torch.library.register_fake("svd_fast_native::blend_fwd")
def _blend_fwd_fake(a, b, p, q):
    return torch.empty_like(a)


@torch.library.register_fake("svd_fast_native::winograd_conv3x3_fwd")
def _winograd_conv3x3_fwd_fake(x, u, bias):
    return _channels_last_empty(x, u.shape[2])


def _direct_conv3x3_flops(x_shape, out_channels: int) -> int:
    """The direct convolution's count (2 * 9 * Cin * Cout per output pixel), as for any conv algorithm:
    FLOP rates of Winograd convs are then effective rates, comparable with oneDNN's direct ones."""
    n, c, h, w = x_shape
    return 2 * 9 * n * h * w * c * out_channels


@torch.utils.flop_counter.register_flop_formula(torch.ops.svd_fast_native.temporal_conv_fwd)
def _temporal_conv_flops(x_shape, w_shape, bias_shape=None, *args, out_shape=None, **kwargs) -> int:
    """conv3d's count for the same (K, 1, 1) convolution: 2 * K * Cin * Cout per output pixel."""
    n, c, h, w = x_shape
    return 2 * w_shape[2] * n * h * w * c * w_shape[0]


@torch.utils.flop_counter.register_flop_formula(torch.ops.svd_fast_native.winograd_conv3x3_fwd)
def _winograd_conv3x3_flops(x_shape, u_shape, bias_shape=None, *args, out_shape=None, **kwargs) -> int:
    return _direct_conv3x3_flops(x_shape, u_shape[2])


# ---- Winograd F(2x2, 3x3) weights ----

# U = G g G^T maps a 3x3 kernel g to the 4x4 Winograd domain (Lavin & Gray, arXiv 1509.09308).
_WINOGRAD_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
# weight -> (its version counter and storage, its transform), for frozen weights (inference): the
# transform costs about a pass over the weight, so a model's convs transform once (16/9 of the 3x3
# weights' memory) and again only if the weight changes in place (load_state_dict) or is swapped.
# Weights that train change every step and may be re-gathered (ZeRO-3 swaps .data without a
# version bump): they are transformed on every call, never cached.
_transformed = torch.utils.weak.WeakIdKeyDictionary()


def winograd_weight(weight):
    """(Cout, Cin, 3, 3) -> U of shape (16, Cin, Cout), U[4i+j] = (G g G^T)[i, j], in weight's dtype."""
    g = torch.tensor(_WINOGRAD_G, dtype=torch.float32, device=weight.device)
    u = torch.einsum("ia,kcab,jb->ijck", g, weight.detach().float(), g)
    return u.reshape(16, weight.shape[1], weight.shape[0]).contiguous().to(weight.dtype)


def winograd_weight_bytes() -> int:
    """Memory held by the cached transformed weights (16/9 of the 3x3 weights they serve)."""
    return sum(u.numel() * u.element_size() for _, u in _transformed.values())


def _cached_winograd_weight(weight):
    # Training weights change every step; compiled graphs of frozen weights use winograd_conv3x3_frozen.
    if torch.compiler.is_compiling() or weight.requires_grad:
        return winograd_weight(weight)
    # Inference tensors (made under torch.inference_mode) have no version counter: storage only.
    key = (None if weight.is_inference() else weight._version, weight.data_ptr())
    entry = _transformed.get(weight)
    if entry is None or entry[0] != key:
        entry = (key, winograd_weight(weight))
        _transformed[weight] = entry
    return entry[1]


@torch.library.custom_op("svd_fast::winograd_conv3x3_frozen", mutates_args=())
def winograd_conv3x3_frozen(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The Winograd conv of a frozen (3x3) weight inside compiled graphs. Opaque to the compiler, so the
    transformed weight comes from the cache when the graph runs: traced, the transform was not folded
    into a constant by inductor's freezing and ran on every call (measured on a Zen 5 EPYC, bf16 SVD
    UNet: 48 large bmm calls and their copies per step, 5.4 s compiled against 2.2 s eager)."""
    return _ops.winograd_conv3x3_fwd(x, _cached_winograd_weight(weight), bias)


@winograd_conv3x3_frozen.register_fake
def _winograd_conv3x3_frozen_fake(x, weight, bias):
    return _channels_last_empty(x, weight.shape[0])


@torch.utils.flop_counter.register_flop_formula(torch.ops.svd_fast.winograd_conv3x3_frozen)
def _winograd_conv3x3_frozen_flops(x_shape, w_shape, bias_shape=None, *args, out_shape=None, **kwargs) -> int:
    return _direct_conv3x3_flops(x_shape, w_shape[0])


# ---- the ops, with the reference signatures ----


def group_norm(x, num_groups, weight, bias, eps, silu=False, num_frames=None):
    if not _native_ok(x):
        return reference.group_norm(x, num_groups, weight, bias, eps, silu, num_frames)
    return autograd.GroupNorm.apply(_ops.group_norm_fwd, _ops.group_norm_bwd, _dense(x), weight, bias, num_groups, float(eps),
                                    bool(silu), num_frames or 1)


def temporal_attention(q, k, v, num_frames, heads):
    if not _native_ok(q, k, v) or num_frames > 64 or len({q.dtype, k.dtype, v.dtype}) > 1:
        return reference.temporal_attention(q, k, v, num_frames, heads)
    return autograd.TemporalAttention.apply(_ops.temporal_attention_fwd, _ops.temporal_attention_bwd, q, k, v,
                                            num_frames, heads)


def temporal_conv(x, weight, bias, num_frames):
    # The shifted GEMMs need channels-last activations (what the UNet runs); for NCHW input the
    # reference's conv3d reads the layout in place while this path would copy it twice.
    channels_last = x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last)
    if not (_native_ok(x) and channels_last and weight.shape[2] % 2 == 1):
        return reference.temporal_conv(x, weight, bias, num_frames)
    bias = None if bias is None else bias.to(x.dtype)
    return autograd.TemporalConv.apply(_ops.temporal_conv_fwd, _ops.temporal_conv_bwd, x, weight.to(x.dtype), bias,
                                       num_frames)


def geglu(x):
    if not _native_ok(x):
        return reference.geglu(x)
    return autograd.Geglu.apply(_ops.geglu_fwd, _ops.geglu_bwd, x)


def _blend(a, b, p, q, fallback):
    if not _native_ok(a, b) or a.shape != b.shape or a.dtype != b.dtype:
        return fallback()
    a = _dense(a)
    if b.stride() != a.stride():  # the kernel needs both in one layout
        a, b = a.contiguous(), b.contiguous()
    return autograd.Blend.apply(_ops.blend_fwd, autograd.blend_backward_torch, a, b, p, q)


def alpha_blend(x_spatial, x_temporal, alpha):
    a = alpha.float().reshape(-1)
    return _blend(x_spatial, x_temporal, a, 1 - a, lambda: reference.alpha_blend(x_spatial, x_temporal, alpha))


def alpha_blend_residual(x_spatial, delta, alpha):
    a = alpha.float().reshape(-1)
    return _blend(
        x_spatial, delta, torch.ones_like(a), 1 - a, lambda: reference.alpha_blend_residual(x_spatial, delta, alpha)
    )


def conv3x3(x, weight, bias):
    """Winograd F(2x2, 3x3): 4 multiply-adds per output instead of 9; output channels-last."""
    if not (_native_ok(x) and x.ndim == 4 and weight.dtype == x.dtype and weight.shape[1:] == (x.shape[1], 3, 3)):
        return reference.conv3x3(x, weight, bias)
    x = x.contiguous(memory_format=torch.channels_last)
    bias = None if bias is None else bias.to(x.dtype)
    if torch.compiler.is_compiling() and not weight.requires_grad:
        return winograd_conv3x3_frozen(x, weight, bias)
    return autograd.Conv3x3.apply(_ops.winograd_conv3x3_fwd, x, weight, _cached_winograd_weight(weight), bias)


OPS = {
    "group_norm": group_norm,
    "temporal_conv": temporal_conv,
    "temporal_attention": temporal_attention,
    "spatial_attention": reference.spatial_attention,
    "alpha_blend": alpha_blend,
    "alpha_blend_residual": alpha_blend_residual,
    "geglu": geglu,
    "conv3x3": conv3x3,
}
