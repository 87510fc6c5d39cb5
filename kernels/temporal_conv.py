"""(K,1,1) temporal convolution in Triton as an implicit GEMM over the frame axis.

x is (B*T, Cin, H, W) frame-major; output row m = (frame n, position s) is
y[m, :] = bias + sum_k x[frame n + k - K//2, :, s] @ W[:, :, k]^T, where taps that would read a
frame outside the clip are skipped (zero padding in time). The GEMM's A operand is gathered
straight from x through its strides (no im2col buffer, no permuted copy; channels-last input gives
contiguous channel loads). Backward: dx is the same convolution of dy with W transposed and
flipped in time; dW is a second implicit GEMM reducing over all rows, split over programs.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import autograd, reference

# Output tile (rows x output channels) and reduction step (input channels) of the GEMMs.
BLOCK_M = 64
BLOCK_N = 64
BLOCK_K = 32
# Rows one dW program reduces before the reduction is split over another program.
ROWS_PER_WEIGHT_PROGRAM = 4096
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _row_coords(m, S, T):
    """Frame index n (into B*T), frame-in-clip t and position s of GEMM rows m."""
    n = m // S
    return n, n % T, m % S


@triton.jit
def _conv_kernel(
    x_ptr,  # (B*T, Cin, S) input, strides (stride_n, stride_c, stride_s)
    w_ptr,  # (Cout, Cin, K) weight, strides (w_stride_o, w_stride_i, w_stride_k)
    b_ptr,  # (Cout,) bias (unused unless HAS_BIAS)
    y_ptr,  # (B*T, Cout, S) output, strides (y_stride_n, y_stride_c, y_stride_s)
    M, S, T, Cin, Cout, taps,
    stride_n, stride_c, stride_s, w_stride_o, w_stride_i, w_stride_k, y_stride_n, y_stride_c, y_stride_s,
    HAS_BIAS: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    co = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n, t, s = _row_coords(m, S, T)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(0, taps):
        shift = k - taps // 2
        row_ok = (m < M) & (t + shift >= 0) & (t + shift < T)
        row_off = (n + shift).to(tl.int64) * stride_n + s.to(tl.int64) * stride_s
        for c0 in range(0, Cin, BLOCK_K):
            ci = c0 + tl.arange(0, BLOCK_K)
            a = tl.load(x_ptr + row_off[:, None] + ci[None, :].to(tl.int64) * stride_c,
                        mask=row_ok[:, None] & (ci < Cin)[None, :], other=0.0)
            b = tl.load(w_ptr + co[None, :] * w_stride_o + ci[:, None] * w_stride_i + k * w_stride_k,
                        mask=(ci < Cin)[:, None] & (co < Cout)[None, :], other=0.0)
            if DOT_FP32:
                a, b = a.to(tl.float32), b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + co, mask=co < Cout, other=0.0).to(tl.float32)[None, :]
    y_off = n.to(tl.int64)[:, None] * y_stride_n + co[None, :].to(tl.int64) * y_stride_c \
        + s.to(tl.int64)[:, None] * y_stride_s
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=(m < M)[:, None] & (co < Cout)[None, :])


@triton.jit
def _weight_grad_kernel(
    dy_ptr,  # (B*T, Cout, S) upstream gradient, strides (g_stride_n, g_stride_c, g_stride_s)
    x_ptr,   # (B*T, Cin, S) forward input, strides (stride_n, stride_c, stride_s)
    dw_ptr,  # (splits, K, Cout, Cin) fp32 partial weight gradients, contiguous
    M, S, T, Cin, Cout, taps, rows_per_split,
    g_stride_n, g_stride_c, g_stride_s, stride_n, stride_c, stride_s,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    co = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    ci = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    k, split = tl.program_id(2) % taps, tl.program_id(2) // taps
    shift = k - taps // 2
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for m0 in range(split * rows_per_split, tl.minimum((split + 1) * rows_per_split, M), BLOCK_M):
        m = m0 + tl.arange(0, BLOCK_M)
        n, t, s = _row_coords(m, S, T)
        row_ok = (m < M) & (t + shift >= 0) & (t + shift < T)
        # dW_k[co, ci] += sum over rows m of dy[m, co] * x[row m shifted by the tap, ci]
        g = tl.load(dy_ptr + n.to(tl.int64)[None, :] * g_stride_n + co[:, None].to(tl.int64) * g_stride_c
                    + s.to(tl.int64)[None, :] * g_stride_s,
                    mask=(co < Cout)[:, None] & row_ok[None, :], other=0.0)
        xs = tl.load(x_ptr + (n + shift).to(tl.int64)[:, None] * stride_n + ci[None, :].to(tl.int64) * stride_c
                     + s.to(tl.int64)[:, None] * stride_s,
                     mask=row_ok[:, None] & (ci < Cin)[None, :], other=0.0)
        if DOT_FP32:
            g, xs = g.to(tl.float32), xs.to(tl.float32)
        acc = tl.dot(g, xs, acc, input_precision=PRECISION)
    out = dw_ptr + ((split * taps + k) * Cout + co[:, None]) * Cin + ci[None, :]
    tl.store(out, acc, mask=(co < Cout)[:, None] & (ci < Cin)[None, :])


# ---- launchers ----


def _as_ncs(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], t.shape[1], -1)


def _out_like(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, channels, H, W) output in x's memory format (channels-last stays channels-last)."""
    fmt = torch.channels_last if (not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)) \
        else torch.contiguous_format
    return torch.empty((x.shape[0], channels, *x.shape[2:]), device=x.device, dtype=x.dtype, memory_format=fmt)


