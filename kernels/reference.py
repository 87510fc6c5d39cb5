"""Plain-PyTorch versions of every op behind svd_fast.layers: the ground truth for tests.

Layout convention (all ops): video activations are frame-major, `(B*T, ...)` with the T frames of
one clip adjacent, so spatial layers see independent frames and no op needs a permuted copy of
its input to reach the time axis. Reductions (norm statistics, softmax) accumulate in fp32 and
outputs come back in the input dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def group_norm(x, num_groups, weight, bias, eps, silu=False, num_frames=None):
    """GroupNorm of x (N, C, *spatial), optionally followed by SiLU.

    num_frames=None: statistics per sample (per frame, the spatial ResBlock's norm).
    num_frames=T: N = B*T and statistics pool over the T frames of each clip (the temporal
    ResBlock's norm, which sgm runs on a (B, C, T, H, W) tensor).
    """
    compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype  # fp32 (or fp64) statistics
    return group_norm_computed_in(compute, x, num_groups, weight, bias, eps, silu, num_frames)


def group_norm_computed_in(compute_dtype, x, num_groups, weight, bias, eps, silu=False, num_frames=None):
    """group_norm with its arithmetic on x cast to compute_dtype; the result in x's dtype."""
    xf = x.to(compute_dtype)
    if num_frames is not None:
        n, c = x.shape[:2]
        # (B*T, C, S) -> (B, C, T, S): one GroupNorm sample per clip.
        xf = xf.reshape(n // num_frames, num_frames, c, -1).transpose(1, 2)
    w = None if weight is None else weight.to(compute_dtype)
    b = None if bias is None else bias.to(compute_dtype)
    y = F.group_norm(xf, num_groups, w, b, eps)
    if silu:
        y = F.silu(y)
    if num_frames is not None:
        y = y.transpose(1, 2).reshape(x.shape)
    return y.to(x.dtype)


def temporal_conv(x, weight, bias, num_frames):
    """Convolution over time with kernel (K, 1, 1) and zero padding K//2 on the time axis.

    x: (B*T, Cin, H, W); weight: (Cout, Cin, K, 1, 1); bias: (Cout,) or None.
    """
    n, c, h, w = x.shape
    video = x.reshape(n // num_frames, num_frames, c, h, w).transpose(1, 2)
    pad = weight.shape[2] // 2
    y = F.conv3d(video, weight, bias, padding=(pad, 0, 0))
    return y.transpose(1, 2).reshape(n, weight.shape[0], h, w)


def temporal_attention(q, k, v, num_frames, heads):
    """Self-attention over the frame axis, independently at every spatial position and head.

    q, k, v: (B*T, S, C) (views into a fused projection are fine). Returns (B*T, S, C).
    """
    n, s, c = q.shape
    b, d = n // num_frames, c // heads

    def split(t):  # (B*T, S, C) -> (B, S, heads, T, d)
        return t.reshape(b, num_frames, s, heads, d).permute(0, 2, 3, 1, 4)

    o = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return o.permute(0, 3, 1, 2, 4).reshape(n, s, c)


def spatial_attention(q, k, v, heads):
    """Multi-head attention over the token axis. q: (N, Lq, C), k/v: (N, Lk, C) -> (N, Lq, C)."""
    n, lq, c = q.shape
    d = c // heads

    def split(t):
        return t.reshape(n, t.shape[1], heads, d).transpose(1, 2)

    o = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return o.transpose(1, 2).reshape(n, lq, c)


def _per_sample(alpha, x):
    return alpha.to(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))


def alpha_blend(x_spatial, x_temporal, alpha):
    """alpha * x_spatial + (1 - alpha) * x_temporal, alpha of shape (N,) for N = x.shape[0]."""
    a = _per_sample(alpha, x_spatial)
    return a * x_spatial + (1 - a) * x_temporal


def alpha_blend_residual(x_spatial, delta, alpha):
    """alpha_blend(x_spatial, x_spatial + delta, alpha) = x_spatial + (1 - alpha) * delta."""
    return x_spatial + (1 - _per_sample(alpha, x_spatial)) * delta


def conv3x3(x, weight, bias):
    """2-D convolution with a 3x3 kernel, stride 1, zero padding 1 (the UNet's and VAE's common conv).
    x: (N, Cin, H, W); weight: (Cout, Cin, 3, 3); bias: (Cout,) or None."""
    return F.conv2d(x, weight, bias, padding=1)


def geglu(x):
    """GEGLU activation: value * GELU(gate) with exact GELU, x = [value | gate] on the last axis."""
    value, gate = x.chunk(2, dim=-1)
    return value * F.gelu(gate)


OPS = {
    "group_norm": group_norm,
    "temporal_conv": temporal_conv,
    "temporal_attention": temporal_attention,
    "spatial_attention": spatial_attention,
    "alpha_blend": alpha_blend,
    "alpha_blend_residual": alpha_blend_residual,
    "geglu": geglu,
    "conv3x3": conv3x3,
}
