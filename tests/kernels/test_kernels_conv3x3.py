"""3x3 convolution by Winograd F(2x2, 3x3) (native) against F.conv2d, forward and backward."""
import pytest
import torch
import torch.nn.functional as F
from kernel_test_utils import check_against_reference, implementation, leaves, native_ops

from svd_fast import layers

# (atol, rtol) against the fp32 reference on the same rounded inputs; outputs are O(1) (weights
# scaled by 1/sqrt(9 Cin)). Winograd adds/subtracts up to 16 transformed terms per output, so
# rounding grows a little over the direct sum: fp32 stays ~1e-6 relative; in 16-bit dtypes the
# transformed tiles and GEMM outputs are rounded once each (bf16 2^-8, fp16 2^-11 relative).
TOLERANCES = {
    torch.float32: (3e-5, 1e-5),
    torch.float16: (1e-2, 5e-3),
    torch.bfloat16: (8e-2, 3e-2),
}
# The backward is PyTorch's convolution backward (dweight sums over N*H*W positions).
GRAD_TOLERANCES = {
    torch.float32: (1e-4, 1e-4),
    torch.float16: (5e-2, 1e-2),
    torch.bfloat16: (3e-1, 3e-2),
}

# N, Cin, Cout, (H, W), bias
CASES = {
    "1x1-map-one-tile": (3, 4, 5, (1, 1), True),          # every tap but the centre reads padding
    "odd-map-partial-tiles": (2, 5, 7, (9, 11), True),     # last tile row/column half outside the image
    "2x3-non-aligned-channels": (1, 33, 17, (2, 3), False),
    "wide-tail-lanes": (2, 40, 70, (4, 4), True),          # channel counts not multiples of 16 lanes
}


def _inputs(case, layout, dtype):
    n, cin, cout, hw, bias = CASES[case]
    x = torch.randn(n, cin, *hw)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(cout, cin, 3, 3) / (9 * cin) ** 0.5
    b = torch.randn(cout) if bias else None
    return leaves(x, w, b, dtype=dtype)


@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_winograd_matches_conv2d(case, dtype, layout):
    out = check_against_reference("native", "conv3x3", lambda fn, x, w, b: fn(x, w, b), _inputs(case, layout, dtype),
                                  dtype, TOLERANCES, GRAD_TOLERANCES, ("x", "weight", "bias"))
    assert out.is_contiguous(memory_format=torch.channels_last), "the kernel writes channels-last"


def test_many_tile_chunks():
    """Wide inputs split the tiles into several GEMM chunks (32 MiB of transformed tiles each): 8192
    input channels give chunks of 64 tiles, so 81 tiles take two, the second one partial."""
    conv = implementation("native", "conv3x3")
    x = torch.randn(1, 8192, 18, 17).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(3, 8192, 3, 3) / 272, torch.randn(3)
    expected = F.conv2d(x.double(), w.double(), b.double(), padding=1)
    torch.testing.assert_close(conv(x, w, b).double(), expected, atol=2e-5, rtol=1e-5)


def test_weight_transform_follows_in_place_updates():
    """The transformed weight is cached per weight tensor and recomputed after the weight changes in place."""
    conv = implementation("native", "conv3x3")
    x = torch.randn(2, 6, 5, 5).contiguous(memory_format=torch.channels_last)
    w = torch.randn(4, 6, 3, 3)
    first = conv(x, w, None)
    torch.testing.assert_close(first, F.conv2d(x, w, None, padding=1), atol=2e-5, rtol=1e-5)
    w.mul_(-2.0)  # an optimizer step or load_state_dict does this
    torch.testing.assert_close(conv(x, w, None), -2.0 * first, atol=4e-5, rtol=1e-5)


