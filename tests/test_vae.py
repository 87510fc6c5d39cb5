"""TemporalVAE against diffusers' AutoencoderKLTemporalDecoder with the same random weights."""
from types import SimpleNamespace

import pytest
import torch
from diffusers import AutoencoderKLTemporalDecoder
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import StableVideoDiffusionPipeline

from svd_fast import layers
from svd_fast.config import VAEConfig
from svd_fast.vae import TemporalVAE
from tests.conftest import randomize_

CONFIGS = [
    # one ResBlock per level: diffusers keeps the decoder's mid attention but never runs it
    ("2lvl-1layer", dict(block_out_channels=(32, 64), layers_per_block=1)),
    # the SVD structure (2 / 3 ResBlocks per level, mid attention) at toy width, 3 levels
    ("3lvl-2layers", dict(block_out_channels=(32, 32, 64), layers_per_block=2)),
]
IDS = [c[0] for c in CONFIGS]
FP32_RTOL = 1e-5  # same math, different op order (fused residual blend, fp32 norms)


def _pair(kwargs, seed=0):
    blocks = ("DownEncoderBlock2D",) * len(kwargs["block_out_channels"])
    ref = randomize_(AutoencoderKLTemporalDecoder(down_block_types=blocks, **kwargs).eval(), std=0.1, seed=seed)
    ours = TemporalVAE(VAEConfig.from_diffusers(dict(ref.config))).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def _rel(got, expected):
    return ((got.float() - expected.float()).norm() / expected.float().norm()).item()


@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=IDS)
def test_encode_matches_diffusers(name, kwargs):
    ref, ours = _pair(kwargs)
    x = torch.rand(3, 3, 17, 23) * 2 - 1  # odd sizes exercise the right/bottom downsample padding
    with torch.no_grad():
        dist = ref.encode(x).latent_dist
        mean, logvar = ours.encode_moments(x)
        mode = ours.encode(x)
    assert mean.shape == dist.mean.shape
    assert _rel(mean, dist.mean) < FP32_RTOL and _rel(logvar, dist.logvar) < FP32_RTOL
    assert torch.equal(mode, mean) and _rel(mode, dist.mode()) < FP32_RTOL


def test_logvar_is_clamped_like_diffusers():
    ref, ours = _pair(CONFIGS[0][1])
    with torch.no_grad():
        for model in (ref, ours):
            model.quant_conv.bias[4:] += 100.0  # push every log-variance far above the clamp (20)
        x = torch.rand(1, 3, 8, 8)
        _, logvar = ours.encode_moments(x)
        expected = ref.encode(x).latent_dist.logvar
    assert torch.equal(logvar, torch.full_like(logvar, 20.0)) and torch.equal(expected, logvar)


def test_sample_latent_matches_diffusers_draw():
    ref, ours = _pair(CONFIGS[0][1])
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        mean, logvar = ours.encode_moments(x)
        expected = DiagonalGaussianDistribution(torch.cat([mean, logvar], 1)).sample(torch.Generator().manual_seed(3))
    got = TemporalVAE.sample_latent(mean, logvar, torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


# (batch, frames, decode_chunk_size): whole clips, chunks that split a clip, chunks that span two
# clips (diffusers and sgm chunk the flattened B*T frames), single-frame chunks
DECODES = [(1, 5, None), (2, 4, 4), (2, 3, 2), (1, 5, 1)]


@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=IDS)
@pytest.mark.parametrize("b,t,chunk", DECODES)
def test_decode_latents_matches_diffusers_pipeline(name, kwargs, b, t, chunk):
    ref, ours = _pair(kwargs)
    latents = torch.randn(b, t, 4, 5, 6) * 0.18215  # scaled latents, as the sampler returns them
    pipe = SimpleNamespace(vae=ref)
    with torch.no_grad():
        expected = StableVideoDiffusionPipeline.decode_latents(pipe, latents, t, chunk or t)
        got = ours.decode_latents(latents, chunk)
    scale = 2 ** (len(kwargs["block_out_channels"]) - 1)
    assert got.dtype == torch.float32 and got.shape == expected.shape == (b, 3, t, 5 * scale, 6 * scale)
    assert _rel(got, expected) < FP32_RTOL


