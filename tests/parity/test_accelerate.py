"""svd_fast.accelerate: a diffusers pipeline with our UNet swapped in gives the same video."""
import numpy as np
import torch

from svd_fast.accel import accelerate
from svd_fast.diffusers_bridge import DiffusersUNet
from tests.parity.test_parity_pipeline import _diffusers_pipeline, _image


def test_accelerated_diffusers_pipeline_gives_the_same_video():
    pipe = _diffusers_pipeline("2lvl-4f")
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(height=64, width=64, num_frames=4, num_inference_steps=3, max_guidance_scale=2.5, output_type="np")
    image = _image(64, 64, 0)
    expected = pipe(image, generator=torch.Generator().manual_seed(3), **kwargs).frames
    accelerate(pipe)
    assert isinstance(pipe.unet, DiffusersUNet)
    got = pipe(image, generator=torch.Generator().manual_seed(3), **kwargs).frames
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    assert accelerate(pipe) is pipe and isinstance(pipe.unet.inner, torch.nn.Module)  # idempotent
