"""The EDM v-objective: weighting, noise distributions, per-sample determinism, conditioning."""
import dataclasses
import math

import torch

from svd_fast.denoiser import v_scalings
from svd_fast.train.data import build_dataset, collate
from svd_fast.train.objective import DiffusionObjective, ObjectiveConfig, _draws, prepare_inputs
from svd_fast.train.trainer import load_parts
from tests.conftest import randomize_


def _batch(recipe, items):
    dataset = build_dataset(recipe.data)
    return collate([dataset[item] for item in items])


def test_weighted_loss_equals_v_prediction_mse(tiny_recipe):
    """lambda(sigma) (D - x0)^2 with lambda = (sigma^2+1)/sigma^2 is exactly (F - v)^2 with the
    v-target v = (n - sigma x0) / sqrt(sigma^2 + 1) (svd_facts section 6)."""
    unet = randomize_(load_parts(tiny_recipe(), torch.device("cpu"))["unet"], std=0.05)
    objective = DiffusionObjective(unet)
    b, t = 3, 4
    x0, noise = torch.randn(b, t, 4, 8, 8), torch.randn(b, t, 4, 8, 8)
    sigma = torch.tensor([0.05, 1.0, 30.0])
    inputs = dict(latents=x0, noise=noise, sigma=sigma, image_latents=torch.randn(b, t, 4, 8, 8),
                  context=torch.randn(b, 1, 32), added_time_ids=torch.randn(b, 3), image_only_indicator=torch.zeros(b, t))
    with torch.no_grad():
        loss = objective(**inputs)
        _, _, c_in, c_noise = v_scalings(sigma)
        x = x0 + sigma.reshape(-1, 1, 1, 1, 1) * noise
        unet_in = torch.cat([x * c_in.reshape(-1, 1, 1, 1, 1), inputs["image_latents"]], dim=2)
        f = unet(unet_in, c_noise, inputs["context"], inputs["added_time_ids"], inputs["image_only_indicator"])
        v = (noise - sigma.reshape(-1, 1, 1, 1, 1) * x0) / (sigma.reshape(-1, 1, 1, 1, 1) ** 2 + 1).sqrt()
        expected = (f - v).pow(2).mean(dim=(1, 2, 3, 4))
    torch.testing.assert_close(loss, expected, rtol=2e-4, atol=1e-6)


def test_sigma_and_augmentation_distributions():
    config = ObjectiveConfig(p_mean=0.7, p_std=1.6, drop_image_embedding=0.25, drop_image_latent=0.1)
    draws = [_draws(seed, config) for seed in range(4000)]
    log_sigma = torch.tensor([math.log(d["sigma"]) for d in draws])
    log_aug = torch.tensor([math.log(d["cond_aug"]) for d in draws])
    # standard errors with 4000 draws: mean ~0.025, std ~0.02
    assert abs(log_sigma.mean() - 0.7) < 0.08 and abs(log_sigma.std() - 1.6) < 0.07
    assert abs(log_aug.mean() + 3.0) < 0.03 and abs(log_aug.std() - 0.5) < 0.03
    assert abs(1 - sum(d["keep_embedding"] for d in draws) / 4000 - 0.25) < 0.025
    assert abs(1 - sum(d["keep_latent"] for d in draws) / 4000 - 0.1) < 0.02


def test_inputs_depend_only_on_each_samples_seed(tiny_recipe):
    """A sample's sigma, noise and conditioning do not depend on what else is in the batch:
    the property that makes 1 and 2 processes (and resumed runs) see identical data."""
    recipe = tiny_recipe()
    parts = load_parts(recipe, torch.device("cpu"))
    prep = lambda batch: prepare_inputs(batch, parts["vae"], parts["image_encoder"], recipe.objective, "cpu")  # noqa: E731
    together = prep(_batch(recipe, [(3, 11), (5, 12)]))
    alone = prep(_batch(recipe, [(5, 12)]))
    for key, value in alone.items():
        # Random draws are bit-identical; encoder outputs may differ in the last bits with batch size.
        exact = key in ("sigma", "noise", "image_only_indicator")
        torch.testing.assert_close(together[key][1:], value, rtol=0 if exact else 1e-5, atol=0 if exact else 1e-5, msg=key)
    # One sigma per clip, shared by its frames; conditioning latent copied over frames.
    assert together["sigma"].shape == (2,)
    assert torch.equal(together["image_latents"][:, 0], together["image_latents"][:, -1])


