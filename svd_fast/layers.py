"""The model's swappable layer functions.

Every op the UNet and VAE need beyond plain convs and linears goes through here, so the kernels
package can change backend (reference PyTorch, Triton, native C++) without touching the model.
Each function checks its arguments and calls the current backend's implementation. Activations
are frame-major: (B*T, C, H, W) for conv features and (B*T, S, C) for tokens.
"""
from __future__ import annotations

import torch

from svd_fast.kernels import get_op


def _check_frames(x: torch.Tensor, num_frames: int, name: str) -> None:
    if num_frames < 1 or x.shape[0] % num_frames:
        raise ValueError(f"{name}: batch dimension {x.shape[0]} is not a multiple of num_frames={num_frames}")


def group_norm(x, num_groups, weight, bias, eps, silu=False, num_frames=None):
    """GroupNorm (+SiLU) in fp32; statistics per frame, or per clip when num_frames is given."""
    if x.shape[1] % num_groups:
        raise ValueError(f"group_norm: {x.shape[1]} channels are not divisible into {num_groups} groups")
    if num_frames is not None:
        _check_frames(x, num_frames, "group_norm")
    return get_op("group_norm")(x, num_groups, weight, bias, eps, silu, num_frames)


def temporal_conv(x, weight, bias, num_frames):
    """(K,1,1) convolution over the frames of each clip, zero-padded in time."""
    _check_frames(x, num_frames, "temporal_conv")
    if weight.ndim != 5 or weight.shape[3:] != (1, 1) or weight.shape[1] != x.shape[1]:
        raise ValueError(f"temporal_conv: weight {tuple(weight.shape)} does not fit input {tuple(x.shape)}")
    return get_op("temporal_conv")(x, weight, bias, num_frames)


def temporal_attention(q, k, v, num_frames, heads):
    """Attention over frames at each spatial position; q/k/v (B*T, S, C)."""
    _check_frames(q, num_frames, "temporal_attention")
    if q.shape != k.shape or q.shape != v.shape or q.shape[-1] % heads:
        raise ValueError(f"temporal_attention: q/k/v {q.shape}/{k.shape}/{v.shape} with {heads} heads")
    return get_op("temporal_attention")(q, k, v, num_frames, heads)


def spatial_attention(q, k, v, heads):
    """Attention over tokens of each sample; q (N, Lq, C), k/v (N, Lk, C)."""
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1] or q.shape[-1] % heads:
        raise ValueError(f"spatial_attention: q/k/v {q.shape}/{k.shape}/{v.shape} with {heads} heads")
    return get_op("spatial_attention")(q, k, v, heads)


def alpha_blend(x_spatial, x_temporal, alpha):
    """alpha * x_spatial + (1 - alpha) * x_temporal with one alpha per frame (shape (N,))."""
    return get_op("alpha_blend")(x_spatial, x_temporal, alpha)


def alpha_blend_residual(x_spatial, delta, alpha):
    """Blend of x_spatial with the residual branch x_spatial + delta: x_spatial + (1-alpha)*delta."""
    return get_op("alpha_blend_residual")(x_spatial, delta, alpha)


def geglu(x):
    """value * GELU(gate) for x = [value | gate] along the last axis."""
    if x.shape[-1] % 2:
        raise ValueError(f"geglu: last dimension {x.shape[-1]} is odd")
    return get_op("geglu")(x)


def conv3x3(x, weight, bias):
    """conv2d(x, weight, bias, padding=1) for a 3x3 kernel (stride 1, no dilation or groups)."""
    if weight.shape[2:] != (3, 3) or weight.shape[1] != x.shape[1]:
        raise ValueError(f"conv3x3: weight {tuple(weight.shape)} does not fit input {tuple(x.shape)}")
    return get_op("conv3x3")(x, weight, bias)


class Conv2d(torch.nn.Conv2d):
    """nn.Conv2d whose 3x3, stride-1, padding-1 case runs through the kernels package (conv3x3);
    every other configuration is nn.Conv2d's. Same parameters and state-dict keys."""

    def forward(self, x):
        if (self.kernel_size == (3, 3) and self.stride == (1, 1) and self.padding == (1, 1) and self.dilation == (1, 1)
                and self.groups == 1 and self.padding_mode == "zeros"):
            return conv3x3(x, self.weight, self.bias)
        return super().forward(x)


def channels_last_(module: torch.nn.Module) -> torch.nn.Module:
    """Store every conv weight in channels-last order (4-D: channels_last, 5-D: channels_last_3d).

    The UNet and VAE run on channels-last activations; oneDNN would otherwise reorder each
    contiguous weight on every call (a full copy of the weight per conv). In place; returns module.
    """
    formats = {4: torch.channels_last, 5: torch.channels_last_3d}
    for param in module.parameters():
        if param.dim() in formats:
            param.data = param.data.contiguous(memory_format=formats[param.dim()])
    return module
