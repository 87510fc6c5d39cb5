"""autograd.Functions shared by the Triton and native backends.

Each Function takes the backend's forward and backward ops (torch custom ops with fake
implementations, so torch.compile can trace through) as its first two arguments; the backends
differ only in those ops. Backward ops return fp32 parameter gradients where they reduce over the
batch; they are cast to the parameter's dtype here.
"""
from __future__ import annotations

import torch


def _cast_like(grad, like):
    return None if like is None or grad is None else grad.to(like.dtype)


class GroupNorm(torch.autograd.Function):
    """fwd(x, groups, weight, bias, eps, silu, frames) -> (y, mean, rstd);
    bwd(grad, x, mean, rstd, weight, bias, silu, groups, frames) -> (dx, dweight, dbias)."""

    @staticmethod
    def forward(ctx, fwd, bwd, x, weight, bias, groups, eps, silu, frames):
        y, mean, rstd = fwd(x, groups, weight, bias, eps, silu, frames)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.bwd, ctx.args = bwd, (silu, groups, frames)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        dx, dweight, dbias = ctx.bwd(grad, x, mean, rstd, weight, bias, *ctx.args)
        return None, None, dx, _cast_like(dweight, weight), _cast_like(dbias, bias), None, None, None, None


class TemporalAttention(torch.autograd.Function):
    """fwd(q, k, v, frames, heads) -> out; bwd(grad, q, k, v, frames, heads) -> (dq, dk, dv)."""

    @staticmethod
    def forward(ctx, fwd, bwd, q, k, v, frames, heads):
        ctx.save_for_backward(q, k, v)
        ctx.bwd, ctx.args = bwd, (frames, heads)
        return fwd(q, k, v, frames, heads)

    @staticmethod
    def backward(ctx, grad):
        dq, dk, dv = ctx.bwd(grad, *ctx.saved_tensors, *ctx.args)
        return None, None, dq, dk, dv, None, None


class TemporalConv(torch.autograd.Function):
    """fwd(x, weight, bias, frames) -> y; bwd(grad, x, weight, frames) -> (dx, dweight, dbias)."""

    @staticmethod
    def forward(ctx, fwd, bwd, x, weight, bias, frames):
        ctx.save_for_backward(x, weight, bias)
        ctx.bwd, ctx.frames = bwd, frames
        return fwd(x, weight, bias, frames)

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias = ctx.saved_tensors
        dx, dweight, dbias = ctx.bwd(grad, x, weight, ctx.frames)
        return None, None, dx, _cast_like(dweight, weight), _cast_like(dbias, bias), None


class Geglu(torch.autograd.Function):
    """fwd(x) -> value * GELU(gate); bwd(grad, x) -> dx."""

    @staticmethod
    def forward(ctx, fwd, bwd, x):
        ctx.save_for_backward(x)
        ctx.bwd = bwd
        return fwd(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return None, None, ctx.bwd(grad, x)


class Blend(torch.autograd.Function):
    """out = p[n] * a + q[n] * b with fp32 per-sample p, q.
    fwd(a, b, p, q) -> out; bwd(grad, a, b, p, q) -> (da, db, dp, dq)."""

    @staticmethod
    def forward(ctx, fwd, bwd, a, b, p, q):
        ctx.save_for_backward(a, b, p, q)
        ctx.bwd = bwd
        return fwd(a, b, p, q)

    @staticmethod
    def backward(ctx, grad):
        return None, None, *ctx.bwd(grad, *ctx.saved_tensors)


def blend_backward_torch(grad, a, b, p, q):
    """Blend's backward in PyTorch ops: (p * g, q * g, per-sample sum g * a, per-sample sum g * b)."""
    g = grad.float()
    per_sample = (-1,) + (1,) * (a.ndim - 1)
    return ((g * p.reshape(per_sample)).to(a.dtype), (g * q.reshape(per_sample)).to(b.dtype),
            (g * a.float()).flatten(1).sum(1), (g * b.float()).flatten(1).sum(1))


class Conv3x3(torch.autograd.Function):
    """y = conv2d(x, weight, bias, padding=1) computed by fwd(x, u, bias) from a transformed weight u
    (Winograd); the backward is PyTorch's convolution backward on the original weight."""

    @staticmethod
    def forward(ctx, fwd, x, weight, u, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return fwd(x, u, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, _, need_b = ctx.needs_input_grad[1:5]
        dx, dw, db = torch.ops.aten.convolution_backward(
            grad, x, weight, [weight.shape[0]] if ctx.has_bias else None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
            [need_x, need_w, ctx.has_bias and need_b])
        return None, dx, dw, None, db
