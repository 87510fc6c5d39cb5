"""Keeping the input image while sampling: image-initialised sampling (`image_init_sigma`) and the
first-frame hold (`keep_first_frame`), against a plain re-implementation of the EDM Euler loop,
closed-form limits, the long-video path, saved sampling defaults and the CLI."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from svd_fast import conditioner, sample
from svd_fast.checkpoints.io import CheckpointError
from svd_fast.denoiser import Conditioning, Denoiser
from svd_fast.long_video import sample_long_video
from svd_fast.pipeline import SVDPipeline
from svd_fast.sampling import get_sigmas_karras

KW = dict(height=64, width=64, num_frames=3, num_inference_steps=3, max_guidance_scale=1.0)


@pytest.fixture(scope="module")
def pipe():
    p = SVDPipeline.from_config("tiny", seed=0)
    p.set_progress_bar_config(disable=True)
    return p


def _image(size=(56, 40)):
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _latents(pipe, seed=0, **kw):
    return pipe(_image(), generator=torch.Generator().manual_seed(seed), output_type="latent", **{**KW, **kw}).frames


def _still(pipe):
    """The image's latent, computed here from the VAE and the scaling factor."""
    with torch.no_grad():
        return pipe.vae.encode(conditioner.preprocess_image(_image(), 64, 64)).float() * pipe.vae.config.scaling_factor


def _reference_euler(pipe, start_sigma, hold_first, seed=0):
    """EDM Euler written out: x = z + sigma_0 * eps (or eps * sqrt(sigma_0^2 + 1) from pure noise),
    x <- x + (sigma' - sigma) (x - D(x, sigma)) / sigma, and with the hold frame 0 <- z + sigma' * eps_0."""
    g = torch.Generator().manual_seed(seed)
    pixels = conditioner.preprocess_image(_image(), 64, 64)
    pixels = pixels + 0.02 * torch.randn(pixels.shape, generator=g)  # diffusers' order: augmentation noise first
    with torch.no_grad():
        cond = Conditioning(pipe.vae.encode(pixels)[:, None].repeat(1, 3, 1, 1, 1),
                            conditioner.encode_image(pipe.image_encoder, _image()),
                            conditioner.added_time_ids(7, 127, 0.02, 1, torch.float32, torch.device("cpu")))
        eps = torch.randn((1, 3, 4, 8, 8), generator=g)
        z = _still(pipe)
        sigmas = get_sigmas_karras(3, 0.002, start_sigma if start_sigma else 700.0)
        x = z[:, None] + sigmas[0] * eps if start_sigma else eps * (sigmas[0] ** 2 + 1) ** 0.5
        if hold_first:
            x[:, 0] = z + sigmas[0] * eps[:, 0]
        denoise = Denoiser(pipe.unet)
        for sigma, nxt in zip(sigmas[:-1], sigmas[1:]):
            x = x + (nxt - sigma) * (x - denoise(x, sigma.reshape(1), cond)) / sigma
            if hold_first:
                x[:, 0] = z + nxt * eps[:, 0]
    return x


