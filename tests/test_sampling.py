"""Schedules, preconditioning and samplers against diffusers' scheduler and closed forms."""
import math

import pytest
import torch
from diffusers import EulerDiscreteScheduler

from svd_fast.denoiser import v_scalings
from svd_fast.sampling import get_sigmas_karras, init_noise_scale, sample_dpmpp_2m, sample_euler, sample_heun

SVD_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear",
    num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002,
    steps_offset=1, timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True,
)


def test_karras_sigmas_match_svd_facts_and_diffusers():
    sigmas = get_sigmas_karras(25)
    # svd_facts §5: 700, 545.7, 421.6, ..., 0.002 then 0.
    assert sigmas[0] == pytest.approx(700.0) and sigmas[1] == pytest.approx(545.7, abs=0.05)
    assert sigmas[2] == pytest.approx(421.6, abs=0.05) and sigmas[-2] == pytest.approx(0.002) and sigmas[-1] == 0
    sched = EulerDiscreteScheduler(**SVD_SCHEDULER)
    sched.set_timesteps(25)
    torch.testing.assert_close(sigmas, sched.sigmas, rtol=1e-6, atol=0)
    torch.testing.assert_close(v_scalings(sigmas[:-1])[3], sched.timesteps, rtol=1e-6, atol=1e-6)
    assert init_noise_scale(sigmas) == pytest.approx(float(sched.init_noise_sigma), rel=1e-6)


def test_v_scalings_reconstruct_x0_from_the_v_target():
    """With x = x0 + sigma n and v = (n - sigma x0)/sqrt(sigma^2+1), c_skip x + c_out v = x0."""
    x0, n = torch.randn(1000, dtype=torch.float64), torch.randn(1000, dtype=torch.float64)
    for s in (0.002, 0.5, 3.0, 700.0):
        sigma = torch.tensor(s, dtype=torch.float64)
        c_skip, c_out, c_in, c_noise = v_scalings(sigma)
        v = (n - sigma * x0) / (sigma**2 + 1).sqrt()
        torch.testing.assert_close(c_skip * (x0 + sigma * n) + c_out * v, x0)
        assert c_noise == pytest.approx(0.25 * math.log(s))
        assert c_in == pytest.approx(1 / math.sqrt(s * s + 1))


def _gaussian_denoiser(mu, var):
    """Exact D(x, sigma) = E[x0 | x] for x0 ~ N(mu, var): the ODE then has a closed-form solution."""
    return lambda x, sigma: mu + var / (var + sigma**2) * (x - mu)


@pytest.mark.parametrize("sampler,order", [(sample_euler, 1), (sample_heun, 2), (sample_dpmpp_2m, 2)])
def test_samplers_converge_to_the_probability_flow_ode_at_their_order(sampler, order):
    """For x0 ~ N(mu, var) the PF-ODE maps x(sigma_max) to mu + sqrt(var/(var+sigma^2))(x - mu).

    Doubling the step count must shrink the error by 2^order (1st order Euler, 2nd order Heun
    and DPM++ 2M); the last step jumps to D(x, sigma_min), which is x up to O(sigma_min^2).
    """
    mu, var, sigma_max = 0.7, 0.25, 80.0
    x = torch.randn(2000, dtype=torch.float64) * sigma_max
    exact = mu + math.sqrt(var / (var + sigma_max**2)) * (x - mu)
    errors = []
    for steps in (60, 120):
        sigmas = get_sigmas_karras(steps, sigma_min=0.002, sigma_max=sigma_max).double()
        errors.append((sampler(_gaussian_denoiser(mu, var), x, sigmas) - exact).abs().max().item())
    ratio = errors[1] / errors[0]
    assert ratio < 1.2 * 2.0**-order, f"error {errors} shrinks by {ratio:.3f} only"
    assert errors[1] < (0.05 if order == 1 else 0.003)


def test_euler_matches_diffusers_scheduler_steps():
    """Our Euler over D equals diffusers' EulerDiscreteScheduler.step over v for a v-model."""
    torch.manual_seed(0)
    sched = EulerDiscreteScheduler(**SVD_SCHEDULER)
    sched.set_timesteps(6)
    w = torch.randn(4, 4) * 0.1

    def v_model(x_in):  # any fixed function of the scaled input
        return torch.tanh(x_in @ w)

    x0 = torch.randn(3, 4) * sched.init_noise_sigma
    x = x0.clone()
    for t in sched.timesteps:
        x = sched.step(v_model(sched.scale_model_input(x, t)), t, x).prev_sample

    def denoise(x, sigma):
        c_skip, c_out, c_in, _ = v_scalings(sigma)
        return c_skip * x + c_out * v_model(c_in * x)

    ours = sample_euler(denoise, x0.clone(), get_sigmas_karras(6))
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)


def test_bad_step_count():
    with pytest.raises(ValueError, match="steps"):
        get_sigmas_karras(0)


def test_latent_prior_of_an_image_model_is_its_conditioning_latent_in_every_frame():
    """UNetConfig.latent_prior on an image-to-video model: mu = scale x the image's VAE mean in every
    frame, the sampler started at x = mu + the scaled initial noise, the UNet fed c_in (x - mu), and one
    Euler step to sigma 0 returns mu + c_skip (x - mu) + c_out v."""
    import dataclasses

    from svd_fast import conditioner
    from svd_fast.config import SVDConfig
    from svd_fast.pipeline import SVDPipeline

    cfg = SVDConfig.from_name("tiny")
    pipe = SVDPipeline.from_config(dataclasses.replace(cfg, unet=dataclasses.replace(cfg.unet, latent_prior=0.9)))
    pipe.set_progress_bar_config(disable=True)
    seen = []

    def fake_unet(sample, timestep, context, *rest):
        seen.append(sample.clone())
        return 0.5 * sample[:, :, :4] - 0.1

    pipe.unet.forward = fake_unet
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    latents = torch.randn(1, 3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    sigma = 1.5
    out = pipe(image, height=64, width=64, num_frames=3, sigmas=[sigma, 0.0], latents=latents, noise_aug_strength=0.0,
               max_guidance_scale=1.0, output_type="latent").frames.float()
    z = pipe.vae.encode(conditioner.preprocess_image(image, 64, 64))[0]
    mu = 0.9 * z.expand(1, 3, *z.shape)
    x = mu + latents * (sigma**2 + 1) ** 0.5
    c_skip, c_out, c_in = 1 / (sigma**2 + 1), -sigma / (sigma**2 + 1) ** 0.5, 1 / (sigma**2 + 1) ** 0.5
    torch.testing.assert_close(seen[0][:, :, :4], c_in * (x - mu), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out, mu + c_skip * (x - mu) + c_out * (0.5 * c_in * (x - mu) - 0.1), rtol=1e-4, atol=1e-4)
