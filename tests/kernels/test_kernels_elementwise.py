"""Fused elementwise kernels (AlphaBlender mixes, GEGLU), native C++ and Triton, against the reference."""
import pytest
import torch
from kernel_test_utils import IMPLEMENTATIONS, check_against_reference, device_for, implementation, leaves

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
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    a, b = (torch.randn(shape).contiguous(memory_format=fmt) for _ in range(2))
    x1, x2 = leaves(a, b, dtype=dtype, device=device_for(impl))
    (alpha,) = leaves(torch.rand(shape[0]), device=device_for(impl))  # one sigmoid(mix_factor) per frame
    out = check_against_reference(impl, op, lambda fn, *t: fn(*t), [x1, x2, alpha], dtype, TOLERANCES,
                                  GRAD_TOLERANCES, ("x_spatial", "second input", "alpha"))
    assert out.is_contiguous(memory_format=fmt)


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
    x = leaves(torch.randn(GEGLU_SHAPES[case]) * 2, dtype=dtype, device=device_for(impl))
    check_against_reference(impl, "geglu", lambda fn, x: fn(x), x, dtype, TOLERANCES, GRAD_TOLERANCES, ("x",))
