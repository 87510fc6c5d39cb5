"""The VAE's equivariance loss and shift metric (svd_fast.train.autoencoder) against closed forms."""
import math

import pytest
import torch
import torch.nn.functional as F

from svd_fast.config import VAEConfig
from svd_fast.train.autoencoder import (AutoencoderTraining, equivariance_loss, latent_shift_error, random_similarity,
                                        warp)
from svd_fast.vae import TemporalVAE


def _shift_theta(count: int, dx_px: float, width: int) -> torch.Tensor:
    """affine_grid matrices that move the picture right by dx_px pixels."""
    return torch.tensor([[1.0, 0.0, -2.0 * dx_px / width], [0.0, 1.0, 0.0]]).expand(count, 2, 3)


def test_warp_identity_returns_the_input_and_a_full_mask():
    x = torch.randn(3, 5, 9, 13)
    moved, inside = warp(x, torch.eye(2, 3).expand(3, 2, 3))
    torch.testing.assert_close(moved, x, atol=1e-5, rtol=0)
    assert inside.shape == (3, 1, 9, 13) and bool((inside == 1).all())


@pytest.mark.parametrize("k", [1, 3])
def test_warp_by_whole_pixels_moves_the_picture_and_masks_what_came_from_outside(k):
    x = torch.randn(2, 4, 7, 11)
    moved, inside = warp(x, _shift_theta(2, k, 11))
    torch.testing.assert_close(moved[..., k:], x[..., :-k], atol=1e-5, rtol=0)
    assert bool((inside[..., :k] == 0).all()) and bool((inside[..., k:] == 1).all())


def test_random_similarity_stays_within_its_ranges():
    theta = random_similarity(500, torch.Generator().manual_seed(0), shift=0.1, log_zoom=0.2)
    scale = theta[:, 0, 0]
    assert torch.equal(scale, theta[:, 1, 1]) and bool((theta[:, 0, 1] == 0).all() and (theta[:, 1, 0] == 0).all())
    assert scale.min() >= math.exp(-0.2) and scale.max() <= math.exp(0.2) and scale.max() / scale.min() > 1.3
    assert theta[:, :, 2].abs().max() <= 0.1 and theta[:, :, 2].abs().max() > 0.09


class _Encoder:
    """A fixed linear encoder (images -> latent), the input of the metric."""

    def __init__(self, fn):
        self.encode = fn


def _texture(size=64, seed=0):
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_space_to_depth_code_moves_with_whole_latent_pixels_only():
    # Non-overlapping 4x4 patches stacked as channels (a PatchPCA code up to a linear map): a 4 px
    # move is a 1-latent-pixel move (error 0); a 1 px move scrambles the code.
    code = _Encoder(lambda x: F.pixel_unshuffle(x, 4))
    x = _texture()
    assert latent_shift_error(code, x, 4) < 1e-10 and latent_shift_error(code, x, 8) < 1e-10
    assert latent_shift_error(code, x, 1) > 0.5


def test_smooth_code_of_a_smooth_picture_moves_by_fractions_of_a_latent_pixel():
    # 4x4 mean pooling of a picture whose detail is far coarser than a latent pixel: moving the
    # picture by 1 px moves the code by a quarter latent pixel, which bilinear resampling follows.
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    smooth = torch.stack([torch.sin(2 * math.pi * (xs / 40 + c / 3) + ys / 30) for c in range(3)])[None]
    pooled = _Encoder(lambda x: F.avg_pool2d(x, 4))
    assert latent_shift_error(pooled, smooth, 1) < 0.01
    # the same code on white-noise texture cannot follow (aliasing): the metric tells them apart
    assert latent_shift_error(pooled, _texture(), 1) > 0.1


def _tiny_vae(seed=0):
    torch.manual_seed(seed)
    return TemporalVAE(VAEConfig(block_out_channels=(16, 32), layers_per_block=1, latent_channels=4,
                                 norm_num_groups=1)).train()


def test_equivariance_loss_without_a_transform_is_the_reconstruction_loss():
    vae = _tiny_vae()
    frames = _texture(16)[:2].repeat_interleave(2, dim=0)  # two clips of 2 frames
    mean, logvar = vae.encode_moments(frames)
    z = vae.sample_latent(mean, logvar, torch.Generator().manual_seed(1))
    loss, parts = equivariance_loss(vae, frames, mean, z, num_frames=2, shift_latent_px=0.0, log_zoom=0.0)
    recon = vae.decode(z, num_frames=2)
    expected = (recon - frames).abs().mean() + (recon - frames).pow(2).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-6)
    assert parts["equivariance_encoder"] < 1e-10


def test_equivariance_loss_trains_encoder_and_decoder():
    vae = _tiny_vae()
    frames = _texture(16)[:2]
    mean, logvar = vae.encode_moments(frames)
    z = vae.sample_latent(mean, logvar, torch.Generator().manual_seed(1))
    loss, parts = equivariance_loss(vae, frames, mean, z, num_frames=1, generator=torch.Generator().manual_seed(2))
    loss.backward()
    assert parts["equivariance_encoder"] > 0 and parts["equivariance_decoder"] > 0
    for part in (vae.encoder, vae.decoder):
        assert sum(float(p.grad.abs().sum()) for p in part.parameters() if p.grad is not None) > 0


def test_anchor_fades_linearly_to_zero():
    constant = AutoencoderTraining(steps=100, anchor_weight=5.0)
    assert constant.anchor_at(0) == constant.anchor_at(99) == 5.0
    fading = AutoencoderTraining(steps=100, anchor_weight=5.0, anchor_fade=0.5)
    assert fading.anchor_at(0) == 5.0 and fading.anchor_at(25) == pytest.approx(2.5) and fading.anchor_at(50) == 0.0
    assert fading.anchor_at(99) == 0.0
