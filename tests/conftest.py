"""Shared test set-up: deterministic, small, CPU only."""
import functools
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # no GPU here: Triton kernels run in the interpreter
# Kernel choices and inductor's compiled code go to a per-run folder, not the user's ~/.cache.
os.environ.setdefault("SVD_FAST_CACHE_DIR", tempfile.mkdtemp(prefix="svd_fast_test_cache_"))

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def randomize_(module: torch.nn.Module, std: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Overwrite every parameter with N(0, std): zero-initialised output convs would hide bugs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


class ReturnsConditioning(torch.nn.Module):
    """A UNet whose denoised estimate D is its conditioning latent times `scale` at every sigma:
    samplers built on it must return exactly what they conditioned each frame on."""

    def __init__(self, latent_channels: int, scale: float):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the pipeline a device and dtype
        self.latent_channels, self.scale = latent_channels, scale

    def forward(self, x_in, c_noise, context, added_time_ids, image_only_indicator=None):
        from svd_fast.denoiser import v_scalings

        sigma = torch.exp(4 * c_noise.float()).reshape(-1, 1, 1, 1, 1)
        c_skip, c_out, c_in, _ = v_scalings(sigma)
        x = x_in[:, :, : self.latent_channels] / c_in
        return (self.scale * x_in[:, :, self.latent_channels :] - c_skip * x) / c_out


@pytest.fixture(scope="module")
def echo_pipe():
    """The embedded default model's pipeline with a ReturnsConditioning UNet: every sample is
    exactly the conditioning latents it was given."""
    from svd_fast import sample
    from svd_fast.pipeline import SVDPipeline

    pipe = SVDPipeline.from_pretrained(sample.DEFAULT_MODEL, torch_dtype=torch.float32)
    pipe.unet = ReturnsConditioning(pipe.vae.config.latent_channels, pipe.vae.config.scaling_factor)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@functools.cache
def default_model_recipe():
    """training/recipes/default_model.py as a module (registered first: its dataclasses look it up)."""
    path = Path(__file__).resolve().parents[1] / "training" / "recipes" / "default_model.py"
    spec = importlib.util.spec_from_file_location("default_model_recipe", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
