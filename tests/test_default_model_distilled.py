"""The shipped consistency-distilled default model (svd_fast/assets/default_model_distilled): its
folder samples with the consistency sampler by default, and on held-out photographs its 1- and
2-step videos are closer to the teacher's 25-step videos than the teacher's own videos at the same
number of Euler steps (measured here, not copied from the card)."""
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


@functools.cache
def _pipes():
    pipes = (SVDPipeline.from_pretrained(TEACHER, torch_dtype=torch.float32),
             SVDPipeline.from_pretrained(STUDENT, torch_dtype=torch.float32))
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)
    return pipes


def _video(pipe, image, steps, guidance, seed, **extra):
    cfg = _recipe().CONFIG
    return pipe(image, height=cfg.height, width=cfg.width, num_frames=cfg.num_frames, fps=cfg.fps,
                motion_bucket_id=cfg.motion_bucket_id, num_inference_steps=steps, max_guidance_scale=guidance,
                generator=torch.Generator().manual_seed(seed), output_type="np", **extra).frames[0]


def test_the_student_folder_carries_its_sampler_and_few_step_defaults():
    _, student = _pipes()
    assert student.default_sampler == "consistency"
    assert student.consistency.boundary_sigma == pytest.approx(student.consistency.sigma_min)
    assert student.config.num_inference_steps == 4 and student.config.max_guidance_scale == 1.0
    size = sum(f.stat().st_size for f in STUDENT.rglob("*") if f.is_file())
    assert size < 40 * 2**20, f"{size / 2**20:.1f} MiB"


@pytest.mark.parametrize("steps", [1, 2])
def test_few_student_steps_land_closer_to_the_teachers_video_than_as_many_teacher_steps(steps):
    """Deterministic multistep consistency sampling (eta 0) follows the teacher's trajectory; at 4
    steps the teacher's own Euler steps are closer still on this small model (card: 25.0 vs 22.7 dB)."""
    teacher, student = _pipes()
    guidance = _recipe().CONFIG.max_guidance_scale
    for photo in ("chelsea", "rocket"):
        image = _recipe().held_out_photos()[photo]
        reference = _video(teacher, image, 25, guidance, seed=0)
        teacher_k = _video(teacher, image, steps, guidance, seed=0)
        student_k = _video(student, image, steps, 1.0, seed=0, eta=0.0)
        assert psnr(student_k, reference) > psnr(teacher_k, reference) + 1.0, (photo, psnr(student_k, reference),
                                                                               psnr(teacher_k, reference))
        picture = image.permute(1, 2, 0).numpy()
        # first frame: ~2 dB below the teacher's on average (card; target 1 dB, missed), 3.1 dB on the worst photo
        assert first_frame_psnr(student_k, picture) > first_frame_psnr(reference, picture) - 4.0
        assert np.isfinite(student_k).all() and student_k.min() >= 0 and student_k.max() <= 1
