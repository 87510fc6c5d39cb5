"""svd_fast.accelerate on a diffusers pipeline: UNet, VAE, CLIP tower and image preprocessing become svd_fast's,
the video stays the same (fp32, 1e-4), and restore() gives back diffusers' own models."""
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
from transformers import CLIPVisionModelWithProjection

from svd_fast import accelerate, restore
from svd_fast.clip_vision import CLIPVisionTower
from svd_fast.diffusers_bridge import DiffusersUNet, DiffusersVAE
from svd_fast.pipeline import SVDPipeline
from tests.parity.test_parity_pipeline import _diffusers_pipeline, _image

KWARGS = dict(height=64, width=64, num_frames=4, num_inference_steps=3, max_guidance_scale=2.5, output_type="np")


def _frames(pipe, image, seed=3):
    return pipe(image, generator=torch.Generator().manual_seed(seed), **KWARGS).frames


def test_accelerate_and_restore_a_diffusers_pipeline_give_the_same_video():
    pipe = _diffusers_pipeline("2lvl-4f")
    pipe.set_progress_bar_config(disable=True)
    image = _image(64, 64, 0)
    expected = _frames(pipe, image)
    weight = pipe.unet.conv_in.weight.detach().clone()
    projection = pipe.image_encoder.visual_projection.weight

    assert accelerate(pipe) is pipe
    assert isinstance(pipe.unet, DiffusersUNet) and isinstance(pipe.vae, DiffusersVAE)
    assert isinstance(pipe.image_encoder, CLIPVisionTower) and "_encode_image" in vars(pipe)  # and our preprocessing
    assert pipe.image_encoder.visual_projection.weight.data_ptr() == projection.data_ptr()  # moved, not copied
    np.testing.assert_allclose(_frames(pipe, image), expected, rtol=0, atol=1e-4)
    assert accelerate(pipe) is pipe and isinstance(pipe.unet.inner, torch.nn.Module)  # idempotent

    restore(pipe)
    assert type(pipe.unet) is UNetSpatioTemporalConditionModel and type(pipe.vae) is AutoencoderKLTemporalDecoder
    assert type(pipe.image_encoder) is CLIPVisionModelWithProjection
    assert pipe.image_encoder.visual_projection.weight.data_ptr() == projection.data_ptr()
    assert "_encode_image" not in vars(pipe)
    torch.testing.assert_close(pipe.unet.conv_in.weight, weight, rtol=0, atol=0)
    assert pipe.unet.conv_in.weight.is_contiguous()  # diffusers' own layout again
    np.testing.assert_allclose(_frames(pipe, image), expected, rtol=0, atol=1e-6)
    assert restore(pipe) is pipe  # restoring twice is harmless


def test_accelerated_diffusers_pipeline_keeps_its_rng_order_with_several_videos():
    pipe = _diffusers_pipeline("2lvl-4f", seed=5)
    pipe.set_progress_bar_config(disable=True)
    image = _image(64, 64, 1)
    kwargs = dict(KWARGS, num_videos_per_prompt=2, noise_aug_strength=0.05)
    expected = pipe(image, generator=torch.Generator().manual_seed(7), **kwargs).frames
    accelerate(pipe)
    got = pipe(image, generator=torch.Generator().manual_seed(7), **kwargs).frames
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_accelerate_takes_an_svd_fast_pipeline_too():
    pipe = SVDPipeline.from_config("tiny")
    pipe.set_progress_bar_config(disable=True)
    image = _image(64, 64, 2)
    expected = pipe(image, generator=torch.Generator().manual_seed(1), **KWARGS).frames
    unet = pipe.unet
    assert accelerate(pipe, cuda_graphs=None) is pipe and pipe.unet is unet  # nothing to swap on CPU
    np.testing.assert_array_equal(pipe(image, generator=torch.Generator().manual_seed(1), **KWARGS).frames, expected)
    assert restore(pipe).unet is unet


def test_asking_for_cuda_graphs_on_cpu_is_a_clear_error():
    pipe = SVDPipeline.from_config("tiny")
    with pytest.raises(ValueError, match="cuda_graphs=True needs the UNet on a CUDA device"):
        accelerate(pipe, cuda_graphs=True)
