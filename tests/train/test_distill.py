"""Consistency distillation (svd_fast.train.distill): the teacher's ODE step against the exact
solution of a point-mass data set, per-sample guidance against one-sample calls, grid draws, the
recipe checks, and a short distillation on a tiny model that must make the student more consistent."""
import dataclasses

import pytest
import torch
from torch import nn

from svd_fast.config import SVDConfig
from svd_fast.denoiser import Conditioning, Denoiser, LinearGuidedDenoiser, consistency_scalings, v_scalings
from svd_fast.train.data import build_dataset, collate
from svd_fast.train.distill import ConsistencyDistiller, DistillConfig, pseudo_huber
from svd_fast.train.objective import prepare_inputs
from svd_fast.train.trainer import load_parts, train
from svd_fast.unet import VideoUNet
from tests.train.conftest import make_recipe


class PointMassUNet(nn.Module):
    """A 'UNet' whose denoiser is exactly the data mean x0 of a one-point data set, for any input:
    it reads sigma from c_noise and x from the c_in-scaled input and returns the v that makes
    D(x, sigma) = c_skip x + c_out v equal x0. The probability-flow ODE is then x(sigma) = x0 + sigma n."""

    def __init__(self, x0: torch.Tensor):
        super().__init__()
        self.x0 = nn.Parameter(x0.clone(), requires_grad=False)

    def forward(self, x_in, c_noise, context, added_time_ids, image_only_indicator=None):
        sigma = torch.exp(4 * c_noise.float()).reshape(-1, 1, 1, 1, 1)
        c_skip, c_out, c_in, _ = v_scalings(sigma)
        x = x_in[:, :, : self.x0.shape[-3]].float() / c_in
        return (self.x0 - c_skip * x) / c_out


def _conditioning(batch: int, frames: int, channels: int = 4, side: int = 4, seed: int = 0) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    return Conditioning(torch.randn(batch, frames, channels, side, side, generator=g), torch.randn(batch, 1, 8, generator=g),
                        torch.tensor([[6.0, 127.0, 0.02]] * batch))


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_teacher_step_follows_the_exact_ode_of_a_point_mass(solver):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(1, 3, 4, 4, 4, generator=g)
    noise = torch.randn(3, 3, 4, 4, 4, generator=g)
    distiller = ConsistencyDistiller(PointMassUNet(x0), DistillConfig(solver=solver, max_guidance_scale=2.5))
    sigma = torch.tensor([80.0, 1.3, 0.05])  # a different interval per sample
    sigma_next = torch.tensor([60.0, 0.9, 0.02])
    x = x0 + sigma.reshape(-1, 1, 1, 1, 1) * noise
    out = distiller.teacher_step(x, sigma, sigma_next, _conditioning(3, 3))
    expected = x0 + sigma_next.reshape(-1, 1, 1, 1, 1) * noise  # exact: both guidance halves agree on x0
    torch.testing.assert_close(out, expected, atol=2e-4, rtol=1e-4)


def test_guidance_with_per_sample_sigmas_equals_one_sample_at_a_time():
    torch.manual_seed(0)
    unet = VideoUNet(SVDConfig.from_name("tiny").unet).eval()
    for p in unet.parameters():  # a fresh UNet's zero-initialised outputs would make every sample agree
        nn.init.normal_(p, std=0.05)
    cond = _conditioning(2, 3, channels=4, side=8, seed=3)
    cond = dataclasses.replace(cond, context=torch.randn(2, 1, unet.config.cross_attention_dim))
    x = torch.randn(2, 3, 4, 8, 8)
    sigma = torch.tensor([5.0, 0.3])
    with torch.no_grad():
        both = LinearGuidedDenoiser(Denoiser(unet), cond, 1.0, 2.5, 3)(x, sigma)
        one_by_one = torch.cat([
            LinearGuidedDenoiser(Denoiser(unet), _index(cond, i), 1.0, 2.5, 3)(x[i : i + 1], sigma[i]) for i in range(2)])
    assert not torch.allclose(both[0], both[1])
    torch.testing.assert_close(both, one_by_one, atol=1e-5, rtol=1e-5)


def _index(cond: Conditioning, i: int) -> Conditioning:
    return Conditioning(cond.image_latents[i : i + 1], cond.context[i : i + 1], cond.added_time_ids[i : i + 1])


def test_grid_draws_are_per_seed_and_cover_every_interval():
    config = DistillConfig(num_train_timesteps=10)
    distiller = ConsistencyDistiller(PointMassUNet(torch.zeros(1, 1, 4, 2, 2)), config)
    draws = [distiller.grid_index(seed) for seed in range(400)]
    assert draws == [distiller.grid_index(seed) for seed in range(400)]
    assert set(draws) == set(range(9))  # intervals [sigma_i, sigma_i+1], i = 0..N-2
    grid = config.grid()
    assert len(grid) == 10 and grid[0] == pytest.approx(700.0) and grid[-1] == pytest.approx(0.002)
    assert (grid[1:] < grid[:-1]).all()


