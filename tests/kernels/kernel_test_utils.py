"""Helpers shared by the kernel tests: the implementations under test and the accuracy rule."""
from __future__ import annotations

import importlib
import importlib.util
import shutil

import pytest
import torch

from svd_fast import kernels
from svd_fast.kernels import reference

IMPLEMENTATIONS = ("native", "triton")


def compiler() -> str | None:
    """The C++ compiler on PATH that scripts/setup.sh builds svd_fast._C with, if any."""
    return next((shutil.which(name) for name in ("c++", "g++", "clang++") if shutil.which(name)), None)


def native_ops():
    """svd_fast.kernels.native.ops. A missing extension fails the test where a C++ compiler exists
    (the native kernels are part of the product: setup builds them); elsewhere the test is skipped
    with the reason."""
    from svd_fast.kernels.native import load

    try:
        return load()
    except ImportError as err:
        if compiler() is not None:
            pytest.fail(f"native extension not built although {compiler()} is present "
                        f"(python -m svd_fast.kernels.native.build): {err}")
        pytest.skip(f"native extension not built and no C++ compiler on PATH: {err}")


def implementation(impl: str, op: str):
    """The callable of `op` in backend `impl` ('native' or 'triton'), or skip with the reason."""
    if impl == "native":
        return getattr(native_ops(), op)
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    if not (torch.cuda.is_available() or kernels.triton_interpreted()):
        pytest.skip("no CUDA device and TRITON_INTERPRET is not 1")
    return getattr(importlib.import_module(f"svd_fast.kernels.{kernels.TRITON_MODULES[op]}"), op)


def device_for(impl: str) -> str:
    """Triton kernels run on the GPU when there is one (the same tests then check the real kernels)."""
    return "cuda" if impl == "triton" and torch.cuda.is_available() else "cpu"


def run_and_check_custom_op(impl: str, fn):
    """Run fn() under the profiler and assert one of impl's own ops ran (no silent reference fallback)."""
    namespace = {"native": "svd_fast_native::", "triton": "svd_fast_triton::"}[impl]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = fn()
    names = {e.key for e in prof.key_averages()}
    assert any(n.startswith(namespace) for n in names), f"no {namespace}* op ran; ops seen: {sorted(names)[:20]}"
    return out


def assert_close_to_fp32(out, expected32, lowp_reference, atol, rtol, what):
    """out vs the fp32 reference within (atol, rtol); for 16-bit dtypes also at most 2x PyTorch's own
    error (the reference run in the same dtype) plus atol."""
    assert out.shape == expected32.shape, f"{what}: shape {tuple(out.shape)} != {tuple(expected32.shape)}"
    assert not out.isnan().any(), f"{what}: NaN in output (an element was not written?)"
    torch.testing.assert_close(out.float(), expected32.float(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")
    if out.dtype != torch.float32 and lowp_reference is not None:
        ours = (out.float() - expected32.float()).abs().max().item()
        theirs = (lowp_reference.float() - expected32.float()).abs().max().item()
        assert ours <= 2 * theirs + atol, f"{what}: error {ours:.3g} > 2 x PyTorch's {theirs:.3g} + {atol}"


def leaves(*tensors, dtype=None, device="cpu"):
    """Fresh leaf copies (requires_grad) of the tensors, optionally cast; None stays None."""
    out = []
    for t in tensors:
        if t is None:
            out.append(None)
            continue
        # .to() keeps the memory format (channels-last stays channels-last); clone() makes a leaf.
        out.append(t.detach().to(device=device, dtype=dtype or t.dtype).clone().requires_grad_())
    return out


def check_against_reference(impl, op, call, tensors, dtype, tolerances, grad_tolerances, names):
    """Run `op` of backend `impl` as call(fn, *tensors) and compare output and the gradients of every
    tensor input with the reference run in fp32 on the same (rounded) inputs. tensors are leaves
    (or None) in `dtype` on the implementation's device; returns our output for layout checks."""
    fn = implementation(impl, op)
    out = run_and_check_custom_op(impl, lambda: call(fn, *tensors))
    exact_inputs = leaves(*tensors, dtype=torch.float32)
    expected = call(reference.OPS[op], *exact_inputs)
    same_dtype = None
    if dtype != torch.float32:
        same_dtype = call(reference.OPS[op], *(None if t is None else t.detach().cpu() for t in tensors))
    assert out.dtype == dtype
    assert_close_to_fp32(out.cpu(), expected, same_dtype, *tolerances[dtype], "output")
    grad = torch.randn(expected.shape)
    out.backward(grad.to(device=out.device, dtype=dtype))
    expected.backward(grad.to(dtype).float())
    for name, ours, exact in zip(names, tensors, exact_inputs):
        if ours is not None:
            assert_close_to_fp32(ours.grad.cpu(), exact.grad, None, *grad_tolerances[dtype], f"grad {name}")
    return out
