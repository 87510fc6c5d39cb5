"""The shipped camera-motion LoRAs (svd_fast/assets/camera_loras, training/recipes/camera_lora.py):
pan_left, pan_right and static, each with its card, each moving (or holding) the default model's video
the way its name says on held-out photos (re-measured here with the recipe's own measure_motion, on
fewer photos and seeds than the card). The zoom LoRAs are not shipped: they missed their targets
(training/recipes/camera_lora.py)."""
from pathlib import Path

import pytest
import torch

from svd_fast.pipeline import SVDPipeline
from svd_fast.train.camera_motion import measure_motion
from tests.conftest import default_model_recipe

REPO = Path(__file__).resolve().parents[1]
LORAS = REPO / "svd_fast" / "assets" / "camera_loras"
PANS = ("pan_left", "pan_right")
SHIPPED = (*PANS, "static")


@pytest.fixture(scope="module")
def pipe():
    pipe = SVDPipeline.from_pretrained(REPO / "svd_fast" / "assets" / "default_model", torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _measure(pipe, motion: str, scales) -> dict:
    recipe = default_model_recipe()
    photos = recipe.held_out_photos()
    images = {name: photos[name] for name in ("chelsea", "rocket")}
    cfg = recipe.CONFIG
    return measure_motion(pipe, LORAS / f"camera_lora_{motion}.safetensors", images, (0,), scales, motion,
                          height=cfg.height, width=cfg.width, num_frames=cfg.num_frames, num_inference_steps=16)


def test_every_motion_ships_small_with_a_card():
    for motion in SHIPPED:
        adapter = LORAS / f"camera_lora_{motion}.safetensors"
        assert adapter.is_file() and adapter.stat().st_size < 4 * 2**20, adapter
        card = (LORAS / f"camera_lora_{motion}.md").read_text()
        assert "| flow vs base |" in card and "/work/" not in card
        assert ("| sign agreement |" in card) == (motion in PANS), motion  # static has no direction to agree with


@pytest.mark.parametrize("motion", PANS)
def test_pans_move_the_labelled_way_and_more_at_a_higher_scale(pipe, motion):
    figures = _measure(pipe, motion, (0.5, 1.5))["scales"]
    assert figures[1.5]["sign_agreement"] == 1.0, figures
    assert figures[1.5]["mean_along"] > figures[0.5]["mean_along"] > figures[0.5]["base_mean_along"], figures


def test_static_holds_the_picture_and_keeps_the_first_frame(pipe):
    """The card: flow 0.22x the base's at scale 1 with the first frame 0.6 dB lower (12 pairs); here 2
    photos, 1 seed (0.23x and 1.2 dB measured; the LoRA trained at lr 1e-3 shipped before measured 1.7 dB),
    with margin for the smaller sample: well below half the base's flow, first frame within 1.5 dB."""
    figures = _measure(pipe, "static", (1.0,))["scales"][1.0]
    assert figures["flow_ratio"] < 0.4, figures
    assert figures["first_frame_drop_db"] < 1.5, figures
