"""Temporal attention kernels, native C++ and Triton, against the reference (permute + SDPA)."""
import pytest
import torch
from kernel_test_utils import (
    IMPLEMENTATIONS,
    check_against_reference,
    device_for,
    implementation,
    leaves,
    run_and_check_custom_op,
)

from svd_fast.kernels import reference

# (atol, rtol) against the fp32 reference on the same rounded inputs; outputs are convex
# combinations of v rows, O(1).
TOLERANCES = {
    torch.float32: (2e-6, 1e-5),     # fp32 softmax and sums of <= 128 products: a few ulp
    torch.float16: (2e-3, 2e-3),     # output rounded to fp16 once (2^-11 relative)
    torch.bfloat16: (1.6e-2, 1.6e-2),  # output rounded to bf16 once (2^-8 relative)
}
# Gradients are sums over T frames of products of O(1) terms.
GRAD_TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (4e-3, 4e-3),     # upstream grad and results rounded to fp16
    torch.bfloat16: (3e-2, 3e-2),    # upstream grad and results rounded to bf16
}

# num_frames, tokens S, channels C, heads
CASES = {
    "minimal-T1": (1, 1, 16, 1),            # one frame: softmax over one key returns v
    "odd-T7-head-dim-40": (7, 3, 80, 2),
    "svd-xt-T25-head-dim-64": (25, 2, 64, 1),
    "svd-T14-head-dim-80-odd-S": (14, 5, 160, 2),
    "head-dim-128": (3, 2, 256, 2),
    "longest-T64": (64, 1, 16, 1),
}


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_temporal_attention_matches_reference(impl, dtype, case):
    frames, tokens, channels, heads = CASES[case]
    qkv = leaves(*(torch.randn(2 * frames, tokens, channels) for _ in range(3)), dtype=dtype, device=device_for(impl))
    check_against_reference(impl, "temporal_attention", lambda fn, q, k, v: fn(q, k, v, frames, heads), qkv, dtype,
                            TOLERANCES, GRAD_TOLERANCES, ("q", "k", "v"))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_views_into_a_fused_projection(impl):
    """q/k/v as column slices of one (B*T, S, 3C) tensor (token stride 3C) are read in place."""
    fn, device = implementation(impl, "temporal_attention"), device_for(impl)
    qkv = torch.randn(2 * 5, 3, 3 * 64, device=device, requires_grad=True)
    q, k, v = qkv.chunk(3, -1)
    out = run_and_check_custom_op(impl, lambda: fn(q, k, v, 5, 2))
    ref_qkv = qkv.detach().cpu().requires_grad_()
    expected = reference.temporal_attention(*ref_qkv.chunk(3, -1), 5, 2)
    torch.testing.assert_close(out.cpu(), expected, atol=2e-6, rtol=1e-5)
    grad = torch.randn(expected.shape)
    out.backward(grad.to(device))
    expected.backward(grad)
    torch.testing.assert_close(qkv.grad.cpu(), ref_qkv.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_more_than_64_frames_falls_back_to_the_reference(impl):
    """T = 65 exceeds the kernels' register tile: the reference path answers, still correct."""
    fn, device = implementation(impl, "temporal_attention"), device_for(impl)
    q, k, v = (torch.randn(65, 1, 16, device=device) for _ in range(3))
    torch.testing.assert_close(fn(q, k, v, 65, 1).cpu(),
                               reference.temporal_attention(q.cpu(), k.cpu(), v.cpu(), 65, 1))
