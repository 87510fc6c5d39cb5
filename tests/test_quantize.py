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


# 12x12 and 16x16 frames: shapes whose padding oneDNN's AMX-INT8 kernels got wrong (27% and 21% error
# on an Intel Xeon with AMX before the time padding moved out of the conv; Int8TemporalConv)
@pytest.mark.parametrize("frames,clips,size", [(3, 2, (5, 7)), (5, 1, (5, 7)), (3, 2, (12, 12)), (14, 1, (16, 16))])
def test_int8_temporal_conv_matches_the_float_temporal_conv(frames, clips, size):
    torch.manual_seed(1)
    conv = torch.nn.Conv3d(64, 72, (3, 1, 1), padding=(1, 0, 0))
    x = torch.randn(clips * frames, 64, *size).contiguous(memory_format=torch.channels_last)
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


# ------------------------------------------------------------------------------ the CUDA plan
def test_cuda_configs_follow_the_gpu_and_the_dtype():
    from torchao.quantization import (Float8DynamicActivationFloat8WeightConfig, Int8DynamicActivationInt8WeightConfig,
                                      PerRow, PerTensor)

    assert isinstance(q.cuda_linear_config("int8", torch.float16, (8, 0)), Int8DynamicActivationInt8WeightConfig)
    rowwise = q.cuda_linear_config("fp8", torch.bfloat16, (9, 0))  # Hopper, bf16: scales per row
    assert isinstance(rowwise, Float8DynamicActivationFloat8WeightConfig)
    assert all(isinstance(g, PerRow) for g in rowwise.granularity)
    tensorwise = q.cuda_linear_config("fp8", torch.float16, (8, 9))  # Ada, fp16: torchao's row-wise kernel takes bf16 only
    assert all(isinstance(g, PerTensor) for g in tensorwise.granularity)
    with pytest.raises(ValueError, match=r"compute capability 8\.9 or newer .* this one is 8\.6"):
        q.cuda_linear_config("fp8", torch.bfloat16, (8, 6))


def test_fp8_on_a_cpu_unet_is_a_clear_error():
    with pytest.raises(ValueError, match="fp8 quantization needs a CUDA GPU of compute capability 8.9"):
        q.quantize_unet(_unet(), "fp8")


def test_fp8_layers_need_widths_that_are_multiples_of_16():
    model = torch.nn.Sequential(torch.nn.Linear(64, 72), torch.nn.Linear(72, 64), torch.nn.Linear(64, 96),
                                torch.nn.Linear(96, 32))
    assert q.quantizable_linears(model, multiple_of=16) == [model[2]]  # 72 is not a multiple of 16; 32 < MIN_WIDTH
    assert q.quantizable_linears(model) == [model[0], model[1], model[2]]


def test_the_cuda_plan_quantizes_only_the_linears_and_stays_close():
    """The CUDA branch of quantize_unet is quantize_linears(unet, cuda_linear_config(...)); torchao's
    int8 config runs on CPU too, so the plan is checked here against the float UNet."""
    unet, inputs = _unet(), _inputs()
    with torch.no_grad():
        exact = unet(*inputs)
        undo = q.quantize_linears(unet, q.cuda_linear_config("int8", torch.float32, (9, 0)))
        out = unet(*inputs)
    quantized = [m for m in unet.modules() if q.is_quantized(m)]
    assert quantized and all(isinstance(m, torch.nn.Linear) for m in quantized)
    assert len(quantized) == len(undo.linears) and not undo.modules
    assert not any(isinstance(m, (q.Int8Conv2d, q.Int8TemporalConv)) for m in unet.modules())
    # Measured 2026-12-02: 1.6% (the linears alone; convs and linears together 3.1%, above)
    assert 0 < _rel(out, exact) < 0.04
    q.dequantize_unet(undo)
    with torch.no_grad():
        torch.testing.assert_close(unet(*inputs), exact, rtol=0, atol=0)


def test_quantizing_a_graphed_unet_drops_its_graphs_and_restore_undoes_it():
    """Graphs captured before quantization replay the float kernels: accelerate must capture again.
    Checked with the device-independent graph runner (EagerCapture) on CPU."""
    from svd_fast.accel import _STATE
    from svd_fast.accel.graphs import EagerCapture, GraphedModule, graph_unet

    pipe = SVDPipeline.from_config(dataclasses.replace(SVDConfig.from_name("tiny"), unet=WIDE), seed=0)
    unet = pipe.unet
    accelerate(pipe)
    state = getattr(pipe, _STATE)
    pipe.unet = graph_unet(unet, enabled=True, capture=EagerCapture())  # what accelerate(cuda_graphs=True) does on CUDA
    state.update(graphed=True, pre_graph_unet=unet)
    inputs = _inputs()
    with torch.no_grad():
        exact = pipe.unet(*inputs)
        assert pipe.unet.stats["captures"] == 1
        accelerate(pipe, quantize="int8")
        assert isinstance(pipe.unet, GraphedModule) and pipe.unet.module is unet
        assert pipe.unet.stats["captures"] == 0  # reset: the next call captures the quantized UNet
        out = pipe.unet(*inputs)
        assert pipe.unet.stats["captures"] == 1
    assert 0 < _rel(out, exact) < 0.05
    restore(pipe)
    assert pipe.unet is unet and not any(q.is_quantized(m) for m in unet.modules())


NO_CUDA = not torch.cuda.is_available()
NO_FP8 = NO_CUDA or torch.cuda.get_device_capability() < q.FP8_CAPABILITY


# int8: torch._int_mm's relative step ~1/127 of each row's range; fp8 (e4m3) keeps 3 mantissa bits, a
# relative step of 1/16: several percent over the UNet's ~40 linears. A broken layer gives tens of percent.
@pytest.mark.parametrize("mode,bound", [
    pytest.param("int8", 0.06, marks=pytest.mark.skipif(NO_CUDA, reason="CUDA-only: int8 linears through torch._int_mm")),
    pytest.param("fp8", 0.1, marks=pytest.mark.skipif(NO_FP8, reason="CUDA-only: fp8 needs compute capability 8.9+")),
])
def test_quantized_linears_on_cuda_are_close_to_bf16(mode, bound):
    unet = _unet().cuda().to(torch.bfloat16)
    inputs = [t.cuda().to(torch.bfloat16) if t.is_floating_point() else t.cuda() for t in _inputs()]
    with torch.no_grad():
        exact = unet(*inputs).float()
        undo = q.quantize_unet(unet, mode)
        out = unet(*inputs).float()
    assert undo.linears and not undo.modules and 0 < _rel(out, exact) < bound
