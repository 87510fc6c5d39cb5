"""Multi-view (SVD-MV): the orbit renderer, the elevation in the vector conditioning, loading in both
checkpoint layouts, the CLI, and the shipped model's figures on held-out objects."""
import dataclasses
import json
import math
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from svd_fast import conditioner
from svd_fast.config import SVDConfig
from svd_fast.multiview import DEFAULT_MULTIVIEW_MODEL, SVDMultiViewPipeline
from svd_fast.train import render3d
from tests.conftest import randomize_

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ renderer
def _pinhole(point, elevation_deg, azimuth_deg, radius, fov_deg, height, width):
    """(row, column) of a world point seen by an orbit camera, written out from the geometry (z up;
    the camera looks at the origin; rows grow downwards; principal point at the image centre)."""
    e, a = math.radians(elevation_deg), math.radians(azimuth_deg)
    eye = radius * np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
    forward = -eye / np.linalg.norm(eye)
    right = np.array([forward[1], -forward[0], 0.0]) / math.hypot(forward[0], forward[1])  # forward x z
    up = np.cross(right, forward)
    d = np.asarray(point, dtype=np.float64) - eye
    focal = (width / 2) / math.tan(math.radians(fov_deg) / 2)
    x, y, z = d @ right, -(d @ up), d @ forward
    return height / 2 + focal * y / z, width / 2 + focal * x / z


def _ball(center, colour):
    return render3d.Primitive(kind="sphere", center=center, rotation=((1.0, 0, 0), (0, 1.0, 0), (0, 0, 1.0)),
                              size=(0.09,), colours=(colour, colour))


@pytest.mark.parametrize("elevation,azimuth", [(20.0, 0.0), (-5.0, 137.0), (30.0, 250.0)])
def test_renderer_agrees_with_a_pinhole_projection_of_known_points(elevation, azimuth):
    """Small spheres at known 3D points: the centroid of each one's pixels lies where a pinhole
    camera projects its centre, in every view of an orbit (a sphere's image is an ellipse whose
    centre is off the projected centre by (r/d)^2 of its offset: < 0.05 px here)."""
    points = [(0.5, 0.1, 0.2), (-0.3, 0.6, -0.25), (0.0, -0.55, 0.45)]
    colours = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]
    obj = render3d.Object3D(tuple(_ball(p, c) for p, c in zip(points, colours)), light=(0.3, -0.2, 0.9))
    size, views, radius = 128, 4, 0.09
    cameras = render3d.orbit_cameras(views, elevation, size, size, azimuth)
    checked = 0
    for k, camera in enumerate(cameras):
        image = render3d.render_view(obj, camera, supersample=1).permute(1, 2, 0).numpy()
        rows, cols = np.mgrid[0:size, 0:size] + 0.5
        projected = [_pinhole(p, elevation, azimuth + 360 * k / views, render3d.RADIUS, render3d.FOV_DEGREES, size, size)
                     for p in points]
        distance = [np.linalg.norm(np.asarray(p) - camera.position.numpy()) for p in points]
        disc = [(size / 2) / math.tan(math.radians(render3d.FOV_DEGREES) / 2) * radius / d for d in distance]
        for i, (point, channel) in enumerate(zip(points, range(3))):
            occluded = any(distance[j] < distance[i] and math.dist(projected[i], projected[j]) < 1.3 * (disc[i] + disc[j])
                           for j in range(3) if j != i)
            others = [c for c in range(3) if c != channel]
            mask = (image[..., channel] > 0.1) & (image[..., others].max(axis=-1) < 0.05)
            assert mask.sum() > 30, f"view {k}: sphere at {point} covers {mask.sum()} pixels"
            if occluded:  # partly behind another sphere in this view: its visible part is not a disc
                continue
            found = rows[mask].mean(), cols[mask].mean()
            assert math.dist(found, projected[i]) < 0.3, (k, point, found, projected[i])
            checked += 1
    assert checked >= 3 * views - 2


