"""The proof: random-weight diffusers pipelines, saved with save_pretrained and loaded by svd_fast,
give the same video for the same seed (fp32), in several small configurations."""
import dataclasses

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKLTemporalDecoder,
    EulerDiscreteScheduler,
    StableVideoDiffusionPipeline,
    UNetSpatioTemporalConditionModel,
)
from PIL import Image
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from svd_fast.diffusers_bridge import CLIP_MEAN, CLIP_STD, SVD_SCHEDULER_CONFIG
from svd_fast.pipeline import SVDPipeline
from tests.conftest import randomize_

# name -> (unet kwargs, vae channels, clip width, frames, height, width, batch)
CONFIGS = {
    "2lvl-4f": (dict(block_out_channels=(32, 64), num_attention_heads=(1, 2), layers_per_block=1,
                     down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
                     up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal")),
                (32, 32, 32, 32), 32, 4, 64, 64, 1),
    "3lvl-5f-wide": (dict(block_out_channels=(32, 64, 64), num_attention_heads=(2, 2, 4), layers_per_block=1,
                          down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 2 + ("DownBlockSpatioTemporal",),
                          up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 2),
                     (32, 32, 64, 64), 64, 5, 48, 80, 2),
}


def _diffusers_pipeline(name, seed=0):
    unet_kwargs, vae_channels, clip_width, frames, *_ = CONFIGS[name]
    unet = UNetSpatioTemporalConditionModel(
        **unet_kwargs, cross_attention_dim=clip_width, addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=24, num_frames=frames,
    )
    vae = AutoencoderKLTemporalDecoder(
        block_out_channels=vae_channels, down_block_types=["DownEncoderBlock2D"] * len(vae_channels), layers_per_block=1,
        latent_channels=4,
    )
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=clip_width, projection_dim=clip_width, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=2 * clip_width, image_size=224, patch_size=14, hidden_act="gelu",
    ))
    for i, module in enumerate((unet, vae, clip)):
        randomize_(module, std=0.1, seed=seed + i)
    extractor = CLIPImageProcessor(crop_size=224, size=224, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    return StableVideoDiffusionPipeline(
        vae=vae, image_encoder=clip, unet=unet, scheduler=EulerDiscreteScheduler(**SVD_SCHEDULER_CONFIG),
        feature_extractor=extractor,
    ).to(torch.float32)


@pytest.fixture(scope="module", params=list(CONFIGS))
def saved(request, tmp_path_factory):
    pipe = _diffusers_pipeline(request.param)
    pipe.set_progress_bar_config(disable=True)
    path = tmp_path_factory.mktemp(request.param)
    pipe.save_pretrained(path)
    ours = SVDPipeline.from_pretrained(path, numerics="diffusers")
    ours.set_progress_bar_config(disable=True)
    return request.param, pipe, ours


def _image(h, w, seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h + 13, w + 7, 3), dtype=np.uint8))  # not the output size


@pytest.mark.parametrize("noise_aug,use_latents", [(0.02, False), (0.0, True)])
def test_same_seed_same_video(saved, noise_aug, use_latents):
    name, theirs, ours = saved
    *_, frames, h, w, batch = CONFIGS[name]
    images = [_image(h, w, s) for s in range(batch)]
    images = images[0] if batch == 1 else images
    kwargs = dict(height=h, width=w, num_frames=frames, num_inference_steps=3, noise_aug_strength=noise_aug,
                  min_guidance_scale=1.0, max_guidance_scale=2.5, fps=6, motion_bucket_id=100, output_type="np")
    latents = torch.randn(batch, frames, 4, h // 8, w // 8, generator=torch.Generator().manual_seed(7)) if use_latents else None
    expected = theirs(images, generator=torch.Generator().manual_seed(1), latents=latents, **kwargs).frames
    got = ours(images, generator=torch.Generator().manual_seed(1), latents=latents, **kwargs).frames
    assert got.shape == expected.shape == (batch, frames, h, w, 3)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_unet_forward_matches(saved):
    name, theirs, ours = saved
    *_, frames, h, w, batch = CONFIGS[name]
    cfg = ours.config.unet
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, frames, 8, h // 8, w // 8, generator=g)
    ctx = torch.randn(2, 1, cfg.cross_attention_dim, generator=g)
    ids = torch.tensor([[5.0, 127.0, 0.02], [6.0, 30.0, 0.1]])
    with torch.no_grad():
        expected = theirs.unet(x, torch.tensor([1.2, -0.4]), ctx, ids).sample
        got = ours.unet(x, torch.tensor([1.2, -0.4]), ctx, ids)
    assert (got - expected).norm() / expected.norm() < 1e-5


def test_pil_and_np_outputs_agree(saved):
    name, theirs, ours = saved
    *_, frames, h, w, batch = CONFIGS[name]
    image = _image(h, w, 0)
    kwargs = dict(height=h, width=w, num_frames=frames, num_inference_steps=2)
    pil = ours(image, generator=torch.Generator().manual_seed(0), output_type="pil", **kwargs).frames
    arr = ours(image, generator=torch.Generator().manual_seed(0), output_type="np", **kwargs).frames
    assert len(pil) == 1 and len(pil[0]) == frames and pil[0][0].size == (w, h)
    np.testing.assert_array_equal(np.asarray(pil[0][1]), (arr[0, 1] * 255).round().astype(np.uint8))
