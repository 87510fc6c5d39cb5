"""Camera control by the start of sampling (svd_fast.camera_start): the moved frames against closed
forms (a blob's centre under zoom and pan, integer pans as shifted arrays), the pipeline against a
written-out Euler loop from those frames, move parsing, and the CLI."""
import numpy as np
import pytest
import torch
from PIL import Image

from svd_fast import conditioner, sample
from svd_fast.camera_start import CameraMove, as_move, move_from_text, moved_frames, parse_move, warped_noise
from svd_fast.denoiser import Conditioning, Denoiser
from svd_fast.pipeline import SVDPipeline
from svd_fast.sampling import get_sigmas_karras

from tests.test_image_init import KW, pipe  # noqa: F401  (the tiny pipeline fixture and its call arguments)


def _blob(size, offset, sigma=1.5):
    """(1, 1, size, size): a Gaussian blob at the centre ((size - 1) / 2) plus offset (x, y)."""
    c = (size - 1) / 2
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij")
    return torch.exp(-((xs - c - offset[0]) ** 2 + (ys - c - offset[1]) ** 2) / (2 * sigma**2)).float()[None, None]


def _centre(frame):
    """(x, y) centroid of a (1, H, W) frame, relative to the picture's centre."""
    w = frame[0].double().clamp(min=0)
    ys, xs = torch.meshgrid(torch.arange(w.shape[0], dtype=torch.float64), torch.arange(w.shape[1], dtype=torch.float64),
                            indexing="ij")
    c = (w.shape[0] - 1) / 2
    return float((w * xs).sum() / w.sum() - c), float((w * ys).sum() / w.sum() - c)


@pytest.mark.parametrize("move, offset", [(CameraMove(zoom=1.1), (6.0, -4.0)), (CameraMove(zoom=1 / 1.1), (10.0, 7.0)),
                                          (CameraMove(pan_x=0.05, pan_y=-0.03), (-3.0, 2.0)),
                                          (CameraMove(zoom=1.05, pan_x=-0.04), (5.0, 5.0))])
def test_a_blob_lands_where_the_closed_form_puts_it(move, offset):
    """Picture point p (from the centre) is at zoom^k p + k pan * size in frame k."""
    size, frames = 96, 5
    video = moved_frames(_blob(size, offset), move, frames)
    assert video.shape == (1, frames, 1, size, size)
    for k in range(frames):
        z = move.zoom**k
        want = (z * offset[0] + k * move.pan_x * size, z * offset[1] + k * move.pan_y * size)
        got = _centre(video[0, k])
        assert abs(got[0] - want[0]) < 0.1 and abs(got[1] - want[1]) < 0.1, (k, got, want)


def test_integer_pans_are_shifted_arrays_with_the_border_repeated():
    """A pan of 8 px per frame samples at pixel centres: frame k is the image shifted by 8k px
    (right and down here), the uncovered columns and rows repeating the image's first ones."""
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.uniform(-1, 1, (2, 3, 32, 40)).astype(np.float32))
    video = moved_frames(image, CameraMove(pan_x=8 / 40, pan_y=4 / 32), 3)
    for k in range(3):
        dx, dy = 8 * k, 4 * k
        want = image.clone()
        if k:
            want = torch.cat([image[..., :1, :].expand(-1, -1, dy, -1), image[..., :-dy, :]], dim=-2)
            want = torch.cat([want[..., :1].expand(-1, -1, -1, dx), want[..., :-dx]], dim=-1)
        torch.testing.assert_close(video[:, k], want, atol=1e-5, rtol=0)


def test_frame_zero_is_the_image_and_values_stay_in_range():
    image = torch.rand(1, 3, 24, 24) * 2 - 1
    video = moved_frames(image, CameraMove(zoom=1.3, pan_x=0.1), 4)
    assert torch.equal(video[:, 0], image)
    assert video.min() >= image.min() and video.max() <= image.max()  # bicubic's overshoot is clipped


