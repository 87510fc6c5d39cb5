"""The memory estimate against measured training steps and the published figures for full-width SVD.

Activations are traced on FakeTensors (svd_fast.train.fake_trace); here they are compared with
(1) a real forward + backward of the trainer's engine on CPU, measured from the profiler's
allocation timeline (a different mechanism: real allocations, native kernels where the machine has
them), and (2) the per-GPU memory people reported for full-width SVD fine-tuning:
  A. SVD_Xtend (diffusers UNet), full UNet, 512x320, batch 1, fp16 autocast over fp32 weights,
     AdamW, no checkpointing: ~52-63 GB (pixeli99/SVD_Xtend #4: 63 GB at 16 frames; #27: "around
     60GB"; #31: 52 GB at 512x320);
  B. full UNet at 576x1024x14, batch 1: ~70 GB (Stability-AI/generative-models #249; settings not
     given; an 80 GB card only holds it with checkpointing, and diffusers' checkpointing, which
     SVD fine-tuning scripts use, recomputes the ResBlocks but keeps the attention blocks);
  C. SVD-XT at 576x1024x25, LoRA, batch 1: out of memory on an 80 GB A100 (generative-models
     #280 and #357; no checkpointing, which the thread suggests as the next thing to try).
Reported GB are read as GiB (nvidia-smi's MiB / 1024; an "80 GB" A100 holds 80 GiB). Traced
figures are live tensor bytes, a lower bound of what the allocator reserves (rounding,
fragmentation, CUDA context: typically 5-15%), so an estimate must land in [0.85, 1.05] x the
reported figure.
"""
import dataclasses

import pytest
import torch

from svd_fast.config import SVDConfig
from svd_fast.train.data import build_dataset, collate
from svd_fast.train.engine import DistEnv, PlainEngine
from svd_fast.train.fake_trace import diffusers_unet_step_peak
from svd_fast.train.memory import (GIB, count_parameters, estimate_memory, static_memory, trace_activations,
                                   wide_few_layer_unet)
from svd_fast.train.objective import DiffusionObjective, prepare_inputs
from svd_fast.train.recipe import Recipe
from svd_fast.train.trainable import enable_gradient_checkpointing, set_trainable
from svd_fast.train.trainer import load_parts
from svd_fast.unet import VideoUNet

CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
LOW, HIGH = 0.85, 1.05
"""an estimate within [LOW x, HIGH x] a reported figure agrees with it"""


@pytest.fixture
def trace_backend():
    """The measured run uses the kernels the trace uses (the fused autograd Functions shared by the
    native and Triton backends; the reference ones save more for backward)."""
    from svd_fast.train.fake_trace import TRACE_BACKEND, kernel_backend

    with kernel_backend(TRACE_BACKEND):
        yield


