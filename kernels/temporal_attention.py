"""Temporal self-attention in Triton, read straight from the frame-major token layout.

q, k, v are (B*T, S, C) (views into a fused projection are fine: only the channel stride must be
1). One program handles one (clip, position, head): it gathers the T rows of its head (row t at
frame b*T + t, token s, channels h*D..h*D+D), computes softmax(Q K^T / sqrt(D)) V with fp32
scores in registers, and writes the output rows back in the same (B*T, S, C) layout, so neither
the inputs nor the output are ever permuted. The backward recomputes the probabilities.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import autograd, reference

# Longest clip one program holds (its T x T scores live in registers).
MAX_FRAMES = 64
# tl.dot needs every block dimension >= 16 on GPUs.
MIN_DOT_BLOCK = 16
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _load_head(ptr, frame0, s, h, T, D, stride_n, stride_s,
               BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, DOT_FP32: tl.constexpr):
    """(BLOCK_T, BLOCK_D) tile of head h at token s for frames frame0..frame0+T-1 (zero padded)."""
    t = tl.arange(0, BLOCK_T)
    d = tl.arange(0, BLOCK_D)
    offs = (frame0 + t)[:, None].to(tl.int64) * stride_n + s.to(tl.int64) * stride_s + (h * D + d)[None, :]
    tile = tl.load(ptr + offs, mask=(t < T)[:, None] & (d < D)[None, :], other=0.0)
    if DOT_FP32:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def _store_head(ptr, tile, frame0, s, h, T, D, stride_n, stride_s, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    t = tl.arange(0, BLOCK_T)
    d = tl.arange(0, BLOCK_D)
    offs = (frame0 + t)[:, None].to(tl.int64) * stride_n + s.to(tl.int64) * stride_s + (h * D + d)[None, :]
    tl.store(ptr + offs, tile.to(ptr.dtype.element_ty), mask=(t < T)[:, None] & (d < D)[None, :])


@triton.jit
def _program_qkv(q_ptr, k_ptr, v_ptr, S, T, D, stride_n, stride_s, k_stride_n, k_stride_s, v_stride_n, v_stride_s,
                 BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, DOT_FP32: tl.constexpr):
    """(frame0, s, h, q, k, v) of this program's (clip, position, head)."""
    bs, h = tl.program_id(0), tl.program_id(1)
    frame0, s = (bs // S) * T, bs % S
    q = _load_head(q_ptr, frame0, s, h, T, D, stride_n, stride_s, BLOCK_T, BLOCK_D, DOT_FP32)
    k = _load_head(k_ptr, frame0, s, h, T, D, k_stride_n, k_stride_s, BLOCK_T, BLOCK_D, DOT_FP32)
    v = _load_head(v_ptr, frame0, s, h, T, D, v_stride_n, v_stride_s, BLOCK_T, BLOCK_D, DOT_FP32)
    return frame0, s, h, q, k, v


@triton.jit
def _probabilities(q, k, T, scale, BLOCK_T: tl.constexpr, PRECISION: tl.constexpr):
    """softmax(q k^T * scale) over the first T columns, fp32 (BLOCK_T, BLOCK_T); padded columns are 0."""
    scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
    cols = tl.arange(0, BLOCK_T)
    scores = tl.where((cols < T)[None, :], scores, float("-inf"))
    p = tl.exp(scores - tl.max(scores, axis=1)[:, None])
    return p / tl.sum(p, axis=1)[:, None]


@triton.jit
def _fwd_kernel(
    q_ptr, k_ptr, v_ptr,  # (B*T, S, C) inputs; strides (stride_n, stride_s, 1), shared by q/k/v
    o_ptr,                # (B*T, S, C) output; strides (o_stride_n, o_stride_s, 1)
    S, T, D, scale,
    stride_n, stride_s, k_stride_n, k_stride_s, v_stride_n, v_stride_s, o_stride_n, o_stride_s,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):
    frame0, s, h, q, k, v = _program_qkv(q_ptr, k_ptr, v_ptr, S, T, D, stride_n, stride_s, k_stride_n, k_stride_s,
                                         v_stride_n, v_stride_s, BLOCK_T, BLOCK_D, DOT_FP32)
    p = _probabilities(q, k, T, scale, BLOCK_T, PRECISION)
    o = tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    _store_head(o_ptr, o, frame0, s, h, T, D, o_stride_n, o_stride_s, BLOCK_T, BLOCK_D)


@triton.jit
def _bwd_kernel(
    q_ptr, k_ptr, v_ptr,  # (B*T, S, C) forward inputs
    do_ptr,               # (B*T, S, C) upstream gradient
    dq_ptr, dk_ptr, dv_ptr,  # (B*T, S, C) outputs, contiguous (strides (S*C, C, 1))
    S, T, D, C, scale,
    stride_n, stride_s, k_stride_n, k_stride_s, v_stride_n, v_stride_s, do_stride_n, do_stride_s,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):
    frame0, s, h, q, k, v = _program_qkv(q_ptr, k_ptr, v_ptr, S, T, D, stride_n, stride_s, k_stride_n, k_stride_s,
                                         v_stride_n, v_stride_s, BLOCK_T, BLOCK_D, DOT_FP32)
    do = _load_head(do_ptr, frame0, s, h, T, D, do_stride_n, do_stride_s, BLOCK_T, BLOCK_D, DOT_FP32)
    p = _probabilities(q, k, T, scale, BLOCK_T, PRECISION)
    dv = tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PRECISION)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    # d softmax: dS = P * (dP - rowsum(P * dP)); padded columns have P = 0.
    ds = p * (dp - tl.sum(p * dp, axis=1)[:, None])
    dq = tl.dot(ds.to(k.dtype), k, input_precision=PRECISION) * scale
    dk = tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PRECISION) * scale
    _store_head(dq_ptr, dq, frame0, s, h, T, D, S * C, C, BLOCK_T, BLOCK_D)
    _store_head(dk_ptr, dk, frame0, s, h, T, D, S * C, C, BLOCK_T, BLOCK_D)
    _store_head(dv_ptr, dv, frame0, s, h, T, D, S * C, C, BLOCK_T, BLOCK_D)


