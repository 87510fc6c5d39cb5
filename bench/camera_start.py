"""Camera control by the start of sampling (svd_fast.camera_start) on the default model: does the video
follow the move? Issue 15's figures on the held-out photos (never trained on), for every move and speed.

    .venv/bin/python bench/camera_start.py [--seeds 0 1 2] [--render warp frames] [--camera-from image noise]
        [--moves zoom_in:1.05 ...] [--out bench/results/...json]
    .venv/bin/python bench/camera_start.py --long [--seeds 0 1] [--moves zoom_in zoom_out]

For each held-out photo and seed the default model samples with its own defaults (8 Euler steps, no
guidance, frame 0 held; the CLI's) once without a camera (the base) and once per move and start
(camera_from 'image': the moved input at sigma 3; 'noise': pure noise moving with the camera); figures per move
and render (svd_fast.train.camera_motion's): sign agreement of the mean flow along a pan or of the
divergence for a zoom, that mean (signed so the move's direction is positive) against the base's, and
the first frame's PSNR against the input (the base's in brackets).
--long: long videos of 4 windows (svd_fast.long_video, the image start carried over the chunks), the mean
divergence of each chunk's frames and the share of videos whose chunk diverges the move's way.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training" / "recipes"))

MOVES = ("zoom_in:1.03", "zoom_in:1.05", "zoom_in:1.07", "zoom_out:1.03", "zoom_out:1.05", "zoom_out:1.07",
         "pan_left:0.015", "pan_left:0.025", "pan_left:0.035", "pan_right:0.025", "pan_up:0.025", "pan_down:0.025")


def long_videos(pipe, photos: dict, seeds, moves, sampling: dict) -> dict:
    """Per move (and without a camera): each chunk's mean divergence over the videos, and the share of
    videos whose chunk diverges the move's way, for long videos of 4 windows (overlap 1)."""
    from svd_fast.long_video import chunk_plan, sample_long_video
    from svd_fast.train.video_metrics import mean_divergence

    cfg = pipe.config
    frames = 4 * cfg.num_frames
    plan = chunk_plan(frames, cfg.num_frames, 1)
    results = {}
    for move in [None, *moves]:
        per_video = []
        for image in photos.values():
            for seed in seeds:
                video = sample_long_video(pipe, image, frames, window=cfg.num_frames, height=cfg.height, width=cfg.width,
                                          generator=torch.Generator().manual_seed(seed), fps=cfg.fps,
                                          motion_bucket_id=cfg.motion_bucket_id, image_init_sigma=cfg.image_init_sigma,
                                          camera=move, **sampling)
                per_video.append([mean_divergence(video[c.start:c.start + cfg.num_frames]) for c in plan])
        per_video = np.array(per_video)
        sign = -1 if move and move.startswith("zoom_out") else 1
        results[move or "none"] = {"frames": frames, "chunks": len(plan),
                                   "mean_divergence_per_chunk": per_video.mean(0).round(5).tolist(),
                                   "right_sign_share_per_chunk": (sign * per_video > 0).mean(0).round(3).tolist()}
        print(move, json.dumps(results[move or "none"]), flush=True)
    return results


def main(argv=None) -> int:
    from default_model import held_out_photos

    from svd_fast.eval.multiview import machine_info, machine_tag
    from svd_fast.checkpoints.io import write_json
    from svd_fast.pipeline import SVDPipeline
    from svd_fast.sample import DEFAULT_MODEL
    from svd_fast.train.camera_motion import along_motion as along, flow_figures
    from svd_fast.train.video_metrics import first_frame_psnr

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--moves", nargs="+", default=list(MOVES))
    p.add_argument("--render", nargs="+", default=["warp", "frames"], choices=["warp", "frames"])
    p.add_argument("--camera-from", nargs="+", default=["image"], choices=["image", "noise"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--long", action="store_true", help="long videos of 4 windows instead: divergence per chunk")
    p.add_argument("--out", help="JSON path (default: bench/results/camera-start-<machine>-<date>.json)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = SVDPipeline.from_pretrained(args.model, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    sampling = {k: v for k, v in pipe.saved_sampling().items() if k not in ("render", "image_init_sigma")}
    cfg = pipe.config
    photos = held_out_photos(cfg.height)
    start = time.perf_counter()
    results = {}
    if args.long:
        results = long_videos(pipe, photos, args.seeds, args.moves, sampling)
        args.render = ["frames"]
    for render in [] if args.long else args.render:
        def sample(image, seed, camera=None, camera_from="image"):
            video = pipe(image, height=cfg.height, width=cfg.width, num_frames=cfg.num_frames, fps=cfg.fps,
                         motion_bucket_id=cfg.motion_bucket_id, generator=torch.Generator().manual_seed(seed),
                         output_type="np", render=render, camera=camera, camera_from=camera_from, **sampling).frames[0]
            return {**flow_figures(video), "psnr": first_frame_psnr(video, image.permute(1, 2, 0).numpy())}

        base = {(name, seed): sample(image, seed) for name, image in photos.items() for seed in args.seeds}
        for start_from, move in ((f, m) for f in args.camera_from for m in args.moves):
            motion = move.split(":")[0]
            rows = [(sample(image, seed, move, start_from), base[name, seed]) for name, image in photos.items()
                    for seed in args.seeds]
            key = f"{render} {move}" + ("" if start_from == "image" else " from noise")
            results[key] = {
                "render": render, "move": move, "camera_from": start_from,
                "sign_agreement": float(np.mean([along(r, motion) > 0 for r, _ in rows])),
                "mean_along": float(np.mean([along(r, motion) for r, _ in rows])),
                "base_mean_along": float(np.mean([along(b, motion) for _, b in rows])),
                "mean_flow": float(np.mean([r["magnitude"] for r, _ in rows])),
                "first_frame_psnr": float(np.mean([min(r["psnr"], 100.0) for r, _ in rows])),
                "base_first_frame_psnr": float(np.mean([min(b["psnr"], 100.0) for _, b in rows])),
            }
            print(json.dumps(results[key]), flush=True)
    kind = "camera-start-long" if args.long else "camera-start"
    out = Path(args.out) if args.out else (
        REPO / "bench" / "results" / f"{kind}-default-model-{machine_tag()}-{time.strftime('%Y-%m-%d')}.json")
    write_json(out, {"what": "svd_fast.camera_start on the default model, held-out photos", "model": args.model,
                     "images": list(photos), "seeds": args.seeds, "sampling": sampling,
                     "note": "first-frame PSNR capped at 100 dB (the warp render returns the input itself: inf)",
                     "results": results, "seconds": round(time.perf_counter() - start, 1), "machine": machine_info()})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
