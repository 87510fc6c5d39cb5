"""Image conditioning against diffusers' StableVideoDiffusionPipeline helpers."""
import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import StableVideoDiffusionPipeline, UNetSpatioTemporalConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing
from transformers import CLIPImageProcessor

from svd_fast.conditioner import (
    added_time_ids,
    build_image_encoder,
    clip_pixel_values,
    encode_image,
    image_to_tensor,
    preprocess_image,
    resize_with_antialiasing,
)
from svd_fast.config import ImageEncoderConfig
from tests.conftest import randomize_

TINY_CLIP = ImageEncoderConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                               patch_size=16, projection_dim=16)


@pytest.fixture(scope="module")
def pipe():
    """A diffusers pipeline holding only what image conditioning uses (CLIP + feature extractor)."""
    encoder = randomize_(build_image_encoder(TINY_CLIP), std=0.1)
    return StableVideoDiffusionPipeline(vae=None, image_encoder=encoder, unet=None, scheduler=None,
                                        feature_extractor=CLIPImageProcessor())


def _pil(h, w, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (h, w, channels) if channels else (h, w)
    return PIL.Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)


def _rel(got, expected):
    return ((got - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("h,w", [(300, 451), (64, 96), (224, 224), (576, 1024)], ids=["down", "up", "same", "svd"])
def test_clip_embedding_matches_diffusers_encode_image(pipe, h, w):
    image = _pil(h, w)
    expected = pipe._encode_image(image, "cpu", 1, False)
    got = encode_image(pipe.image_encoder, image)
    assert got.shape == expected.shape == (1, 1, 16)
    assert _rel(got, expected) < 1e-5


def test_clip_embedding_of_a_batch_matches_diffusers(pipe):
    images = [_pil(120, 200, seed=s) for s in range(3)]
    expected = pipe._encode_image(images, "cpu", 1, False)
    got = encode_image(pipe.image_encoder, images)
    assert got.shape == (3, 1, 16) and _rel(got, expected) < 1e-5


def test_224_tensor_embeds_as_diffusers_tensor_path(pipe):
    """diffusers feeds tensors to CLIP without resizing; at 224x224 our resize is the identity."""
    x = torch.rand(2, 3, 224, 224)
    assert _rel(encode_image(pipe.image_encoder, x), pipe._encode_image(x, "cpu", 1, False)) < 1e-5
    torch.testing.assert_close(resize_with_antialiasing(x * 2 - 1, (224, 224)), x * 2 - 1, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape,size", [((1, 3, 300, 451), (224, 224)), ((2, 3, 50, 70), (224, 224)), ((1, 3, 96, 40), (31, 17))])
def test_antialiased_resize_matches_diffusers(shape, size):
    x = torch.rand(shape) * 2 - 1
    torch.testing.assert_close(resize_with_antialiasing(x, size), _resize_with_antialiasing(x, size), rtol=1e-5, atol=1e-6)


def test_clip_pixels_are_normalised_with_clip_mean_and_std():
    """A mid-grey image becomes (0.5 - mean) / std per channel after the (identity-on-constants) resize."""
    x = clip_pixel_values(torch.full((1, 3, 40, 50), 0.5))
    expected = (0.5 - torch.tensor([0.48145466, 0.4578275, 0.40821073])) / torch.tensor([0.26862954, 0.26130258, 0.27577711])
    torch.testing.assert_close(x, expected.reshape(1, 3, 1, 1).expand(1, 3, 224, 224), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["pil", "tensor", "numpy", "pil-list"])
def test_preprocess_matches_video_processor(kind):
    processor = VaeImageProcessor(vae_scale_factor=8)
    pil = _pil(75, 133)
    image = {
        "pil": pil,
        "tensor": torch.rand(2, 3, 50, 70),
        "numpy": np.random.default_rng(0).random((50, 70, 3)).astype(np.float32),
        "pil-list": [pil, _pil(75, 133, seed=1)],
    }[kind]
    expected = processor.preprocess(image, height=64, width=96)
    got = preprocess_image(image, 64, 96)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got, expected.float(), rtol=0, atol=1e-6)


def test_preprocess_crop_mode_matches_diffusers():
    processor = VaeImageProcessor(vae_scale_factor=8)
    for h, w in [(75, 133), (200, 90)]:
        image = _pil(h, w)
        expected = processor.preprocess(image, height=64, width=96, resize_mode="crop")
        torch.testing.assert_close(preprocess_image(image, 64, 96, resize_mode="crop"), expected, rtol=0, atol=1e-6)


def test_grayscale_and_rgba_become_rgb():
    gray = _pil(20, 30, mode="L")
    rgba = _pil(20, 30, mode="RGBA")
    assert torch.equal(image_to_tensor(gray), image_to_tensor(gray.convert("RGB")))
    assert torch.equal(image_to_tensor(rgba), image_to_tensor(rgba.convert("RGB")))
    arr = np.asarray(rgba)
    assert torch.equal(image_to_tensor(arr), image_to_tensor(arr[..., :3]))  # alpha dropped
    gray_arr = np.asarray(gray)
    assert torch.equal(image_to_tensor(gray_arr), image_to_tensor(np.repeat(gray_arr[..., None], 3, axis=2)))


def test_uint8_and_float_inputs_agree():
    arr = np.random.default_rng(0).integers(0, 256, (2, 10, 12, 3), dtype=np.uint8)
    from_uint8 = image_to_tensor(arr)
    assert from_uint8.shape == (2, 3, 10, 12)
    torch.testing.assert_close(from_uint8, image_to_tensor(arr.astype(np.float32) / 255), rtol=0, atol=0)
    torch.testing.assert_close(from_uint8, image_to_tensor(torch.from_numpy(arr).permute(0, 3, 1, 2)), rtol=0, atol=0)


def test_bad_images_raise_clear_errors():
    with pytest.raises(ValueError, match=r"float pixels must lie in \[0, 1\]"):
        image_to_tensor(torch.rand(1, 3, 8, 8) * 2 - 1)
    with pytest.raises(ValueError, match="1 \\(gray\\), 3 \\(RGB\\) or 4 \\(RGBA\\) channels"):
        image_to_tensor(torch.rand(1, 5, 8, 8))
    with pytest.raises(ValueError, match="not mixed"):
        image_to_tensor([_pil(8, 8), torch.rand(3, 8, 8)])
    with pytest.raises(ValueError, match="empty list"):
        image_to_tensor([])
    with pytest.raises(ValueError, match="same size"):
        image_to_tensor([_pil(8, 8), _pil(8, 9)])
    with pytest.raises(ValueError, match="only supported for PIL"):
        preprocess_image(torch.rand(1, 3, 8, 8), 8, 8, resize_mode="crop")
    with pytest.raises(ValueError, match="must be positive"):
        preprocess_image(_pil(8, 8), 0, 8)


def test_added_time_ids_follow_diffusers_fps_minus_one():
    """diffusers' pipeline passes fps - 1 to _get_add_time_ids; our helper takes fps like the pipeline."""
    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), num_attention_heads=(1, 2),
        layers_per_block=1, cross_attention_dim=16, addition_time_embed_dim=8, projection_class_embeddings_input_dim=24,
    )
    pipe = StableVideoDiffusionPipeline(vae=None, image_encoder=None, unet=unet, scheduler=None, feature_extractor=None)
    expected = pipe._get_add_time_ids(7 - 1, 127, 0.02, torch.float32, 2, 1, False)
    got = added_time_ids(7, 127, 0.02, batch=2)
    assert torch.equal(got, expected)
    assert torch.equal(got, torch.tensor([[6.0, 127.0, 0.02]] * 2))
    assert added_time_ids(7, 127, 0.02, 1, dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="batch must be >= 1"):
        added_time_ids(7, 127, 0.02, 0)


def test_one_pixel_images_are_embedded_as_their_colour():
    """A 1x1 (or 1-pixel-wide) image cannot be reflect-padded; upscaled it is a constant image."""
    from svd_fast.conditioner import CLIP_MEAN, CLIP_STD, clip_pixel_values

    colour = torch.tensor([0.2, 0.5, 0.9])
    for h, w in ((1, 1), (1, 7), (5, 1)):
        pixels = clip_pixel_values(colour.reshape(3, 1, 1).expand(3, h, w).clone(), 224)
        expected = ((colour - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)).reshape(1, 3, 1, 1)
        torch.testing.assert_close(pixels, expected.expand(1, 3, 224, 224), atol=1e-5, rtol=1e-5)
