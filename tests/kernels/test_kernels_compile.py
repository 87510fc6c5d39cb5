"""torch.compile traces every kernel op whole (fullgraph), forward and backward, via the fake impls.

The aot_eager backend runs Dynamo, fake-tensor propagation through the custom ops' fake
implementations and AOT autograd, then executes eagerly, so no C++ code generation is needed.
"""
import pytest
import torch
from kernel_test_utils import IMPLEMENTATIONS, device_for, implementation, leaves

from svd_fast import kernels

# op -> (call with the op as first argument, input builder)
CASES = {
    "group_norm": (lambda fn, x, w, b: fn(x, 2, w, b, 1e-5, True, 3),
                   lambda: (torch.randn(6, 8, 3, 2).contiguous(memory_format=torch.channels_last), torch.randn(8),
                            torch.randn(8))),
    "temporal_attention": (lambda fn, q, k, v: fn(q, k, v, 3, 2), lambda: tuple(torch.randn(6, 2, 32) for _ in range(3))),
    "temporal_conv": (lambda fn, x, w, b: fn(x, w, b, 3),
                      lambda: (torch.randn(6, 4, 2, 2).contiguous(memory_format=torch.channels_last),
                               torch.randn(5, 4, 3, 1, 1), torch.randn(5))),
    "geglu": (lambda fn, x: fn(x), lambda: (torch.randn(3, 4, 10),)),
    "alpha_blend": (lambda fn, a, b, al: fn(a, b, al), lambda: (torch.randn(6, 5), torch.randn(6, 5), torch.rand(6))),
    "alpha_blend_residual": (lambda fn, a, b, al: fn(a, b, al),
                             lambda: (torch.randn(6, 5), torch.randn(6, 5), torch.rand(6))),
    "conv3x3": (lambda fn, x, w, b: fn(x, w, b),
                lambda: (torch.randn(2, 5, 6, 7).contiguous(memory_format=torch.channels_last), torch.randn(4, 5, 3, 3) / 7,
                         torch.randn(4))),
}
# conv3x3 has no Triton implementation (cuDNN's convs are used on GPUs)
IMPL_OPS = [(impl, op) for impl in IMPLEMENTATIONS for op in CASES if impl != "triton" or op in kernels.TRITON_MODULES]


@pytest.mark.parametrize("impl,op", IMPL_OPS)
def test_compiles_without_graph_breaks(impl, op):
    fn, device = implementation(impl, op), device_for(impl)
    call, make = CASES[op]
    torch._dynamo.reset()
    inputs = make()
    eager_in, compiled_in = leaves(*inputs, device=device), leaves(*inputs, device=device)
    expected = call(fn, *eager_in)
    compiled = torch.compile(lambda *t: call(fn, *t), backend="aot_eager", fullgraph=True)
    got = compiled(*compiled_in)
    torch.testing.assert_close(got, expected)
    assert got.stride() == expected.stride(), "fake impl layout differs from the real kernel's"
    grad = torch.randn_like(expected)
    expected.backward(grad)
    got.backward(grad)
    for ours, ref in zip(compiled_in, eager_in):
        torch.testing.assert_close(ours.grad, ref.grad)
