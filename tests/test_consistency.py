"""Consistency sampling, the boundary-exact parametrisation, and AnimateLCM-SVD-style checkpoints.

References: closed forms of the scalings (Song et al. 2023, App. C), the grid AnimateLCM-SVD's
scheduler builds, and the student's direct prediction computed here from the UNet.
"""
import json
import math

import numpy as np
import pytest
import torch

from svd_fast.consistency import CONSISTENCY_SCHEDULER, ConsistencySchedule
from svd_fast.config import UNetConfig
from svd_fast.denoiser import Conditioning, Denoiser, consistency_scalings, v_scalings
from svd_fast.sampling import get_sigmas_consistency, sample_consistency, sample_euler
from svd_fast.pipeline import SVDPipeline
from svd_fast.unet import VideoUNet

from tests.conftest import randomize_

# AnimateLCM-SVD-xt's scheduler as its release constructs it (G-U-N/AnimateLCM animatelcm_svd/app.py).
ANIMATELCM_SCHEDULER = {"_class_name": CONSISTENCY_SCHEDULER, "_diffusers_version": "0.25.1", "num_train_timesteps": 40,
                        "sigma_min": 0.002, "sigma_max": 700.0, "sigma_data": 1.0, "s_noise": 1.0, "rho": 7,
                        "clip_denoised": False}


def _karras_point(ramp, sigma_min=0.002, sigma_max=700.0, rho=7.0):
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


# --------------------------------------------------------------------------------- the sampler


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_few_step_sigmas_are_points_of_the_40_point_grid_spaced_by_index(steps):
    """AnimateLCM-SVD's set_timesteps: grid indices 0, k, 2k, ... (k = 40 // steps) from sigma_max, then 0."""
    k = 40 // steps
    expected = [_karras_point(i * k / 39) for i in range(steps)] + [0.0]
    sigmas = get_sigmas_consistency(steps)
    np.testing.assert_allclose(sigmas.numpy(), np.array(expected, dtype=np.float32), rtol=1e-6)
    assert sigmas[0] == pytest.approx(700.0)
    with pytest.raises(ValueError, match="1 to 40"):
        get_sigmas_consistency(41)


def test_boundary_scalings_are_the_consistency_models_parametrisation_and_exact_at_sigma_min():
    eps = 0.002
    for s in (0.002, 0.01, 1.0, 80.0, 700.0):
        sigma = torch.tensor(s, dtype=torch.float64)
        c_skip, c_out, c_in, c_noise = consistency_scalings(sigma, eps)
        # Song et al. 2023 App. C with sigma_data = 1, sign of the v-prediction output
        assert float(c_skip) == pytest.approx(1 / ((s - eps) ** 2 + 1), rel=1e-12)
        assert float(c_out) == pytest.approx(-(s - eps) / math.sqrt(s * s + 1), rel=1e-12, abs=0)
        assert float(c_in) == pytest.approx(1 / math.sqrt(s * s + 1)) and float(c_noise) == pytest.approx(0.25 * math.log(s))
    # eps = 0 is AnimateLCM-SVD's released parametrisation: SVD's own v-scalings
    sigma = torch.tensor([0.002, 1.0, 700.0], dtype=torch.float64)
    for ours, theirs in zip(consistency_scalings(sigma, 0.0), v_scalings(sigma)):
        torch.testing.assert_close(ours, theirs)


def _tiny_unet(seed=0, frames=4):
    torch.manual_seed(seed)
    config = UNetConfig(block_out_channels=(32, 32), attention_levels=(False, True), num_attention_heads=(1, 2),
                        layers_per_block=1, cross_attention_dim=16, addition_time_embed_dim=8,
                        projection_class_embeddings_input_dim=24, num_frames=frames, norm_num_groups=8)
    return VideoUNet(config).eval()


def _cond(batch, frames, seed=1, channels=4, side=8):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 1, channels, side, side, generator=g).expand(-1, frames, -1, -1, -1)
    return Conditioning(image.contiguous(), torch.randn(batch, 1, 16, generator=g), torch.tensor([[6.0, 127.0, 0.02]] * batch))


def test_the_student_is_exactly_the_identity_at_its_boundary_whatever_the_network_outputs():
    unet = randomize_(_tiny_unet(), std=0.3)
    x = torch.randn(2, 4, 4, 8, 8) * 3
    cond = _cond(2, 4)
    f = Denoiser(unet, boundary_sigma=0.002)
    with torch.no_grad():
        assert torch.equal(f(x, 0.002, cond), x)
        v = f.model_output(x, 0.002, cond)
        assert v.abs().mean() > 0.1  # the network's output is far from zero: the scalings do the work
        assert not torch.allclose(Denoiser(unet)(x, 0.002, cond), x, atol=1e-4)  # the teacher's D is not exact there