def test_warped_noise_pans_by_whole_pixels_are_shifted_copies():
    """A pan of one latent pixel a frame: frame k is frame 0 shifted by k pixels where they overlap,
    the new column is fresh noise."""
    noise = warped_noise(CameraMove(pan_x=1 / 12, pan_y=-1 / 10), 3, 2, 10, 12, torch.Generator().manual_seed(0))
    assert noise.shape == (3, 2, 10, 12)
    for k in (1, 2):
        torch.testing.assert_close(noise[k][:, : 10 - k, k:], noise[0][:, k:, : 12 - k], rtol=0, atol=1e-6)
    assert (noise[1][:, :, 0] - noise[0][:, :, 0]).abs().min() > 0  # what entered is not a copy


def test_warped_noise_is_standard_normal_in_every_frame():
    """Sums of disjoint iid cells over the root of their count: per frame mean 0, variance 1, and
    neighbouring pixels uncorrelated, for zooms in and out (checked over 40 draws x 16 channels)."""
    for move in (CameraMove(zoom=1.1), CameraMove(zoom=1 / 1.1, pan_x=0.03)):
        draws = torch.cat([warped_noise(move, 4, 16, 12, 12, torch.Generator().manual_seed(s)) for s in range(40)], 1)
        for k in range(4):
            x = draws[k].double()
            assert abs(float(x.mean())) < 0.03 and abs(float(x.var()) - 1) < 0.05, (move, k)
            corr = float((x[:, :, 1:] * x[:, :, :-1]).mean())
            assert abs(corr) < 0.04, (move, k, corr)


def test_warped_noise_zoom_shares_cells_as_the_closed_form_says():
    """Zoom 2 with 8x8 cells per pixel: a frame-1 pixel is 4x4 cells of one frame-0 pixel's 8x8, so
    their correlation is 16 / (4 * 8) = 0.5; a frame-1 pixel and another frame-0 pixel share none."""
    draws = torch.stack([warped_noise(CameraMove(zoom=2.0), 2, 8, 8, 8, torch.Generator().manual_seed(s))
                         for s in range(200)]).double()  # (200, 2, 8, 8, 8)
    # frame-1 pixel (row 4, col 4) sits right of and below the centre: frame-0 pixel (4, 4) holds its cells
    same = float((draws[:, 1, :, 4, 4] * draws[:, 0, :, 4, 4]).mean())
    other = float((draws[:, 1, :, 4, 4] * draws[:, 0, :, 4, 5]).mean())
    assert abs(same - 0.5) < 0.05 and abs(other) < 0.05, (same, other)


@pytest.mark.parametrize("spec, want", [
    ("zoom_in", CameraMove(zoom=1.05)), ("zoom_out:1.25", CameraMove(zoom=0.8)), ("pan_left", CameraMove(pan_x=0.025)),
    ("pan_right:0.1", CameraMove(pan_x=-0.1)), ("pan_up:0.02", CameraMove(pan_y=0.02)), ("pan_down", CameraMove(pan_y=-0.025)),
])
def test_moves_parse_to_the_documented_motion(spec, want):
    """pan_left: the camera turns left, the picture moves right (+x), as the pan LoRAs' labels."""
    got = parse_move(spec)
    assert got.zoom == pytest.approx(want.zoom) and got.pan_x == pytest.approx(want.pan_x)
    assert got.pan_y == pytest.approx(want.pan_y)


def test_moves_compose():
    move = as_move(["zoom_in:1.1", "zoom_in:1.2", "pan_left:0.1", "pan_up:0.2", CameraMove(pan_x=0.05)])
    assert (move.zoom, move.pan_x, move.pan_y) == pytest.approx((1.32, 0.15, 0.2))