def test_held_out_objects_are_a_disjoint_seed_range():
    """Training items are objects random_object(index) with index < HELD_OUT_SEEDS; an orbit of a
    training dataset reaching the held-out seeds is refused."""
    from svd_fast.train.data import DataConfig, build_dataset

    with pytest.raises(ValueError, match="held-out"):
        build_dataset(DataConfig(source="multiview", num_frames=4, height=32, width=32,
                                 num_samples=render3d.HELD_OUT_SEEDS + 1))
    data = build_dataset(DataConfig(source="multiview", num_frames=4, height=32, width=32, num_samples=10))
    sample = data[(3, 99)]
    assert sample["frames"].shape == (4, 3, 32, 32) and -1 <= sample["frames"].min() <= sample["frames"].max() <= 1
    assert render3d.ELEVATION_RANGE[0] <= sample["elevation"] <= render3d.ELEVATION_RANGE[1]
    assert render3d.random_object(3) == render3d.random_object(3) != render3d.random_object(render3d.HELD_OUT_SEEDS + 3)


# ------------------------------------------------------------------------- vector conditioning
def _tiny_multiview_config() -> SVDConfig:
    tiny = SVDConfig.from_name("tiny")
    d = tiny.unet.addition_time_embed_dim
    return dataclasses.replace(tiny, unet=dataclasses.replace(tiny.unet, projection_class_embeddings_input_dim=4 * d),
                               conditioning="multiview", fps=8, motion_bucket_id=127)


