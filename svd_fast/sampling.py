"""Noise schedules and ODE samplers over a denoiser D(x, sigma) (k-diffusion's interface).

Samplers take the initial noisy latents (noise * init_noise_scale(sigmas)) and the descending
sigmas ending in 0, and return the denoised latents. Their state is kept in at least fp32.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


def _state(x: torch.Tensor) -> torch.Tensor:
    """Sampler state is at least fp32, whatever dtype the model runs in."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def get_sigmas_karras(n: int, sigma_min: float = 0.002, sigma_max: float = 700.0, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) schedule of n noise levels, then a final 0 (float32, computed in float64)."""
    if n < 1:
        raise ValueError(f"number of steps must be >= 1, got {n}")
    sigmas = _karras(torch.linspace(0, 1, n, dtype=torch.float64), sigma_min, sigma_max, rho)
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


def _karras(ramp: torch.Tensor, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """Karras sigmas at positions ramp in [0, 1] (0: sigma_max, 1: sigma_min)."""
    min_inv, max_inv = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv + ramp * (min_inv - max_inv)) ** rho


def get_sigmas_consistency(n: int, num_train_timesteps: int = 40, sigma_min: float = 0.002,
                           sigma_max: float = 700.0, rho: float = 7.0, start: float | None = None) -> torch.Tensor:
    """Few-step schedule of a consistency model distilled on a Karras grid of num_train_timesteps points.

    The n sigmas are grid points evenly spaced by index from sigma_max: indices 0, k, 2k, ...,
    (n-1)k with k = num_train_timesteps // n (AnimateLCM-SVD's scheduler and the consistency
    models paper's multistep sampler pick them this way), then a final 0. The student was trained
    only on grid points, so off-grid sigmas are never asked of it. `start` (image-initialised
    sampling): the same from the first grid point at or below `start` instead of sigma_max.
    """
    grid = _karras(torch.arange(num_train_timesteps, dtype=torch.float64) / (num_train_timesteps - 1),
                   sigma_min, sigma_max, rho)
    # the grid descends: with a start, the points above it are skipped
    first = 0 if start is None else int((grid > start * (1 + 1e-9)).sum())
    available = num_train_timesteps - first
    if not 1 <= n <= available:
        where = "its training grid" if start is None else f"the grid points at or below sigma {start:g}"
        raise ValueError(f"consistency sampling takes 1 to {available} steps ({where}), got {n}")
    sigmas = grid[first + torch.arange(n) * (available // n)]
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


def init_noise_scale(sigmas: torch.Tensor) -> torch.Tensor:
    """sqrt(sigma_max^2 + 1): the scale of the initial noise (sgm's and diffusers' 'leading' choice)."""
    return (sigmas.max() ** 2 + 1) ** 0.5


def sample_euler(denoise: Denoise, x, sigmas, callback: StepCallback | None = None, s_churn: float = 0.0,
                 generator: torch.Generator | None = None):
    """EDM Euler (Karras Alg. 2 without the second-order correction); deterministic when s_churn = 0."""
    x = _state(x)
    n = len(sigmas) - 1
    for i in range(n):
        sigma = sigmas[i]
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_churn > 0 else 0.0
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + noise * (sigma_hat**2 - sigma**2) ** 0.5
        denoised = _state(denoise(x, sigma_hat))
        d = (x - denoised) / sigma_hat
        x = x + d * (sigmas[i + 1] - sigma_hat)
        if callback is not None:
            callback(i, x, denoised)
    return x


def sample_heun(denoise: Denoise, x, sigmas, callback: StepCallback | None = None):
    """EDM Heun (Karras Alg. 1 with s_churn = 0): Euler step, then trapezoidal correction."""
    x = _state(x)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _state(denoise(x, sigma))
        d = (x - denoised) / sigma
        x_euler = x + d * (sigma_next - sigma)
        if sigma_next == 0:
            x = x_euler  # the last step goes to sigma = 0: Euler, as in EDM
        else:
            d_next = (x_euler - _state(denoise(x_euler, sigma_next))) / sigma_next
            x = x + (d + d_next) / 2 * (sigma_next - sigma)
        if callback is not None:
            callback(i, x, denoised)
    return x


def sample_dpmpp_2m(denoise: Denoise, x, sigmas, callback: StepCallback | None = None):
    """DPM-Solver++(2M) (Lu et al. 2022), multistep second order in log-sigma time."""
    x = _state(x)
    old_denoised = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _state(denoise(x, sigma))
        if sigma_next == 0:
            x = denoised
        else:
            t, t_next = -sigma.log(), -sigma_next.log()
            h = t_next - t
            if old_denoised is None or sigmas[i - 1] == 0:
                correction = denoised
            else:
                r = (t - (-sigmas[i - 1].log())) / h
                correction = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_next / sigma) * x - torch.expm1(-h) * correction
        old_denoised = denoised
        if callback is not None:
            callback(i, x, denoised)
    return x


def sample_consistency(denoise: Denoise, x, sigmas, callback: StepCallback | None = None,
                       noise: Callable[[tuple], torch.Tensor] | None = None, eta: float = 1.0, s_noise: float = 1.0,
                       clip_denoised: bool = False):
    """Multistep consistency sampling (Song et al. 2023, Alg. 1; LCM / AnimateLCM's scheduler).

    `denoise` is the consistency function f(x, sigma): a clean estimate from any point of the
    trajectory. Each step predicts x0 = f(x, sigma_i) and, unless sigma_{i+1} = 0, re-noises it to
    the next level: x = x0 + sigma_{i+1} * e, with
        e = eta * z + sqrt(1 - eta^2) * (x - x0) / sigma_i,   z = s_noise * noise(shape) fresh,
    so eta = 1 is the stochastic LCM step and eta = 0 reuses the noise the step implies (then the
    step is exactly Euler's with f as the denoiser). One step returns f(x, sigma_0).
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    x = _state(x)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _state(denoise(x, sigma))
        if clip_denoised:
            denoised = denoised.clamp(-1, 1)
        if sigma_next == 0:
            x = denoised
        else:
            implied = (x - denoised) / sigma
            if eta > 0:
                fresh = noise(tuple(x.shape)) if noise is not None else torch.randn_like(x)
                implied = eta * s_noise * _state(fresh) + math.sqrt(1 - eta**2) * implied
            x = denoised + sigma_next * implied
        if callback is not None:
            callback(i, x, denoised)
    return x


SAMPLERS = {"euler": sample_euler, "heun": sample_heun, "dpmpp_2m": sample_dpmpp_2m, "consistency": sample_consistency}
