"""int8 inference (svd_fast.accel.quantize) against float references.

References: F.conv2d / layers.temporal_conv / nn.Linear in fp32 on the same weights, and the float
UNet. int8 is approximate, so the bounds are (a) closed forms of the quantization error for single
layers and (b) measured errors with a margin for the whole UNet, each with its reason.
"""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from svd_fast import accelerate, restore
from svd_fast.accel import quantize as q
from svd_fast.config import SVDConfig, UNetConfig
from svd_fast.layers import temporal_conv
from svd_fast.pipeline import SVDPipeline
from svd_fast.unet import VideoUNet

# Wide enough (>= MIN_WIDTH channels) that the ResBlocks, transformers and samplers are quantized.
WIDE = UNetConfig(block_out_channels=(64, 128), attention_levels=(True, True), num_attention_heads=(2, 4),
                  layers_per_block=1, cross_attention_dim=32, addition_time_embed_dim=8,
                  projection_class_embeddings_input_dim=24, num_frames=3)


def _unet(seed=0):
    torch.manual_seed(seed)
    unet = VideoUNet(WIDE).eval()
    with torch.no_grad():  # random init leaves the zero-initialised output layers at 0: give every layer weight
        for p in unet.parameters():
            if p.abs().max() == 0:
                p.normal_(0, 0.05)
    return unet


