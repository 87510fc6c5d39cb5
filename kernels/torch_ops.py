"""PyTorch's own fused ops run in the input dtype, as diffusers runs them: an "auto" candidate on CUDA.

The reference (kernels/reference.py) computes GroupNorm as sgm's GroupNorm32 does, on an fp32 copy:
three extra passes over the tensor for 16-bit inputs. PyTorch's GroupNorm kernel already accumulates its
statistics in fp32, so running it in the input dtype gives the same function within that dtype's
rounding. On an H200 it beat the reference 1.3-1.5x at every 576x1024 shape and the Triton kernel at the
deepest level (bench/results/kernels-triton-svd-shapes-h200-2026-12-04.json, its "torch" column): with it
among the candidates, auto is never slower than what diffusers runs for this op.
"""
from __future__ import annotations

from .reference import group_norm_computed_in


def group_norm(x, num_groups, weight, bias, eps, silu=False, num_frames=None):
    """GroupNorm (+ SiLU) of x (N, C, *spatial) in x's dtype; arguments as reference.group_norm."""
    return group_norm_computed_in(x.dtype, x, num_groups, weight, bias, eps, silu, num_frames)