def _dot_meta(dtype: torch.dtype) -> dict:
    # The interpreter's bf16/fp16 tl.dot is wrong, so it computes in fp32 there; fp32 inputs use IEEE
    # products (TF32 would cost ~1e-3 relative error).
    dot_fp32 = dtype == torch.float32 or os.environ.get("TRITON_INTERPRET") == "1"
    return dict(DOT_FP32=dot_fp32, PRECISION="ieee" if dot_fp32 else None)


def temporal_conv_forward(x, weight, bias, num_frames):
    """x (B*T, Cin, H, W), weight (Cout, Cin, K, 1, 1) in x's dtype -> (B*T, Cout, H, W)."""
    cout, cin, taps = weight.shape[:3]
    y = _out_like(x, cout)
    x3, y3, w3 = _as_ncs(x), _as_ncs(y), weight[..., 0, 0]
    m = x3.shape[0] * x3.shape[2]
    grid = (triton.cdiv(m, BLOCK_M), triton.cdiv(cout, BLOCK_N))
    _conv_kernel[grid](x3, w3, bias if bias is not None else w3, y3, m, x3.shape[2], num_frames, cin, cout, taps,
                       *x3.stride(), *w3.stride(), *y3.stride(), HAS_BIAS=bias is not None,
                       BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, **_dot_meta(x.dtype))
    return y


def temporal_conv_backward(grad, x, weight, num_frames):
    """Returns (dx, dweight, dbias) with dweight in weight's dtype and dbias fp32 (Cout,)."""
    cout, cin, taps = weight.shape[:3]
    grad = grad.to(x.dtype)
    # dx[t] = sum_k W_k^T dy[t - (k - K//2)]: the forward with W transposed over channels, flipped in time.
    dx = temporal_conv_forward(grad, weight.flip(2).transpose(0, 1), None, num_frames)
    g3, x3 = _as_ncs(grad), _as_ncs(x)
    m = x3.shape[0] * x3.shape[2]
    splits = triton.cdiv(m, ROWS_PER_WEIGHT_PROGRAM)
    rows_per_split = triton.cdiv(triton.cdiv(m, splits), BLOCK_M) * BLOCK_M
    splits = triton.cdiv(m, rows_per_split)
    partial = torch.empty((splits, taps, cout, cin), device=x.device, dtype=torch.float32)
    grid = (triton.cdiv(cout, BLOCK_N), triton.cdiv(cin, BLOCK_K), taps * splits)
    _weight_grad_kernel[grid](g3, x3, partial, m, x3.shape[2], num_frames, cin, cout, taps, rows_per_split,
                              *g3.stride(), *x3.stride(), BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
                              **_dot_meta(x.dtype))
    dweight = partial.sum(0).permute(1, 2, 0)[..., None, None].to(weight.dtype)
    dbias = g3.sum(dim=(0, 2), dtype=torch.float32)
    return dx, dweight.contiguous(), dbias


# ---- torch custom ops; autograd in kernels/autograd.py ----


@torch.library.custom_op("svd_fast_triton::temporal_conv_fwd", mutates_args=())
def temporal_conv_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      num_frames: int) -> torch.Tensor:
    return temporal_conv_forward(x, weight, bias, num_frames)


@temporal_conv_fwd.register_fake
def _(x, weight, bias, num_frames):
    return _out_like(x, weight.shape[0])


@torch.library.custom_op("svd_fast_triton::temporal_conv_bwd", mutates_args=())
def temporal_conv_bwd(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                      num_frames: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return temporal_conv_backward(grad, x, weight, num_frames)


@temporal_conv_bwd.register_fake
def _(grad, x, weight, num_frames):
    return _out_like(x, x.shape[1]), weight.new_empty(weight.shape), weight.new_empty((weight.shape[0],),
                                                                                      dtype=torch.float32)


def temporal_conv(x, weight, bias, num_frames):
    """svd_fast.layers.temporal_conv contract; float64 and even kernels go to the reference."""
    if x.dtype not in _DTYPES or weight.shape[2] % 2 == 0:
        return reference.temporal_conv(x, weight, bias, num_frames)
    bias = None if bias is None else bias.to(x.dtype)
    return autograd.TemporalConv.apply(temporal_conv_fwd, temporal_conv_bwd, x, weight.to(x.dtype), bias, num_frames)
