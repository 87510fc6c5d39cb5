"""The warp render (svd_fast.motion_render, SVDPipeline(render='warp')): the input image moved by the
camera motion of the model's frames. Checked against camera moves this test makes itself (known
affine maps), a written-out convolution, the pipeline's own frames, saved defaults and the CLI."""
import dataclasses
import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from svd_fast import conditioner, sample
from svd_fast.checkpoints.io import CheckpointError
from svd_fast.motion_render import camera_motion, render_batch, render_from_image, smooth_in_time, warp_image
from svd_fast.pipeline import SVDPipeline
from tests.test_image_init import _cli_video, _image  # the sample CLI's PNG frames (seed 5); a random picture

KW = dict(height=64, width=64, num_frames=4, num_inference_steps=2, max_guidance_scale=1.0)


def _texture(size=64, seed=0) -> np.ndarray:
    """A smooth random colour texture (H, W, 3) in [0, 1]: detail at every scale optical flow can follow."""
    rng = np.random.default_rng(seed)
    layers = [cv2.resize(rng.random((size // k, size // k, 3)).astype(np.float32), (size, size),
                         interpolation=cv2.INTER_CUBIC) for k in (2, 4, 8)]
    return np.clip(sum(layers) / 3, 0, 1).astype(np.float32)


def _camera_path(frames: int) -> np.ndarray:
    """Known affine maps (output pixel -> input pixel): a pan of (0.8, -0.5) px/frame, a zoom out
    of 1% per frame and a turn of 0.4 degrees per frame about the centre."""
    maps, centre = [], np.array([31.5, 31.5])
    for t in range(frames):
        angle, scale = np.deg2rad(0.4 * t), 1 + 0.01 * t
        linear = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        shift = centre - linear @ centre + np.array([0.8 * t, -0.5 * t])
        maps.append(np.concatenate([linear, shift[:, None]], axis=1))
    return np.stack(maps)


def test_camera_motion_recovers_a_known_camera_move():
    image, truth = _texture(), _camera_path(6)
    video = warp_image(image, truth)
    found = camera_motion(video)
    np.testing.assert_array_equal(found[0], [[1, 0, 0], [0, 1, 0]])
    ys, xs = np.mgrid[8:56, 8:56]
    points = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    for t in range(1, 6):  # where each inner pixel comes from, found vs true
        error = np.abs(found[t] @ points - truth[t] @ points).max()
        assert error < 0.25, (t, error)
    assert np.abs(found[5, :, 2] - truth[5, :, 2]).max() > 0  # not the identity by accident
    assert np.abs(truth[5] @ points - points[:2]).max() > 3  # the move is several pixels


def test_smooth_in_time_is_a_gaussian_over_the_path_with_frame_0_the_identity():
    rng = np.random.default_rng(2)
    identity = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    path = identity + 0.3 * rng.standard_normal((7, 2, 3))
    path[0] = identity
    np.testing.assert_array_equal(smooth_in_time(path, 0.0), path)
    smooth = smooth_in_time(path, 0.7)
    # Written out: each entry convolved over time with the normalised Gaussian (radius 3 sigma,
    # rounded up; ends repeated), then shifted so frame 0 is the identity.
    radius = 3
    weights = np.exp(-0.5 * (np.arange(-radius, radius + 1) / 0.7) ** 2)
    weights /= weights.sum()
    expected = np.empty_like(path)
    for i in range(2):
        for j in range(3):
            series = np.pad(path[:, i, j], radius, mode="edge")
            expected[:, i, j] = np.convolve(series, weights[::-1], mode="valid")
    expected = identity + (expected - identity) - (expected[:1] - identity)
    np.testing.assert_allclose(smooth, expected, atol=1e-12)
    np.testing.assert_allclose(smooth[0], identity, atol=1e-12)
    jitter = identity + np.array([[[0, 0, (-1) ** t]] * 2 for t in range(8)])  # +-1 px every other frame
    calmer = smooth_in_time(jitter, 0.7)
    assert np.abs(np.diff(calmer[:, :, 2], axis=0)).max() < 0.5 * np.abs(np.diff(jitter[:, :, 2], axis=0)).max()


def test_render_of_a_true_camera_move_is_that_move():
    image = _texture(seed=3)
    video = warp_image(image, _camera_path(6))
    rendered = render_from_image(video, image, time_sigma=0.0)
    np.testing.assert_array_equal(rendered[0], image)  # frame 0 is the input itself
    inner = np.s_[:, 6:-6, 6:-6]
    assert np.abs(rendered[inner] - video[inner]).mean() < 0.01
    assert np.abs(video[inner][5] - image[6:-6, 6:-6]).mean() > 0.05  # the frames did move
    with pytest.raises(ValueError, match="differ in size"):
        render_from_image(video, image[:32])


@pytest.fixture(scope="module")
def pipe():
    p = SVDPipeline.from_config("tiny", seed=0)
    p.set_progress_bar_config(disable=True)
    return p


def test_pipeline_warp_render_moves_the_input_along_its_own_frames(pipe):
    def call(render):
        return pipe(_image(), generator=torch.Generator().manual_seed(4), output_type="pt", num_videos_per_prompt=2,
                    render=render, keep_first_frame=True, **KW)

    frames, warped = call("frames"), call("warp")
    image = ((conditioner.preprocess_image(_image(), 64, 64) + 1) / 2).clamp(0, 1)
    expected = render_batch(frames.frames, image.repeat(2, 1, 1, 1))
    torch.testing.assert_close(warped.frames, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(warped.frames[:, 0], image.expand(2, -1, -1, -1), atol=1e-5, rtol=0)
    assert (warped.frames - frames.frames).abs().max() > 0.1  # the frames are not what is returned
    assert "render" in warped.timings and "render" not in frames.timings


@pytest.mark.parametrize("kwargs, message", [
    (dict(render="bogus"), "render must be one of"),
    (dict(render="warp", output_type="latent"), "cannot return latents"),
    (dict(render="warp", last_image=_image()), "without last_image"),
])
def test_pipeline_render_errors(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe(_image(), **{**KW, **kwargs})


def test_render_default_is_saved_loaded_and_checked(tmp_path):
    from svd_fast.config import SVDConfig

    pipe = SVDPipeline.from_config("tiny", seed=0)
    pipe.config = dataclasses.replace(pipe.config, render="warp", image_init_sigma=2.0)
    pipe.save_pretrained(tmp_path / "m")
    assert SVDPipeline.from_pretrained(tmp_path / "m").config.render == "warp"
    pipe.save_pretrained(tmp_path / "m.safetensors", layout="sgm")
    loaded = SVDPipeline.from_pretrained(tmp_path / "m.safetensors")
    assert loaded.config.render == "warp"
    # The render's default start is pure noise (its whole motion); the frames' is the saved sigma.
    assert (loaded.default_image_init_sigma(), loaded.default_image_init_sigma(render="frames")) == (None, 2.0)
    defaults = tmp_path / "m" / "svd_fast_sampling.json"
    stored = json.loads(defaults.read_text())
    for bad in ("bogus", 1, None):
        defaults.write_text(json.dumps({**stored, "render": bad}))
        with pytest.raises(CheckpointError, match="render"):
            SVDPipeline.from_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="render must be one of"):
        dataclasses.replace(SVDConfig.from_name("tiny"), render="flow")
    with pytest.raises(ValueError, match="image-model sampling defaults"):
        dataclasses.replace(SVDConfig.from_name("tiny"), render="warp", conditioning="text")


@pytest.fixture(scope="module")
def warp_model(tmp_path_factory):
    pipe = SVDPipeline.from_config("tiny", seed=0)
    pipe.config = dataclasses.replace(pipe.config, num_frames=4, num_inference_steps=2, image_init_sigma=2.0,
                                      keep_first_frame=True, max_guidance_scale=1.0, render="warp")
    path = tmp_path_factory.mktemp("warp") / "m"
    pipe.save_pretrained(path)
    return path


def test_cli_renders_as_the_model_says_and_flags_override(warp_model, tmp_path):
    image_path = tmp_path / "in.png"
    _image().save(image_path)
    loaded = SVDPipeline.from_pretrained(warp_model)
    loaded.set_progress_bar_config(disable=True)

    def reference(**kw):
        video = loaded(Image.open(image_path).convert("RGB"), height=64, width=64, num_frames=4, num_inference_steps=2,
                       max_guidance_scale=1.0, keep_first_frame=True, generator=torch.Generator().manual_seed(5),
                       output_type="np", **kw).frames[0]
        return (video * 255).round()

    warped = reference(render="warp", image_init_sigma=None)  # the render starts from pure noise
    assert np.abs(_cli_video(warp_model, image_path, tmp_path / "a.png") - warped).max() <= 1
    frames = reference(render="frames", image_init_sigma=2.0)  # the frames from the saved start
    assert np.abs(_cli_video(warp_model, image_path, tmp_path / "b.png", "--render", "frames") - frames).max() <= 1
    assert np.abs(warped - frames).max() > 5


def test_cli_long_video_with_the_warp_render_is_one_line(warp_model, tmp_path, capsys):
    image_path = tmp_path / "in.png"
    _image().save(image_path)
    out = tmp_path / "o.gif"
    code = sample.cli(["--model", str(warp_model), "--image", str(image_path), "--out", str(out), "--dtype", "fp32",
                       "--render", "warp", "--frames", "9"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("error: --render warp makes one window of frames; a long video (--frames > --window) renders "
                       "frames"), err
    assert not out.exists()


def test_cli_long_video_renders_frames_when_the_model_says_warp(warp_model, tmp_path):
    """A long video falls back to the frames (and their saved start) instead of refusing the model's default."""
    image_path = tmp_path / "in.png"
    _image().save(image_path)
    video = _cli_video(warp_model, image_path, tmp_path / "long.png", "--frames", "6")
    assert video.shape[0] == 6


def test_cli_render_with_a_prompt_is_refused(capsys):
    assert sample.cli(["--prompt", "a red disc", "--render", "warp", "--out", "x.gif"]) == 2
    assert "--render is an image-to-video flag" in capsys.readouterr().err
