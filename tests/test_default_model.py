"""The embedded default model (svd_fast/assets/default_model): shipped within its size budget, used
by the main command, and its videos start from the input image and move.

Its training is training/recipes/default_model.py; the figures here are re-measured, not copied."""
import functools
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from svd_fast import sample
from svd_fast.checkpoints import detect_layout, load_components
from svd_fast.conditioner import preprocess_image
from svd_fast.pipeline import SVDPipeline
from svd_fast.train.video_metrics import video_report
from svd_fast.video_io import load_image
from tests.conftest import default_model_recipe, randomize_

REPO = Path(__file__).resolve().parents[1]
MODEL = sample.DEFAULT_MODEL
EXAMPLE = REPO / "assets" / "example.png"


_recipe = default_model_recipe


def _card_figures() -> dict:
    """The measured-quality row of MODEL_CARD.md for this model and for the true clips."""
    text = (MODEL / "MODEL_CARD.md").read_text()
    ours = re.search(r"^\| this model \| ([\d.]+|inf) \| ([\d.]+) \| ([\d.]+) \|$", text, re.M)
    vae = re.search(r"^\| ground-truth clips through the VAE [^|]*\| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", text, re.M)
    truth = re.search(r"^\| ground-truth clips \| \(identical\) \| ([\d.]+) \| ([\d.]+) \|$", text, re.M)
    assert ours and vae and truth, "MODEL_CARD.md lacks the measured-quality table"
    keys = ("first_frame_psnr", "mean_flow", "warp_consistency")
    return {"model": dict(zip(keys, map(float, ours.groups()))), "vae_round_trip": dict(zip(keys, map(float, vae.groups()))),
            "ground_truth_clips": dict(zip(keys[1:], map(float, truth.groups())))}


PHOTO_KEYS = ("first_frame_psnr", "colour_shift", "mean_flow", "warp_consistency", "mean_flow_bucket_0",
              "mean_flow_bucket_255", "vae_psnr")


def _card_photo_figures() -> dict:
    """The held-out photographs' rows of MODEL_CARD.md's quality table, and their mean row."""
    text = (MODEL / "MODEL_CARD.md").read_text()
    rows = {}
    for name in (*_recipe().HELD_OUT_PHOTOS, "mean"):
        row = re.search(rf"^\| {name} \| " + r" \| ".join([r"([\d.]+|inf)"] * len(PHOTO_KEYS)) + r" \|$", text, re.M)
        assert row, f"MODEL_CARD.md lacks the held-out photo row {name!r}"
        rows[name] = dict(zip(PHOTO_KEYS, map(float, row.groups())))
    return rows


def _card_architecture() -> dict:
    """The UNet and VAE shapes MODEL_CARD.md states."""
    text = (MODEL / "MODEL_CARD.md").read_text()
    unet = re.search(r"^- UNet: widths \[([\d, ]+)\].* heads \[([\d, ]+)\], (\d+) ResBlock.* (\d+) input channels", text, re.M)
    vae = re.search(r"^- VAE: .*widths \[([\d, ]+)\] \((\d+)x downsampling, (\d+) latent channels", text, re.M)
    assert unet and vae, "MODEL_CARD.md lacks the architecture lines"
    ints = lambda group: tuple(int(x) for x in group.split(","))
    return {"unet": (ints(unet[1]), ints(unet[2]), int(unet[3]), int(unet[4])),
            "vae": (ints(vae[1]), int(vae[2]), int(vae[3]))}


