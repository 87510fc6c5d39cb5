"""The whole tiny UNet under each kernel backend equals the reference backend within the dtype's tolerance."""
import pytest
import torch

from svd_fast import kernels
from svd_fast.config import SVDConfig
from svd_fast.unet import VideoUNet
from kernel_test_utils import native_ops

# Relative L2 error of the UNet output against the reference backend's in the same dtype:
# fp32 differs only by summation order (~1e-6 per op, a few dozen ops deep); in bf16 both backends
# round every activation to 8 bits, and the kernels keep fp32 inside fused ops where the reference
# rounds in between, so the two drift apart by a few bf16 ulps.
REL_TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 3e-2}


def _model_and_inputs(dtype):
    cfg = SVDConfig.from_name("tiny").unet
    g = torch.Generator().manual_seed(0)
    model = VideoUNet(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():  # random everywhere: zero-initialised output convs would hide bugs
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    b, t = 1, cfg.num_frames
    inputs = (
        torch.randn(b, t, cfg.in_channels, 8, 8, generator=g),
        torch.tensor([0.4]),
        torch.randn(b, 1, cfg.cross_attention_dim, generator=g),
        torch.tensor([[6.0, 127.0, 0.02]]),
    )
    return model.to(dtype), tuple(x.to(dtype) if x.is_floating_point() and x.dim() > 1 else x for x in inputs)


def _run(backend, dtype):
    previous = kernels.get_backend()
    kernels.set_backend(backend)
    try:
        model, inputs = _model_and_inputs(dtype)
        with torch.no_grad():
            return model(*inputs).float()
    finally:
        kernels.set_backend(previous)


BACKENDS = [("native", torch.float32), ("native", torch.bfloat16), ("auto", torch.float32),
            ("auto", torch.bfloat16), ("triton", torch.float32), ("triton", torch.bfloat16)]


@pytest.mark.parametrize("backend,dtype", BACKENDS, ids=[f"{b}-{str(d)[6:]}" for b, d in BACKENDS])
def test_unet_matches_reference_backend(backend, dtype):
    if backend in ("native", "auto"):
        # Without the extension auto has only the reference to choose from, and its rows would
        # compare the reference with itself: they need the native ops too.
        native_ops()
    if backend == "triton":
        pytest.importorskip("triton")
        if not (torch.cuda.is_available() or kernels.triton_interpreted()):
            pytest.skip("no CUDA device and TRITON_INTERPRET is not 1")
    expected = _run("reference", dtype)
    got = _run(backend, dtype)
    assert torch.isfinite(got).all()
    rel = ((got - expected).norm() / expected.norm()).item()
    assert rel < REL_TOLERANCE[dtype], f"{backend} {dtype}: relative error {rel:.2e}"
