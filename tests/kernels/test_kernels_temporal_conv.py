"""(K,1,1) temporal conv kernels, native shifted GEMMs and Triton implicit GEMM, against conv3d."""
import pytest
import torch
from kernel_test_utils import IMPLEMENTATIONS, check_against_reference, device_for, implementation, leaves

from svd_fast.kernels import reference

# (atol, rtol) against the fp32 reference on the same rounded inputs; outputs are sums of up to
# K * Cin = 200 products of O(0.1-1) terms, O(1-3).
TOLERANCES = {
    torch.float32: (2e-5, 1e-5),     # fp32 dot products in another order
    torch.float16: (8e-3, 4e-3),     # fp16 GEMMs round the output (2^-11) after fp32 accumulation
    torch.bfloat16: (6e-2, 2e-2),    # bf16 rounding of the output (2^-8 relative) on values up to ~3
}
# dweight sums over all B*T*S rows (up to ~100 terms), so its error grows with that count.
GRAD_TOLERANCES = {
    torch.float32: (1e-4, 1e-4),
    torch.float16: (3e-2, 8e-3),
    torch.bfloat16: (2.5e-1, 3e-2),
}

# num_frames, Cin, Cout, kernel K, (H, W), bias
CASES = {
    "minimal-T1-1x1": (1, 3, 5, 3, (1, 1), True),      # one frame: only the centre tap reads data
    "odd-T7-odd-spatial": (7, 12, 20, 3, (3, 5), True),
    "wide-K5-non-aligned-channels": (5, 40, 70, 5, (2, 1), True),
    "no-bias-T2": (2, 8, 8, 3, (2, 2), False),          # every output frame misses one tap
}


def _inputs(case, layout, dtype, device):
    frames, cin, cout, taps, hw, bias = CASES[case]
    x = torch.randn(2 * frames, cin, *hw)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(cout, cin, taps, 1, 1) * 0.3
    b = torch.randn(cout) if bias else None
    return leaves(x, w, b, dtype=dtype, device=device)


# The native kernel takes channels-last input (the UNet's layout); NCHW goes to conv3d (tested below).
LAYOUTS = {"native": ["channels_last"], "triton": ["nchw", "channels_last"]}


@pytest.mark.parametrize("impl,layout", [(i, lay) for i in IMPLEMENTATIONS for lay in LAYOUTS[i]])
@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_temporal_conv_matches_reference(impl, layout, dtype, case):
    frames = CASES[case][0]
    out = check_against_reference(impl, "temporal_conv", lambda fn, x, w, b: fn(x, w, b, frames),
                                  _inputs(case, layout, dtype, device_for(impl)), dtype, TOLERANCES, GRAD_TOLERANCES,
                                  ("x", "weight", "bias"))
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last), "channels-last in, channels-last out"


def test_native_nchw_input_uses_conv3d():
    """NCHW input would need two layout copies around the shifted GEMMs: the reference runs it."""
    ops = implementation("native", "temporal_conv")
    x, w, b = torch.randn(6, 4, 2, 3), torch.randn(5, 4, 3, 1, 1), torch.randn(5)
    with torch.profiler.profile() as prof:
        out = ops(x, w, b, 3)
    assert not any(e.key.startswith("svd_fast_native::") for e in prof.key_averages())
    torch.testing.assert_close(out, reference.temporal_conv(x, w, b, 3))


def test_triton_weight_gradient_split_over_programs(monkeypatch):
    """dW reduced over many row splits (forced small) sums to the same gradient."""
    fn = implementation("triton", "temporal_conv")
    from svd_fast.kernels import temporal_conv as module

    monkeypatch.setattr(module, "ROWS_PER_WEIGHT_PROGRAM", 16)
    device = device_for("triton")
    x, w, b = _inputs("odd-T7-odd-spatial", "channels_last", torch.float32, device)
    out = fn(x, w, b, 7)
    xr, wr, br = leaves(x, w, b)
    expected = reference.temporal_conv(xr.cpu(), wr.cpu(), br.cpu(), 7)
    grad = torch.randn(expected.shape)
    out.backward(grad.to(device))
    expected.backward(grad)
    torch.testing.assert_close(w.grad.cpu(), wr.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b.grad.cpu(), br.grad, atol=1e-4, rtol=1e-4)


def test_native_flops_are_conv3d_flops():
    """FlopCounterMode counts the native conv as conv3d's (K, 1, 1) convolution, so benchmarks compare
    equal work (bench/run.py's TFLOP/s and op classes)."""
    from torch.utils.flop_counter import FlopCounterMode

    fn = implementation("native", "temporal_conv")
    x = torch.randn(2 * 5, 24, 3, 4).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(16, 24, 3, 1, 1), torch.randn(16)
    counts = []
    for op in (fn, reference.temporal_conv):
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            op(x, w, b, 5)
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] == 2 * 3 * 24 * 16 * (2 * 5 * 3 * 4)
