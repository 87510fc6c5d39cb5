"""Video GroupNorm (+ fused SiLU) in Triton, forward and backward.

x is (N, C, *spatial) with N = units * frames. Statistics are pooled per (unit, group): a unit is
one frame (spatial ResBlock norm, num_frames=None) or the T adjacent frames of a clip (temporal
ResBlock norm). The rows of a (unit, group) are its (frame, position) pairs. A program takes a
block of GB adjacent groups and walks (rows x groups x channels-in-group) tiles through the
tensor's own strides, so NCHW and channels-last are both read in place (and channels-last rows
load GB * C/G contiguous channels). Large groups are split over several programs: each writes a
partial (count, mean, M2) per group, combined with Chan's formula by the consumer.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from . import autograd, reference

# Elements in one (rows x groups x channels) tile: bounds the registers a program holds.
TILE_ELEMENTS = 4096
# Padded channels (GB * next_pow2(C/G)) one program covers; more groups take more programs.
BLOCK_CHANNELS = 128
# Tiles one program reduces before a (unit, group block) is split over another program.
TILES_PER_SPLIT = 8
# Most programs one (unit, group block) is split over (partials are combined in registers).
MAX_SPLITS = 64
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _tile_offsets(row0, row_end, unit, group0, groups, S, frames, Cg, stride_n, stride_c, stride_s,
                  BLOCK_R: tl.constexpr, GB: tl.constexpr, BLOCK_C: tl.constexpr):
    """int64 offsets and mask of the (BLOCK_R, GB, BLOCK_C) tile: rows [row0, row0 + BLOCK_R) of
    groups group0..group0+GB-1 of one unit."""
    r = row0 + tl.arange(0, BLOCK_R)
    g = group0 + tl.arange(0, GB)
    c = tl.arange(0, BLOCK_C)
    frame = (unit * frames + r // S).to(tl.int64)
    channel = (g[:, None] * Cg + c[None, :]).to(tl.int64)
    offs = (frame * stride_n + (r % S).to(tl.int64) * stride_s)[:, None, None] + (channel * stride_c)[None, :, :]
    mask = (r < row_end)[:, None, None] & ((g < groups)[:, None] & (c < Cg)[None, :])[None, :, :]
    return offs, mask


@triton.jit
def _sum_rows_channels(t):
    """(BLOCK_R, GB, BLOCK_C) -> (GB,): one sum per group."""
    return tl.sum(tl.sum(t, axis=2), axis=0)


@triton.jit
def _split_range(split, rows, rows_per_split):
    start = split * rows_per_split
    return start, tl.minimum(start + rows_per_split, rows)


@triton.jit
def _combined_stats(part_ptr, unit, group0, groups, splits, GB: tl.constexpr, BLOCK_SPLITS: tl.constexpr):
    """(GB,) mean and variance of each group from its splits' (count, mean, M2) partials."""
    g = group0 + tl.arange(0, GB)
    i = tl.arange(0, BLOCK_SPLITS)
    m = (g < groups)[:, None] & (i < splits)[None, :]
    base = part_ptr + ((unit * groups + g)[:, None] * splits + i[None, :]) * 3
    count = tl.load(base, mask=m, other=0.0)
    mean_i = tl.load(base + 1, mask=m, other=0.0)
    m2_i = tl.load(base + 2, mask=m, other=0.0)
    n = tl.maximum(tl.sum(count, axis=1), 1.0)
    mean = tl.sum(count * mean_i, axis=1) / n
    d = mean_i - mean[:, None]
    var = (tl.sum(m2_i, axis=1) + tl.sum(count * d * d, axis=1)) / n
    return mean, tl.maximum(var, 0.0)


