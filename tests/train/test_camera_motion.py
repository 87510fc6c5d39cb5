"""Camera-motion clips carry the motion their label says (measured independently: phase correlation
for pans, the flow divergence for zooms), measure_motion's figures, and a LoRA trained on such clips
through svd_fast.train loads onto the pipeline."""
import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from svd_fast.real_media import fetch
from svd_fast.train import camera_motion
from svd_fast.train.real_footage import load_photo
from svd_fast.train.video_metrics import mean_divergence, mean_flow

FRAMES, SIZE = 8, 64


@pytest.fixture(scope="module")
def photo():
    return load_photo(fetch("camera"))  # a training photo of the default model (not a held-out one)


def _phase_shift(frames):
    """Mean (dx, dy) between consecutive frames by phase correlation (Hann window against edge effects)."""
    window = cv2.createHanningWindow((frames.shape[2], frames.shape[1]), cv2.CV_32F)
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).astype(np.float32) for f in frames]
    return np.mean([cv2.phaseCorrelate(a, b, window)[0] for a, b in zip(grey, grey[1:])], axis=0)


@pytest.mark.parametrize("motion", ["pan_left", "pan_right", "pan_up", "pan_down"])
def test_pans_move_the_picture_by_the_labelled_shift(photo, motion):
    for seed in range(3):
        clip = camera_motion.camera_clip(photo, motion, FRAMES, SIZE, np.random.default_rng(seed))
        assert clip.frames.shape == (FRAMES, SIZE, SIZE, 3) and clip.frames.dtype == np.uint8
        shift = _phase_shift(clip.frames)
        label = np.array(clip.flow)
        assert np.linalg.norm(label) >= 1.0
        # bilinear resampling blurs each frame slightly differently: 0.15 px
        np.testing.assert_allclose(shift, label, atol=0.15)
        direction = camera_motion.PAN_FLOW[motion]  # pan_left: the camera turns left, the picture moves right
        assert np.sign(label[np.argmax(np.abs(direction))]) == direction[np.argmax(np.abs(direction))]


@pytest.mark.parametrize("motion", ["zoom_in", "zoom_out"])
def test_zooms_have_the_labelled_divergence(photo, motion):
    for seed in range(2):
        clip = camera_motion.camera_clip(photo, motion, FRAMES, SIZE, np.random.default_rng(seed))
        divergence = mean_divergence(clip.frames.astype(np.float32) / 255)
        expected = 2 * (clip.zoom - 1)  # a magnification m about a point: flow (m - 1)(x - c), divergence 2(m - 1)
        assert (clip.zoom > 1) == (motion == "zoom_in")
        assert np.sign(divergence) == np.sign(expected) and abs(divergence - expected) < 0.25 * abs(expected)
        # the pictures are scaled copies: frame t magnified about the centre by the label matches frame
        # t+1 better than by no zoom, the opposite zoom, or half / one and a half times the label
        c = (SIZE - 1) / 2

        def error(m):
            scaled = cv2.warpAffine(clip.frames[3], np.float32([[m, 0, c * (1 - m)], [0, m, c * (1 - m)]]), (SIZE, SIZE))
            return np.abs(scaled[8:-8, 8:-8].astype(float) - clip.frames[4][8:-8, 8:-8]).mean()

        m = clip.zoom
        assert error(m) < min(error(x) for x in (1.0, 1 / m, m ** 0.5, m ** 1.5))


def test_static_clips_do_not_move_and_labels_are_written(photo, tmp_path):
    clip = camera_motion.camera_clip(photo, "static", FRAMES, SIZE, np.random.default_rng(0))
    assert (clip.frames == clip.frames[0]).all() and clip.flow == (0.0, 0.0) and clip.zoom == 1.0
    count = camera_motion.write_clips(tmp_path, {"camera": photo}, ["pan_right", "static"], 2, FRAMES, SIZE, fps=8)
    assert count == 4
    meta = json.loads((tmp_path / "pan_right" / "camera_01.json").read_text())
    assert meta["fps"] == 8 and meta["motion"] == "pan_right" and meta["flow"][0] < -0.9
    from svd_fast.train.data import decode_video

    frames, _ = decode_video(tmp_path / "pan_right" / "camera_01.mp4", "clip")
    assert frames.shape == (FRAMES, SIZE, SIZE, 3)
    np.testing.assert_allclose(_phase_shift(frames), meta["flow"], atol=0.2)  # near-lossless H.264 keeps the motion
    with pytest.raises(ValueError, match="motion must be one of"):
        camera_motion.camera_clip(photo, "tilt", FRAMES, SIZE, np.random.default_rng(0))


