"""The shipped consistency-distilled default model (svd_fast/assets/default_model_distilled): its
folder samples with the consistency sampler by default, and on held-out photographs its 1- and
2-step videos are closer to the teacher's 25-step videos than the teacher's own videos at the same
number of Euler steps, and its 4-step videos keep the teacher's first frame and motion while being
steadier than the teacher's 4 Euler steps (measured here, not copied from the card)."""
import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from svd_fast.pipeline import SVDPipeline
from svd_fast.train.video_metrics import first_frame_psnr, psnr
from tests.conftest import default_model_recipe

REPO = Path(__file__).resolve().parents[1]
TEACHER = REPO / "svd_fast" / "assets" / "default_model"
STUDENT = REPO / "svd_fast" / "assets" / "default_model_distilled"


_recipe = default_model_recipe
TEACHER_GUIDANCE = 2.0
"""the teacher's guidance the student was distilled from (training/recipes/distill_consistency.py's
TEACHER_GUIDANCE; the default model's own sampling default is unguided since 2026-12-02)"""


@functools.cache
def _pipes():
    pipes = (SVDPipeline.from_pretrained(TEACHER, torch_dtype=torch.float32),
             SVDPipeline.from_pretrained(STUDENT, torch_dtype=torch.float32))
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)
    return pipes


def _video(pipe, image, steps, guidance, seed, **extra):
    cfg = _recipe().CONFIG
    call = dict(height=cfg.height, width=cfg.width, num_frames=cfg.num_frames, fps=cfg.fps,
                motion_bucket_id=cfg.motion_bucket_id, num_inference_steps=steps, max_guidance_scale=guidance,
                generator=torch.Generator().manual_seed(seed), output_type="np")
    return pipe(image, **{**call, **extra}).frames[0]


def test_the_student_folder_carries_its_sampler_and_few_step_defaults():
    _, student = _pipes()
    assert student.default_sampler == "consistency"
    assert student.consistency.boundary_sigma == pytest.approx(student.consistency.sigma_min)
    # the teacher's defaults with 2 consistency steps: pure noise, no guidance, frame 0 held, warp render
    assert student.saved_sampling() == dict(num_inference_steps=2, max_guidance_scale=1.0, image_init_sigma=None,
                                            keep_first_frame=True, render="warp")
    size = sum(f.stat().st_size for f in STUDENT.rglob("*") if f.is_file())
    assert size < 40 * 2**20, f"{size / 2**20:.1f} MiB"


@pytest.mark.parametrize("steps", [1, 2])
def test_few_student_steps_land_closer_to_the_teachers_video_than_as_many_teacher_steps(steps):
    """Deterministic multistep consistency sampling (eta 0) follows the teacher's trajectory."""
    teacher, student = _pipes()
    guidance = TEACHER_GUIDANCE
    for photo in ("chelsea", "rocket"):
        image = _recipe().held_out_photos()[photo]
        reference = _video(teacher, image, 25, guidance, seed=0)
        teacher_k = _video(teacher, image, steps, guidance, seed=0)
        student_k = _video(student, image, steps, 1.0, seed=0, eta=0.0)
        assert psnr(student_k, reference) > psnr(teacher_k, reference) + 1.0, (photo, psnr(student_k, reference),
                                                                               psnr(teacher_k, reference))
        picture = image.permute(1, 2, 0).numpy()
        # first frame at 1-2 steps: 0.9-1.1 dB below the teacher's 25-step one on average (card); a loose bound per photo
        assert first_frame_psnr(student_k, picture) > first_frame_psnr(reference, picture) - 4.0
        assert np.isfinite(student_k).all() and student_k.min() >= 0 and student_k.max() <= 1