@triton.jit
def _stats_kernel(
    x_ptr,     # (N, C, S) input, strides stride_n / stride_c / stride_s (elements)
    part_ptr,  # (units * groups, splits, 3) fp32 out: count, mean, M2 of each split
    rows, S, frames, Cg, groups, rows_per_split, splits,
    stride_n, stride_c, stride_s,
    BLOCK_R: tl.constexpr, GB: tl.constexpr, BLOCK_C: tl.constexpr,
):
    blocks = tl.cdiv(groups, GB)
    unit, group0, split = tl.program_id(0) // blocks, (tl.program_id(0) % blocks) * GB, tl.program_id(1)
    start, end = _split_range(split, rows, rows_per_split)
    # Work on x - shift with shift = the group's first value: tile sums then stay small when
    # |mean| >> std (fp32 sums of raw values would round the mean at ~1e-5 relative).
    g = group0 + tl.arange(0, GB)
    shift_offs = (unit * frames).to(tl.int64) * stride_n + (g * Cg).to(tl.int64) * stride_c
    shift = tl.load(x_ptr + shift_offs, mask=g < groups, other=0.0).to(tl.float32)
    n_acc = tl.zeros([GB], tl.float32)
    mean_acc = tl.zeros([GB], tl.float32)
    m2_acc = tl.zeros([GB], tl.float32)
    for row0 in range(start, end, BLOCK_R):
        offs, mask = _tile_offsets(row0, end, unit, group0, groups, S, frames, Cg, stride_n, stride_c, stride_s,
                                   BLOCK_R, GB, BLOCK_C)
        x = tl.where(mask, tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) - shift[None, :, None], 0.0)
        # Tile mean/M2 from centred values, then Chan's combine: no sum-of-squares cancellation.
        n_t = _sum_rows_channels(mask.to(tl.float32))
        mean_t = _sum_rows_channels(x) / tl.maximum(n_t, 1.0)
        d = tl.where(mask, x - mean_t[None, :, None], 0.0)
        m2_t = _sum_rows_channels(d * d)
        n_new = tl.maximum(n_acc + n_t, 1.0)
        delta = mean_t - mean_acc
        mean_acc += delta * n_t / n_new
        m2_acc += m2_t + delta * delta * n_acc * n_t / n_new
        n_acc += n_t
    out = part_ptr + ((unit * groups + g) * splits + split) * 3
    tl.store(out, n_acc, mask=g < groups)
    tl.store(out + 1, mean_acc + shift, mask=g < groups)
    tl.store(out + 2, m2_acc, mask=g < groups)


@triton.jit
def _affine(w_ptr, b_ptr, group0, groups, Cg, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
            GB: tl.constexpr, BLOCK_C: tl.constexpr):
    """(GB, BLOCK_C) fp32 weight and bias of the block's channels (1 and 0 when absent)."""
    g = group0 + tl.arange(0, GB)
    c = tl.arange(0, BLOCK_C)
    channel = g[:, None] * Cg + c[None, :]
    m = (g < groups)[:, None] & (c < Cg)[None, :]
    w = tl.full([GB, BLOCK_C], 1.0, tl.float32)
    b = tl.zeros([GB, BLOCK_C], tl.float32)
    if HAS_WEIGHT:
        w = tl.load(w_ptr + channel, mask=m, other=1.0).to(tl.float32)
    if HAS_BIAS:
        b = tl.load(b_ptr + channel, mask=m, other=0.0).to(tl.float32)
    return w, b