@pytest.mark.parametrize("solver", ["euler", "heun"])
@pytest.mark.parametrize("skip", [1, 3, 9])
def test_skipping_step_targets_the_grid_point_k_intervals_on(skip, solver):
    """LCM's skipping step: the teacher steps from sigma_i to sigma_min(i+k, N-1). With a point-mass
    data set the guided teacher's ODE is exact, x(sigma) = x0 + sigma n, and a target network whose
    UNet outputs 0 returns c_skip(sigma_j) x_hat, which exposes where the teacher step landed."""
    config = DistillConfig(num_train_timesteps=10, skip=skip, solver=solver)
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(1, 2, 4, 2, 2, generator=g), torch.randn(6, 2, 4, 2, 2, generator=g)
    distiller = ConsistencyDistiller(PointMassUNet(x0), config)
    distiller.target = ZeroUNet()
    seeds = list(range(6))
    inputs = {"latents": x0.expand(6, -1, -1, -1, -1), "noise": noise, "image_latents": torch.zeros(6, 2, 4, 2, 2),
              "context": torch.zeros(6, 1, 8), "added_time_ids": torch.tensor([[6.0, 127.0, 0.02]] * 6),
              "image_only_indicator": torch.zeros(6, 2)}
    step = distiller.training_inputs(inputs, seeds)
    grid = config.grid()
    index = torch.tensor([distiller.grid_index(s) for s in seeds])
    sigma_next = grid[(index + skip).clamp(max=9)].reshape(-1, 1, 1, 1, 1)
    torch.testing.assert_close(step["sigma"], grid[index])
    c_skip = consistency_scalings(sigma_next, config.sigma_min)[0]
    torch.testing.assert_close(step["target"], c_skip * (x0 + sigma_next * noise), atol=2e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="skip"):
        DistillConfig(num_train_timesteps=10, skip=10).validate()


class ZeroUNet(nn.Module):
    """A 'UNet' that predicts v = 0 (its one parameter only gives the denoiser a dtype)."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()), requires_grad=False)

    def forward(self, x_in, c_noise, context, added_time_ids, image_only_indicator=None):
        return torch.zeros_like(x_in[:, :, :4])


def test_pseudo_huber_is_rms_distance_beyond_c_and_quadratic_below():
    a, b = torch.zeros(2, 100), torch.cat([torch.full((1, 100), 3.0), torch.full((1, 100), 1e-5)])
    loss = pseudo_huber(a, b, 1e-3)
    assert loss[0] == pytest.approx(3.0 - 1e-3, rel=1e-6)
    assert loss[1] == pytest.approx(1e-10 / (2 * 1e-3), rel=1e-3)  # sqrt(m + c^2) - c ~ m / 2c for m << c^2


def test_recipe_checks(tiny_recipe):
    with pytest.raises(ValueError, match="init_from"):
        tiny_recipe(distill=DistillConfig()).validate()
    with pytest.raises(ValueError, match="solver"):
        tiny_recipe(distill=DistillConfig(solver="rk4"), init_from="x").validate()
    with pytest.raises(ValueError, match="lora"):
        tiny_recipe(distill=DistillConfig(), init_from="x", trainable="lora").validate()


def _self_consistency(recipe, unet, teacher, parts) -> float:
    """Held-out clips (fixed seeds): distance of f(x, sigma_i) to f(teacher step, sigma_i+1), both the
    model's own consistency function, with the run's guided teacher (fixed) making the step."""
    distiller = ConsistencyDistiller(teacher, recipe.distill)
    distiller.load_target(unet.state_dict())
    dataset = build_dataset(recipe.data)
    batch = collate([dataset[(i % len(dataset), 5000 + i)] for i in range(8)])  # held-out noise and intervals
    inputs = prepare_inputs(batch, parts["vae"], parts["image_encoder"], recipe.objective, "cpu")
    step = distiller.training_inputs(inputs, batch["seed"])
    cond = Conditioning(step["image_latents"], step["context"], step["added_time_ids"], step["image_only_indicator"])
    with torch.no_grad():
        student = Denoiser(unet, boundary_sigma=recipe.distill.sigma_min)(step["noisy"], step["sigma"], cond)
    return float(pseudo_huber(student, step["target"], recipe.distill.huber_c).mean())


def test_distillation_makes_the_student_consistent_with_the_teachers_trajectories(tmp_path):
    teacher_run = make_recipe(tmp_path / "teacher", max_steps=25, export_final=True)
    teacher_run = dataclasses.replace(teacher_run, optim=dataclasses.replace(teacher_run.optim, lr=2e-3))
    train(teacher_run)
    recipe = make_recipe(tmp_path / "student", max_steps=80, init_from=str(tmp_path / "teacher"), init_weights="model",
                         ema_decay=0.9, distill=DistillConfig(num_train_timesteps=10, max_guidance_scale=2.0),
                         export_final=True)
    recipe = dataclasses.replace(recipe, optim=dataclasses.replace(recipe.optim, lr=5e-4),
                                 data=dataclasses.replace(recipe.data, num_samples=4))
    parts = load_parts(recipe, torch.device("cpu"))
    teacher = parts["unet"]
    before = _self_consistency(recipe, teacher, teacher, parts)
    train(recipe)
    student = load_parts(dataclasses.replace(recipe, init_from=recipe.output_dir, init_weights="model"),
                         torch.device("cpu"))["unet"]
    after = _self_consistency(recipe, student, teacher, parts)
    assert after < 0.9 * before, (before, after)  # measured 0.82x
    scheduler = (tmp_path / "student" / "final" / "scheduler" / "scheduler_config.json").read_text()
    assert "AnimateLCMSVDStochasticIterativeScheduler" in scheduler and '"boundary_sigma": 0.002' in scheduler