def test_shipped_files_are_safetensors_within_40_mb_and_match_the_card():
    files = [p for p in MODEL.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert sum(p.stat().st_size for p in files) <= 40e6
    assert detect_layout(MODEL) == "diffusers"
    config = load_components(MODEL)["config"]
    recipe = _recipe()
    assert (config.height, config.width, config.num_frames) == (recipe.HIGH, recipe.HIGH, recipe.FRAMES)
    u, v = config.unet, config.vae
    assert _card_architecture() == {
        "unet": (u.block_out_channels, u.num_attention_heads, u.layers_per_block, u.in_channels),
        "vae": (v.block_out_channels, v.downsample_factor, v.latent_channels)}
    assert {p.dtype for p in load_components(MODEL)["unet"].parameters()} == {torch.float16}


def _video_from_main_command(folder: Path, model_args=()) -> np.ndarray:
    """Frames the README's main command writes (PNG frames: no codec loss), as (T, H, W, 3) in [0, 1]."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    assert sample.main(["--image", str(EXAMPLE), "--out", str(folder / "frames.png"), "--dtype", "fp32", *model_args]) == 0
    paths = sorted(folder.glob("frames_*.png"))
    return np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) / 255 for p in paths])


def test_main_command_video_starts_from_the_image_and_moves(tmp_path):
    """The main command's defaults (the warp render) and the model's own frames (--render frames),
    each against the same architecture with a random UNet."""
    config = load_components(MODEL)["config"]
    image = ((preprocess_image(load_image(EXAMPLE), config.height, config.width)[0] + 1) / 2).permute(1, 2, 0).numpy()
    pipe = SVDPipeline.from_pretrained(MODEL, torch_dtype=torch.float32)
    untrained_dir = tmp_path / "untrained"
    randomize_(pipe.unet, std=0.02, seed=3)
    pipe.save_pretrained(untrained_dir)
    random_unet = ["--model", str(untrained_dir)]

    # The defaults: every frame is the input moved along the model's camera motion.
    video = _video_from_main_command(tmp_path / "trained")
    assert video.shape == (config.num_frames, config.height, config.width, 3)
    assert np.abs(video[0] - image).max() <= 0.5 / 255 + 1e-6  # frame 0 is the input (8-bit PNG)
    trained = _report(video, image)
    # Measured 2026-12-03 (the example is the held-out photo 'chelsea'): flow 0.58 px/frame, warped-frame
    # PSNR 36.8 dB. A random UNet through the same render also moves (1.14 px/frame, 36.3 dB: noise
    # frames give a random camera drift), so the consistency is the render's; what is the model's is
    # the control: motion bucket 0 / 255 give 0.03-0.04 / 0.58-0.82 px/frame, the random UNet
    # 1.12-1.15 at either.
    assert trained["mean_flow"] > 0.5 and trained["warp_consistency"] > 30.0, trained

    def flow(bucket, args=()):
        folder = tmp_path / f"bucket{bucket}{'_random' if args else ''}"
        return _report(_video_from_main_command(folder, [*args, "--motion-bucket", str(bucket)]), image)["mean_flow"]

    most, least = flow(255), flow(0)
    assert most > 5 * least, (most, least)
    most, least = flow(255, random_unet), flow(0, random_unet)
    assert 0.8 < most / least < 1.25, (most, least)

    # The model's own frames (the previous defaults: from the image noised to sigma 3, frame 0 held).
    # The input through the VAE alone is the fidelity ceiling.
    pixels = preprocess_image(load_image(EXAMPLE), config.height, config.width)
    with torch.no_grad():
        round_trip = ((pipe.vae.decode(pipe.vae.encode(pixels), num_frames=1)[0] + 1) / 2).clamp(0, 1)
    ceiling = video_report(round_trip.permute(1, 2, 0).numpy()[None], image)["first_frame_psnr"]
    frames = _report(_video_from_main_command(tmp_path / "frames", ["--render", "frames"]), image)
    baseline = _report(_video_from_main_command(tmp_path / "untrained_video", [*random_unet, "--render", "frames"]), image)
    # SVD's own sampler settings (pure noise, no hold, guidance): the UNet alone must keep the input.
    svd_style = ["--image-init-sigma", "0", "--no-keep-first-frame", "--steps", "16", "--max-cfg", "2", "--render", "frames"]
    own = _report(_video_from_main_command(tmp_path / "own", svd_style), image)
    random_own = _report(_video_from_main_command(tmp_path / "random_own", [*random_unet, *svd_style]), image)

    # Measured 2026-12-02 (v3 weights): the VAE alone 30.6 dB; the frames' first frame 30.8 dB (held:
    # the VAE's), frames 1-7 21.6 dB (random UNet 15.6), flow 0.58 px/frame, warped-frame PSNR 27.0 dB
    # (random UNet 16.9: noise); with SVD's settings the UNet's own first frame 26.1 dB (random UNet 14.2).
    assert ceiling > 28.0, ceiling  # the VAE keeps the photo
    assert frames["first_frame_psnr"] > ceiling - 0.5, (frames, ceiling)  # the first frame is held to the input
    assert frames["later_frames_psnr"] > baseline["later_frames_psnr"] + 4.0, (frames, baseline)  # and kept after it
    assert frames["mean_flow"] > 0.5, frames  # it moves
    assert frames["warp_consistency"] > baseline["warp_consistency"] + 3.0, (frames, baseline)  # as motion, not noise
    assert own["first_frame_psnr"] > 24.0, own  # the UNet on its own: recognisably the input
    assert own["first_frame_psnr"] > random_own["first_frame_psnr"] + 3.0, (own, random_own)


def _report(video: np.ndarray, image: np.ndarray) -> dict:
    """video_report plus the mean PSNR of the frames after the first vs the input."""
    return {**video_report(video, image), **_recipe().input_fidelity(video, image)}


def test_held_out_photos_survive_the_vae_and_the_motion_bucket_scales_motion():
    """Issue 11's VAE, first-frame and motion-control targets on the held-out photographs (never
    trained on)."""
    photos = _measured()["photos"]
    for name, row in photos.items():
        # 25.5-33.6 dB, colour 0.3-1.3/255 measured (before the decoder's colour fine-tune: 25.0-33.3 dB, 1.3-3.5/255)
        assert row["vae_psnr"] > 25.0 and row["vae_colour_shift"] <= 2.0, (name, row)
    mean = _measured()["photos_mean"]
    assert mean["vae_psnr"] >= 26.0, mean  # 29.4 dB measured
    assert mean["first_frame_psnr"] == np.inf, mean  # the warp render's frame 0 is the input itself
    assert mean["colour_shift_last"] <= 3.0, mean  # 1.80/255 by the last frame measured
    assert mean["mean_flow"] >= 0.5, mean  # 0.66 px/frame at the default bucket
    assert mean["warp_consistency"] >= 30.0, mean  # 35.3 dB measured (the render's; see the main-command test)
    assert mean["mean_flow_bucket_255"] >= 2.0 * mean["mean_flow_bucket_0"], mean  # 0.91 vs 0.07
    # The sampler settings the card compares: the model's frames from the noised image keep the
    # picture in the later frames and the colours over the video better than SVD's (pure noise,
    # guidance 1 -> 2), and the UNet on its own keeps the input in the first frame.
    svd_style, frames = _measured()["photos_svd_style"], _measured()["photos_frames"]
    assert svd_style["first_frame_psnr"] >= 23.5, svd_style  # 24.1 dB measured
    assert frames["first_frame_psnr"] >= 24.0 and frames["colour_shift"] <= 3.0, frames  # 29.1 dB, 1.79/255
    assert frames["mean_flow"] >= 0.5, frames  # 0.59 px/frame
    assert frames["later_frames_psnr"] > svd_style["later_frames_psnr"] + 3.0, (frames, svd_style)  # 20.6 vs 15.1 dB
    assert frames["colour_shift_last"] < svd_style["colour_shift_last"] / 2, (frames, svd_style)  # 6.1 vs 32.6/255


@functools.cache
def _measured() -> dict:
    """The recipe's evaluation of the shipped weights (held-out procedural clips and photos)."""
    return _recipe().evaluate(MODEL, None)