def test_clips_can_fix_the_motion_conditioning_they_train_with(photo, tmp_path):
    """motion_px in a clip's .json replaces its measured flow as the sample's `motion` (the motion
    bucket it trains at): static clips trained at the sampling default bucket, not at bucket 0."""
    from svd_fast.train.data import DataConfig, VideoFolder, motion_bucket

    camera_motion.write_clips(tmp_path / "fixed", {"camera": photo}, ["static"], 1, FRAMES, SIZE, fps=8, motion_px=1.6)
    camera_motion.write_clips(tmp_path / "measured", {"camera": photo}, ["static"], 1, FRAMES, SIZE, fps=8)
    assert json.loads((tmp_path / "fixed" / "static" / "camera_00.json").read_text())["motion_px"] == 1.6

    def sample(folder, image_fraction=0.0):
        config = DataConfig(source="folder", path=str(tmp_path / folder / "static"), num_frames=FRAMES, height=SIZE,
                            width=SIZE, image_fraction=image_fraction)
        return VideoFolder(config).load(0, 0)

    assert sample("fixed")["motion"] == 1.6 and motion_bucket(1.6, SIZE) == 128
    assert sample("measured")["motion"] < 0.05  # the static clip's own flow: bucket 0
    assert sample("fixed", image_fraction=1.0)["motion"] == 0.0  # stills stay at 0


def test_motion_named_by_the_file():
    assert camera_motion.motion_of("assets/camera_lora_pan_left.safetensors") == "pan_left"
    assert camera_motion.motion_of("zoom_out.safetensors") == "zoom_out"
    with pytest.raises(ValueError, match="must name one motion"):
        camera_motion.motion_of("camera_lora.safetensors")


def test_cards_show_the_sign_columns_only_for_directed_motions():
    """A pan's table has its sign agreement and signed flow; static has no direction, so its table
    keeps the flow ratio and first frame only (rows as measure_motion returns them)."""
    figures = {"sign_agreement": 0.75, "mean_along": 0.123, "base_mean_along": -0.045, "flow_ratio": 0.25,
               "first_frame_psnr": 23.4, "base_first_frame_psnr": 23.7, "first_frame_drop_db": 0.3}
    measured = {"pairs": 4, "images": ["a", "b"], "seeds": [0, 1], "scales": {1.0: figures}}
    shipped = Path(__file__).resolve().parents[2] / "svd_fast" / "assets" / "camera_loras"  # the card counts their layers
    pan = camera_motion.card(shipped / "camera_lora_pan_left.safetensors", "pan_left", measured, {"targets": ["all_linear"]})
    static = camera_motion.card(shipped / "camera_lora_static.safetensors", "static", measured, {"targets": ["temporal"]})
    assert "| scale | sign agreement | mean flow along the pan (px/frame) (base model) | flow vs base |" in pan
    assert "| 1 | 0.75 | +0.123 (-0.045) | 0.25 | 23.4 (23.7) | first_frame_within_1db |" in pan
    assert "| scale | flow vs base | first-frame PSNR (base) dB | targets met |" in static
    assert "| 1 | 0.25 | 23.4 (23.7) | first_frame_within_1db, flow_at_most_30pct_of_base |" in static


def test_measure_motion_of_a_lora_that_changes_nothing(tmp_path):
    """A LoRA with B = 0 leaves the model as it is: its figures must equal the base model's."""
    from svd_fast import adapters, sample
    from svd_fast.pipeline import SVDPipeline

    pipe = SVDPipeline.from_pretrained(sample.DEFAULT_MODEL, torch_dtype=torch.float32)
    adapters.attach_lora(pipe.unet, adapters.LoRAConfig(rank=2))
    path = tmp_path / "camera_lora_zoom_in.safetensors"
    adapters.save_lora(pipe.unet, path)
    adapters.unload(pipe.unet)
    image = torch.from_numpy(cv2.resize(load_photo(fetch("camera")), (SIZE, SIZE), interpolation=cv2.INTER_AREA)).permute(2, 0, 1)
    images = {"camera": image.float() / 255}
    args = dict(height=SIZE, width=SIZE, num_frames=FRAMES, num_inference_steps=3)
    measured = camera_motion.measure_motion(pipe, path, images, seeds=[0], scales=[1.0], **args)
    assert measured["motion"] == "zoom_in" and measured["pairs"] == 1 and pipe.get_list_adapters() == {"unet": []}
    f = measured["scales"][1.0]
    video = pipe(images["camera"], generator=torch.Generator().manual_seed(0), output_type="np", **args).frames[0]
    assert f["flow_ratio"] == pytest.approx(1.0, abs=1e-6) and f["first_frame_drop_db"] == pytest.approx(0.0, abs=1e-6)
    assert f["mean_along"] == pytest.approx(mean_divergence(video), abs=1e-6) == pytest.approx(f["base_mean_along"], abs=1e-6)
    assert f["mean_flow"] == pytest.approx(mean_flow(video), abs=1e-6)
    assert f["sign_agreement"] == float(mean_divergence(video) > 0)
    assert set(camera_motion.targets_met(f, "zoom_in")) == {"first_frame_within_1db", "sign_agreement_at_least_90pct"}


