"""Spatial attention through flash-attn (GPU builds only), read from the (N, L, C) token layout.

flash-attn takes (N, L, heads, head_dim) tensors, which is exactly a view of the (N, L, C) token
layout, so the adapter makes no copies. Inputs it cannot take (CPU tensors, fp32, head dims
above 256) go to the reference (torch SDPA). Imported only when flash_attn is installed.
"""
from __future__ import annotations

import torch
from flash_attn import flash_attn_func

from . import reference

# Largest head dimension flash-attn 2 supports.
MAX_HEAD_DIM = 256


def flash_spatial_attention(q, k, v, heads):
    """svd_fast.layers.spatial_attention contract: q (N, Lq, C), k/v (N, Lk, C) -> (N, Lq, C)."""
    d = q.shape[-1] // heads
    usable = q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and d <= MAX_HEAD_DIM
    if not usable or len({q.dtype, k.dtype, v.dtype}) > 1:
        return reference.spatial_attention(q, k, v, heads)
    q4, k4, v4 = (t.unflatten(-1, (heads, d)) for t in (q, k, v))
    if any(t.stride(-1) != 1 for t in (q4, k4, v4)):
        q4, k4, v4 = q4.contiguous(), k4.contiguous(), v4.contiguous()
    return flash_attn_func(q4, k4, v4).flatten(-2)
