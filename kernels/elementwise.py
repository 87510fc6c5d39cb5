"""Fused elementwise ops in Triton: the AlphaBlender mixes and GEGLU, forward and backward.

Blend: out[n] = p[n] * a[n] + q[n] * b[n] with fp32 per-sample coefficients, which is
alpha_blend with (p, q) = (alpha, 1 - alpha) and alpha_blend_residual with (1, 1 - alpha). Inputs
share one sample-major dense layout (contiguous or channels-last), so sample n is one contiguous
block; programs take (sample, block) pairs and the backward writes per-program partial sums of the
coefficient gradients. GEGLU: x = [value | gate] on the last axis -> value * GELU(gate), exact erf.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import autograd, reference

# Elements per program.
BLOCK = 1024
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _sample_block(a_ptr, b_ptr, per_sample, BLOCK: tl.constexpr):
    """(sample n, flat offsets, mask, a, b as fp32) of this program's block of one sample."""
    n, blk = tl.program_id(0), tl.program_id(1)
    i = blk * BLOCK + tl.arange(0, BLOCK)
    mask = i < per_sample
    offs = n.to(tl.int64) * per_sample + i
    a = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return n, offs, mask, a, b


@triton.jit
def _blend_kernel(
    a_ptr, b_ptr,  # (N, per_sample) inputs in one dense sample-major layout
    p_ptr, q_ptr,  # (N,) fp32 coefficients
    out_ptr,       # (N, per_sample) output, same layout
    per_sample,
    BLOCK: tl.constexpr,
):
    n, offs, mask, a, b = _sample_block(a_ptr, b_ptr, per_sample, BLOCK)
    out = tl.load(p_ptr + n) * a + tl.load(q_ptr + n) * b
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _blend_bwd_kernel(
    g_ptr,         # (N, per_sample) upstream gradient, same layout as a/b
    a_ptr, b_ptr,  # (N, per_sample) forward inputs
    p_ptr, q_ptr,  # (N,) fp32 coefficients
    da_ptr, db_ptr,  # (N, per_sample) outputs
    part_ptr,      # (N, blocks, 2) fp32 out: per-program sums of g * a and g * b
    per_sample, blocks,
    BLOCK: tl.constexpr,
):
    n, offs, mask, a, b = _sample_block(a_ptr, b_ptr, per_sample, BLOCK)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(da_ptr + offs, (tl.load(p_ptr + n) * g).to(da_ptr.dtype.element_ty), mask=mask)
    tl.store(db_ptr + offs, (tl.load(q_ptr + n) * g).to(db_ptr.dtype.element_ty), mask=mask)
    part = part_ptr + (n * blocks + tl.program_id(1)) * 2
    tl.store(part, tl.sum(g * a, axis=0))
    tl.store(part + 1, tl.sum(g * b, axis=0))


@triton.jit
def _normal_cdf(x):
    """Phi(x) = 0.5 * (1 + erf(x / sqrt(2))), so exact GELU(x) = x * Phi(x)."""
    return 0.5 * (1.0 + tl.erf(x * 0.7071067811865476))


