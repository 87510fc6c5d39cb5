"""SVD-FI (svd_fast.interpolation): the conditioning layout, training, checkpoints, the shipped
default interpolator and its CLI."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from svd_fast import conditioner
from svd_fast.config import SVDConfig
from svd_fast.interpolation import SVDInterpolationPipeline, flow_interpolate, motion_bucket_from_ends
from svd_fast.pipeline import SVDPipeline

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "svd_fast" / "assets" / "default_interpolator"


def fi_config(**changes) -> SVDConfig:
    """The tiny preset as an SVD-FI model: 4 latent channels, in_channels 2 x 4 + 1 = 9 (the paper's)."""
    cfg = SVDConfig.from_name("tiny")
    unet = dataclasses.replace(cfg.unet, in_channels=9, mask_embedding=True, num_frames=5)
    return dataclasses.replace(cfg, unet=unet, conditioning="interpolation", num_frames=5, **changes)


@pytest.fixture(scope="module")
def tiny_fi():
    pipe = SVDInterpolationPipeline.from_config(fi_config())
    with torch.no_grad():
        pipe.unet.mask_embedding.copy_(torch.tensor([0.5, -1.0, 2.0, 3.0]))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 64, 64, generator=g), torch.rand(3, 64, 64, generator=g)


def _capture(pipe):
    """Record the UNet's inputs (sample, context) and what its conv_in sees."""
    seen = {"sample": [], "context": [], "conv_in": []}
    original = pipe.unet.forward

    def spy(sample, timestep, context, *rest):
        seen["sample"].append(sample.clone())
        seen["context"].append(context.clone())
        return original(sample, timestep, context, *rest)

    pipe.unet.forward = spy
    hook = pipe.unet.conv_in.register_forward_pre_hook(lambda m, args: seen["conv_in"].append(args[0].clone()))
    return seen, lambda: (hook.remove(), pipe.unet.__dict__.pop("forward"))


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_conditioning_layout_against_a_hand_built_tensor(tiny_fi, guidance):
    first, last = _images()
    seen, undo = _capture(tiny_fi)
    try:
        tiny_fi(first, last, height=64, width=64, num_frames=5, num_inference_steps=1, noise_aug_strength=0.0,
                max_guidance_scale=guidance, output_type="latent", generator=torch.Generator().manual_seed(0))
    finally:
        undo()
    z = [tiny_fi.vae.encode(conditioner.preprocess_image(x, 64, 64))[0] for x in (first, last)]  # (4, 8, 8)
    e = [conditioner.encode_image(tiny_fi.image_encoder, x)[0, 0] for x in (first, last)]  # (32,)
    # Built by hand, frame by frame: [z_s, 0, 0, 0, z_e] and the mask channel [1, 0, 0, 0, 1].
    expected = torch.zeros(5, 5, 8, 8)
    expected[0, :4], expected[4, :4] = z[0], z[1]
    expected[0, 4], expected[4, 4] = 1.0, 1.0
    z_m = torch.tensor([0.5, -1.0, 2.0, 3.0]).reshape(4, 1, 1)
    after = expected.clone()  # what conv_in sees: z_m in the missing frames
    after[1:4, :4] = z_m
    sample, context, conv_in = seen["sample"][0], seen["context"][0], seen["conv_in"][0]
    cond_row = 1 if guidance > 1 else 0  # the guidance batch is [unconditional, conditional]
    assert sample.shape == (cond_row + 1, 5, 9, 8, 8) and context.shape == (cond_row + 1, 2, 32)
    torch.testing.assert_close(sample[cond_row, :, 4:], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(context[cond_row], torch.stack(e), rtol=1e-5, atol=1e-5)
    conv_in = conv_in.reshape(cond_row + 1, 5, 9, 8, 8)
    torch.testing.assert_close(conv_in[cond_row, :, 4:], after, rtol=1e-5, atol=1e-5)
    if guidance > 1:  # unconditional: no CLIP tokens, no latents, mask 0, so z_m in every frame
        assert not sample[0, :, 4:].any() and not context[0].any()
        torch.testing.assert_close(conv_in[0, :, 4:8], z_m.expand(5, 4, 8, 8))
        assert not conv_in[0, :, 8].any()


@pytest.mark.parametrize("guidance", [1.0, 2.0])
@pytest.mark.parametrize("prior", ["blend", "flow"])
@pytest.mark.parametrize("prior_noise", [1.0, 0.0, 0.5])
def test_latent_prior_denoises_the_difference_from_the_blend_of_the_ends(guidance, prior, prior_noise):
    """UNetConfig.latent_prior: one Euler step to sigma 0 returns D, which must be
    mu + c_skip (x - mu) + c_out v with mu built here by hand (the end latents at the ends; between
    them their blend, or with prior="flow" the VAE means of the ends interpolated by optical flow),
    the UNet fed c_in (x - mu); the unconditional half of guidance has mu = 0 and guidance mixes the D's.
    The start x is mu plus prior_noise times the scaled initial noise (0: mu itself)."""
    cfg = fi_config()
    pipe = SVDInterpolationPipeline.from_config(dataclasses.replace(cfg, unet=dataclasses.replace(cfg.unet, latent_prior=0.7)))
    pipe.set_progress_bar_config(disable=True)
    first, last = _images()
    seen = []

    def fake_unet(sample, timestep, context, *rest):  # a known v that differs between the guidance halves
        seen.append(sample.clone())
        return 0.5 * sample[:, :, :4] + 0.25 + context[:, :1, :4, None, None]

    pipe.unet.forward = fake_unet
    sigma = 2.0
    latents = torch.randn(1, 5, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    out = pipe(first, last, height=64, width=64, num_frames=5, sigmas=[sigma, 0.0], latents=latents, noise_aug_strength=0.0,
               max_guidance_scale=guidance, output_type="latent", pin_ends=False, prior=prior,
               prior_noise=prior_noise).frames
    z_first, z_last = (pipe.vae.encode(conditioner.preprocess_image(x, 64, 64))[0] for x in (first, last))
    mu = torch.stack([0.7 * ((1 - t / 4) * z_first + t / 4 * z_last) for t in range(5)])[None]
    if prior == "flow":
        ends = [((conditioner.preprocess_image(x, 64, 64)[0] + 1) / 2).permute(1, 2, 0).numpy() for x in (first, last)]
        frames = torch.from_numpy(flow_interpolate(*ends, 5)).permute(0, 3, 1, 2) * 2 - 1
        mu[0, 1:4] = 0.7 * pipe.vae.encode(frames)[1:4]
        assert (mu[0, 2] - 0.35 * (z_first + z_last)).abs().max() > 0.01  # differs from the blend
    x = mu + prior_noise * latents * (sigma**2 + 1) ** 0.5
    c_skip, c_out, c_in = 1 / (sigma**2 + 1), -sigma / (sigma**2 + 1) ** 0.5, 1 / (sigma**2 + 1) ** 0.5
    e = torch.stack([conditioner.encode_image(pipe.image_encoder, first)[0, 0, :4]])
    sample = seen[0]
    cond_row = 1 if guidance > 1 else 0
    torch.testing.assert_close(sample[cond_row, :, :4], (c_in * (x - mu))[0], rtol=1e-4, atol=1e-5)
    v_cond = 0.5 * c_in * (x - mu) + 0.25 + e.reshape(1, 1, 4, 1, 1)
    d_cond = mu + c_skip * (x - mu) + c_out * v_cond
    expected = d_cond
    if guidance > 1:
        torch.testing.assert_close(sample[0, :, :4], (c_in * x)[0], rtol=1e-4, atol=1e-5)  # no prior
        d_uncond = c_skip * x + c_out * (0.5 * c_in * x + 0.25)  # zero CLIP tokens
        scale = torch.linspace(1.0, guidance, 5).reshape(1, 5, 1, 1, 1)
        expected = d_uncond + scale * (d_cond - d_uncond)
    torch.testing.assert_close(out.float(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prior", ["blend", "flow"])
def test_prior_conditioning_puts_the_prior_in_the_missing_frames_slots(prior):
    """UNetConfig.prior_conditioning: the conditioning slots of the frames whose mask is 0 carry the
    prior's latents (unscaled: mu / latent_prior), and conv_in sees them plus z_m; the ends and the
    mask are as in the paper's layout; the unconditional half (mask 0, prior 0) is z_m alone.
    Expected tensors built by hand from the VAE means of the ends and of flow_interpolate."""
    cfg = fi_config()
    unet = dataclasses.replace(cfg.unet, latent_prior=0.7, prior_conditioning=True)
    pipe = SVDInterpolationPipeline.from_config(dataclasses.replace(cfg, unet=unet))
    with torch.no_grad():
        pipe.unet.mask_embedding.copy_(torch.tensor([0.5, -1.0, 2.0, 3.0]))
    pipe.set_progress_bar_config(disable=True)
    first, last = _images()
    seen, undo = _capture(pipe)
    try:
        pipe(first, last, height=64, width=64, num_frames=5, num_inference_steps=1, noise_aug_strength=0.0,
             max_guidance_scale=2.0, output_type="latent", pin_ends=False, prior=prior,
             generator=torch.Generator().manual_seed(0))
    finally:
        undo()
    z_first, z_last = (pipe.vae.encode(conditioner.preprocess_image(x, 64, 64))[0] for x in (first, last))
    slots = torch.stack([(1 - t / 4) * z_first + t / 4 * z_last for t in range(5)])
    if prior == "flow":
        ends = [((conditioner.preprocess_image(x, 64, 64)[0] + 1) / 2).permute(1, 2, 0).numpy() for x in (first, last)]
        slots[1:4] = pipe.vae.encode(torch.from_numpy(flow_interpolate(*ends, 5)).permute(0, 3, 1, 2) * 2 - 1)[1:4]
    mask = torch.tensor([1.0, 0, 0, 0, 1]).reshape(5, 1, 1, 1).expand(5, 1, 8, 8)
    z_m = torch.tensor([0.5, -1.0, 2.0, 3.0]).reshape(4, 1, 1)
    sample = seen["sample"][0]
    conv_in = seen["conv_in"][0].reshape(2, 5, 9, 8, 8)
    torch.testing.assert_close(sample[1, :, 4:], torch.cat([slots, mask], dim=1), rtol=1e-4, atol=1e-4)
    after = slots.clone()
    after[1:4] += z_m
    torch.testing.assert_close(conv_in[1, :, 4:8], after, rtol=1e-4, atol=1e-4)
    assert not sample[0, :, 4:].any()  # unconditional: nothing known, no prior
    torch.testing.assert_close(conv_in[0, :, 4:8], z_m.expand(5, 4, 8, 8))
    assert SVDInterpolationPipeline.from_config(fi_config()).unet.config.prior_conditioning is False
    with pytest.raises(ValueError, match="prior_conditioning needs"):
        dataclasses.replace(cfg.unet, prior_conditioning=True)  # no latent prior to show


def test_prior_argument_errors(tiny_fi):
    first, last = _images()
    with pytest.raises(ValueError, match="needs a model with a latent prior"):
        tiny_fi(first, last, height=64, width=64, num_inference_steps=1, prior="flow", output_type="latent")
    with pytest.raises(ValueError, match="'flow' or 'blend'"):
        tiny_fi(first, last, height=64, width=64, num_inference_steps=1, prior="optical", output_type="latent")
    with pytest.raises(ValueError, match="prior_noise=0.0 needs a model with a latent prior"):
        tiny_fi(first, last, height=64, width=64, num_inference_steps=1, prior_noise=0.0, output_type="latent")
    with pytest.raises(ValueError, match="prior_noise .*latent prior only"):
        fi_config(prior_noise=0.0)  # as a sampling default too
    with_prior = fi_config()
    with_prior = dataclasses.replace(with_prior, unet=dataclasses.replace(with_prior.unet, latent_prior=0.7))
    with pytest.raises(ValueError, match="prior_noise must be >= 0"):
        dataclasses.replace(with_prior, prior_noise=-0.5)
    with pytest.raises(ValueError, match="prior_noise must be >= 0"):
        SVDInterpolationPipeline.from_config(with_prior)(first, last, height=64, width=64, num_inference_steps=1,
                                                         prior_noise=float("nan"), output_type="latent")


def test_latent_prior_is_stored_in_both_layouts_and_needs_conditioning_latents(tmp_path):
    cfg = fi_config()
    with_prior = dataclasses.replace(cfg, unet=dataclasses.replace(cfg.unet, latent_prior=1.25, prior_conditioning=True),
                                     prior_noise=0.0)
    pipe = SVDInterpolationPipeline.from_config(with_prior)
    for layout, target in (("diffusers", tmp_path / "fi"), ("sgm", tmp_path / "fi.safetensors")):
        pipe.save_pretrained(target, layout=layout)
        loaded = SVDInterpolationPipeline.from_pretrained(target).config
        assert (loaded.unet.latent_prior, loaded.unet.prior_conditioning, loaded.prior_noise) == (1.25, True, 0.0), layout
    unet_json = json.loads((tmp_path / "fi" / "unet" / "config.json").read_text())
    assert unet_json["svd_fast_latent_prior"] == 1.25 and unet_json["svd_fast_prior_conditioning"] is True
    text_unet = dataclasses.replace(SVDConfig.from_name("tiny").unet, in_channels=4)  # no conditioning latents
    with pytest.raises(ValueError, match="latent_prior"):
        dataclasses.replace(text_unet, latent_prior=1.0)


@pytest.mark.parametrize("videos", [1, 2])
def test_flow_prior_left_alone_decodes_to_the_flow_interpolation_itself(videos):
    """A denoiser that returns its prior unchanged (v = sample / sigma makes D = mu in one step to 0):
    with pin_ends the output is flow_interpolate of the ends, exactly, though this random VAE's round
    trip is far from it (pin_ends=False shows that); with prior="blend" it is not the flow frames."""
    cfg = fi_config()
    pipe = SVDInterpolationPipeline.from_config(dataclasses.replace(cfg, unet=dataclasses.replace(cfg.unet, latent_prior=0.7)))
    pipe.set_progress_bar_config(disable=True)
    sigma = 3.0
    pipe.unet.forward = lambda sample, *rest: sample[:, :, :4] / sigma
    first = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(5))
    last = torch.roll(first, shifts=(2, 6), dims=(1, 2))
    ends = [((conditioner.preprocess_image(x, 64, 64)[0] + 1) / 2).permute(1, 2, 0).numpy() for x in (first, last)]
    flow = torch.from_numpy(flow_interpolate(*ends, 5)).permute(0, 3, 1, 2)

    def run(**kw):
        return pipe(first, last, height=64, width=64, num_frames=5, sigmas=[sigma, 0.0], noise_aug_strength=0.0,
                    max_guidance_scale=1.0,
                    num_videos_per_prompt=videos, output_type="pt", generator=torch.Generator().manual_seed(0), **kw).frames

    out = run()
    assert out.shape == (videos, 5, 3, 64, 64)
    for video in out:
        torch.testing.assert_close(video, flow, rtol=0, atol=2e-5)
    assert (run(pin_ends=False)[0, 1:4] - flow[1:4]).abs().mean() > 0.05  # the VAE round trip alone
    assert (run(prior="blend")[0, 1:4] - flow[1:4]).abs().mean() > 0.01


def test_pin_ends_puts_the_true_ends_back_and_blends_their_residuals():
    from svd_fast.interpolation import pin_to_ends

    g = torch.Generator().manual_seed(2)
    video = torch.rand(1, 5, 3, 4, 4, generator=g) * 0.5 + 0.25
    first, last = torch.rand(1, 3, 4, 4, generator=g) * 0.5 + 0.25, torch.rand(1, 3, 4, 4, generator=g) * 0.5 + 0.25
    out = pin_to_ends(video, first, last)
    torch.testing.assert_close(out[:, 0], first)
    torch.testing.assert_close(out[:, 4], last)
    for t in range(1, 4):  # frame t: its own pixels plus (1 - t/4) of the first end's error and t/4 of the last's
        a = t / 4
        expected = video[:, t] + (1 - a) * (first - video[:, 0]) + a * (last - video[:, 4])
        torch.testing.assert_close(out[:, t], expected.clamp(0, 1))


def test_image_to_video_call_on_other_variants_names_the_right_pipeline(tiny_fi):
    first, _ = _images()
    for conditioning, name in (("interpolation", "SVDInterpolationPipeline"), ("text", "SVDTextToVideoPipeline"),
                               ("multiview", "SVDMultiViewPipeline")):
        config = dataclasses.replace(tiny_fi.config, conditioning=conditioning)
        pipe = SVDPipeline(tiny_fi.unet, tiny_fi.vae, tiny_fi.image_encoder, config)
        with pytest.raises(ValueError, match=f"sample it with {name}"):
            pipe(first, height=64, width=64, num_inference_steps=1)


def test_training_inputs_layout_and_the_mask_embedding_learns(tiny_fi):
    from svd_fast.train.objective import DiffusionObjective, ObjectiveConfig, prepare_inputs

    g = torch.Generator().manual_seed(1)
    frames = torch.rand(2, 5, 3, 64, 64, generator=g) * 2 - 1
    batch = {"frames": frames, "fps": torch.tensor([8.0, 4.0]), "motion": torch.tensor([1.0, 2.0]),
             "image": torch.tensor([False, False]), "seed": torch.tensor([3, 4])}
    config = ObjectiveConfig(cond_aug_mean=-100.0, cond_aug_std=0.0, drop_image_embedding=0.0, drop_image_latent=0.0)
    inputs = prepare_inputs(batch, tiny_fi.vae, tiny_fi.image_encoder, config, "cpu", conditioning="interpolation")
    expected = torch.zeros(2, 5, 5, 8, 8)
    for i in range(2):
        for t in (0, 4):
            expected[i, t, :4] = tiny_fi.vae.encode(frames[i, t][None])[0]
            expected[i, t, 4] = 1.0
    torch.testing.assert_close(inputs["image_latents"], expected, rtol=1e-4, atol=1e-4)
    clip = conditioner.encode_image(tiny_fi.image_encoder, ((frames[:, [0, 4]].flatten(0, 1) + 1) / 2))
    torch.testing.assert_close(inputs["context"], clip.reshape(2, 2, -1), rtol=1e-4, atol=1e-4)
    latents = torch.stack([tiny_fi.vae.encode(f) for f in frames]) * tiny_fi.vae.config.scaling_factor
    torch.testing.assert_close(inputs["latents"], latents, rtol=1e-4, atol=1e-4)
    assert inputs["added_time_ids"][:, 0].tolist() == [7.0, 3.0]

    unet = SVDInterpolationPipeline.from_config(fi_config()).unet.train().requires_grad_(True)
    loss = DiffusionObjective(unet)(**inputs).mean()
    loss.backward()
    assert unet.mask_embedding.grad is not None and unet.mask_embedding.grad.abs().sum() > 0


def test_training_flow_prior_is_the_flow_of_the_ends_and_the_unet_sees_x_minus_it(tiny_fi):
    """objective.interpolation_prior = 'flow': prior_latents = the end latents at the ends and the VAE
    means of flow_interpolate(ends) between them (built here by hand), zeros for a clip whose
    conditioning is dropped; the UNet then gets c_in (x - scale * prior)."""
    from svd_fast.train.objective import DiffusionObjective, ObjectiveConfig, prepare_inputs

    first = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(2))
    frames = torch.stack([torch.roll(first, shifts=(0, 2 * t), dims=(1, 2)) for t in range(5)]) * 2 - 1  # a 2 px/frame pan
    batch = {"frames": torch.stack([frames, frames.flip(0)]), "fps": torch.tensor([8.0, 8.0]),
             "motion": torch.tensor([2.0, 2.0]), "image": torch.tensor([False, False]), "seed": torch.tensor([3, 4])}
    config = ObjectiveConfig(cond_aug_mean=-100.0, cond_aug_std=0.0, drop_image_embedding=0.0, drop_image_latent=0.0,
                             interpolation_prior="flow")
    inputs = prepare_inputs(batch, tiny_fi.vae, tiny_fi.image_encoder, config, "cpu", conditioning="interpolation")
    for i in range(2):
        clip = batch["frames"][i]
        ends = [((clip[t] + 1) / 2).permute(1, 2, 0).numpy() for t in (0, 4)]
        flow = torch.from_numpy(flow_interpolate(*ends, 5)).permute(0, 3, 1, 2) * 2 - 1
        expected = tiny_fi.vae.encode(flow)  # frame 0 and 4 of flow_interpolate are the ends themselves
        torch.testing.assert_close(inputs["prior_latents"][i], expected, rtol=1e-4, atol=1e-4)
        blend = (expected[0] + expected[4]) / 2
        assert (inputs["prior_latents"][i, 2] - blend).abs().max() > 0.05  # flow, not the blend
    dropped = prepare_inputs(batch, tiny_fi.vae, tiny_fi.image_encoder, dataclasses.replace(config, drop_image_latent=1.0),
                             "cpu", conditioning="interpolation")
    assert not dropped["prior_latents"].any() and not dropped["image_latents"].any()
    assert "prior_latents" not in prepare_inputs(batch, tiny_fi.vae, tiny_fi.image_encoder,
                                                 dataclasses.replace(config, interpolation_prior="blend"), "cpu",
                                                 conditioning="interpolation")
    with pytest.raises(ValueError, match="interpolation_prior"):
        dataclasses.replace(config, interpolation_prior="warp").validate()

    cfg = fi_config()
    unet = SVDInterpolationPipeline.from_config(dataclasses.replace(cfg, unet=dataclasses.replace(cfg.unet, latent_prior=0.7))).unet
    seen = []
    original = unet.forward
    unet.forward = lambda sample, *rest: (seen.append(sample.clone()), original(sample, *rest))[1]
    DiffusionObjective(unet)(**inputs)
    sigma = inputs["sigma"].reshape(-1, 1, 1, 1, 1)
    x = inputs["latents"] + sigma * inputs["noise"]
    c_in = 1 / (sigma**2 + 1) ** 0.5
    torch.testing.assert_close(seen[0][:, :, :4], c_in * (x - 0.7 * inputs["prior_latents"]), rtol=1e-4, atol=1e-5)


def test_checkpoint_round_trip_in_both_layouts(tiny_fi, tmp_path):
    from safetensors.torch import load_file


    state = {k: v.clone() for k, v in tiny_fi.unet.state_dict().items()}
    for layout, target in (("diffusers", tmp_path / "fi"), ("sgm", tmp_path / "fi.safetensors")):
        tiny_fi.save_pretrained(target, layout=layout)
        loaded = SVDInterpolationPipeline.from_pretrained(target)
        assert loaded.config == tiny_fi.config and loaded.config.conditioning == "interpolation"
        assert loaded.unet.config.mask_embedding and loaded.unet.config.in_channels == 9
        for key, value in state.items():
            assert torch.equal(loaded.unet.state_dict()[key], value), key
    unet_config = json.loads((tmp_path / "fi" / "unet" / "config.json").read_text())
    assert unet_config["svd_fast_mask_embedding"] is True and unet_config["in_channels"] == 9
    # An sgm file without svd_fast's metadata: the mask embedding is inferred from its tensor.
    assert "model.diffusion_model.mask_embedding" in load_file(tmp_path / "fi.safetensors")
    from svd_fast.checkpoints import sgm
    from svd_fast.checkpoints.io import TensorSource
    from svd_fast.unet import VideoUNet

    unet_config = dataclasses.replace(fi_config().unet, block_out_channels=(64, 64), num_attention_heads=(1, 1))
    weights = {sgm.UNET_PREFIX + sgm.unet_key(k, unet_config): v for k, v in VideoUNet(unet_config).state_dict().items()}
    inferred = sgm.infer_unet_config(TensorSource.from_state_dict(weights, "fi"))
    assert inferred.mask_embedding and inferred.in_channels == 9
    del weights[sgm.UNET_PREFIX + "mask_embedding"]
    assert not sgm.infer_unet_config(TensorSource.from_state_dict(weights, "i2v")).mask_embedding


def test_diffusers_loads_the_folder_and_leaves_the_mask_embedding_unused(tiny_fi, tmp_path):
    diffusers = pytest.importorskip("diffusers")  # installed by setup.sh --dev: the parity tests need it
    tiny_fi.save_pretrained(tmp_path / "fi")
    unet, info = diffusers.UNetSpatioTemporalConditionModel.from_pretrained(tmp_path / "fi" / "unet",
                                                                           output_loading_info=True)
    assert unet.config.in_channels == 9 and info["unexpected_keys"] == ["mask_embedding"]
    torch.testing.assert_close(unet.conv_in.weight, tiny_fi.unet.conv_in.weight)


@pytest.mark.parametrize("prior", [None, "flow"])
def test_fi_recipe_trains_exports_and_loads(tmp_path, prior):
    """A tiny run through svd_fast.train with the interpolation conditioning: loss, export, load;
    with prior='flow' a model with a latent prior trained on the flow prior and seeing it in its
    conditioning slots (UNetConfig.prior_conditioning, as the shipped one)."""
    from svd_fast.train.data import DataConfig
    from svd_fast.train.objective import ObjectiveConfig
    from svd_fast.train.recipe import OptimConfig, Recipe
    from svd_fast.train.trainer import train

    model = fi_config(height=64, width=64)
    objective = ObjectiveConfig()
    if prior:
        model = dataclasses.replace(model, unet=dataclasses.replace(model.unet, latent_prior=0.5,
                                                                    prior_conditioning=prior == "flow"))
        objective = ObjectiveConfig(interpolation_prior=prior)
    recipe = Recipe(name="fi", output_dir=str(tmp_path / "run"), model=model, objective=objective,
                    data=DataConfig(num_frames=5, height=32, width=32, num_samples=16),
                    optim=OptimConfig(lr=1e-3), batch_size=2, max_steps=2, log_every=1, checkpoint_every=100)
    summary = train(recipe)
    assert np.isfinite(summary["last_loss"])
    pipe = SVDInterpolationPipeline.from_pretrained(tmp_path / "run" / "final")
    assert pipe.config.conditioning == "interpolation" and pipe.unet.mask_embedding.abs().sum() > 0  # it moved
    assert pipe.unet.config.latent_prior == (0.5 if prior else 0.0)
    assert pipe.unet.config.prior_conditioning == (prior == "flow")


# ------------------------------------------------------------------------ the shipped interpolator
@pytest.fixture(scope="module")
def shipped():
    assert (SHIPPED / "model_index.json").is_file(), f"the default interpolator is missing at {SHIPPED}"
    pipe = SVDInterpolationPipeline.from_pretrained(SHIPPED, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _square_clip(speed: int, size: int = 64, side: int = 12, start: int = 10) -> np.ndarray:
    """5 frames: a red square moving `speed` px per frame to the right over a smooth grey-blue ground."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    ground = np.stack([0.35 + 0.1 * yy, 0.4 + 0.1 * xx, 0.55 + 0.05 * (xx + yy)], axis=-1)
    clip = np.repeat(ground[None], 5, axis=0).astype(np.float32)
    top = (size - side) // 2
    for t in range(5):
        left = start + speed * t
        clip[t, top : top + side, left : left + side] = (0.9, 0.15, 0.1)
    return clip


def _redness(frame: np.ndarray) -> np.ndarray:
    return np.clip(frame[..., 0] - 0.5 * (frame[..., 1] + frame[..., 2]), 0, None)


def _centroid_x(frame: np.ndarray) -> float:
    r = _redness(frame)
    r = np.where(r > 0.5 * r.max(), r, 0)
    return float((r * np.arange(frame.shape[1])).sum() / r.sum())


def test_constant_velocity_lands_between_the_ends(shipped):
    """A square moving 4 px per frame: in the in-between frames it lies between the end positions,
    in order, near constant velocity, and at full strength where linear blending leaves half-strength
    ghosts. Measured on the shipped model (v5, its sampling defaults: the fused-flow prior, one step
    from sigma 20 starting at the prior, seed 0): x = 15.5 | 18.68, 22.73, 27.76 | 31.5 against the
    constant-velocity 19.5, 23.5, 27.5 (mean error 0.6 px), middle-frame peak 1.00 of the square's (the
    blend's: 0.44). With the blend prior the model, which cannot tell where this flat square went,
    leaves it at the ends (15.53, 23.53, 31.51; peak 0.47): the flow prior is what places it."""
    speed = 4
    clip = _square_clip(speed)
    first, last = (torch.from_numpy(np.ascontiguousarray(clip[t])).permute(2, 0, 1) for t in (0, 4))
    video = shipped(first, last, num_frames=5, motion_bucket_id=motion_bucket_from_ends(clip[0], clip[4], 5),
                    generator=torch.Generator().manual_seed(0), output_type="np").frames[0]
    xs = [_centroid_x(f) for f in video]
    truth = [_centroid_x(f) for f in clip]
    assert truth[0] < xs[1] < xs[2] < xs[3] < truth[4], (xs, truth)  # between the ends, in order
    assert np.mean([abs(a - b) for a, b in zip(xs[1:4], truth[1:4])]) < 1.5, (xs, truth)  # measured 0.6
    peak = _redness(clip[0]).max()
    blend_middle = 0.5 * clip[0] + 0.5 * clip[4]
    assert _redness(blend_middle).max() < 0.5 * peak  # the blend's ghosts (checks the measure itself)
    assert _redness(video[2]).max() > 0.8 * peak, _redness(video[2]).max() / peak  # measured 1.00


def test_shipped_model_against_linear_blending_on_held_out_clips(shipped):
    """A subset of bench/interpolation.py's held-out clips (4 procedural, 4 photo pans, 4 real
    footage windows). Issue 16's target is SVD-FI >= 2 dB above linear blending on every kind of
    clip; here the shipped v5 (fused-flow prior, one step from sigma 20 starting at the prior) gains
    +3.53 dB on average (v4: +3.44; v3: +2.63; v2 with the flow prior: +0.31; v1 without a prior: -3.9),
    carried by the photo pans (+3.5 to +13.5) while real footage, whose ends 4 frames apart barely move,
    loses up to 1.2. This
    guards the measured figure (1 dB margin); the full set's figures per kind are in the model card."""
    sys.path.insert(0, str(REPO))
    from bench.interpolation import FACTOR, footage_clips, linear_blend, photo_clips, procedural_clips

    from svd_fast.train.video_metrics import psnr

    clips = procedural_clips(4, 64) + photo_clips(1, 64) + footage_clips(2, 64)
    gains = []
    for i, (clip, fps) in enumerate(clips):
        first, last = (torch.from_numpy(np.ascontiguousarray(clip[t])).permute(2, 0, 1) for t in (0, FACTOR))
        video = shipped(first, last, num_frames=FACTOR + 1, fps=int(np.clip(round(fps), 3, 30)),
                        motion_bucket_id=motion_bucket_from_ends(clip[0], clip[FACTOR], FACTOR + 1),
                        generator=torch.Generator().manual_seed(i), output_type="np").frames[0]
        truth = clip[1:FACTOR]
        fi = np.mean([psnr(a, b) for a, b in zip(video[1:FACTOR], truth)])
        blend = np.mean([psnr(a, b) for a, b in zip(linear_blend(clip), truth)])
        gains.append(fi - blend)
    assert len(clips) == 12
    assert np.mean(gains) > MEASURED_GAIN_DB - 1.0, gains


def _moving_texture(path: list[tuple[float, float]]) -> np.ndarray:
    """A smooth random texture at each (x, y) offset of `path` (px), 64 px frames cut from 96 px."""
    import cv2

    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.random((96, 96, 3)).astype(np.float32), (0, 0), 2.0)
    texture = (texture - texture.min()) / (texture.max() - texture.min())
    return np.stack([cv2.warpAffine(texture, np.float32([[1, 0, -x], [0, 1, -y]]), (96, 96),
                                    flags=cv2.INTER_LINEAR)[16:80, 16:80] for x, y in path])


def test_flow_warp_reference_recovers_a_known_translation():
    """bench/interpolation.py's optical-flow reference on a clip the test builds: a smooth random
    texture moving 1.5 px/frame right and 0.5 px/frame down (5 frames, 64 px). Its in-between
    frames must land near the truth, far above blending the ends."""
    sys.path.insert(0, str(REPO))
    from bench.interpolation import FACTOR, flow_warp, linear_blend

    from svd_fast.train.video_metrics import psnr

    clip = _moving_texture([(1.5 * t, 0.5 * t) for t in range(FACTOR + 1)])
    truth = clip[1:FACTOR]
    flow = np.mean([psnr(a, b) for a, b in zip(flow_warp(clip), truth)])
    blend = np.mean([psnr(a, b) for a, b in zip(linear_blend(clip), truth)])
    assert flow > 30 and flow > blend + 5, (flow, blend)


def test_true_motion_bound_separates_straight_moves_from_shake():
    """bench/interpolation.py's headroom figures on clips the test builds. A straight even move
    (1.5, 0.5) px/frame: the straight-path bound recovers the in-between frames (as the free one does)
    and the measured path is on the line. The same ends with the in-between frames shaken 1.5 px off
    the line (known): the measured off-line distance is near 1.5 px, the free bound still recovers the
    frames (it reads them), and the straight-path bound falls 10 dB below it, near blending, because no
    straight move between the ends puts content where the shake did."""
    sys.path.insert(0, str(REPO))
    from bench.interpolation import FACTOR, linear_blend, true_motion

    from svd_fast.train.video_metrics import psnr

    straight = [(1.5 * t, 0.5 * t) for t in range(FACTOR + 1)]
    shaken = [straight[0], (1.5 + 1.5, 0.5), (3.0, 1.0 - 1.5), (4.5 - 1.5, 1.5), straight[-1]]
    figures = {}
    for name, path in (("straight", straight), ("shaken", shaken)):
        clip = _moving_texture(path)
        bound = true_motion(clip)
        score = lambda video: np.mean([psnr(a, b) for a, b in zip(video, clip[1:FACTOR])])  # noqa: E731
        figures[name] = {"blend": score(linear_blend(clip)), "free": score(bound["true_motion"]),
                         "linear": score(bound["true_motion_linear"]), "off": bound["off_line_px"],
                         "apart": bound["ends_apart_px"]}
    s, k = figures["straight"], figures["shaken"]
    assert abs(s["apart"] - np.hypot(6.0, 2.0)) < 0.5 and s["off"] < 0.2, s
    assert s["linear"] > s["blend"] + 8 and s["linear"] > 35, s
    assert 1.2 < k["off"] < 1.8, k
    assert k["free"] > 35 and k["linear"] < k["free"] - 10 and k["linear"] < s["linear"] - 10, k


def _isoluminant_clip(shift: tuple[float, float]) -> np.ndarray:
    """Two 64 px frames: a purple square textured in hue only (red against blue at one grey level, OpenCV's
    RGB -> grey weights) moving by `shift` (x, y) px over a still green texture of that grey level."""
    import cv2

    rng = np.random.default_rng(3)

    def texture():
        t = cv2.GaussianBlur(rng.random((64, 64)).astype(np.float32), (0, 0), 1.5)
        return ((t - t.min()) / (t.max() - t.min()) - 0.5)[..., None]

    green = np.float32([0.1, 0.4, 0.1])
    level = np.float32([0.299, 0.587, 0.114]) @ green
    purple = np.float32([(level - 0.114 * 0.6) / 0.299, 0.0, 0.6])  # the grey level of green
    background = np.clip(green * (1 + 0.3 * texture()), 0, 1)
    square = np.clip(purple + 0.8 * texture() * np.float32([0.114, 0.0, -0.299]), 0, 1)  # grey level unchanged
    frames = []
    for dx, dy in ((0.0, 0.0), shift):
        moved = cv2.warpAffine(square, np.float32([[1, 0, dx], [0, 1, dy]]), (64, 64), flags=cv2.INTER_LINEAR)
        inside = np.zeros((64, 64), np.float32)
        inside[20:40, 18:38] = 1
        inside = cv2.warpAffine(inside, np.float32([[1, 0, dx], [0, 1, dy]]), (64, 64), flags=cv2.INTER_LINEAR)
        frames.append(np.clip(inside[..., None] * moved + (1 - inside[..., None]) * background, 0, 1))
    return np.stack(frames)


def test_fused_flow_follows_a_shape_that_grey_levels_cannot_see():
    """A purple square over green texture of the same brightness, moved (5, 3) px: in grey levels it is
    (nearly) invisible, so DIS on grey alone misses its motion, while fused_flow (a candidate per colour
    channel, chosen by colour warp error) recovers the translation inside it (ground truth built here)."""
    import cv2

    from svd_fast.interpolation import INTERPOLATION_FLOW, fused_flow, optical_flow

    shift = (5.0, 3.0)
    a, b = _isoluminant_clip(shift)
    grey = [cv2.cvtColor((x * 255).round().astype(np.uint8), cv2.COLOR_RGB2GRAY) for x in (a, b)]
    assert float(grey[0][22:38, 20:36].std()) < 1.0  # the construction: the square is flat in grey levels
    inner = (slice(24, 36), slice(22, 34))  # inside the square in frame a, away from its edges
    grey_flow = optical_flow(*grey, **INTERPOLATION_FLOW)[inner].reshape(-1, 2)
    fused = fused_flow(a, b, **INTERPOLATION_FLOW)[inner].reshape(-1, 2)
    grey_error = np.linalg.norm(np.median(grey_flow, 0) - shift)
    fused_error = np.linalg.norm(np.median(fused, 0) - shift)
    assert grey_error > 2.0, np.median(grey_flow, 0)  # grey levels alone do not follow it
    assert fused_error < 0.5, np.median(fused, 0)


MEASURED_GAIN_DB = 3.53
"""mean dB over linear blending on this subset, measured on the shipped model (v5, its sampling defaults,
2026-12-04; v4: 3.44, and 3.30 with the grey-level flow before fused_flow)"""


# ------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Two real photographs (held-out ones, never trained on) as PNG files: a crop and a shifted crop."""
    from svd_fast.real_media import fetch

    folder = tmp_path_factory.mktemp("photos")
    photo = Image.open(fetch("chelsea")).convert("RGB").resize((96, 64))
    paths = [folder / "a.png", folder / "b.png"]
    photo.crop((0, 0, 64, 64)).save(paths[0])
    photo.crop((12, 0, 76, 64)).save(paths[1])
    return paths


def test_cli_default_is_the_shipped_interpolator(photos, tmp_path, capsys):
    from svd_fast import interpolate

    out = tmp_path / "between.png"
    assert interpolate.main(["--first", str(photos[0]), "--last", str(photos[1]), "--out", str(out), "--steps", "4",
                             "--dtype", "fp32", "--seed", "5"]) == 0
    printed = capsys.readouterr().out
    assert "default_interpolator (SVD-FI model)" in printed and "wrote 5 frames" in printed
    frames = np.stack([np.asarray(Image.open(p)) for p in sorted(tmp_path.glob("between_*.png"))]) / 255
    pipe = SVDInterpolationPipeline.from_pretrained(SHIPPED, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    a, b = (Image.open(p).convert("RGB") for p in photos)
    ends = [((conditioner.preprocess_image(x, 64, 64)[0] + 1) / 2).permute(1, 2, 0).numpy() for x in (a, b)]
    expected = interpolate.between(pipe, a, b, 5, seed=5, num_inference_steps=4,
                                   motion_bucket_id=motion_bucket_from_ends(*ends, 5))
    np.testing.assert_allclose(frames, expected, atol=1 / 255 + 1e-6)


@pytest.mark.parametrize("flags, call", [(["--prior", "blend"], {"prior": "blend"}),
                                         (["--prior-noise", "1"], {"prior_noise": 1.0})])
def test_cli_prior_flags_are_the_pipeline_arguments(photos, tmp_path, flags, call):
    """--prior blend / --prior-noise 1 sample what the pipeline's prior="blend" / prior_noise=1.0 do,
    and differ from the default (flow prior from the prior itself); on an image-to-video model each is
    a one-line error."""
    from svd_fast import interpolate, sample

    outputs = {}
    for name, extra in (("flag", flags), ("default", [])):
        out = tmp_path / f"{name}.png"
        assert interpolate.main(["--first", str(photos[0]), "--last", str(photos[1]), "--out", str(out), "--steps", "2",
                                 "--dtype", "fp32", "--seed", "5"] + extra) == 0
        outputs[name] = np.stack([np.asarray(Image.open(p)) for p in sorted(tmp_path.glob(f"{name}_*.png"))]) / 255
    pipe = SVDInterpolationPipeline.from_pretrained(SHIPPED, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    a, b = (Image.open(p).convert("RGB") for p in photos)
    ends = [((conditioner.preprocess_image(x, 64, 64)[0] + 1) / 2).permute(1, 2, 0).numpy() for x in (a, b)]
    expected = interpolate.between(pipe, a, b, 5, seed=5, num_inference_steps=2,
                                   motion_bucket_id=motion_bucket_from_ends(*ends, 5), **call)
    np.testing.assert_allclose(outputs["flag"], expected, atol=1 / 255 + 1e-6)
    # 4x the tolerance above (measured: 8 / 255 with --prior-noise 1, more with --prior blend)
    assert np.abs(outputs["flag"][1:4] - outputs["default"][1:4]).max() > 4 / 255
    result = subprocess.run([sys.executable, "-m", "svd_fast.interpolate", "--first", str(photos[0]), "--last",
                             str(photos[1]), "--model", str(sample.DEFAULT_MODEL), *flags, "--out",
                             str(tmp_path / "o.gif")], capture_output=True, text=True)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "has no latent prior" in lines[0], result.stderr


def test_cli_prior_noise_must_be_non_negative(photos, tmp_path, capsys):
    from svd_fast import interpolate

    with pytest.raises(SystemExit) as exit_info:
        interpolate.main(["--first", str(photos[0]), "--last", str(photos[1]), "--out", str(tmp_path / "o.gif"),
                          "--prior-noise", "-0.5"])
    assert exit_info.value.code == 2 and "--prior-noise must be >= 0, got -0.5" in capsys.readouterr().err
    assert not (tmp_path / "o.gif").exists()


def test_cli_image_to_video_model_uses_the_training_free_baseline(photos, tmp_path, capsys):
    from svd_fast import interpolate, sample

    assert interpolate.main(["--first", str(photos[0]), "--last", str(photos[1]), "--out", str(tmp_path / "o.gif"),
                             "--model", str(sample.DEFAULT_MODEL), "--steps", "2", "--frames", "4"]) == 0
    assert "training-free bidirectional sampling" in capsys.readouterr().out


def test_cli_video_mode_with_the_interpolator(tmp_path, capsys):
    from svd_fast import interpolate
    from svd_fast.video_io import read_video, save_video

    clip = _square_clip(3)[[0, 4]]
    save_video((np.concatenate([clip, clip[::-1]]) * 255).round().astype(np.uint8), tmp_path / "in.gif", fps=2)
    assert interpolate.main(["--video", str(tmp_path / "in.gif"), "--out", str(tmp_path / "out.gif"), "--steps", "2",
                             "--dtype", "fp32"]) == 0
    frames, fps = read_video(tmp_path / "out.gif")
    assert len(frames) == 3 * 4 + 1 and fps == pytest.approx(8, abs=0.5)  # 4 keyframes -> 3 intervals of 4
    assert "SVD-FI model" in capsys.readouterr().out


@pytest.mark.parametrize("make_input, message", [
    (lambda d: d / "missing.png", "not found"),
    (lambda d: (d / "text.png").write_text("not an image") and d / "text.png", "text.png"),
])
def test_cli_bad_image_is_one_line(tmp_path, photos, make_input, message):
    bad = make_input(tmp_path)
    result = subprocess.run([sys.executable, "-m", "svd_fast.interpolate", "--first", str(bad), "--last", str(photos[1]),
                             "--out", str(tmp_path / "o.gif")], capture_output=True, text=True)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]


def test_cli_refuses_a_model_that_cannot_interpolate(tmp_path, photos, tiny_fi):
    config = dataclasses.replace(tiny_fi.config, conditioning="multiview")
    SVDPipeline(tiny_fi.unet, tiny_fi.vae, tiny_fi.image_encoder, config).save_pretrained(tmp_path / "mv")
    result = subprocess.run([sys.executable, "-m", "svd_fast.interpolate", "--first", str(photos[0]), "--last",
                             str(photos[1]), "--model", str(tmp_path / "mv"), "--out", str(tmp_path / "o.gif")],
                            capture_output=True, text=True)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "'multiview' model cannot interpolate" in lines[0]


def test_cli_flow_method_lands_on_the_true_in_between_crop(tmp_path, capsys):
    """--method flow on two crops of a held-out photo 6 px apart: the middle frame must be near the
    crop 3 px along (the truth, cut from the same photo), well above blending the ends (measured on
    flow_interpolate's float frames, DIS flow: 79.5 vs 21.7 dB; 12 px apart 52.3 vs 18.7, where the
    Farneback flow used before lost the fine fur: 18.9 vs 18.7)."""
    from svd_fast import interpolate
    from svd_fast.real_media import fetch
    from svd_fast.train.video_metrics import psnr

    photo = Image.open(fetch("chelsea")).convert("RGB").resize((144, 96))
    crops = [photo.crop((x, 0, x + 96, 96)) for x in (0, 3, 6)]
    for name, crop in zip(("a", "truth", "b"), crops):
        crop.save(tmp_path / f"{name}.png")
    assert interpolate.main(["--first", str(tmp_path / "a.png"), "--last", str(tmp_path / "b.png"),
                             "--out", str(tmp_path / "f.png"), "--method", "flow", "--frames", "3"]) == 0
    printed = capsys.readouterr().out
    assert "optical flow (no model) at 96x96" in printed and "wrote 3 frames" in printed
    frames = [np.asarray(Image.open(p), np.float64) / 255 for p in sorted(tmp_path.glob("f_*.png"))]
    a, truth, b = (np.asarray(c, np.float64) / 255 for c in crops)
    assert frames[0].shape == (96, 96, 3) and np.abs(frames[0] - a).max() <= 1 / 255  # ends kept, full size
    inner = np.s_[:, 8:-8]  # the borders have no source to warp from
    flow, blend = psnr(frames[1][inner], truth[inner]), psnr(((a + b) / 2)[inner], truth[inner])
    assert flow > blend + 10, (flow, blend)


def test_cli_flow_method_video_mode_and_its_errors(tmp_path):
    from svd_fast import interpolate
    from svd_fast.video_io import read_video, save_video

    clip = _square_clip(3)[[0, 4]]
    save_video((np.concatenate([clip, clip[::-1]]) * 255).round().astype(np.uint8), tmp_path / "in.gif", fps=2)
    assert interpolate.main(["--video", str(tmp_path / "in.gif"), "--out", str(tmp_path / "out.gif"),
                             "--method", "flow", "--factor", "3"]) == 0
    frames, fps = read_video(tmp_path / "out.gif")
    assert len(frames) == 3 * 3 + 1 and fps == pytest.approx(6, abs=0.5)
    result = subprocess.run([sys.executable, "-m", "svd_fast.interpolate", "--video", str(tmp_path / "in.gif"),
                             "--out", str(tmp_path / "o.gif"), "--method", "flow", "--steps", "4"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--method flow uses no model: drop --steps" in result.stderr