def test_conditioning_matches_the_sampling_pipeline(tiny_recipe):
    """Training conditions exactly as svd_fast.pipeline does at sampling time: the CLIP embedding
    of the clean first frame, the VAE mean of the noised first frame, [fps-1, motion, sigma_aug]."""
    from svd_fast import conditioner

    recipe = tiny_recipe(objective=ObjectiveConfig(drop_image_embedding=0.0, drop_image_latent=0.0))
    parts = load_parts(recipe, torch.device("cpu"))
    batch = _batch(recipe, [(2, 5)])
    inputs = prepare_inputs(batch, parts["vae"], parts["image_encoder"], recipe.objective, "cpu")
    first = (batch["frames"][:, 0] + 1) / 2
    expected_context = conditioner.encode_image(parts["image_encoder"], first.clamp(0, 1))
    torch.testing.assert_close(inputs["context"], expected_context)
    d = _draws(int(batch["seed"][0]), recipe.objective)
    assert inputs["added_time_ids"][0, 0] == batch["fps"][0] - 1
    torch.testing.assert_close(inputs["added_time_ids"][0, 2], torch.tensor(d["cond_aug"]))
    noisy = batch["frames"][:, 0] + d["cond_aug"] * d["generator"].normal(batch["frames"].shape[2:])
    with torch.no_grad():
        torch.testing.assert_close(inputs["image_latents"][:, 0], parts["vae"].encode(noisy), rtol=1e-5, atol=1e-5)


def test_image_samples_bypass_the_temporal_path(tiny_recipe):
    recipe = tiny_recipe()
    recipe = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, image_fraction=1.0))
    parts = load_parts(recipe, torch.device("cpu"))
    batch = _batch(recipe, [(0, 1)])
    inputs = prepare_inputs(batch, parts["vae"], parts["image_encoder"], recipe.objective, "cpu")
    assert batch["image"].all() and torch.equal(inputs["image_only_indicator"], torch.ones(1, 4))


def test_each_still_of_an_image_sample_conditions_on_itself(tiny_recipe):
    """An image sample is a set of one-frame videos: still k's conditioning latent is the VAE mean
    of still k plus its own augmentation noise (drawn after the clip's noise), not frame 0's."""
    recipe = tiny_recipe(objective=ObjectiveConfig(drop_image_embedding=0.0, drop_image_latent=0.0))
    recipe = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, image_fraction=1.0))
    parts = load_parts(recipe, torch.device("cpu"))
    batch = _batch(recipe, [(0, 1)])
    inputs = prepare_inputs(batch, parts["vae"], parts["image_encoder"], recipe.objective, "cpu")
    frames = batch["frames"][0]
    d = _draws(int(batch["seed"][0]), recipe.objective)
    first_noise = d["generator"].normal(frames.shape[1:])
    d["generator"].normal(inputs["latents"].shape[1:])  # the clip's denoising noise comes next
    later_noise = d["generator"].normal(frames[1:].shape)
    noisy = torch.cat([frames[:1] + d["cond_aug"] * first_noise, frames[1:] + d["cond_aug"] * later_noise])
    with torch.no_grad():
        expected = parts["vae"].encode(noisy)
    torch.testing.assert_close(inputs["image_latents"][0], expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(inputs["image_latents"][0, 0], inputs["image_latents"][0, 1])
