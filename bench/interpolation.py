"""Frame interpolation on held-out clips subsampled by 4: the in-between frames against the truth.

    python bench/interpolation.py --json bench/results/interpolation-DATE.json

Held-out clips of the default model's world at its resolution: procedural clips (indices the
recipe never trains on) and camera moves over the held-out real photographs (never trained on).
Each clip gives 5 frames at its own frame rate: frames 0 and 4 are the ends, frames 1-3 the
truth. Methods: linear blending of the ends (the baseline to beat) and the training-free
bidirectional sampler (SVDPipeline's last_image) on the default model (or --model). Reported:
PSNR of the three in-between frames against the truth, per method, per kind of clip.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
# Python puts this script's folder first on sys.path, where bench/kernels.py would shadow the
# `kernels` library that diffusers probes for: the repository root replaces it (as bench/run.py).
sys.path[0] = str(REPO)
from bench.harness import recipe_module  # noqa: E402
FACTOR = 4  # the paper's SVD-FI: 3 in-between frames, 4x the frame rate


def procedural_clips(count: int, size: int) -> list[tuple[np.ndarray, float]]:
    dm = recipe_module()
    from svd_fast.train.procedural import random_clip_spec, render_clip

    clips = []
    for i in range(count):
        spec = random_clip_spec(dm.HELD_OUT + 2000 + i)
        frames, _ = render_clip(spec, FACTOR + 1, size, size)
        clips.append((((frames + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy(), spec.fps))
    return clips


def photo_clips(per_photo: int, size: int) -> list[tuple[np.ndarray, float]]:
    dm = recipe_module()
    from svd_fast.real_media import fetch
    from svd_fast.train.real_footage import load_photo, photo_pan_video, random_pan_spec

    clips = []
    for name in dm.HELD_OUT_PHOTOS:
        photo = load_photo(fetch(name))
        for k in range(per_photo):
            spec = random_pan_spec(np.random.default_rng([k, 7, *name.encode()]), still_fraction=0.0)
            frames = np.stack(photo_pan_video(photo, spec, size)[: FACTOR + 1]).astype(np.float32) / 255
            clips.append((frames, spec.fps))
    return clips


def main(argv=None) -> int:
    from bench.harness import machine_info, write_json

    from svd_fast.interpolate import between
    from svd_fast.train.video_metrics import psnr
    from svd_fast.pipeline import SVDPipeline

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(REPO / "svd_fast" / "assets" / "default_model"))
    p.add_argument("--procedural", type=int, default=12)
    p.add_argument("--per-photo", type=int, default=3)
    p.add_argument("--steps", type=int)
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)

    pipe = SVDPipeline.from_pretrained(args.model, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    cfg = pipe.config
    size = cfg.height
    results, start = {}, time.perf_counter()
    for kind, clips in (("procedural", procedural_clips(args.procedural, size)), ("photo_pans", photo_clips(args.per_photo, size))):
        rows = []
        for i, (clip, fps) in enumerate(clips):
            truth = clip[1:FACTOR]
            weights = np.linspace(0, 1, FACTOR + 1)[1:FACTOR].reshape(-1, 1, 1, 1)
            linear = (1 - weights) * clip[0] + weights * clip[FACTOR]
            first, last = (torch.from_numpy(np.ascontiguousarray(clip[j])).permute(2, 0, 1) for j in (0, FACTOR))
            video = between(pipe, first, last, FACTOR + 1, seed=i, height=size, width=size,
                            num_inference_steps=args.steps or cfg.num_inference_steps, fps=max(3, round(fps)),
                            motion_bucket_id=cfg.motion_bucket_id, max_guidance_scale=cfg.max_guidance_scale)
            rows.append({"linear_blend": np.mean([psnr(a, b) for a, b in zip(linear, truth)]),
                         "bidirectional": np.mean([psnr(a, b) for a, b in zip(video[1:FACTOR], truth)]),
                         "bidirectional_ends": np.mean([psnr(video[0], clip[0]), psnr(video[FACTOR], clip[FACTOR])])})
        mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        results[kind] = {"clips": len(rows), "mean_psnr_db": mean}
        print(f"{kind} ({len(rows)} clips): in-between PSNR linear blend {mean['linear_blend']:.2f} dB, "
              f"bidirectional {mean['bidirectional']:.2f} dB (ends re-created at {mean['bidirectional_ends']:.2f} dB)",
              flush=True)
    write_json(args.json, {"machine": machine_info(), "model": args.model, "dtype": "fp32", "factor": FACTOR,
                           "resolution": size, "steps": args.steps or cfg.num_inference_steps,
                           "threads": torch.get_num_threads(), "seconds": time.perf_counter() - start,
                           "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