def test_winograd_weight_is_g_g_gt():
    """U[4i + j] = (G g G^T)[i, j] with Lavin & Gray's G, checked on a hand-computable kernel."""
    ops = native_ops()
    g = torch.arange(9.0).reshape(1, 1, 3, 3)
    G = torch.tensor([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
    torch.testing.assert_close(ops.winograd_weight(g).reshape(4, 4), G @ g[0, 0] @ G.T)


def test_unsupported_inputs_go_to_conv2d():
    """float64 (no native kernel) is computed by F.conv2d, without the native op."""
    conv = implementation("native", "conv3x3")
    x, w = torch.randn(1, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 3, 3, dtype=torch.float64)
    with torch.profiler.profile() as prof:
        out = conv(x, w, None)
    assert not any(e.key.startswith("svd_fast_native::") for e in prof.key_averages())
    torch.testing.assert_close(out, F.conv2d(x, w, None, padding=1))


def test_training_weights_are_not_cached():
    """A weight that trains is transformed on every call (its storage may be swapped without a version bump)."""
    ops = native_ops()
    conv = implementation("native", "conv3x3")
    x = torch.randn(1, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    w = torch.randn(2, 3, 3, 3, requires_grad=True)
    conv(x, w, None)
    assert w not in ops._transformed
    frozen = w.detach().clone()
    conv(x, frozen, None)
    assert frozen in ops._transformed
    frozen.data = torch.zeros_like(frozen)  # same version counter, new storage: the cache must not serve it
    assert conv(x, frozen, None).abs().max() == 0


def test_inference_tensor_weights():
    """Weights made under inference_mode (no version counter) are transformed and cached too."""
    conv = implementation("native", "conv3x3")
    with torch.inference_mode():
        x = torch.randn(2, 3, 5, 4).contiguous(memory_format=torch.channels_last)
        w, b = torch.randn(4, 3, 3, 3), torch.randn(4)
        expected = F.conv2d(x, w, b, padding=1)
        for _ in range(2):
            torch.testing.assert_close(conv(x, w, b), expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(stride=2, padding=1), dict(padding=0), dict(dilation=2, padding=2),
                                    dict(groups=2, padding=1), dict(padding=1, padding_mode="reflect")])
def test_conv2d_layer_routes_only_the_plain_3x3_case(kwargs):
    """layers.Conv2d is nn.Conv2d for every configuration but 3x3/stride 1/padding 1 (same results either way)."""
    torch.manual_seed(0)
    plain = torch.nn.Conv2d(4, 6, 3, **kwargs)
    ours = layers.Conv2d(4, 6, 3, **kwargs)
    ours.load_state_dict(plain.state_dict())
    x = torch.randn(2, 4, 9, 8)
    torch.testing.assert_close(ours(x), plain(x))


def test_conv2d_layer_runs_the_kernel_for_3x3():
    native_ops()
    from svd_fast import kernels

    torch.manual_seed(0)
    plain, ours = torch.nn.Conv2d(4, 6, 3, padding=1), layers.Conv2d(4, 6, 3, padding=1)
    ours.load_state_dict(plain.state_dict())
    x = torch.randn(2, 4, 9, 8)
    previous = kernels.get_backend()
    kernels.set_backend("native")
    try:
        with torch.profiler.profile() as prof:
            out = ours(x)
    finally:
        kernels.set_backend(previous)
    assert any(e.key == "svd_fast_native::winograd_conv3x3_fwd" for e in prof.key_averages())
    torch.testing.assert_close(out, plain(x), atol=2e-5, rtol=1e-5)


def test_compiled_graphs_transform_a_frozen_weight_once(monkeypatch):
    """In a frozen compiled graph the transform comes from the cache (once per weight), not from traced
    ops that re-run on every call; the results stay the direct conv's."""
    ops = native_ops()
    calls = []
    transform = ops.winograd_weight
    monkeypatch.setattr(ops, "winograd_weight", lambda w: (calls.append(tuple(w.shape)), transform(w))[1])
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(24, 40, 3, padding=1).requires_grad_(False)
    x = torch.randn(2, 24, 9, 7).contiguous(memory_format=torch.channels_last)
    expected = F.conv2d(x, conv.weight, conv.bias, padding=1)
    compiled = torch.compile(lambda x: implementation("native", "conv3x3")(x, conv.weight, conv.bias), fullgraph=True,
                             options={"freezing": True})
    with torch.inference_mode():
        for _ in range(3):
            torch.testing.assert_close(compiled(x), expected, atol=2e-5, rtol=1e-5)
    assert calls == [(40, 24, 3, 3)]