@pytest.mark.parametrize("start_sigma,hold_first", [(3.0, False), (3.0, True), (None, True), (0.5, True)])
def test_pipeline_matches_the_written_out_euler_loop(pipe, start_sigma, hold_first):
    got = _latents(pipe, image_init_sigma=start_sigma, keep_first_frame=hold_first)
    want = _reference_euler(pipe, start_sigma, hold_first)
    torch.testing.assert_close(got.float(), want, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("steps,start", [(1, 3.0), (2, 3.0), (4, 0.5), (3, 700.0)])
def test_consistency_schedule_from_an_image_starts_at_the_first_grid_point_below(steps, start):
    """A student is asked only points of its 40-point Karras grid: from `start` the schedule is the
    first grid point at or below it, then points evenly spaced by index over the rest, then 0."""
    from svd_fast.sampling import get_sigmas_consistency

    grid = [(700.0 ** (1 / 7) + i / 39 * (0.002 ** (1 / 7) - 700.0 ** (1 / 7))) ** 7 for i in range(40)]
    first = next(i for i, sigma in enumerate(grid) if sigma <= start * (1 + 1e-9))
    k = (40 - first) // steps
    expected = [grid[first + j * k] for j in range(steps)] + [0.0]
    np.testing.assert_allclose(get_sigmas_consistency(steps, start=start).numpy(), np.float32(expected), rtol=1e-6)
    assert grid[first] <= start < (grid[first - 1] if first else float("inf"))


def test_a_consistency_student_samples_from_the_image_like_the_written_out_loop(tmp_path):
    """eta 0: x = f(x, s) + s' (x - f(x, s)) / s from x = z + s_0 eps on the student's grid, frame 0
    held; the pipeline must give exactly that."""
    from svd_fast.sampling import get_sigmas_consistency
    from tests.test_consistency import ANIMATELCM_SCHEDULER, _animatelcm_folder

    student = SVDPipeline.from_pretrained(_animatelcm_folder(tmp_path / "m", {**ANIMATELCM_SCHEDULER, "boundary_sigma": 0.002}))
    student.set_progress_bar_config(disable=True)
    got = _latents(student, sampler="consistency", eta=0.0, image_init_sigma=3.0, keep_first_frame=True,
                   noise_aug_strength=0.0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        cond = Conditioning(student.vae.encode(conditioner.preprocess_image(_image(), 64, 64))[:, None].repeat(1, 3, 1, 1, 1),
                            conditioner.encode_image(student.image_encoder, _image()),
                            conditioner.added_time_ids(7, 127, 0.0, 1, torch.float32, torch.device("cpu")))
        torch.randn((1, 3, 64, 64), generator=g)  # the (zero-strength) augmentation noise comes first
        eps = torch.randn((1, 3, 4, 8, 8), generator=g)
        z = _still(student)
        sigmas = get_sigmas_consistency(3, start=3.0)
        x = z[:, None] + sigmas[0] * eps
        x[:, 0] = z + sigmas[0] * eps[:, 0]
        f = Denoiser(student.unet, boundary_sigma=0.002)
        for sigma, nxt in zip(sigmas[:-1], sigmas[1:]):
            denoised = f(x, sigma.reshape(1), cond)
            x = denoised + nxt * (x - denoised) / sigma
            x[:, 0] = z + nxt * eps[:, 0]
    torch.testing.assert_close(got.float(), x, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got[:, 0].float(), z, atol=1e-6, rtol=0)


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m"])
def test_the_held_first_frame_ends_as_the_images_latent(pipe, sampler):
    """At sigma = 0 the held frame is the image's latent exactly, from pure noise or from the image."""
    z = _still(pipe)
    for start in (None, 3.0):
        latents = _latents(pipe, sampler=sampler, keep_first_frame=True, image_init_sigma=start)
        torch.testing.assert_close(latents[:, 0].float(), z, atol=1e-6, rtol=0)
        assert (latents[:, 1:].float() - z[:, None]).abs().mean() > 1e-3  # the other frames are sampled


def test_starting_near_sigma_min_returns_the_still_image(pipe):
    """From the image noised to sigma 0.003 every frame stays the image's latent (up to that noise);
    from sigma 3 the video departs from it, and more the higher the start."""
    z = _still(pipe)[:, None]
    near = _latents(pipe, image_init_sigma=0.003)
    assert (near.float() - z).abs().max() < 0.02
    departure = [float((_latents(pipe, image_init_sigma=s).float() - z).abs().mean()) for s in (0.3, 3.0, 30.0)]
    assert departure == sorted(departure) and departure[0] > 1e-3, departure


def test_videos_per_prompt_and_batches_hold_their_own_images(pipe):
    images = [_image(), Image.fromarray(np.full((40, 56, 3), 200, np.uint8))]
    out = pipe(images, generator=torch.Generator().manual_seed(0), output_type="latent", num_videos_per_prompt=2,
               keep_first_frame=True, image_init_sigma=2.0, **KW).frames
    with torch.no_grad():
        z = torch.cat([pipe.vae.encode(conditioner.preprocess_image(im, 64, 64)) for im in images]).float()
    z = (z * pipe.vae.config.scaling_factor).repeat_interleave(2, dim=0)
    # The pipeline encodes the images as one batch, the reference one at a time; oneDNN picks its conv
    # algorithm by shape, so the two differ by up to ~1e-3 on this random VAE (measured 2026-12-02: 2e-6
    # with svd_fast's native convs, 8e-4 with the reference backend, 2.2e-3 when the kernel timing under
    # CI's load chose it). The two images' latents differ by more (measured 0.116 at most), so a swap fails.
    torch.testing.assert_close(out[:, 0].float(), z, atol=1e-2, rtol=0)
    swapped = z.reshape(2, 2, *z.shape[1:]).flip(0).flatten(0, 1)
    assert (out[:, 0].float() - swapped).abs().max() > 0.05


@pytest.mark.parametrize("kwargs,match", [
    (dict(image_init_sigma=3.0, sigmas=[3.0, 1.0, 0.0]), "either sigmas or image_init_sigma"),
    (dict(image_init_sigma=3.0, sampler="consistency", num_inference_steps=40), "at or below sigma 3"),
    (dict(image_init_sigma=float("nan")), "image_init_sigma must be in"),
    (dict(image_init_sigma=0.001), "image_init_sigma must be in"),
    (dict(image_init_sigma=1000.0), "image_init_sigma must be in"),
    (dict(image_init_sigma=3.0, last_image=np.zeros((8, 8, 3), np.float32)), "without last_image"),
])
def test_bad_combinations_raise_clear_errors(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _latents(pipe, **kwargs)


@pytest.mark.parametrize("option", [dict(keep_first_frame=True), dict(image_init_sigma=2.0), dict(camera="zoom_in")])
def test_a_multiview_model_refuses_them(option):
    """A multi-view model's frame 0 is not the input view's copy: these options (and a camera start,
    svd_fast.camera_start) are refused."""
    from svd_fast.config import SVDConfig
    from svd_fast.multiview import SVDMultiViewPipeline

    tiny = SVDConfig.from_name("tiny")
    config = dataclasses.replace(tiny, conditioning="multiview", unet=dataclasses.replace(
        tiny.unet, projection_class_embeddings_input_dim=4 * tiny.unet.addition_time_embed_dim))
    views = SVDMultiViewPipeline.from_config(config)
    views.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="needs? an image model"):
        views(_image(), generator=torch.Generator().manual_seed(0), output_type="latent", **KW, **option)


def test_one_chunk_long_video_is_the_pipelines_video(pipe):
    """sample_long_video starts and holds its chunks itself: with one chunk it must give what the
    pipeline gives for the same arguments and noise (it draws a chunk's noise before the pipeline's
    augmentation noise)."""
    args = dict(image_init_sigma=2.0, keep_first_frame=True, fps=7, motion_bucket_id=127)
    generator = torch.Generator().manual_seed(4)
    noise = torch.randn((1, 3, 4, 8, 8), generator=generator)
    direct = pipe(_image(), generator=generator, latents=noise, output_type="np", **KW, **args).frames[0]
    kw = {k: v for k, v in KW.items() if k != "num_frames"}
    long = sample_long_video(pipe, _image(), 3, window=3, generator=torch.Generator().manual_seed(4), colour_anchor=False,
                             **kw, **args)
    np.testing.assert_allclose(long, direct, atol=1e-5)


def test_long_video_chunks_start_from_their_conditioning_frame(pipe):
    """Each chunk starts from its own conditioning frame's latent: from sigma 0.003 its new frames
    are that latent (up to the noise); the first chunk's frame 0 is held to the input exactly."""
    from tests.test_long_video import Recorder

    recorder = Recorder(pipe)
    sample_long_video(recorder, _image(), 7, window=3, overlap=1, generator=torch.Generator().manual_seed(0),
                      image_init_sigma=0.003, keep_first_frame=True, **{k: v for k, v in KW.items() if k != "num_frames"})
    assert len(recorder.calls) == 3
    for index, call in enumerate(recorder.calls):
        with torch.no_grad():
            still = pipe.still_latents(call["image"], 64, 64)
        new = call["latents"][:, 1:] if index else call["latents"]  # later chunks hold their first frame
        assert (new.float() - still[:, None]).abs().max() < 0.02, index
    torch.testing.assert_close(recorder.calls[0]["latents"][:, 0].float(), _still(pipe), atol=1e-6, rtol=0)


def test_sampling_defaults_are_saved_loaded_and_checked(tmp_path):
    pipe = SVDPipeline.from_config("tiny", seed=0)
    pipe.config = dataclasses.replace(pipe.config, image_init_sigma=2.5, keep_first_frame=True)
    pipe.save_pretrained(tmp_path / "m")
    loaded = SVDPipeline.from_pretrained(tmp_path / "m")
    assert (loaded.config.image_init_sigma, loaded.config.keep_first_frame) == (2.5, True)
    pipe.save_pretrained(tmp_path / "m.safetensors", layout="sgm")  # the config travels in the metadata
    loaded = SVDPipeline.from_pretrained(tmp_path / "m.safetensors")
    assert (loaded.config.image_init_sigma, loaded.config.keep_first_frame) == (2.5, True)
    defaults = tmp_path / "m" / "svd_fast_sampling.json"
    stored = json.loads(defaults.read_text())
    for key, bad in (("keep_first_frame", 1), ("keep_first_frame", "yes"), ("image_init_sigma", -1.0),
                     ("image_init_sigma", True)):
        defaults.write_text(json.dumps({**stored, key: bad}))
        with pytest.raises(CheckpointError, match=key):
            SVDPipeline.from_pretrained(tmp_path / "m")
    defaults.write_text(json.dumps({**stored, "image_init_sigma": None, "keep_first_frame": False}))
    loaded = SVDPipeline.from_pretrained(tmp_path / "m")
    assert (loaded.config.image_init_sigma, loaded.config.keep_first_frame) == (None, False)


@pytest.fixture(scope="module")
def holding_model(tmp_path_factory):
    pipe = SVDPipeline.from_config("tiny", seed=0)
    pipe.config = dataclasses.replace(pipe.config, num_frames=3, num_inference_steps=2, image_init_sigma=2.0,
                                      keep_first_frame=True, max_guidance_scale=1.0)
    path = tmp_path_factory.mktemp("holding") / "m"
    pipe.save_pretrained(path)
    return path


def _cli_video(model, image_path, out, *extra):
    assert sample.main(["--model", str(model), "--image", str(image_path), "--out", str(out), "--dtype", "fp32",
                        "--seed", "5", *extra]) == 0
    return np.stack([np.asarray(Image.open(p)) for p in sorted(out.parent.glob(out.stem + "_*.png"))]).astype(float)


def test_cli_uses_the_models_defaults_and_flags_turn_them_off(holding_model, tmp_path):
    image_path = tmp_path / "in.png"
    _image().save(image_path)
    loaded = SVDPipeline.from_pretrained(holding_model)
    loaded.set_progress_bar_config(disable=True)

    def reference(**kw):
        video = loaded(Image.open(image_path).convert("RGB"), height=64, width=64, num_frames=3, num_inference_steps=2,
                       max_guidance_scale=1.0, generator=torch.Generator().manual_seed(5), output_type="np", **kw).frames[0]
        return (video * 255).round()

    held = reference(image_init_sigma=2.0, keep_first_frame=True)
    assert np.abs(_cli_video(holding_model, image_path, tmp_path / "a.png") - held).max() <= 1
    plain = reference()
    assert np.abs(plain - held).max() > 5  # the defaults made a difference
    off = _cli_video(holding_model, image_path, tmp_path / "b.png", "--image-init-sigma", "0", "--no-keep-first-frame")
    assert np.abs(off - plain).max() <= 1


@pytest.mark.parametrize("extra, message", [
    (["--image-init-sigma", "-1"], "--image-init-sigma must be a finite number >= 0, got -1"),
    (["--image-init-sigma", "5000"], "image_init_sigma must be in (0.002, 700.0], got 5000.0"),
    (["--image-init-sigma", "3", "--sampler", "consistency", "--steps", "30"],
     "consistency sampling takes 1 to 14 steps (the grid points at or below sigma 3), got 30"),
    (["--camera", "zoom_in:0.5"], "the zoom per frame must be > 1"),  # svd_fast.camera_start's moves
    (["--camera", "zoom_in", "--camera-from", "noise", "--frames", "6", "--window", "3"], "camera_from='image' only"),
])
def test_cli_bad_values_are_one_line(holding_model, tmp_path, capsys, extra, message):
    image_path = tmp_path / "in.png"
    _image().save(image_path)
    out = tmp_path / "o.gif"
    assert sample.cli(["--model", str(holding_model), "--image", str(image_path), "--out", str(out), "--dtype", "fp32",
                       *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1], err
    assert not out.exists()


def test_variants_derived_from_an_image_model_must_switch_them_off():
    """A text, multi-view or interpolation model derived from an image model's config cannot carry
    the image-only sampling defaults (its pipeline would never use them)."""
    from svd_fast.config import IMAGE_SAMPLING_OFF, SVDConfig

    image_model = dataclasses.replace(SVDConfig.from_name("tiny"), image_init_sigma=3.0, keep_first_frame=True)
    for conditioning in ("text", "multiview", "interpolation"):
        with pytest.raises(ValueError, match="image-model sampling defaults"):
            dataclasses.replace(image_model, conditioning=conditioning)
        derived = dataclasses.replace(image_model, conditioning=conditioning, **IMAGE_SAMPLING_OFF)
        assert (derived.image_init_sigma, derived.keep_first_frame) == (None, False)


def test_cli_with_a_lora_starts_from_pure_noise_unless_told(holding_model, tmp_path, capsys):
    """Camera LoRAs set their motion at high noise: with --lora the model's default start is skipped
    (said once), the hold stays; an explicit --image-init-sigma still wins."""
    from test_comfyui_nodes import make_lora_file

    image_path = tmp_path / "in.png"
    _image().save(image_path)
    loaded = SVDPipeline.from_pretrained(holding_model)
    loaded.set_progress_bar_config(disable=True)
    lora = make_lora_file(loaded.unet, tmp_path / "camera_lora.safetensors")
    loaded.load_lora_weights(str(lora), adapter_name="camera")

    def reference(**kw):
        video = loaded(Image.open(image_path).convert("RGB"), height=64, width=64, num_frames=3, num_inference_steps=2,
                       max_guidance_scale=1.0, keep_first_frame=True, generator=torch.Generator().manual_seed(5),
                       output_type="np", **kw).frames[0]
        return (video * 255).round()

    video = _cli_video(holding_model, image_path, tmp_path / "a.png", "--lora", str(lora))
    assert "sampling starts from pure noise" in capsys.readouterr().out
    assert np.abs(video - reference()).max() <= 1
    assert np.abs(reference() - reference(image_init_sigma=2.0)).max() > 5
    told = _cli_video(holding_model, image_path, tmp_path / "b.png", "--lora", str(lora), "--image-init-sigma", "2")
    assert np.abs(told - reference(image_init_sigma=2.0)).max() <= 1