def test_multiview_vector_layout_against_a_hand_built_tensor():
    """ids = [fps-1, motion, aug, elevation]; the vector the UNet projects is four sinusoid blocks
    [cos(v f_i) | sin(v f_i)], f_i = 10000^(-2i/d), the elevation's last."""
    ids = conditioner.multiview_time_ids([12.5, -4.0], fps=8, motion_bucket_id=127, noise_aug_strength=0.02, batch=2)
    torch.testing.assert_close(ids, torch.tensor([[7.0, 127.0, 0.02, 12.5], [7.0, 127.0, 0.02, -4.0]]))
    torch.testing.assert_close(conditioner.multiview_time_ids(30.0, 8, 127, 0.02, 3)[:, 3], torch.full((3,), 30.0))
    for bad in (float("nan"), 91.0, [1.0, 2.0, 3.0]):
        with pytest.raises(ValueError):
            conditioner.multiview_time_ids(bad, 8, 127, 0.02, 2)

    from svd_fast.unet import VideoUNet

    config = _tiny_multiview_config()
    d = config.unet.addition_time_embed_dim
    unet = randomize_(VideoUNet(config.unet), std=0.1)
    seen = []
    unet.add_embedding.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    with torch.no_grad():
        unet.embed(torch.tensor([0.3, 0.3]), ids, torch.float32)
    freqs = np.array([10000.0 ** (-2 * i / d) for i in range(d // 2)])
    expected = np.concatenate([np.concatenate([np.cos(v * freqs), np.sin(v * freqs)])
                               for v in (7.0, 127.0, 0.02, -4.0)])
    assert seen[0].shape == (2, 4 * d)
    np.testing.assert_allclose(seen[0][1].numpy(), expected, atol=2e-5)
    assert seen[0][1, 3 * d] == pytest.approx(math.cos(-4.0)) and seen[0][1, 3 * d + d // 2] == pytest.approx(math.sin(-4.0))


def test_the_pipeline_puts_the_elevation_into_the_vector():
    """SVDMultiViewPipeline conditions on [fps-1, motion, aug, elevation] with the model's fixed fps
    and motion bucket, one elevation per image (repeated over its videos)."""
    config = _tiny_multiview_config()
    pipe = SVDMultiViewPipeline.from_config(config)
    pipe.set_progress_bar_config(disable=True)
    seen = []
    forward = pipe.unet.forward
    pipe.unet.forward = lambda sample, t, ctx, ids, *a, **k: (seen.append(ids.clone()), forward(sample, t, ctx, ids, *a, **k))[1]
    images = torch.rand(2, 3, 64, 64)
    pipe(images, elevation=[5.0, 25.0], num_videos_per_prompt=2, num_inference_steps=1, output_type="latent",
         max_guidance_scale=2.0, noise_aug_strength=0.02)
    ids = seen[0]
    assert ids.shape == (8, 4)  # [uncond, cond] x 4 videos
    torch.testing.assert_close(ids[4:], torch.tensor([[7.0, 127.0, 0.02, e] for e in (5.0, 5.0, 25.0, 25.0)]))
    with pytest.raises(ValueError, match="fps"):
        pipe(images[:1], fps=7)
    with pytest.raises(ValueError, match="elevation"):
        pipe(images[:1], elevation=120.0)


def test_the_pipeline_samples_with_the_model_defaults_unless_told():
    """Arguments left out take the model's saved sampling defaults (as the CLI does): the UNet is
    called once per step of the model's step count, with the unconditional branch (batch 2) only when
    the model's guidance ramp goes above 1; explicit arguments override them."""
    config = dataclasses.replace(_tiny_multiview_config(), num_inference_steps=3, max_guidance_scale=1.0,
                                 num_frames=4, height=32, width=32)
    pipe = SVDMultiViewPipeline.from_config(config)
    pipe.set_progress_bar_config(disable=True)
    calls = []
    forward = pipe.unet.forward
    pipe.unet.forward = lambda sample, *a, **k: (calls.append(tuple(sample.shape[:2])), forward(sample, *a, **k))[1]
    image = torch.rand(3, 32, 32)
    frames = pipe(image, output_type="pt").frames
    assert frames.shape == (1, 4, 3, 32, 32)
    assert calls == [(1, 4)] * 3  # 3 steps, no guidance: no unconditional branch
    calls.clear()
    pipe(image, num_inference_steps=2, max_guidance_scale=2.0, output_type="latent")
    assert calls == [(2, 4)] * 2  # [uncond, cond]


def test_fine_tune_starts_as_the_image_model():
    """The recipe's widened UNet (elevation columns zero) samples exactly the image-to-video video."""
    from svd_fast.checkpoints import load_components
    from svd_fast.pipeline import SVDPipeline
    from svd_fast.unet import VideoUNet

    recipe = runpy.run_path(str(REPO / "training" / "recipes" / "multiview.py"))
    base = recipe["BASE"]
    parts = load_components(base, dtype=torch.float32)
    config = recipe["multiview_config"](parts["config"])
    unet = VideoUNet(config.unet)
    unet.load_state_dict(recipe["widened_unet_weights"](base, config))
    mv = SVDMultiViewPipeline(unet, parts["vae"], parts["image_encoder"], config, parts["scheduler_config"])
    i2v = SVDPipeline.from_pretrained(base, torch_dtype=torch.float32)
    image = render3d.render_orbit(render3d.random_object(render3d.HELD_OUT_SEEDS), 1, 10.0, 64)[0]
    common = dict(height=64, width=64, num_frames=8, num_inference_steps=3, max_guidance_scale=2.0, output_type="pt")
    a = mv(image, elevation=10.0, generator=torch.Generator().manual_seed(0), **common).frames
    b = i2v(image, fps=8, motion_bucket_id=127, generator=torch.Generator().manual_seed(0), **common).frames
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_fine_tune_can_start_from_a_multiview_model_and_refuses_an_image_model():
    """--start: the UNet weights of the model given, unchanged (fp16 -> fp32 exactly); an
    image-to-video model is refused by name, not loaded with a wrong vector."""
    from svd_fast.checkpoints import load_components

    recipe = runpy.run_path(str(REPO / "training" / "recipes" / "multiview.py"))
    config = recipe["multiview_config"](load_components(recipe["BASE"])["config"])
    weights = recipe["start_unet_weights"](DEFAULT_MULTIVIEW_MODEL, config)
    shipped = load_components(DEFAULT_MULTIVIEW_MODEL)["unet"].state_dict()
    assert weights.keys() == shipped.keys()
    for key, value in shipped.items():
        assert weights[key].dtype == torch.float32
        torch.testing.assert_close(weights[key], value.float(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="not a multi-view model"):
        recipe["start_unet_weights"](recipe["BASE"], config)


@pytest.mark.parametrize("start, message", [
    ("{missing}", "--start {missing} is not a model folder"),
    (str(REPO / "svd_fast" / "assets" / "default_model"), "not a multi-view model"),
])
def test_a_wrong_start_model_is_a_one_line_error_before_training(start, message, tmp_path):
    missing = str(tmp_path / "no_model")
    out = subprocess.run([sys.executable, str(REPO / "training" / "recipes" / "multiview.py"), "--out",
                          str(tmp_path / "out"), "--workdir", str(tmp_path / "work"), "--start", start.format(missing=missing)],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("multiview.py: error: --start ") and message.format(missing=missing) in last, last
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()  # nothing written


def test_the_recipe_exports_the_shipped_sampling_defaults():
    """A model the recipe trains samples as the shipped one does (6 steps, guidance 1 -> 1.25), not with
    the image-to-video base's defaults it is derived from."""
    from svd_fast.checkpoints import load_components

    recipe = runpy.run_path(str(REPO / "training" / "recipes" / "multiview.py"))
    config = recipe["multiview_config"](load_components(recipe["BASE"])["config"])
    shipped = json.loads((DEFAULT_MULTIVIEW_MODEL / "svd_fast_sampling.json").read_text())
    for key in ("num_inference_steps", "max_guidance_scale", "fps", "motion_bucket_id", "num_frames"):
        assert getattr(config, key) == shipped[key], key


# ------------------------------------------------------------------------------------ loading
@pytest.mark.parametrize("layout", ["diffusers", "sgm"])
def test_a_multiview_model_loads_in_both_layouts(layout, tmp_path):
    """Random tiny multi-view model and the shipped one: saved and reloaded, the conditioning, the
    widened vector and every weight survive, and the reloaded model samples the same views."""
    pipe = SVDMultiViewPipeline.from_config(_tiny_multiview_config())
    randomize_(pipe.unet, std=0.05)
    path = tmp_path / ("tiny" if layout == "diffusers" else "tiny.safetensors")
    pipe.save_pretrained(path, layout=layout)
    again = SVDMultiViewPipeline.from_pretrained(path, torch_dtype=torch.float32)
    assert again.config == pipe.config
    assert again.config.conditioning == "multiview" and again.unet.add_embedding.linear_1.in_features == 32
    for name, tensor in pipe.unet.state_dict().items():
        torch.testing.assert_close(again.unet.state_dict()[name], tensor, rtol=0, atol=0)

    shipped = SVDMultiViewPipeline.from_pretrained(DEFAULT_MULTIVIEW_MODEL, torch_dtype=torch.float32)
    copy = tmp_path / ("shipped" if layout == "diffusers" else "shipped.safetensors")
    shipped.save_pretrained(copy, layout=layout)
    reloaded = SVDMultiViewPipeline.from_pretrained(copy, torch_dtype=torch.float32)
    assert reloaded.config == shipped.config and reloaded.config.conditioning == "multiview"
    image = torch.rand(3, 64, 64)
    views = [p(image, elevation=15.0, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               output_type="pt").frames for p in (shipped, reloaded)]
    torch.testing.assert_close(views[0], views[1], rtol=0, atol=0)


def test_an_sgm_file_without_svd_fast_metadata_is_recognised_as_multiview(tmp_path):
    """sgm files from elsewhere carry no svd_fast config: the fourth vector entry is read off
    label_emb's input width (4 x 8 here, not a multiple of 3), so the file loads as SVD-MV with
    the right sinusoid width, and an image-to-video file of the same widths still loads as one."""
    from safetensors.torch import load_file, save_file

    from svd_fast.checkpoints import sgm
    from svd_fast.checkpoints.io import open_tensors

    def inferable(config):  # sgm shapes give widths in 64-channel heads
        return dataclasses.replace(config, unet=dataclasses.replace(config.unet, block_out_channels=(64, 64),
                                                                    num_attention_heads=(1, 1)))

    pipe = SVDMultiViewPipeline.from_config(inferable(_tiny_multiview_config()))
    pipe.save_pretrained(tmp_path / "mv.safetensors", layout="sgm")
    bare = tmp_path / "mv_bare.safetensors"
    save_file(load_file(tmp_path / "mv.safetensors"), bare)  # the same tensors, no metadata
    config = sgm.read_config(open_tensors(bare), numerics="sgm")
    assert config.conditioning == "multiview"
    assert config.unet.addition_time_embed_dim == pipe.config.unet.addition_time_embed_dim
    assert config.unet.projection_class_embeddings_input_dim == 4 * pipe.config.unet.addition_time_embed_dim
    loaded = SVDMultiViewPipeline.from_pretrained(bare)  # the user's path: no "use SVDPipeline" refusal
    for name, tensor in pipe.unet.state_dict().items():
        torch.testing.assert_close(loaded.unet.state_dict()[name], tensor, rtol=0, atol=0)

    i2v = inferable(SVDConfig.from_name("tiny"))
    from svd_fast.pipeline import SVDPipeline

    SVDPipeline.from_config(i2v).save_pretrained(tmp_path / "i2v.safetensors", layout="sgm")
    save_file(load_file(tmp_path / "i2v.safetensors"), tmp_path / "i2v_bare.safetensors")
    config = sgm.read_config(open_tensors(tmp_path / "i2v_bare.safetensors"), numerics="sgm")
    assert config.conditioning == "image" and config.unet.addition_time_embed_dim == i2v.unet.addition_time_embed_dim
    with pytest.raises(sgm.CheckpointError, match="label_emb"):
        sgm.vector_ids(25, "odd.safetensors")


# ---------------------------------------------------------------------------------------- CLI
def _cli(*args):
    return subprocess.run([sys.executable, "-m", "svd_fast.multiview", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


def test_cli_writes_the_shipped_models_views(tmp_path):
    image = render3d.render_orbit(render3d.random_object(render3d.HELD_OUT_SEEDS + 5), 1, 20.0, 64)[0]
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(tmp_path / "obj.png")
    out = tmp_path / "views.png"
    done = _cli("--image", str(tmp_path / "obj.png"), "--out", str(out), "--elevation", "20", "--steps", "3",
                "--dtype", "fp32", "--seed", "1")
    assert done.returncode == 0, done.stderr
    assert "wrote 8 views" in done.stdout
    written = np.stack([np.asarray(Image.open(p)) for p in sorted(tmp_path.glob("views_*.png"))]) / 255
    pipe = SVDMultiViewPipeline.from_pretrained(DEFAULT_MULTIVIEW_MODEL, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(Image.open(tmp_path / "obj.png"), elevation=20.0, num_inference_steps=3,
                    max_guidance_scale=pipe.config.max_guidance_scale, generator=torch.Generator().manual_seed(1),
                    output_type="np").frames[0]
    assert written.shape == expected.shape == (8, 64, 64, 3)
    assert np.abs(written - expected).max() <= 1 / 255 + 1e-6


@pytest.mark.parametrize("args,message", [
    (["--image", "missing.png"], "not found"),
    (["--image", "NOT_AN_IMAGE"], "cannot read image"),
    (["--elevation", "120"], "--elevation"),
    (["--steps", "0"], "--steps"),
    (["--model", str(REPO / "svd_fast" / "assets" / "default_model")], "not a multi-view one"),
    (["--model", str(REPO / "no_such_model")], "model not found"),
])
def test_cli_bad_input_is_one_line(args, message, tmp_path, capsys):
    from svd_fast import multiview

    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    base = ["--image", str(tmp_path / "ok.png"), "--out", str(tmp_path / "o.gif"), "--steps", "1"]
    args = [str(tmp_path / "bad.png") if a == "NOT_AN_IMAGE" else a for a in args]
    assert multiview.cli([*base, *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
    assert not (tmp_path / "o.gif").exists()


# ------------------------------------------------------------------------- shipped model quality
PSNR_MARGIN_DB = 0.2
"""the fine-tune's mean PSNR over the re-measured objects must beat each baseline's by this much
(measured on these 6 objects with the 6-step defaults: +1.13 dB over the image-to-video model, +2.02 dB over
the copy; v2 at 16 steps: +0.69, +1.58; v1: +0.38, +1.28)"""
CLIP_MARGIN = 0.03
"""(measured: +0.047 over the image-to-video model; 16 steps: +0.056)"""
"""... and its CLIP-S the image-to-video model's by this much"""


def test_shipped_model_on_held_out_objects_reproduces_its_card():
    """Re-measured on the first held-out objects of the card's evaluation (same seeds and sampler):
    the per-object figures match the recorded ones; the fine-tune's PSNR beats the image-to-video
    model's and the copied input's, and its CLIP-S the image-to-video model's. Its CLIP-S stays
    below the copied input's (a recorded miss, 0.890 vs 0.917 on all 24 objects): the card's verdict
    lines must agree with the recorded figures."""
    from svd_fast.eval import multiview as mv_eval
    from svd_fast.pipeline import SVDPipeline

    recorded = json.loads(sorted((REPO / "bench" / "results").glob("multiview-default-*.json"))[-1].read_text())
    ev = recorded["evaluation"]
    pipes = {"multiview": SVDMultiViewPipeline.from_pretrained(DEFAULT_MULTIVIEW_MODEL, torch_dtype=torch.float32),
             "i2v": SVDPipeline.from_pretrained(REPO / "svd_fast" / "assets" / "default_model", torch_dtype=torch.float32)}
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    objects = 6
    measured = mv_eval.evaluate(pipes, objects, ev["views"], ev["size"], ev["steps"])
    for method in mv_eval.METHODS:
        for got, want in zip(measured["per_object"][method], ev["per_object"][method][:objects]):
            assert got["seed"] == want["seed"]
            assert got["psnr_db"] == pytest.approx(want["psnr_db"], abs=0.2), (method, got, want)
            assert got["clip_s"] == pytest.approx(want["clip_s"], abs=0.01), (method, got, want)
    m = measured["means"]
    for baseline in ("i2v", "copy"):
        assert m["multiview"]["psnr_db"] > m[baseline]["psnr_db"] + PSNR_MARGIN_DB, (baseline, m)
    assert m["multiview"]["clip_s"] > m["i2v"]["clip_s"] + CLIP_MARGIN, m
    card = (DEFAULT_MULTIVIEW_MODEL / "MODEL_CARD.md").read_text()
    full = ev["means"]
    for key, label in (("psnr_db", "PSNR"), ("clip_s", "CLIP-S")):
        for other, other_label in (("i2v", "the image-to-video model"), ("copy", "the copied input")):
            verdict = "met" if full["multiview"][key] > full[other][key] else "MISSED"
            assert re.search(rf"- {label} above {other_label}: .*: {verdict}\n", card), (label, other, verdict)


def test_the_image_pipeline_refuses_a_multiview_model():
    """Variants are configs of one model: the image-to-video pipeline names the pipeline to use."""
    from svd_fast.pipeline import SVDPipeline

    pipe = SVDPipeline.from_pretrained(DEFAULT_MULTIVIEW_MODEL, torch_dtype=torch.float32)
    with pytest.raises(ValueError, match="SVDMultiViewPipeline"):
        pipe(torch.rand(3, 64, 64), height=64, width=64, num_inference_steps=1)