@pytest.mark.parametrize("targets", [("temporal_attention",), ("all_linear", "convs")])
def test_a_lora_trained_on_camera_clips_loads_onto_the_pipeline(photo, tmp_path, targets):
    """svd_fast.train with trainable='lora' on camera clips (tiny model, 3 steps), resumed for a 4th:
    the adapter file it writes loads through SVDPipeline.load_lora_weights and changes the output;
    with conv targets its conv factors are conv-shaped and the card counts them."""
    from svd_fast.adapters import LoRAConfig
    from svd_fast.pipeline import SVDPipeline
    from svd_fast.train.data import DataConfig
    from svd_fast.train.trainer import train
    from tests.train.conftest import make_recipe

    from safetensors.torch import save_file

    from svd_fast.config import SVDConfig
    from svd_fast.unet import VideoUNet
    from tests.conftest import randomize_

    camera_motion.write_clips(tmp_path / "clips", {"camera": photo}, ["pan_left"], 2, 4, 16, fps=8)
    base = tmp_path / "base.safetensors"  # a base with non-zero outputs, so the adapters get gradients
    save_file(randomize_(VideoUNet(SVDConfig.from_name("tiny").unet), std=0.1).state_dict(), str(base))
    recipe = make_recipe(tmp_path / "run", trainable="lora", lora=LoRAConfig(rank=2, alpha=2.0, targets=targets),
                         max_steps=3, checkpoint_every=3,
                         init_from=str(base),
                         data=DataConfig(source="folder", path=str(tmp_path / "clips"), num_frames=4, height=16, width=16))
    train(recipe)
    train(dataclasses.replace(recipe, max_steps=4, checkpoint_every=4), resume=True)
    lora = tmp_path / "run" / "checkpoints" / "step-00000004" / "lora.safetensors"
    pipe = SVDPipeline.from_config("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)

    def video():
        return pipe(torch.full((3, 16, 16), 0.5), height=16, width=16, num_frames=4, num_inference_steps=2,
                    generator=torch.Generator().manual_seed(0), output_type="pt").frames

    plain = video()
    assert pipe.load_lora_weights(lora, adapter_name="pan_left") == "pan_left"
    assert (video() - plain).abs().max() > 0
    from svd_fast.adapters import read_lora

    _, tensors = read_lora(lora)
    downs = {k: v for k, v in tensors.items() if ".lora_A" in k}
    convs = [k for k, v in downs.items() if v.ndim > 2]
    assert bool(convs) == ("convs" in targets)
    assert all(tensors[k].ndim == 4 for k in convs if "spatial_res_block.conv1" in k)  # (rank, in, 3, 3)
    words = camera_motion.placement(lora, targets)
    assert f"({len(downs) - len(convs)} Linear layers, {len(convs)} convolutions)" in words
    if "convs" in targets:
        assert words.startswith("a rank-2 LoRA on every Linear layer (") and " and every convolution (" in words
    else:
        assert words.startswith("a rank-2 LoRA on the temporal attention (q, k, v, out) of the svd_fast default model")


def test_finite_mean_skips_identical_frames_infinite_psnr():
    from svd_fast.train.video_metrics import finite_mean

    assert finite_mean([1.0, float("inf"), 3.0]) == 2.0
    assert finite_mean(v for v in [float("inf")] * 3) == float("inf")  # every first frame is the input
    assert np.isnan(finite_mean([float("nan"), float("inf")])) and np.isnan(finite_mean([]))
