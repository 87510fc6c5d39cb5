"""Fused elementwise kernels (AlphaBlender mixes, GEGLU), native C++ and Triton, against the reference."""
import pytest
import torch
from kernel_test_utils import (
    IMPLEMENTATIONS,
    assert_close_to_fp32,
    device_for,
    implementation,
    leaves,
    run_and_check_custom_op,
)

from svd_fast.kernels import reference

# (atol, rtol) against the fp32 reference on the same rounded inputs; outputs are O(1), up to ~10.
TOLERANCES = {
    torch.float32: (4e-6, 1e-5),     # a few fp32 operations; erf implementations differ by a few ulp
    torch.float16: (4e-3, 2e-3),     # one rounding of the output to fp16 (2^-11 relative)
    torch.bfloat16: (3e-2, 1.6e-2),  # one rounding of the output to bf16 (2^-8 relative)
}
# The alpha gradient sums g * x over a whole sample (up to ~150 terms).
GRAD_TOLERANCES = {
    torch.float32: (2e-5, 1e-5),
    torch.float16: (2e-2, 4e-3),
    torch.bfloat16: (1.5e-1, 3e-2),
}

BLEND_SHAPES = {
    "minimal": ((1, 1, 1, 1), "nchw"),
    "feature-map-channels-last": ((6, 8, 3, 3), "channels_last"),
    "tokens-odd": ((6, 7, 5), "nchw"),  # (B*T, S, C) token layout, odd sizes
}
GEGLU_SHAPES = {
    "minimal": (1, 2),
    "odd-width-37": (3, 5, 74),
    "rows-across-programs": (3, 2 * 700),  # 2100 outputs: Triton programs of 1024 straddle rows
}


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("op", ["alpha_blend", "alpha_blend_residual"])
@pytest.mark.parametrize("case", list(BLEND_SHAPES))
def test_blend_matches_reference(impl, dtype, op, case):
    shape, layout = BLEND_SHAPES[case]
    fn, device = implementation(impl, op), device_for(impl)
    a, b = torch.randn(shape), torch.randn(shape)
    if layout == "channels_last":
        a, b = a.contiguous(memory_format=torch.channels_last), b.contiguous(memory_format=torch.channels_last)
    alpha = torch.rand(shape[0])  # one sigmoid(mix_factor) per frame
    x1, x2, al = leaves(a, b, alpha, device=device)
    x1, x2 = x1.detach().to(dtype).requires_grad_(), x2.detach().to(dtype).requires_grad_()
    out = run_and_check_custom_op(impl, lambda: fn(x1, x2, al))

    r1, r2, ra = leaves(x1, x2, al, dtype=torch.float32)
    expected = getattr(reference, op)(r1, r2, ra)
    same_dtype = None if dtype == torch.float32 else getattr(reference, op)(
        x1.detach().cpu(), x2.detach().cpu(), al.detach().cpu())
    assert out.dtype == dtype
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
    assert_close_to_fp32(out.cpu(), expected, same_dtype, *TOLERANCES[dtype], "output")

    grad = torch.randn(shape)
    out.backward(grad.to(device=device, dtype=dtype))
    expected.backward(grad.to(dtype).float())
    for name, ours, ref in (("x_spatial", x1, r1), ("second input", x2, r2), ("alpha", al, ra)):
        assert_close_to_fp32(ours.grad.cpu(), ref.grad, None, *GRAD_TOLERANCES[dtype], f"grad {name}")


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_blend_mixed_layouts(impl):
    """A channels-last x_spatial with an NCHW second input still blends element by element."""
    fn, device = implementation(impl, "alpha_blend"), device_for(impl)
    a = torch.randn(4, 6, 3, 2, device=device).contiguous(memory_format=torch.channels_last)
    b = torch.randn(4, 6, 3, 2, device=device)
    alpha = torch.rand(4, device=device)
    torch.testing.assert_close(fn(a, b, alpha).cpu(), reference.alpha_blend(a.cpu(), b.cpu(), alpha.cpu()))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("case", list(GEGLU_SHAPES))
def test_geglu_matches_reference(impl, dtype, case):
    shape = GEGLU_SHAPES[case]
    fn, device = implementation(impl, "geglu"), device_for(impl)
    (x,) = leaves(torch.randn(shape) * 2, dtype=dtype, device=device)
    out = run_and_check_custom_op(impl, lambda: fn(x))

    (xr,) = leaves(x, dtype=torch.float32)
    expected = reference.geglu(xr)
    same_dtype = None if dtype == torch.float32 else reference.geglu(x.detach().cpu())
    assert out.dtype == dtype
    assert_close_to_fp32(out.cpu(), expected, same_dtype, *TOLERANCES[dtype], "output")

    grad = torch.randn(expected.shape)
    out.backward(grad.to(device=device, dtype=dtype))
    expected.backward(grad.to(dtype).float())
    assert_close_to_fp32(x.grad.cpu(), xr.grad, None, *GRAD_TOLERANCES[dtype], "grad x")