@pytest.mark.parametrize("spec, message", [
    ("dolly", "camera move must be one of"), ("zoom_in:fast", "must be a number"), ("zoom_in:0.9", "must be > 1"),
    ("pan_left:1.5", "in (0, 1)"), ("pan_left:nan", "in (0, 1)"),
])
def test_bad_moves_are_clear_errors(spec, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_move(spec)


@pytest.mark.parametrize("name", ["pan_left", "pan_right", "pan_up", "pan_down", "zoom_in", "zoom_out"])
def test_the_captioners_words_name_the_move_that_made_them(name):
    """A textured picture moved by a move, captioned by the curation captioner (its flow measurement), and
    the caption's words read back by move_from_text: the same move."""
    from svd_fast.curate.captions import describe_motion

    rng = np.random.default_rng(0)
    texture = torch.nn.functional.interpolate(torch.from_numpy(rng.random((1, 3, 16, 16))).float(), size=96,
                                              mode="bicubic")[..., 16:80, 16:80]  # smooth blobs, 64x64
    speed = ":1.06" if name.startswith("zoom") else ":0.05"
    frames = moved_frames(texture, parse_move(name + speed), 6)[0]
    clip = (frames.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().byte().numpy()
    words = describe_motion(clip, [t / 8 for t in range(6)]).camera
    assert move_from_text(f"a bright scene, mostly red (60%); {words} at 0.40 frame widths/s") == parse_move(name), words


def test_prompts_without_camera_words_give_no_move():
    assert move_from_text("a dim scene, mostly blue; static camera; nothing moves on its own") is None
    assert move_from_text("a cat on a sofa") is None
    both = move_from_text("CAMERA ZOOMS IN while the camera pans left")
    assert both == as_move(["zoom_in", "pan_left"])


def _image():
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))


def _reference(pipe, start_sigma, seed=0):
    """EDM Euler written out from the moved start, with frame 0 held: x_k = z_k + sigma_0 eps_k, z_k the
    VAE latent of the image shifted right by 8k px (built here by slicing), x <- x + (sigma' - sigma)
    (x - D) / sigma."""
    g = torch.Generator().manual_seed(seed)
    pixels = conditioner.preprocess_image(_image(), 64, 64)
    augmented = pixels + 0.02 * torch.randn(pixels.shape, generator=g)
    with torch.no_grad():
        cond = Conditioning(pipe.vae.encode(augmented)[:, None].repeat(1, 3, 1, 1, 1),
                            conditioner.encode_image(pipe.image_encoder, _image()),
                            conditioner.added_time_ids(7, 127, 0.02, 1, torch.float32, torch.device("cpu")))
        eps = torch.randn((1, 3, 4, 8, 8), generator=g)
        shifted = [torch.cat([pixels[..., :1].expand(-1, -1, -1, 8 * k), pixels[..., : 64 - 8 * k]], dim=-1) for k in range(3)]
        z = torch.stack([pipe.vae.encode(s).float() * pipe.vae.config.scaling_factor for s in shifted], dim=1)
        sigmas = get_sigmas_karras(3, 0.002, start_sigma)
        x = z + sigmas[0] * eps
        denoise = Denoiser(pipe.unet)
        for sigma, nxt in zip(sigmas[:-1], sigmas[1:]):
            x = x + (nxt - sigma) * (x - denoise(x, sigma.reshape(1), cond)) / sigma
            x[:, 0] = z[:, 0] + nxt * eps[:, 0]
    return x


@pytest.mark.parametrize("start_sigma", [None, 1.5])
def test_pipeline_starts_from_the_moved_frames(pipe, start_sigma):
    """camera='pan_left:0.125' (8 px a frame at 64 px), frame 0 held; the start sigma is image_init_sigma,
    else START_SIGMA (3)."""
    got = pipe(_image(), generator=torch.Generator().manual_seed(0), output_type="latent", camera="pan_left:0.125",
               image_init_sigma=start_sigma, keep_first_frame=True, **KW).frames
    want = _reference(pipe, start_sigma or 3.0)
    torch.testing.assert_close(got.float(), want, atol=2e-5, rtol=1e-4)