@triton.jit
def _apply_kernel(
    x_ptr,     # (N, C, S) input, strides stride_n / stride_c / stride_s
    y_ptr,     # (N, C, S) output, strides y_stride_n / y_stride_c / y_stride_s
    w_ptr,     # (C,) weight (unused unless HAS_WEIGHT)
    b_ptr,     # (C,) bias (unused unless HAS_BIAS)
    part_ptr,  # (units * groups, splits, 3) fp32 partial statistics from _stats_kernel
    mean_ptr,  # (units * groups,) fp32 out, written by split 0
    rstd_ptr,  # (units * groups,) fp32 out, written by split 0
    rows, S, frames, Cg, groups, rows_per_split, splits, eps,
    stride_n, stride_c, stride_s, y_stride_n, y_stride_c, y_stride_s,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    BLOCK_R: tl.constexpr, GB: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_SPLITS: tl.constexpr,
):
    blocks = tl.cdiv(groups, GB)
    unit, group0, split = tl.program_id(0) // blocks, (tl.program_id(0) % blocks) * GB, tl.program_id(1)
    mean, var = _combined_stats(part_ptr, unit, group0, groups, splits, GB, BLOCK_SPLITS)
    rstd = 1.0 / tl.sqrt(var + eps)
    g = group0 + tl.arange(0, GB)
    if split == 0:
        tl.store(mean_ptr + unit * groups + g, mean, mask=g < groups)
        tl.store(rstd_ptr + unit * groups + g, rstd, mask=g < groups)
    w, b = _affine(w_ptr, b_ptr, group0, groups, Cg, HAS_WEIGHT, HAS_BIAS, GB, BLOCK_C)
    scale = w * rstd[:, None]
    start, end = _split_range(split, rows, rows_per_split)
    for row0 in range(start, end, BLOCK_R):
        offs, mask = _tile_offsets(row0, end, unit, group0, groups, S, frames, Cg, stride_n, stride_c, stride_s,
                                   BLOCK_R, GB, BLOCK_C)
        y_offs, _ = _tile_offsets(row0, end, unit, group0, groups, S, frames, Cg,
                                  y_stride_n, y_stride_c, y_stride_s, BLOCK_R, GB, BLOCK_C)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        # Centre before scaling: x * scale + (b - mean * scale) would cancel when |mean| >> std.
        z = (x - mean[None, :, None]) * scale[None, :, :] + b[None, :, :]
        if SILU:
            z = z * tl.sigmoid(z)
        tl.store(y_ptr + y_offs, z.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_tile(x_ptr, dy_ptr, row0, end, unit, group0, groups, S, frames, Cg, stride_n, stride_c, stride_s,
               g_stride_n, g_stride_c, g_stride_s, mean, rstd, w, b,
               SILU: tl.constexpr, BLOCK_R: tl.constexpr, GB: tl.constexpr, BLOCK_C: tl.constexpr):
    """(xhat, dxhat = dL/dxhat, dz = dL/d(pre-activation), mask) of one tile; mean/rstd are (GB,)."""
    offs, mask = _tile_offsets(row0, end, unit, group0, groups, S, frames, Cg, stride_n, stride_c, stride_s,
                               BLOCK_R, GB, BLOCK_C)
    g_offs, _ = _tile_offsets(row0, end, unit, group0, groups, S, frames, Cg, g_stride_n, g_stride_c, g_stride_s,
                              BLOCK_R, GB, BLOCK_C)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dz = tl.load(dy_ptr + g_offs, mask=mask, other=0.0).to(tl.float32)
    xhat = tl.where(mask, (x - mean[None, :, None]) * rstd[None, :, None], 0.0)
    if SILU:
        z = xhat * w[None, :, :] + b[None, :, :]
        sig = tl.sigmoid(z)
        dz = dz * sig * (1.0 + z * (1.0 - sig))
    return xhat, dz * w[None, :, :], dz, mask


@triton.jit
def _saved_stats(mean_ptr, rstd_ptr, unit, group0, groups, GB: tl.constexpr):
    g = group0 + tl.arange(0, GB)
    m = g < groups
    return (tl.load(mean_ptr + unit * groups + g, mask=m, other=0.0),
            tl.load(rstd_ptr + unit * groups + g, mask=m, other=0.0))


@triton.jit
def _bwd_reduce_kernel(
    dy_ptr,    # (N, C, S) upstream gradient, strides g_stride_*
    x_ptr,     # (N, C, S) forward input, strides stride_*
    w_ptr, b_ptr,            # (C,) weight / bias (unused unless HAS_*)
    mean_ptr, rstd_ptr,      # (units * groups,) fp32 statistics saved by the forward
    part_ptr,  # (units * groups, splits, 2) fp32 out: sum dxhat, sum dxhat * xhat per split
    chan_ptr,  # (units, groups, splits, 2, Cg) fp32 out: per-channel sum dz * xhat, sum dz per split
    rows, S, frames, Cg, groups, rows_per_split, splits,
    stride_n, stride_c, stride_s, g_stride_n, g_stride_c, g_stride_s,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    BLOCK_R: tl.constexpr, GB: tl.constexpr, BLOCK_C: tl.constexpr,
):
    blocks = tl.cdiv(groups, GB)
    unit, group0, split = tl.program_id(0) // blocks, (tl.program_id(0) % blocks) * GB, tl.program_id(1)
    mean, rstd = _saved_stats(mean_ptr, rstd_ptr, unit, group0, groups, GB)
    w, b = _affine(w_ptr, b_ptr, group0, groups, Cg, HAS_WEIGHT, HAS_BIAS, GB, BLOCK_C)
    sum_dxhat = tl.zeros([GB], tl.float32)
    sum_dxhat_xhat = tl.zeros([GB], tl.float32)
    dw = tl.zeros([GB, BLOCK_C], tl.float32)
    db = tl.zeros([GB, BLOCK_C], tl.float32)
    start, end = _split_range(split, rows, rows_per_split)
    for row0 in range(start, end, BLOCK_R):
        xhat, dxhat, dz, _ = _grad_tile(x_ptr, dy_ptr, row0, end, unit, group0, groups, S, frames, Cg,
                                        stride_n, stride_c, stride_s, g_stride_n, g_stride_c, g_stride_s,
                                        mean, rstd, w, b, SILU, BLOCK_R, GB, BLOCK_C)
        sum_dxhat += _sum_rows_channels(dxhat)
        sum_dxhat_xhat += _sum_rows_channels(dxhat * xhat)
        dw += tl.sum(dz * xhat, axis=0)
        db += tl.sum(dz, axis=0)
    g = group0 + tl.arange(0, GB)
    out = part_ptr + ((unit * groups + g) * splits + split) * 2
    tl.store(out, sum_dxhat, mask=g < groups)
    tl.store(out + 1, sum_dxhat_xhat, mask=g < groups)
    c = tl.arange(0, BLOCK_C)
    chan = chan_ptr + (((unit * groups + g) * splits + split) * 2 * Cg)[:, None] + c[None, :]
    m = (g < groups)[:, None] & (c < Cg)[None, :]
    tl.store(chan, dw, mask=m)
    tl.store(chan + Cg, db, mask=m)


@triton.jit
def _bwd_dx_kernel(
    dy_ptr, x_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr,  # as in _bwd_reduce_kernel
    part_ptr,  # (units * groups, splits, 2) fp32 partial sums from _bwd_reduce_kernel
    dx_ptr,    # (N, C, S) out, strides dx_stride_*
    rows, S, frames, Cg, groups, rows_per_split, splits,
    stride_n, stride_c, stride_s, g_stride_n, g_stride_c, g_stride_s, dx_stride_n, dx_stride_c, dx_stride_s,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    BLOCK_R: tl.constexpr, GB: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_SPLITS: tl.constexpr,
):
    blocks = tl.cdiv(groups, GB)
    unit, group0, split = tl.program_id(0) // blocks, (tl.program_id(0) % blocks) * GB, tl.program_id(1)
    mean, rstd = _saved_stats(mean_ptr, rstd_ptr, unit, group0, groups, GB)
    w, b = _affine(w_ptr, b_ptr, group0, groups, Cg, HAS_WEIGHT, HAS_BIAS, GB, BLOCK_C)
    g = group0 + tl.arange(0, GB)
    i = tl.arange(0, BLOCK_SPLITS)
    parts = part_ptr + ((unit * groups + g)[:, None] * splits + i[None, :]) * 2
    pm = (g < groups)[:, None] & (i < splits)[None, :]
    n = rows * Cg * 1.0
    mean_dxhat = tl.sum(tl.load(parts, mask=pm, other=0.0), axis=1) / n
    mean_dxhat_xhat = tl.sum(tl.load(parts + 1, mask=pm, other=0.0), axis=1) / n
    start, end = _split_range(split, rows, rows_per_split)
    for row0 in range(start, end, BLOCK_R):
        xhat, dxhat, _, mask = _grad_tile(x_ptr, dy_ptr, row0, end, unit, group0, groups, S, frames, Cg,
                                          stride_n, stride_c, stride_s, g_stride_n, g_stride_c, g_stride_s,
                                          mean, rstd, w, b, SILU, BLOCK_R, GB, BLOCK_C)
        dx_offs, _ = _tile_offsets(row0, end, unit, group0, groups, S, frames, Cg,
                                   dx_stride_n, dx_stride_c, dx_stride_s, BLOCK_R, GB, BLOCK_C)
        dx = rstd[None, :, None] * (dxhat - mean_dxhat[None, :, None] - xhat * mean_dxhat_xhat[None, :, None])
        tl.store(dx_ptr + dx_offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ---- launchers ----


def _dense_like(x: torch.Tensor) -> torch.Tensor:
    """An empty tensor shaped like x whose spatial dims flatten to a view (channels-last kept)."""
    if x.dim() in (4, 5) and not x.is_contiguous():
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        if x.is_contiguous(memory_format=fmt):
            return torch.empty_like(x, memory_format=fmt)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _as_ncs(t: torch.Tensor) -> torch.Tensor:
    """(N, C, S) view of (N, C, *spatial) (a copy only when the spatial dims do not merge)."""
    return t.reshape(t.shape[0], t.shape[1], -1)


class _Plan:
    """Block sizes and split of the (unit, group block) reductions for one tensor geometry."""

    def __init__(self, x: torch.Tensor, groups: int, frames: int):
        n, c = x.shape[:2]
        self.units, self.groups, self.frames = n // frames, groups, frames
        self.S = x[0, 0].numel()
        self.Cg = c // groups
        self.rows = frames * self.S
        self.BLOCK_C = triton.next_power_of_2(self.Cg)
        self.GB = min(triton.next_power_of_2(groups), max(1, BLOCK_CHANNELS // self.BLOCK_C))
        self.BLOCK_R = max(1, min(triton.next_power_of_2(self.rows), TILE_ELEMENTS // (self.GB * self.BLOCK_C)))
        splits = max(1, min(MAX_SPLITS, triton.cdiv(self.rows, self.BLOCK_R * TILES_PER_SPLIT)))
        self.rows_per_split = triton.cdiv(triton.cdiv(self.rows, splits), self.BLOCK_R) * self.BLOCK_R
        self.splits = triton.cdiv(self.rows, self.rows_per_split)
        self.BLOCK_SPLITS = triton.next_power_of_2(self.splits)
        self.grid = (self.units * triton.cdiv(groups, self.GB), self.splits)

    def sizes(self):
        return (self.rows, self.S, self.frames, self.Cg, self.groups, self.rows_per_split, self.splits)

    def blocks(self):
        return dict(BLOCK_R=self.BLOCK_R, GB=self.GB, BLOCK_C=self.BLOCK_C)


def group_norm_forward(x, groups, weight, bias, eps, silu, frames):
    """Launch the statistics and apply kernels; returns (y, mean, rstd)."""
    p = _Plan(x, groups, frames)
    y = _dense_like(x)
    x3, y3 = _as_ncs(x), _as_ncs(y)
    part = torch.empty((p.units * groups, p.splits, 3), device=x.device, dtype=torch.float32)
    mean = torch.empty((p.units, groups), device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    _stats_kernel[p.grid](x3, part, *p.sizes(), *x3.stride(), **p.blocks())
    _apply_kernel[p.grid](
        x3, y3, weight if weight is not None else x3, bias if bias is not None else x3, part, mean, rstd,
        *p.sizes(), eps, *x3.stride(), *y3.stride(),
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, SILU=silu,
        BLOCK_SPLITS=p.BLOCK_SPLITS, **p.blocks(),
    )
    return y, mean, rstd


def group_norm_backward(grad, x, mean, rstd, weight, bias, silu, groups, frames):
    """Launch the two backward kernels; returns (dx, dweight, dbias), the latter two fp32 (C,)."""
    p = _Plan(x, groups, frames)
    dx = _dense_like(x)
    x3, g3, dx3 = _as_ncs(x), _as_ncs(grad), _as_ncs(dx)
    part = torch.empty((p.units * groups, p.splits, 2), device=x.device, dtype=torch.float32)
    chan = torch.empty((p.units, groups, p.splits, 2, p.Cg), device=x.device, dtype=torch.float32)
    common = dict(HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, SILU=silu, **p.blocks())
    w_arg = weight if weight is not None else x3
    b_arg = bias if bias is not None else x3
    _bwd_reduce_kernel[p.grid](g3, x3, w_arg, b_arg, mean, rstd, part, chan, *p.sizes(), *x3.stride(), *g3.stride(),
                               **common)
    _bwd_dx_kernel[p.grid](g3, x3, w_arg, b_arg, mean, rstd, part, dx3, *p.sizes(), *x3.stride(), *g3.stride(),
                           *dx3.stride(), BLOCK_SPLITS=p.BLOCK_SPLITS, **common)
    # chan is (units, groups, splits, 2, Cg): sum over units and splits per channel.
    return dx, chan[:, :, :, 0].sum(dim=(0, 2)).reshape(-1), chan[:, :, :, 1].sum(dim=(0, 2)).reshape(-1)


# ---- torch custom ops (traceable by torch.compile / CUDA graphs); autograd in kernels/autograd.py ----


@torch.library.custom_op("svd_fast_triton::group_norm_fwd", mutates_args=())
def group_norm_fwd(x: torch.Tensor, groups: int, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                   eps: float, silu: bool, frames: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return group_norm_forward(x, groups, weight, bias, eps, silu, frames)


@group_norm_fwd.register_fake
def _(x, groups, weight, bias, eps, silu, frames):
    stats = x.new_empty((x.shape[0] // frames, groups), dtype=torch.float32)
    return _dense_like(x), stats, torch.empty_like(stats)


@torch.library.custom_op("svd_fast_triton::group_norm_bwd", mutates_args=())
def group_norm_bwd(grad: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
                   weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], silu: bool, groups: int,
                   frames: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return group_norm_backward(grad, x, mean, rstd, weight, bias, silu, groups, frames)


@group_norm_bwd.register_fake
def _(grad, x, mean, rstd, weight, bias, silu, groups, frames):
    c = x.shape[1]
    return _dense_like(x), x.new_empty((c,), dtype=torch.float32), x.new_empty((c,), dtype=torch.float32)


def group_norm(x, num_groups, weight, bias, eps, silu=False, num_frames=None):
    """svd_fast.layers.group_norm contract; float64 goes to the reference."""
    if x.dtype not in _DTYPES:
        return reference.group_norm(x, num_groups, weight, bias, eps, silu, num_frames)
    return autograd.GroupNorm.apply(group_norm_fwd, group_norm_bwd, x, weight, bias, num_groups, float(eps),
                                    bool(silu), num_frames or 1)