def profiled_peak(fn) -> int:
    """Peak bytes allocated above the starting point while fn runs (CPU profiler timeline)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _measure(recipe) -> dict:
    """Bytes held by the weights, gradients and optimizer, and the peak of forward + backward."""
    parts = load_parts(recipe, torch.device("cpu"))
    unet = parts["unet"]
    set_trainable(unet, recipe.trainable, recipe.lora)
    if recipe.gradient_checkpointing:
        enable_gradient_checkpointing(unet)
    engine = PlainEngine(DiffusionObjective(unet).train(), recipe, CPU)
    dataset = build_dataset(recipe.data)
    batch = collate([dataset[(i, i)] for i in range(recipe.batch_size)])
    inputs = prepare_inputs(batch, parts["vae"], parts["image_encoder"], recipe.objective, "cpu")
    engine.forward_backward(inputs, last_micro=True)
    engine.optimizer_step()  # allocates the optimizer state
    for p in engine.trainable.values():
        p.grad = torch.zeros_like(p)  # a running job holds gradients during its backward pass
    state = [t for s in engine.optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0]
    return {
        "params": _tensor_bytes(unet.parameters()),
        "grads": _tensor_bytes(p.grad for p in engine.trainable.values()),
        "optimizer": _tensor_bytes(state),
        "activations": profiled_peak(lambda: engine.forward_backward(inputs, last_micro=True)),
    }


@pytest.mark.parametrize("checkpointing", [False, True])
def test_estimate_matches_a_measured_step(tiny_recipe, checkpointing, trace_backend):
    """The whole estimate (static parts and traced activations) against a real plain-engine step
    of the tiny model: 2 clips x 6 frames at a 16x12 latent."""
    recipe = tiny_recipe(batch_size=2, gradient_checkpointing=checkpointing)
    recipe = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, num_frames=6, height=128, width=96))
    measured = _measure(recipe)
    est = estimate_memory(recipe, None, world_size=1)
    assert est.items["UNet parameters"] == measured["params"]
    assert est.items["gradients"] == measured["grads"]
    assert abs(est.items["optimizer states"] - measured["optimizer"]) <= 0.02 * measured["optimizer"]
    assert est.activations == pytest.approx(measured["activations"], rel=0.03), (est.activations, measured)
    total = sum(measured.values())
    static = est.items["UNet parameters"] + est.items["gradients"] + est.items["optimizer states"]
    assert static + est.activations == pytest.approx(total, rel=0.1)


def _wide_recipe(checkpointing: bool, trainable: str = "full") -> Recipe:
    from svd_fast.train.data import DataConfig

    model = dataclasses.replace(SVDConfig.from_name("tiny"), unet=wide_few_layer_unet(frames=4, levels=2))
    return Recipe(name="wide", output_dir="unused", model=model, trainable=trainable, batch_size=1,
                  gradient_checkpointing=checkpointing, data=DataConfig(num_frames=4, height=128, width=128))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_traced_activations_match_a_measured_full_width_step(checkpointing, trace_backend):
    """Full SVD widths (320/640, 213M parameters, one layer per level): traced activations against
    a real forward + backward on CPU, 4 frames at a 16x16 latent."""
    recipe = _wide_recipe(checkpointing)
    torch.manual_seed(0)
    unet = VideoUNet(recipe.model.unet)
    set_trainable(unet, recipe.trainable)
    if checkpointing:
        enable_gradient_checkpointing(unet)
    engine = PlainEngine(DiffusionObjective(unet).train(), recipe, CPU)
    cfg, (b, t) = recipe.model.unet, (1, 4)
    shape = (b, t, cfg.out_channels, 16, 16)
    inputs = dict(latents=torch.randn(shape), noise=torch.randn(shape), sigma=torch.ones(b), image_latents=torch.randn(shape),
                  context=torch.randn(b, 1, cfg.cross_attention_dim), added_time_ids=torch.randn(b, 3),
                  image_only_indicator=torch.zeros(b, t))
    engine.forward_backward(inputs, last_micro=True)  # warm-up: one-time allocations and kernel choices
    for p in engine.trainable.values():
        p.grad = torch.zeros_like(p)
    measured = profiled_peak(lambda: engine.forward_backward(inputs, last_micro=True))
    traced = trace_activations(recipe, deepspeed=False)
    assert traced == pytest.approx(measured, rel=0.03), (traced / 2**20, measured / 2**20)


def _full(name: str, frames: int, height: int, width: int, trainable: str, checkpointing: bool) -> Recipe:
    """A plain-engine fine-tuning recipe of a released architecture: fp16 autocast over fp32
    weights and AdamW, as the diffusers-based scripts behind the anchors train."""
    from svd_fast.train.data import DataConfig

    return Recipe(name=name, output_dir="unused", model=SVDConfig.from_name(name), trainable=trainable, batch_size=1,
                  mixed_precision="fp16", gradient_checkpointing=checkpointing,
                  data=DataConfig(num_frames=frames, height=height, width=width))


def _diffusers_total(recipe: Recipe) -> float:
    """The estimator's static parts plus activations traced on diffusers' graph (its checkpointing)."""
    factor = recipe.model.vae.downsample_factor
    lora = recipe.lora if recipe.trainable == "lora" else None
    act = diffusers_unet_step_peak(recipe.model.unet, recipe.gradient_checkpointing, torch.float32, torch.float16, 1,
                                   recipe.data.num_frames, recipe.data.height // factor, recipe.data.width // factor,
                                   lora_config=lora)
    return static_memory(recipe, None, 1).static + act["peak"]


def test_anchor_a_svd_xtend_full_unet_at_512x320():
    recipe = _full("svd", 16, 320, 512, "full", checkpointing=False)  # pixeli99's 16 frames
    diffusers = _diffusers_total(recipe)
    assert LOW * 52 <= diffusers / GIB <= HIGH * 63, diffusers / GIB
    # Our fused kernels save less for backward than diffusers' modules: no more than its figure.
    ours = estimate_memory(recipe, None, 1)
    assert ours.total <= diffusers, (ours.table(), diffusers / GIB)


def test_anchor_b_full_unet_at_576x1024x14():
    recipe = _full("svd", 14, 576, 1024, "full", checkpointing=True)
    diffusers = _diffusers_total(recipe)
    assert LOW * 70 <= diffusers / GIB <= HIGH * 70, diffusers / GIB
    # Our checkpointing also recomputes the transformers: the same job needs far less.
    ours = estimate_memory(recipe, None, 1)
    assert ours.total < 0.7 * diffusers, ours.table()


def test_anchor_c_svd_xt_lora_at_576x1024x25_does_not_fit_80gb():
    recipe = _full("svd_xt", 25, 576, 1024, "lora", checkpointing=False)
    assert _diffusers_total(recipe) / GIB > 80
    ours = estimate_memory(recipe, None, 1)
    assert ours.total > 0.95 * 80e9, ours.table()  # the CLI's "does not fit an 80 GB GPU"
    fits = estimate_memory(dataclasses.replace(recipe, gradient_checkpointing=True), None, 1)
    assert fits.total < 0.95 * 80e9, fits.table()


def test_checkpointing_and_zero_partitioning_shrink_the_estimate(tiny_recipe):
    base = tiny_recipe(mixed_precision="bf16", ema_decay=0.999)
    base = dataclasses.replace(base, data=dataclasses.replace(base.data, height=64, width=64))
    ds = {"zero_optimization": {"stage": 3, "reduce_bucket_size": 1000}}
    plain = estimate_memory(base, {"zero_optimization": {"stage": 0}}, world_size=1)
    sharded = estimate_memory(base, ds, world_size=4)
    for item in ("UNet parameters", "gradients", "optimizer states", "EMA (fp32)"):
        assert sharded.items[item] == pytest.approx(plain.items[item] / 4)
    # bf16 weights and grads (2 bytes), fp32 master + Adam (12 bytes) per trainable parameter
    n = sum(p.numel() for p in load_parts(base, torch.device("cpu"))["unet"].parameters())
    assert plain.items["UNet parameters"] == 2 * n and plain.items["optimizer states"] == 12 * n
    ckpt = estimate_memory(dataclasses.replace(base, gradient_checkpointing=True), ds, world_size=4)
    assert ckpt.activations < 0.75 * sharded.activations


def test_activations_grow_linearly_with_the_micro_batch():
    """What the table's micro-batch search relies on: at full width, 2 clips cost twice 1 clip's
    activations, within 2% (the per-step constants are small)."""
    recipe = _full("svd", 14, 320, 576, "full", checkpointing=True)
    one, two = trace_activations(recipe, True, batch=1), trace_activations(recipe, True, batch=2)
    assert two == pytest.approx(2 * one, rel=0.02), (one / GIB, two / GIB)


def test_bad_settings_are_one_line_errors(tiny_recipe):
    with pytest.raises(ValueError, match="world-size must be >= 1"):
        static_memory(tiny_recipe(), None, 0)
    with pytest.raises(ValueError, match="stage must be 0..3"):
        static_memory(tiny_recipe(), {"zero_optimization": {"stage": 4}}, 1)


def test_full_svd_xt_is_counted_on_the_meta_device():
    """SVD-XT's 1.5B-parameter UNet is counted without allocating it (the CLI's main use)."""
    recipe = Recipe(name="xt", output_dir="unused", model=SVDConfig.from_name("svd_xt"), trainable="temporal")
    counts = count_parameters(recipe)
    assert counts["unet"] == 1_524_623_082
    assert counts["trainable"] == 656_076_838  # the paper's temporal parameters (svd_facts 1.8)