@triton.jit
def _geglu_offsets(F, total, BLOCK: tl.constexpr):
    """Flat output indices i of this program (over rows * F) and their value offsets in x (rows, 2F)."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return i, (i // F) * 2 * F + i % F, i < total


@triton.jit
def _geglu_kernel(
    x_ptr,    # (rows, 2F) input, contiguous; value = x[:, :F], gate = x[:, F:]
    out_ptr,  # (rows, F) output, contiguous
    F, total,  # total = rows * F
    BLOCK: tl.constexpr,
):
    i, offs, mask = _geglu_offsets(F, total, BLOCK)
    value = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    gate = tl.load(x_ptr + offs + F, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + i, (value * gate * _normal_cdf(gate)).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _geglu_bwd_kernel(
    g_ptr,   # (rows, F) upstream gradient, contiguous
    x_ptr,   # (rows, 2F) forward input, contiguous
    dx_ptr,  # (rows, 2F) output: [dvalue | dgate]
    F, total,
    BLOCK: tl.constexpr,
):
    i, offs, mask = _geglu_offsets(F, total, BLOCK)
    g = tl.load(g_ptr + i, mask=mask, other=0.0).to(tl.float32)
    value = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    gate = tl.load(x_ptr + offs + F, mask=mask, other=0.0).to(tl.float32)
    cdf = _normal_cdf(gate)
    pdf = tl.exp(-0.5 * gate * gate) * 0.3989422804014327  # standard normal density
    tl.store(dx_ptr + offs, (g * gate * cdf).to(dx_ptr.dtype.element_ty), mask=mask)
    tl.store(dx_ptr + offs + F, (g * value * (cdf + gate * pdf)).to(dx_ptr.dtype.element_ty), mask=mask)


# ---- launchers ----


def _sample_major(t: torch.Tensor) -> bool:
    """Dense with the sample axis outermost: sample n is the block [n * numel/N, (n+1) * numel/N)."""
    if t.numel() == 0:
        return True
    strides = sorted((s, d) for d, s in enumerate(t.stride()) if t.shape[d] > 1)
    expected = 1
    for stride, dim in strides:
        if stride != expected:
            return False
        expected *= t.shape[dim]
    return t.shape[0] <= 1 or t.stride(0) * t.shape[0] == t.numel()


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if _sample_major(a) and a.stride() == b.stride():
        return a, b
    return a.contiguous(), b.contiguous()


def blend_forward(a, b, p, q):
    a, b = _same_layout(a, b)
    out = torch.empty_like(a)
    per_sample = a[0].numel() if a.shape[0] else 0
    grid = (a.shape[0], max(1, triton.cdiv(per_sample, BLOCK)))
    _blend_kernel[grid](a, b, p, q, out, per_sample, BLOCK=BLOCK)
    return out


def blend_backward(grad, a, b, p, q):
    """Returns (da, db, dp, dq); dp/dq are fp32 (N,)."""
    a, b = _same_layout(a, b)
    grad = grad.to(a.dtype)
    grad = grad if grad.stride() == a.stride() else torch.empty_like(a).copy_(grad)
    per_sample = a[0].numel() if a.shape[0] else 0
    blocks = max(1, triton.cdiv(per_sample, BLOCK))
    da, db = torch.empty_like(a), torch.empty_like(b)
    part = torch.empty((a.shape[0], blocks, 2), device=a.device, dtype=torch.float32)
    _blend_bwd_kernel[(a.shape[0], blocks)](grad, a, b, p, q, da, db, part, per_sample, blocks, BLOCK=BLOCK)
    return da, db, part[..., 0].sum(1), part[..., 1].sum(1)


def geglu_forward(x):
    x = x.contiguous()
    f = x.shape[-1] // 2
    out = x.new_empty(x.shape[:-1] + (f,))
    total = out.numel()
    if total:
        _geglu_kernel[(triton.cdiv(total, BLOCK),)](x, out, f, total, BLOCK=BLOCK)
    return out


def geglu_backward(grad, x):
    x = x.contiguous()
    grad = grad.to(x.dtype).contiguous()
    f = x.shape[-1] // 2
    dx = torch.empty_like(x)
    total = grad.numel()
    if total:
        _geglu_bwd_kernel[(triton.cdiv(total, BLOCK),)](grad, x, dx, f, total, BLOCK=BLOCK)
    return dx


# ---- torch custom ops; autograd in kernels/autograd.py ----


@torch.library.custom_op("svd_fast_triton::blend_fwd", mutates_args=())
def blend_fwd(a: torch.Tensor, b: torch.Tensor, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return blend_forward(a, b, p, q)


@blend_fwd.register_fake
def _(a, b, p, q):
    return torch.empty_like(a)


@torch.library.custom_op("svd_fast_triton::blend_bwd", mutates_args=())
def blend_bwd(grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor, p: torch.Tensor,
              q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return blend_backward(grad, a, b, p, q)


@blend_bwd.register_fake
def _(grad, a, b, p, q):
    return torch.empty_like(a), torch.empty_like(b), p.new_empty(p.shape), q.new_empty(q.shape)


@torch.library.custom_op("svd_fast_triton::geglu_fwd", mutates_args=())
def geglu_fwd(x: torch.Tensor) -> torch.Tensor:
    return geglu_forward(x)


@geglu_fwd.register_fake
def _(x):
    return x.new_empty(x.shape[:-1] + (x.shape[-1] // 2,))


@torch.library.custom_op("svd_fast_triton::geglu_bwd", mutates_args=())
def geglu_bwd(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return geglu_backward(grad, x)


@geglu_bwd.register_fake
def _(grad, x):
    return x.new_empty(x.shape)


def _triton_ok(*tensors) -> bool:
    return all(t.dtype in _DTYPES for t in tensors) and len({(t.shape, t.dtype) for t in tensors}) == 1


def alpha_blend(x_spatial, x_temporal, alpha):
    """svd_fast.layers.alpha_blend contract (fp32 mixing); float64 or mismatched inputs go to the reference."""
    if not _triton_ok(x_spatial, x_temporal):
        return reference.alpha_blend(x_spatial, x_temporal, alpha)
    a = alpha.float().reshape(-1)
    return autograd.Blend.apply(blend_fwd, blend_bwd, x_spatial, x_temporal, a, 1 - a)


def alpha_blend_residual(x_spatial, delta, alpha):
    """svd_fast.layers.alpha_blend_residual contract: x_spatial + (1 - alpha) * delta."""
    if not _triton_ok(x_spatial, delta):
        return reference.alpha_blend_residual(x_spatial, delta, alpha)
    a = alpha.float().reshape(-1)
    return autograd.Blend.apply(blend_fwd, blend_bwd, x_spatial, delta, torch.ones_like(a), 1 - a)


def geglu(x):
    """svd_fast.layers.geglu contract; float64 goes to the reference."""
    if x.dtype not in _DTYPES:
        return reference.geglu(x)
    return autograd.Geglu.apply(geglu_fwd, geglu_bwd, x)