def test_four_student_steps_match_the_teachers_25_and_beat_its_4_euler_steps():
    """Issue 13 on held-out photos and procedural first frames (bench/quality.py's set, seed 0): the
    student's default sampling (4 consistency steps, fresh noise between them, no guidance) keeps
    the teacher's 25-step first frame within 1 dB and its mean flow within 25%, and beats the
    teacher's own 4 Euler steps in frame-to-frame consistency (flow-warped PSNR) on every image.
    Measured here (seed 0): first frame 24.41 vs 24.49 dB, flow 0.68 vs 0.76 px/frame (-11%), warp
    consistency 29.2 vs 27.7 dB for the teacher's 4 steps; on 8 images x 3 seeds every pair by 0.7 dB
    or more. (The teacher's 4-step flow, 0.80, is the closer one to its 25-step flow here.)"""
    import types

    from bench.quality import held_out_images
    from svd_fast.train.video_metrics import mean_flow, warp_consistency

    teacher, student = _pipes()
    cfg = _recipe().CONFIG
    images = held_out_images(types.SimpleNamespace(photos=",".join(_recipe().HELD_OUT_PHOTOS), procedural=4),
                             cfg.height, cfg.num_frames)
    rows = []
    for item in images:
        extra = dict(fps=item["fps"] or cfg.fps, motion_bucket_id=cfg.motion_bucket_id if item["motion"] is None else item["motion"])
        call = functools.partial(_video, image=item["image"], seed=0)
        videos = {"t25": call(teacher, steps=25, guidance=TEACHER_GUIDANCE, **extra),
                  "t4": call(teacher, steps=4, guidance=TEACHER_GUIDANCE, **extra),
                  "s4": call(student, steps=4, guidance=1.0, **extra)}
        picture = item["image"].permute(1, 2, 0).numpy()
        rows.append({k: (first_frame_psnr(v, picture), mean_flow(v), warp_consistency(v)) for k, v in videos.items()})
    mean = {k: np.mean([r[k] for r in rows], axis=0) for k in ("t25", "t4", "s4")}
    assert mean["s4"][0] > mean["t25"][0] - 1.0, mean
    assert abs(mean["s4"][1] / mean["t25"][1] - 1) < 0.25, mean
    for image, r in zip(images, rows):
        assert r["s4"][2] > r["t4"][2], (image["name"], r)


def test_the_sample_command_on_the_student_keeps_the_input_and_its_motion_follows_the_bucket(tmp_path):
    """`python -m svd_fast.sample --model <student>` without flags: the video is the input moved
    (frame 0 = the input, steady: flow-warped PSNR > 30 dB) and it is the pipeline's video with the
    settings written out here; with them motion bucket 255 moves the videos more than bucket 0 (the
    card, 4 photos x 3 seeds: 0.47 px/frame at 35.9 dB, buckets 0 / 255: 0.11 / 0.67; one sample
    varies a lot, so here the means over 2 photos x 3 seeds)."""
    from PIL import Image

    from svd_fast import sample
    from svd_fast.train.video_metrics import mean_flow, video_report

    _, student = _pipes()
    settings = dict(keep_first_frame=True, render="warp", image_init_sigma=None)
    flows = {0: [], 255: []}
    for photo in ("chelsea", "rocket"):
        image = _recipe().held_out_photos()[photo]
        picture = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        path = tmp_path / f"{photo}.png"
        Image.fromarray(picture).save(path)
        out = tmp_path / f"{photo}_video.png"
        assert sample.main(["--model", str(STUDENT), "--image", str(path), "--out", str(out), "--seed", "3",
                            "--dtype", "fp32"]) == 0
        video = np.stack([np.asarray(Image.open(f)) for f in sorted(tmp_path.glob(f"{photo}_video_*.png"))]) / 255.0
        pixels = torch.from_numpy(picture).permute(2, 0, 1).float() / 255
        expected = _video(student, pixels, 2, 1.0, seed=3, **settings)
        assert np.abs(video - expected).max() <= 1 / 255 + 1e-6, photo  # PNG rounding only
        report = video_report(video, picture / 255.0)
        assert report["first_frame_psnr"] > 45, (photo, report)  # the input itself, through 8-bit PNG
        assert report["warp_consistency"] > 30.0 and report["mean_flow"] > 0.2, (photo, report)
        for bucket in flows:
            flows[bucket] += [mean_flow(_video(student, pixels, 2, 1.0, seed=seed, motion_bucket_id=bucket, **settings))
                              for seed in range(3)]
    assert np.mean(flows[255]) > 2.0 * np.mean(flows[0]), flows