@pytest.mark.parametrize("chunk_bytes,largest_chunk", [(1, 1), (130_000, 2)])  # a frame at a time; 2 + 1 frames
def test_per_frame_layers_run_in_chunks_and_match_diffusers(monkeypatch, chunk_bytes, largest_chunk):
    """The decoder's per-frame layers run a few frames at a time at inference (to bound their
    intermediates' memory); the video is diffusers' all the same, with chunks that do not divide
    the clip too. 130 kB is two frames of the 32-channel 20x24 maps at the top (and four-fold
    upsampling of the 10x12 ones), a whole clip lower down."""
    import svd_fast.vae as vae_module

    ref, ours = _pair(CONFIGS[1][1])
    monkeypatch.setattr(vae_module, "FRAME_CHUNK_BYTES", chunk_bytes)
    seen = []
    for block in ours.decoder.modules():
        if isinstance(block, vae_module.ResnetBlock):
            monkeypatch.setattr(block, "_forward", lambda x, f=block._forward: seen.append(x.shape[0]) or f(x))
    latents = torch.randn(2, 3, 4, 5, 6) * 0.18215
    with torch.no_grad():
        expected = StableVideoDiffusionPipeline.decode_latents(SimpleNamespace(vae=ref), latents, 3, 3)
        got = ours.decode_latents(latents)
    assert max(seen[-3:]) == largest_chunk and max(seen) == (largest_chunk if chunk_bytes == 1 else 3)
    assert _rel(got, expected) < FP32_RTOL


def test_decode_takes_unscaled_latents_like_diffusers_vae_decode():
    ref, ours = _pair(CONFIGS[1][1])
    z = torch.randn(6, 4, 4, 4)
    with torch.no_grad():
        expected = ref.decode(z, num_frames=3).sample
        got = ours.decode(z, num_frames=3)
    assert _rel(got, expected) < FP32_RTOL


def test_frames_of_a_clip_interact_only_through_temporal_layers():
    """Changing one frame's latent changes its neighbours' output (temporal convs and clip-pooled
    norms) but not the frames of another clip in the batch."""
    _, ours = _pair(CONFIGS[0][1])
    z = torch.randn(6, 4, 4, 4)
    z2 = z.clone()
    z2[1] += 1.0
    with torch.no_grad():
        a, b = ours.decode(z, 3), ours.decode(z2, 3)
    changed = [(a[i] - b[i]).abs().max().item() > 1e-4 for i in range(6)]
    assert changed == [True, True, True, False, False, False]


def test_model_calls_the_swappable_layer_functions(monkeypatch):
    """Norms and temporal convs go through svd_fast.layers, so kernel backends apply to the VAE."""
    _, ours = _pair(CONFIGS[1][1])
    calls = {"temporal_conv": 0, "clip_norm": 0, "alpha_blend_residual": 0, "spatial_attention": 0}

    def counting(name, fn, key=None):
        def wrapper(*args, **kwargs):
            if key is None or key(*args, **kwargs):
                calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(layers, "temporal_conv", counting("temporal_conv", layers.temporal_conv))
    monkeypatch.setattr(layers, "alpha_blend_residual", counting("alpha_blend_residual", layers.alpha_blend_residual))
    monkeypatch.setattr(layers, "spatial_attention", counting("spatial_attention", layers.spatial_attention))
    monkeypatch.setattr(layers, "group_norm", counting("clip_norm", layers.group_norm, lambda *a: a[-1] is not None))
    with torch.no_grad():
        ours.decode(torch.randn(3, 4, 4, 4), 3)
    video_blocks = 2 + 3 * 3  # mid + 3 levels x 3 ResBlocks
    assert calls == {"temporal_conv": 2 * video_blocks + 1, "clip_norm": 2 * video_blocks,
                     "alpha_blend_residual": video_blocks, "spatial_attention": 1}