def test_near_sigma_min_the_latents_are_the_moved_images(pipe):
    """From sigma 0.003 the denoiser changes next to nothing: every frame is the VAE latent of the
    image zoomed k times (encoded here frame by frame), not the still image's."""
    latents = pipe(_image(), generator=torch.Generator().manual_seed(0), output_type="latent", camera="zoom_in:1.2",
                   image_init_sigma=0.003, **KW).frames.float()
    pixels = conditioner.preprocess_image(_image(), 64, 64)
    with torch.no_grad():
        z = torch.stack([pipe.vae.encode(f[None]).float()[0] for f in moved_frames(pixels, CameraMove(zoom=1.2), 3)[0]])
    z = z * pipe.vae.config.scaling_factor
    to_moved, to_still = (latents[0, 1:] - z[1:]).abs().mean(), (latents[0, 1:] - z[0]).abs().mean()
    assert (latents[0] - z).abs().max() < 0.02 and to_still > 5 * to_moved, (to_moved, to_still)


def test_camera_from_noise_samples_from_the_warped_noise(pipe):
    """camera_from='noise': the pipeline's initial noise is warped_noise drawn from the generator after
    the conditioning's augmentation noise (diffusers' order), sampled from pure noise as plain latents."""
    got = pipe(_image(), generator=torch.Generator().manual_seed(3), output_type="latent", camera="zoom_out:1.2",
               camera_from="noise", **KW).frames
    g = torch.Generator().manual_seed(3)
    torch.randn((1, 3, 64, 64), generator=g)  # the augmentation noise comes first
    noise = warped_noise(CameraMove(zoom=1 / 1.2), 3, 4, 8, 8, generator=g)[None]
    want = pipe(_image(), generator=torch.Generator().manual_seed(3), output_type="latent", latents=noise, **KW).frames
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    plain = pipe(_image(), generator=torch.Generator().manual_seed(3), output_type="latent", **KW).frames
    assert (got - plain).abs().max() > 1e-3


@pytest.mark.parametrize("kwargs, match", [
    (dict(last_image=np.zeros((8, 8, 3), np.float32)), "without last_image"),
    (dict(sigmas=[3.0, 1.0, 0.0]), "without last_image and sigmas"),
    (dict(camera="zoom"), "camera move must be one of"),
    (dict(camera=3), "camera must be a move name"),
    (dict(camera_from="noise", image_init_sigma=2.0), "not with image_init_sigma or latents"),
    (dict(camera_from="depth"), "camera_from must be 'image' or 'noise'"),
])
def test_bad_camera_calls_raise_clear_errors(pipe, kwargs, match):
    kwargs = {"camera": "zoom_in", **kwargs}
    with pytest.raises(ValueError, match=match):
        pipe(_image(), generator=torch.Generator().manual_seed(0), output_type="latent", **KW, **kwargs)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("camera") / "m"
    SVDPipeline.from_config("tiny", seed=0).save_pretrained(path)
    return path


def test_cli_camera_is_the_pipelines_camera(saved_model, tmp_path):
    """--camera (repeated) samples what pipe(camera=[...]) samples, from START_SIGMA unless told."""
    image_path = tmp_path / "in.png"
    _image().save(image_path)
    out = tmp_path / "v.png"
    assert sample.main(["--model", str(saved_model), "--image", str(image_path), "--out", str(out), "--dtype", "fp32",
                        "--seed", "5", "--frames", "3", "--steps", "2", "--max-cfg", "1", "--camera", "zoom_in:1.1",
                        "--camera", "pan_up"]) == 0
    video = np.stack([np.asarray(Image.open(p)) for p in sorted(tmp_path.glob("v_*.png"))]).astype(float)
    loaded = SVDPipeline.from_pretrained(saved_model)
    loaded.set_progress_bar_config(disable=True)
    want = loaded(Image.open(image_path).convert("RGB"), height=64, width=64, num_frames=3, num_inference_steps=2,
                  max_guidance_scale=1.0, generator=torch.Generator().manual_seed(5), output_type="np",
                  camera=["zoom_in:1.1", "pan_up"]).frames[0]
    assert np.abs(video - (want * 255).round()).max() <= 1
    still = loaded(Image.open(image_path).convert("RGB"), height=64, width=64, num_frames=3, num_inference_steps=2,
                   max_guidance_scale=1.0, generator=torch.Generator().manual_seed(5), output_type="np",
                   image_init_sigma=3.0).frames[0]
    assert np.abs(video - (still * 255).round()).max() > 5  # the camera made a difference
