"""Training-free interpolation (SVDPipeline's last_image, BidirectionalDenoiser) and its CLI with an
image-to-video --model (the CLI's default, the SVD-FI interpolator: tests/test_interpolation_model.py)."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from svd_fast import conditioner, interpolate, sample
from svd_fast.denoiser import BidirectionalDenoiser
from svd_fast.pipeline import SVDPipeline
from svd_fast.video_io import read_video


def test_fusion_weights_each_direction_by_its_distance_to_the_end():
    """The forward estimate on frame t gets weight (T-1-t)/(T-1); the backward one runs on the
    time-reversed clip and is reversed back."""
    forward = lambda x, sigma: torch.ones_like(x)  # noqa: E731
    backward = lambda x, sigma: torch.arange(x.shape[1], dtype=x.dtype).reshape(1, -1, 1, 1, 1).expand_as(x)  # noqa: E731
    x = torch.zeros(1, 5, 2, 3, 3)
    out = BidirectionalDenoiser(forward, backward, 5)(x, 1.0)
    reversed_index = torch.tensor([4.0, 3, 2, 1, 0])  # backward's frame index, seen from the forward clip
    weight = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    torch.testing.assert_close(out[0, :, 0, 0, 0], weight + (1 - weight) * reversed_index)


def test_between_two_images_is_the_blend_of_their_conditioning(echo_pipe):
    """With a denoiser that returns its conditioning, frame t of the result is the latent blend
    w_t z(first) + (1 - w_t) z(last) of the two images' conditioning latents."""
    g = torch.Generator().manual_seed(0)
    first, last = torch.rand(3, 64, 64, generator=g), torch.rand(3, 64, 64, generator=g)
    latents = echo_pipe(first, last_image=last, height=64, width=64, num_frames=5, num_inference_steps=4,
                   noise_aug_strength=0.0, max_guidance_scale=1.0, output_type="latent",
                   generator=torch.Generator().manual_seed(1)).frames[0]
    sf = echo_pipe.vae.config.scaling_factor
    z_first, z_last = (echo_pipe.vae.encode(conditioner.preprocess_image(im, 64, 64)) * sf for im in (first, last))
    weight = torch.linspace(1, 0, 5).reshape(5, 1, 1, 1)
    torch.testing.assert_close(latents, weight * z_first + (1 - weight) * z_last, rtol=1e-4, atol=1e-4)


@pytest.fixture
def two_images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(tmp_path / name)
        paths.append(tmp_path / name)
    return paths


def test_cli_writes_the_pipelines_frames(two_images, tmp_path, capsys):
    out = tmp_path / "between.png"
    args = ["--first", str(two_images[0]), "--last", str(two_images[1]), "--out", str(out), "--frames", "4",
            "--steps", "2", "--dtype", "fp32", "--seed", "3", "--model", str(sample.DEFAULT_MODEL)]
    assert interpolate.main(args) == 0
    printed = capsys.readouterr().out
    assert "wrote 4 frames" in printed and "training-free bidirectional sampling" in printed
    frames = np.stack([np.asarray(Image.open(p)) for p in sorted(tmp_path.glob("between_*.png"))]) / 255
    real = SVDPipeline.from_pretrained(sample.DEFAULT_MODEL, torch_dtype=torch.float32)
    real.set_progress_bar_config(disable=True)
    cfg = real.config
    expected = interpolate.between(real, Image.open(two_images[0]).convert("RGB"), Image.open(two_images[1]).convert("RGB"),
                                   4, seed=3, height=cfg.height, width=cfg.width, num_inference_steps=2, fps=cfg.fps,
                                   motion_bucket_id=cfg.motion_bucket_id, max_guidance_scale=cfg.max_guidance_scale)
    np.testing.assert_allclose(frames, expected, atol=1 / 255 + 1e-6)


def test_cli_video_mode_multiplies_the_frame_rate(tmp_path, capsys):
    from svd_fast.video_io import save_video

    source = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    save_video(source, tmp_path / "in.gif", fps=4)
    out = tmp_path / "out.gif"
    assert interpolate.main(["--video", str(tmp_path / "in.gif"), "--out", str(out), "--factor", "3", "--steps", "2",
                             "--dtype", "fp32", "--model", str(sample.DEFAULT_MODEL)]) == 0
    frames, fps = read_video(out)
    assert len(frames) == 2 * 3 + 1 and fps == pytest.approx(12, abs=0.5)  # 3 keyframes -> 2 intervals of 3
    assert "interval 2/2 done" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    ([], "give either --first and --last, or --video"),
    (["--first", "a.png"], "give either --first and --last, or --video"),
    (["--video", "v.mp4", "--factor", "1"], "--factor must be >= 2, got 1"),
])
def test_bad_arguments_are_one_line(tmp_path, extra, message):
    result = subprocess.run([sys.executable, "-m", "svd_fast.interpolate", "--out", str(tmp_path / "o.gif"), *extra],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr and message in result.stderr


def test_missing_image_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "svd_fast.interpolate", "--first", str(tmp_path / "none.png"),
                             "--last", str(tmp_path / "none.png"), "--out", str(tmp_path / "o.gif")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error:") and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("make_video, message", [
    (lambda d: d / "none.mp4", "video not found"),
    (lambda d: (d / "still.png").write_bytes(b"\x89PNG not really") and d / "still.png", "cannot read video"),
    (lambda d: (d / "text.mp4").write_text("not a video") and d / "text.mp4", "cannot read video"),
])
def test_an_unreadable_video_is_one_line(tmp_path, make_video, message):
    result = subprocess.run([sys.executable, "-m", "svd_fast.interpolate", "--video", str(make_video(tmp_path)),
                             "--out", str(tmp_path / "o.gif")], capture_output=True, text=True)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