def test_channels_last_weights_and_inputs_give_the_same_result():
    _, ours = _pair(CONFIGS[1][1])
    z = torch.randn(4, 4, 4, 6)
    with torch.no_grad():
        expected = ours.decode(z, 2)
        for module in ours.modules():  # 4-D conv weights only (Conv3d weights have no channels_last)
            if isinstance(module, torch.nn.Conv2d):
                module.to(memory_format=torch.channels_last)
        got = ours.decode(z.contiguous(memory_format=torch.channels_last), 2)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_bf16_error_within_twice_diffusers_own():
    ref, ours = _pair(CONFIGS[1][1])
    z = torch.randn(3, 4, 4, 4)
    with torch.no_grad():
        exact = ours.decode(z, 3)
        ours_bf16 = ours.to(torch.bfloat16).decode(z.bfloat16(), 3)
        ref_bf16 = ref.to(torch.bfloat16).decode(z.bfloat16(), num_frames=3).sample
    assert ours_bf16.dtype == torch.bfloat16
    assert _rel(ours_bf16, exact) <= 2 * _rel(ref_bf16, exact) + 1e-3


def test_fp16_force_upcast_runs_fp32_on_fp16_weights():
    """force_upcast: fp16 weights, fp32 compute, so the result equals an fp32 model holding the
    same (fp16-rounded) weights; the fp16 weights themselves stay fp16."""
    _, ours = _pair(CONFIGS[1][1])
    ours.half()
    rounded = TemporalVAE(ours.config).eval()
    rounded.load_state_dict({k: v.float() for k, v in ours.state_dict().items()})
    z, x = torch.randn(3, 4, 4, 4).half().float(), torch.rand(2, 3, 16, 16).half().float()
    with torch.no_grad():
        assert ours.compute_dtype == torch.float32
        got, expected = ours.decode(z.half(), 3), rounded.decode(z, 3)
        latent, expected_latent = ours.encode(x.half()), rounded.encode(x)
    assert ours.quant_conv.weight.dtype == torch.float16
    assert got.dtype == torch.float32 and _rel(got, expected) < 1e-6
    assert _rel(latent, expected_latent) < 1e-6


def test_fp16_without_force_upcast_computes_in_fp16():
    ref, _ = _pair(CONFIGS[0][1])
    ours = TemporalVAE(VAEConfig.from_diffusers({**ref.config, "force_upcast": False})).eval()
    ours.load_state_dict(ref.state_dict())
    z = torch.randn(3, 4, 4, 4)
    with torch.no_grad():
        exact = ours.decode(z, 3)
        half = ours.half().decode(z, 3)
    assert ours.compute_dtype == torch.float16 and half.dtype == torch.float16
    assert _rel(half, exact) < 1e-2


def test_bad_inputs_raise_clear_errors():
    _, ours = _pair(CONFIGS[0][1])
    with pytest.raises(ValueError, match=r"encode: expected \(N, 3, H, W\)"):
        ours.encode(torch.rand(1, 4, 8, 8))
    with pytest.raises(ValueError, match="not a whole number of 4-frame clips"):
        ours.decode(torch.randn(6, 4, 4, 4), 4)
    with pytest.raises(ValueError, match="decode_chunk_size must be >= 1"):
        ours.decode(torch.randn(6, 4, 4, 4), 3, decode_chunk_size=0)
    with pytest.raises(ValueError, match=r"expected \(B, T, C, h, w\)"):
        ours.decode_latents(torch.randn(6, 4, 4, 4))


def test_full_size_keys_shapes_and_count_match_diffusers():
    """SVD's VAE built on the meta device: every name and shape equals diffusers' full-size module."""
    with torch.device("meta"):
        ours = TemporalVAE(VAEConfig())
        ref = AutoencoderKLTemporalDecoder(
            down_block_types=("DownEncoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2
        )
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters()) == 97_742_847  # svd_facts 8: 97.7M
    assert list(ours.buffers()) == []  # meta build + assign leaves nothing behind