# ---- launchers ----


def _channel_dense(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(2) == 1 else t.contiguous()


def _meta(q: torch.Tensor, num_frames: int, heads: int) -> dict:
    d = q.shape[2] // heads
    # The interpreter's bf16/fp16 tl.dot is wrong: it computes in fp32 there. fp32 inputs use IEEE
    # fp32 products (TF32 would cost ~1e-3 relative error).
    dot_fp32 = q.dtype == torch.float32 or os.environ.get("TRITON_INTERPRET") == "1"
    return dict(
        BLOCK_T=max(MIN_DOT_BLOCK, triton.next_power_of_2(num_frames)),
        BLOCK_D=max(MIN_DOT_BLOCK, triton.next_power_of_2(d)),
        DOT_FP32=dot_fp32,
        PRECISION="ieee" if dot_fp32 else None,
    )


def _check(q, num_frames):
    if num_frames > MAX_FRAMES:
        raise ValueError(f"temporal_attention (triton): num_frames={num_frames} exceeds MAX_FRAMES={MAX_FRAMES}")


def temporal_attention_forward(q, k, v, num_frames, heads):
    _check(q, num_frames)
    q, k, v = _channel_dense(q), _channel_dense(k), _channel_dense(v)
    n, s, c = q.shape
    o = torch.empty((n, s, c), device=q.device, dtype=q.dtype)
    grid = ((n // num_frames) * s, heads)
    _fwd_kernel[grid](q, k, v, o, s, num_frames, c // heads, (c // heads) ** -0.5,
                      q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                      o.stride(0), o.stride(1), **_meta(q, num_frames, heads))
    return o


def temporal_attention_backward(grad, q, k, v, num_frames, heads):
    _check(q, num_frames)
    q, k, v, grad = (_channel_dense(t) for t in (q, k, v, grad.to(q.dtype)))
    n, s, c = q.shape
    dq, dk, dv = (torch.empty((n, s, c), device=q.device, dtype=q.dtype) for _ in range(3))
    grid = ((n // num_frames) * s, heads)
    _bwd_kernel[grid](q, k, v, grad, dq, dk, dv, s, num_frames, c // heads, c, (c // heads) ** -0.5,
                      q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                      grad.stride(0), grad.stride(1), **_meta(q, num_frames, heads))
    return dq, dk, dv


# ---- torch custom ops; autograd in kernels/autograd.py ----


@torch.library.custom_op("svd_fast_triton::temporal_attention_fwd", mutates_args=())
def temporal_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_frames: int,
                           heads: int) -> torch.Tensor:
    return temporal_attention_forward(q, k, v, num_frames, heads)


@temporal_attention_fwd.register_fake
def _(q, k, v, num_frames, heads):
    return q.new_empty(q.shape)


@torch.library.custom_op("svd_fast_triton::temporal_attention_bwd", mutates_args=())
def temporal_attention_bwd(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           num_frames: int, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return temporal_attention_backward(grad, q, k, v, num_frames, heads)


@temporal_attention_bwd.register_fake
def _(grad, q, k, v, num_frames, heads):
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)


def temporal_attention(q, k, v, num_frames, heads):
    """svd_fast.layers.temporal_attention contract; float64 and T > MAX_FRAMES go to the reference."""
    if q.dtype not in _DTYPES or num_frames > MAX_FRAMES or len({q.dtype, k.dtype, v.dtype}) > 1:
        return reference.temporal_attention(q, k, v, num_frames, heads)
    return autograd.TemporalAttention.apply(temporal_attention_fwd, temporal_attention_bwd, q, k, v, num_frames, heads)