def _inputs(batch=2, frames=3, side=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, frames, 8, side, side, generator=g), torch.tensor([0.5, 2.0])[:batch],
            torch.randn(batch, 1, 32, generator=g), torch.randn(batch, 3, generator=g) * 10)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _activation_bound(x, w, qmax=255):
    """|int8 conv - fp32 conv| per output channel is at most (input step / 2) * sum|w| + |x| * (weight
    step / 2) summed over the window; a loose closed form: half a step of each, times the window sums."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    x_step = (hi - lo) / qmax
    w_step = w.abs().flatten(1).amax(1) / 127
    window_l1 = w.abs().flatten(1).sum(1)
    x_max = float(x.abs().max())
    return x_step / 2 * window_l1 + x_max * w_step / 2 * w[0].numel()


@pytest.mark.parametrize("shape,stride,padding,bias", [((2, 64, 7, 9), 1, 1, True), ((3, 96, 5, 6), 2, 1, False),
                                                       ((1, 64, 4, 4), 1, 0, True)])
def test_int8_conv2d_within_the_quantization_bound_of_fp32(shape, stride, padding, bias):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(shape[1], 80, 3 if padding else 1, stride=stride, padding=padding, bias=bias)
    x = F.silu(torch.randn(shape)).contiguous(memory_format=torch.channels_last)
    exact = conv(x)
    out = q.Int8Conv2d(conv)(x)
    assert out.shape == exact.shape and out.dtype == x.dtype and torch.isfinite(out).all()
    bound = _activation_bound(x, conv.weight.detach()).reshape(1, -1, 1, 1)
    assert ((out - exact).abs() <= bound).all()
    # The bound is worst-case; typical errors are far smaller (rounding errors cancel in the sum).
    # Measured 2026-12-01: 0.8-0.9% on these shapes; 2% leaves room for other seeds while failing a
    # wrong scale or layout (errors of order 1).
    assert _rel(out, exact) < 0.02


@pytest.mark.parametrize("frames,clips", [(3, 2), (5, 1)])
def test_int8_temporal_conv_matches_the_float_temporal_conv(frames, clips):
    torch.manual_seed(1)
    conv = torch.nn.Conv3d(64, 72, (3, 1, 1), padding=(1, 0, 0))
    x = torch.randn(clips * frames, 64, 5, 7).contiguous(memory_format=torch.channels_last)
    exact = temporal_conv(x, conv.weight, conv.bias, frames)
    out = q.Int8TemporalConv(conv)(x, frames)
    assert out.shape == exact.shape and torch.isfinite(out).all()
    # A frame layout mix-up (padding across clips, frames swapped) gives errors of order 1: measured
    # 0.9-1.0% for the right layout (2026-12-01).
    assert _rel(out, exact) < 0.025


def test_unet_output_close_to_fp32_and_the_sensitive_layers_stay_float():
    unet, inputs = _unet(), _inputs()
    with torch.no_grad():
        exact = unet(*inputs)
        undo = q.quantize_unet(unet)
        out = unet(*inputs)
    # Measured 2026-12-01 on this random model: 3.1% relative error, summed over ~150 int8 layers
    # (issue 13's bar for full-size SVD weights is 3%); 5% still catches a broken layer, which gives
    # tens of percent.
    assert _rel(out, exact) < 0.05
    names = {name for name, m in unet.named_modules() if q.is_quantized(m)}
    assert any("conv1" in n for n in names) and any("to_q" in n for n in names) and any("temporal" in n for n in names)
    for name in names:
        assert not set(name.split(".")) & set(q.FLOAT_LAYERS), name
    for name in ("conv_in", "conv_out"):
        assert isinstance(getattr(unet, name), torch.nn.Conv2d)

    q.dequantize_unet(undo)  # the float weights come back: the output is bitwise the float one
    with torch.no_grad():
        torch.testing.assert_close(unet(*inputs), exact, rtol=0, atol=0)


def test_bf16_unet_quantizes_and_other_dtypes_are_refused():
    unet = _unet().to(torch.bfloat16)
    inputs = [t.to(torch.bfloat16) if t.is_floating_point() else t for t in _inputs()]
    with torch.no_grad():
        exact = unet(*inputs).float()
        q.quantize_unet(unet)
        out = unet(*inputs)
    assert out.dtype == torch.bfloat16 and _rel(out.float(), exact) < 0.06  # measured 3.5%
    with pytest.raises(ValueError, match="fp32 or bf16"):
        q.quantize_unet(_unet().half())


def test_accelerate_quantizes_the_pipeline_and_restore_gives_exact_mode_back():
    config = dataclasses.replace(SVDConfig.from_name("tiny"), unet=dataclasses.replace(WIDE, num_frames=4))
    pipe = SVDPipeline.from_config(config, seed=0)
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))

    def run(seed=1):
        return pipe(image, height=64, width=64, num_frames=4, num_inference_steps=3,
                    generator=torch.Generator().manual_seed(seed), output_type="pt").frames

    exact, another_seed = run(), run(seed=2)
    unet = pipe.unet
    accelerate(pipe, quantize="int8")
    assert any(q.is_quantized(m) for m in pipe.unet.modules())
    error = (run() - exact).abs()
    seed_change = (another_seed - exact).abs().mean()
    print(f"int8 vs exact: mean {error.mean():.2e} max {error.max():.3f}; another seed: mean {seed_change:.2e}")
    # int8 must move the video (it is approximate) but far less than another noise draw does (measured
    # 2026-12-01: mean 0.0075 vs 0.098, 13x less).
    assert 0 < error.mean() < seed_change / 3
    restore(pipe)
    assert pipe.unet is unet and not any(q.is_quantized(m) for m in unet.modules())
    torch.testing.assert_close(run(), exact, rtol=0, atol=0)


def test_bad_mode_is_a_clear_error():
    pipe = SVDPipeline.from_config("tiny", seed=0)
    with pytest.raises(ValueError, match="quantize must be one of 'int8'"):
        accelerate(pipe, quantize="int4")


def test_int8_support_reads_the_cpu_flags():
    assert q.int8_support({"avx512f", "avx512_vnni"}) == {"instructions": ["avx512_vnni"], "reduce_range": False}
    assert q.int8_support({"amx_int8", "avx_vnni"})["instructions"] == ["amx_int8", "avx_vnni"]
    assert q.int8_support({"avx2"}) == {"instructions": [], "reduce_range": True}