def test_one_step_is_the_consistency_function_and_eta_zero_is_euler_with_it():
    f = lambda x, sigma: torch.tanh(x / (1 + sigma)) * 0.7  # any function of (x, sigma)
    x = torch.randn(3, 5, dtype=torch.float64) * 700
    one = get_sigmas_consistency(1).double()
    torch.testing.assert_close(sample_consistency(f, x, one, noise=lambda s: torch.zeros(s)), f(x, one[0]))
    four = get_sigmas_consistency(4).double()
    torch.testing.assert_close(sample_consistency(f, x, four, eta=0.0), sample_euler(f, x, four))
    # eta = 1: x_{i+1} = f(x_i, sigma_i) + sigma_{i+1} * z with the fresh draws, nothing of the old noise
    draws = []

    def noise(shape):
        draws.append(torch.randn(shape, dtype=torch.float64))
        return draws[-1]

    seen = []
    sample_consistency(f, x, four, callback=lambda i, x_next, den: seen.append((x_next, den)), noise=noise)
    assert len(draws) == 3
    for i in range(3):
        torch.testing.assert_close(seen[i][0], seen[i][1] + four[i + 1] * draws[i])


# ----------------------------------------------------------- AnimateLCM-SVD-style checkpoints


def _animatelcm_folder(path, scheduler):
    """A tiny SVD pipeline folder as a user gets it from diffusers' save_pretrained with AnimateLCM-SVD's
    UNet and scheduler: its scheduler_config.json, no svd_fast_sampling.json."""
    pipe = SVDPipeline.from_config("tiny", seed=0)
    randomize_(pipe.unet, std=0.05)
    pipe.save_pretrained(path)
    (path / "svd_fast_sampling.json").unlink()
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    index = json.loads((path / "model_index.json").read_text())
    index["scheduler"] = ["animatelcm_scheduler", CONSISTENCY_SCHEDULER]
    (path / "model_index.json").write_text(json.dumps(index))
    return path


@pytest.fixture(scope="module")
def animatelcm_folder(tmp_path_factory):
    return _animatelcm_folder(tmp_path_factory.mktemp("animatelcm") / "AnimateLCM-SVD-tiny", ANIMATELCM_SCHEDULER)


def test_animatelcm_folder_selects_the_consistency_sampler_and_its_few_step_defaults(animatelcm_folder):
    pipe = SVDPipeline.from_pretrained(animatelcm_folder)
    assert pipe.default_sampler == "consistency"
    assert pipe.consistency == ConsistencySchedule(num_train_timesteps=40, sigma_min=0.002, sigma_max=700.0, rho=7.0,
                                                   s_noise=1.0, clip_denoised=False, boundary_sigma=0.0)
    assert pipe.config.num_inference_steps == 4 and pipe.config.max_guidance_scale == 1.2
    plain = SVDPipeline.from_config("tiny")
    assert plain.default_sampler == "euler"


@pytest.mark.parametrize("boundary", [0.0, 0.002], ids=["animatelcm", "svd_fast_student"])
def test_one_consistency_step_is_the_students_direct_prediction(tmp_path, boundary):
    """Pipeline, 1 step, no guidance: c_skip x + c_out F(c_in x | cond) at sigma_max, computed here from the UNet."""
    folder = _animatelcm_folder(tmp_path / "m", {**ANIMATELCM_SCHEDULER, "boundary_sigma": boundary})
    pipe = SVDPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(3))
    latents = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    out = pipe(image, height=64, width=64, num_frames=4, num_inference_steps=1, max_guidance_scale=1.0,
               noise_aug_strength=0.0, latents=latents, output_type="latent").frames
    with torch.no_grad():
        embedding, image_latent = pipe.encode_image(image, 64, 64, 0.0, None)
        sigma = 700.0
        x = latents * math.sqrt(sigma**2 + 1)
        unet_in = torch.cat([x / math.sqrt(sigma**2 + 1), image_latent[:, None].expand(-1, 4, -1, -1, -1)], dim=2)
        v = pipe.unet(unet_in, torch.tensor([0.25 * math.log(sigma)]), embedding, torch.tensor([[6.0, 127.0, 0.0]]), None)
        expected = x / ((sigma - boundary) ** 2 + 1) - (sigma - boundary) / math.sqrt(sigma**2 + 1) * v
    torch.testing.assert_close(out.float(), expected.float(), rtol=1e-4, atol=1e-4)


def test_animatelcm_folder_samples_from_the_command_line_with_its_defaults(animatelcm_folder, tmp_path, capsys):
    from PIL import Image

    from svd_fast import sample
    from svd_fast.video_io import read_video

    image_path = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(image_path)
    out = tmp_path / "video.gif"
    assert sample.main(["--model", str(animatelcm_folder), "--image", str(image_path), "--out", str(out), "--frames", "3",
                        "--height", "64", "--width", "64", "--dtype", "fp32"]) == 0
    frames, _ = read_video(out)
    assert frames.shape == (3, 64, 64, 3) and frames.std() > 0
    assert "(4 steps," in capsys.readouterr().out  # the scheduler config's few-step default, not SVD's 25


def test_bad_consistency_scheduler_config_is_one_clear_error(tmp_path):
    from svd_fast.checkpoints import CheckpointError

    folder = _animatelcm_folder(tmp_path / "m", {**ANIMATELCM_SCHEDULER, "sigma_data": 0.5})
    with pytest.raises(CheckpointError, match="sigma_data 0.5 is not supported"):
        SVDPipeline.from_pretrained(folder)
