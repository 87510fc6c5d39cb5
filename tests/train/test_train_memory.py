"""The memory estimate against a measured training step (CPU profiler allocation timeline)."""
import dataclasses

import pytest
import torch

from svd_fast.config import SVDConfig
from svd_fast.train.data import build_dataset, collate
from svd_fast.train.engine import DistEnv, PlainEngine
from svd_fast.train.memory import CALIBRATION, count_parameters, estimate_memory, profiled_peak
from svd_fast.train.objective import DiffusionObjective, prepare_inputs
from svd_fast.train.trainable import enable_gradient_checkpointing, set_trainable
from svd_fast.train.trainer import load_parts

CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


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
def test_estimate_matches_a_measured_step(tiny_recipe, checkpointing):
    # 2 clips x 6 frames at a 16x12 latent (128x96 pixels; the tiny UNet's unit is 2 latent
    # pixels): 4.5x the tokens of the largest calibration size.
    recipe = tiny_recipe(batch_size=2, gradient_checkpointing=checkpointing)
    recipe = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, num_frames=6, height=128, width=96))
    assert recipe.batch_size * 6 * 16 * 12 >= 4 * max(b * t * h * w * 4 for b, t, h, w in CALIBRATION)
    measured = _measure(recipe)
    est = estimate_memory(recipe, None, world_size=1)
    assert est.items["UNet parameters"] == measured["params"]
    assert est.items["gradients"] == measured["grads"]
    assert abs(est.items["optimizer states"] - measured["optimizer"]) <= 0.02 * measured["optimizer"]
    assert est.activations == pytest.approx(measured["activations"], rel=0.15), (est.activations, measured)
    total = sum(measured.values())
    static = est.items["UNet parameters"] + est.items["gradients"] + est.items["optimizer states"]
    assert static + est.activations == pytest.approx(total, rel=0.1)


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


def test_full_svd_xt_is_counted_on_the_meta_device():
    """SVD-XT's 1.5B-parameter UNet is counted without allocating it (the CLI's main use)."""
    from svd_fast.train.recipe import Recipe

    recipe = Recipe(name="xt", output_dir="unused", model=SVDConfig.from_name("svd_xt"), trainable="temporal")
    counts = count_parameters(recipe)
    assert counts["unet"] == 1_524_623_082
    assert counts["trainable"] == 656_076_838  # the paper's temporal parameters (svd_facts 1.8)