def test_model_card_figures_are_reproduced():
    """MODEL_CARD.md's quality table is what the recipe's evaluation measures on these weights."""
    card = _card_figures()
    measured = _measured()
    for row, figures in card.items():
        for key, value in figures.items():
            assert measured[row][key] == pytest.approx(value, abs=0.15), (row, key)
    photos = {**measured["photos"], "mean": measured["photos_mean"], "defaults": measured["photos_mean"],
              "svd_style": measured["photos_svd_style"], "frames": measured["photos_frames"]}
    for name, figures in {**_card_photo_figures(), **_card_sampler_figures()}.items():
        for key, value in figures.items():
            assert photos[name][key] == pytest.approx(value, abs=0.15), (name, key)


def _card_sampler_figures() -> dict:
    """The rows of MODEL_CARD.md's sampler-settings table (SVD's settings, the model's defaults)."""
    text = (MODEL / "MODEL_CARD.md").read_text()
    keys = ("first_frame_psnr", "colour_shift", "colour_shift_last", "later_frames_psnr", "mean_flow", "warp_consistency")
    rows = {}
    for name, label in (("svd_style", "SVD's"), ("frames", "the model's frames"), ("defaults", "this model's defaults")):
        row = re.search(rf"^\| {label}: [^|]* \| ([\d.]+|inf) \| ([\d.]+) / ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$",
                        text, re.M)
        assert row, f"MODEL_CARD.md lacks the sampler-settings row {label!r}"
        rows[name] = dict(zip(keys, map(float, row.groups())))
    return rows
