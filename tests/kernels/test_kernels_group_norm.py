"""GroupNorm (+ SiLU) kernels, native C++ and Triton, against the plain-PyTorch reference."""
import pytest
import torch
from kernel_test_utils import (IMPLEMENTATIONS, assert_close_to_fp32, check_against_reference, device_for,
                               implementation, leaves)

from svd_fast.kernels import reference

# (atol, rtol) of outputs against the fp32 reference on the same rounded inputs; outputs are O(1-5).
TOLERANCES = {
    torch.float32: (2e-5, 1e-5),     # fp32 math like ATen's, other summation order: a few ulp
    torch.float16: (5e-3, 2e-3),     # one rounding of the output to fp16 (2^-11 relative)
    torch.bfloat16: (4e-2, 1.6e-2),  # one rounding of the output to bf16 (2^-8 relative)
}
# Gradients against the fp32 reference's: dx like the outputs; dweight/dbias are sums over a whole
# channel (up to ~200 terms of O(1)), so their absolute error scales with that sum.
GRAD_TOLERANCES = {
    torch.float32: (1e-4, 1e-4),     # fp32 reductions in another order
    torch.float16: (2e-2, 4e-3),     # upstream grad and result each rounded to fp16
    torch.bfloat16: (2e-1, 3e-2),    # upstream grad and result each rounded to bf16
}

# shape (N, C, H, W), groups, num_frames, silu, affine
CASES = {
    "minimal": ((1, 2, 1, 1), 1, None, False, True),
    "clip-T3-odd-spatial": ((6, 12, 5, 3), 4, 3, True, True),
    "odd-T7-group-size-5": ((7, 40, 3, 5), 8, 7, True, True),
    "T1-clips-no-affine": ((4, 20, 4, 4), 4, 1, True, False),
    "T25-svd-xt-clip": ((25, 8, 2, 3), 2, 25, False, True),
    "per-frame-81-positions": ((4, 16, 9, 9), 2, None, True, True),  # several row blocks per group
}


def _inputs(shape, affine, layout, dtype, device):
    x = torch.randn(shape) * 2 + 0.5
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(shape[1]) if affine else None
    b = torch.randn(shape[1]) if affine else None
    return leaves(x, w, b, dtype=dtype, device=device)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case", list(CASES))
def test_group_norm_matches_reference(impl, dtype, layout, case):
    shape, groups, frames, silu, affine = CASES[case]
    out = check_against_reference(
        impl, "group_norm", lambda fn, x, w, b: fn(x, groups, w, b, 1e-5, silu, frames),
        _inputs(shape, affine, layout, dtype, device_for(impl)), dtype, TOLERANCES, GRAD_TOLERANCES,
        ("x", "weight", "bias"))
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt), "the output keeps the input's memory format"


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_statistics_survive_a_large_mean(impl):
    """mean 1000, std 0.01: fp32 sum / sum-of-squares loses the variance entirely (torch 2.13's own
    channels-last CPU GroupNorm is off by ~4e4 here). The tolerance is one fp32 ulp of the mean
    (6e-5 at 1000) times rstd (~110): the statistics are fp32 numbers."""
    fn, device = implementation(impl, "group_norm"), device_for(impl)
    x = (1000 + 0.01 * torch.randn(6, 8, 4, 4)).contiguous(memory_format=torch.channels_last)
    out = fn(x.to(device), 2, None, None, 1e-12, False, 3).cpu()
    exact = reference.group_norm(x.double(), 2, None, None, 1e-12, False, 3)
    torch.testing.assert_close(out.double(), exact, atol=1e-2, rtol=0)


def test_triton_split_reduction(monkeypatch):
    """Groups split over many programs (forced with tiny tiles) combine to the same statistics."""
    fn = implementation("triton", "group_norm")
    from svd_fast.kernels import group_norm as module

    monkeypatch.setattr(module, "TILE_ELEMENTS", 16)
    monkeypatch.setattr(module, "TILES_PER_SPLIT", 1)
    device = device_for("triton")
    x, w, b = _inputs((4, 8, 4, 4), True, "nchw", torch.float32, device)
    assert module._Plan(x, 2, 2).splits > 1
    out = fn(x, 2, w, b, 1e-5, True, 2)
    xr, wr, br = leaves(x, w, b, dtype=torch.float32)
    expected = reference.group_norm(xr, 2, wr, br, 1e-5, True, 2)
    torch.testing.assert_close(out.cpu(), expected, atol=2e-5, rtol=1e-5)
    grad = torch.randn(4, 8, 4, 4)
    out.backward(grad.to(device))
    expected.backward(grad)
    for ours, ref in ((x, xr), (w, wr), (b, br)):
        torch.testing.assert_close(ours.grad.cpu(), ref.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_float64_goes_to_the_reference(impl):
    """Neither kernel computes in fp64: such inputs take the reference path and stay exact."""
    fn = implementation(impl, "group_norm")
    x = torch.randn(4, 6, 3, 3, dtype=torch.float64)
    expected = reference.group_norm(x, 3, None, None, 1e-5, True, 2)
    torch.testing.assert_close(fn(x.to(device_for(impl)), 3, None, None, 1e-5, True, 2).cpu(), expected)


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case", list(CASES))
def test_torch_in_dtype_candidate_matches_reference(dtype, layout, case):
    """auto's "torch" candidate on CUDA (PyTorch's GroupNorm in the input dtype, as diffusers runs it):
    the fp32 reference's function within the same tolerances, on the GPU when there is one."""
    from svd_fast.kernels import torch_ops

    shape, groups, frames, silu, affine = CASES[case]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, w, b = _inputs(shape, affine, layout, dtype, device)
    with torch.no_grad():
        out = torch_ops.group_norm(x, groups, w, b, 1e-5, silu, frames)
        on_cpu = [None if t is None else t.detach().cpu() for t in (x, w, b)]
        expected = reference.group_norm(*(None if t is None else t.float() for t in on_cpu[:1]), groups,
                                        *(None if t is None else t.float() for t in on_cpu[1:]), 1e-5, silu, frames)
        same_dtype = reference.group_norm(on_cpu[0], groups, *on_cpu[1:], 1e-5, silu, frames)
    assert out.dtype == dtype and out.shape == x.shape
    assert_close_to_fp32(out.cpu(), expected, None if dtype == torch.float32 else same_dtype, *TOLERANCES[dtype], "output")


def test_auto_times_torch_group_norm_on_cuda_only():
    from svd_fast import kernels
    from svd_fast.kernels import torch_ops

    available = {"reference": dict(reference.OPS), "torch": {"group_norm": torch_ops.group_norm}}
    on_cuda = [name for name, _ in kernels._auto_candidates("group_norm", "cuda", available)]
    on_cpu = [name for name, _ in kernels._auto_candidates("group_norm", "cpu", available)]
    assert on_cuda == ["torch", "reference"] and on_cpu == ["reference"]
