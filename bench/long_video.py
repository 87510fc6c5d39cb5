"""Long videos (svd_fast.long_video): seams, drift and memory against the video's length.

    python bench/long_video.py --lengths 2,4,8 --overlaps 1,2,3 --json bench/results/long-video-DATE.json

For each held-out real photograph of the default model's recipe and each overlap, a video of
`multiple` x the model's window is sampled (the default model unless --model); reported per
length: frame-to-frame PSNR at the chunk seams against inside the chunks (a visible seam is a
dip), colour drift of each frame against frame 0 (largest channel-mean error, /255), the
sharpness ratio (variance of the Laplacian, last frame / frame 0 and last frame / the input image),
the mean optical flow, the sampling time, and the peak resident memory of a fresh process that
samples only that length (flat in N means the chunks carry nothing but the overlap forward).
--no-detail-anchor / --no-colour-anchor measure svd_fast.long_video without its anchors.
"""
from __future__ import annotations

import argparse
import resource
import subprocess
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


def held_out_images() -> dict[str, torch.Tensor]:
    return recipe_module().held_out_photos()  # fetched from their packages


def one_video(model: str, image: torch.Tensor, frames: int, overlap: int, seed: int, steps: int | None,
              detail_anchor: bool = True, colour_anchor: bool = True):
    from svd_fast import conditioner
    from svd_fast.long_video import chunk_plan, drift_report, sample_long_video, seam_report
    from svd_fast.pipeline import SVDPipeline
    from svd_fast.train.video_metrics import mean_flow

    pipe = SVDPipeline.from_pretrained(model, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    cfg = pipe.config
    start = time.perf_counter()
    video = sample_long_video(pipe, image, frames, window=cfg.num_frames, overlap=overlap, height=cfg.height,
                              width=cfg.width, num_inference_steps=steps or cfg.num_inference_steps,
                              generator=torch.Generator().manual_seed(seed), fps=cfg.fps,
                              motion_bucket_id=cfg.motion_bucket_id, max_guidance_scale=cfg.max_guidance_scale,
                              image_init_sigma=cfg.image_init_sigma, keep_first_frame=cfg.keep_first_frame,
                              detail_anchor=detail_anchor, colour_anchor=colour_anchor)
    seconds = time.perf_counter() - start
    plan = chunk_plan(frames, cfg.num_frames, overlap)
    reference = ((conditioner.preprocess_image(image, cfg.height, cfg.width)[0] + 1) / 2).clamp(0, 1)
    drift = drift_report(video, reference.permute(1, 2, 0).numpy())
    return video, {"frames": frames, "chunks": len(plan), "seconds": seconds, **seam_report(video, plan),
                   "mean_flow": mean_flow(video),
                   "mean_colour_drift_255": drift["mean_colour_drift_255"],
                   "last_colour_drift_255": drift["last_colour_drift_255"],
                   "last_sharpness_ratio": drift["last_sharpness_ratio"],
                   "last_sharpness_vs_input": drift["last_sharpness_vs_input"]}


def peak_rss_child(model: str, frames: int, overlap: int, detail_anchor: bool = True, colour_anchor: bool = True) -> float:
    """Peak resident memory (GiB) of a fresh process sampling one video of `frames` frames."""
    code = (f"import sys, resource, torch; sys.argv=['x']; sys.path.insert(0, {str(REPO / 'bench')!r}); "
            f"import long_video as lv; torch.set_num_threads(torch.get_num_threads()); "
            f"image = next(iter(lv.held_out_images().values())); lv.one_video({model!r}, image, {frames}, {overlap}, 0, None, {detail_anchor}, {colour_anchor}); "
            f"print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1]) / 2**20  # ru_maxrss is in KiB on Linux


def main(argv=None) -> int:
    from bench.harness import machine_info, write_json

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(REPO / "svd_fast" / "assets" / "default_model"))
    p.add_argument("--lengths", default="2,4,8", help="video lengths, in multiples of the model's window")
    p.add_argument("--overlaps", default="1,2,3")
    p.add_argument("--steps", type=int)
    p.add_argument("--detail-anchor", action=argparse.BooleanOptionalAction, default=True,
                   help="svd_fast.long_video's detail anchor (the default) or not")
    p.add_argument("--colour-anchor", action=argparse.BooleanOptionalAction, default=True,
                   help="svd_fast.long_video's colour anchor (the default) or not")
    p.add_argument("--gif", help="write the 4x-window video of the first photo (default overlap) here")
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)

    from svd_fast.pipeline import SVDPipeline
    from svd_fast.video_io import save_video

    window = SVDPipeline.from_pretrained(args.model).config.num_frames
    lengths = [int(x) for x in args.lengths.split(",")]
    overlaps = [int(x) for x in args.overlaps.split(",")]
    images = held_out_images()
    rows = []
    for overlap in overlaps:
        for multiple in lengths:
            per_image = []
            for seed, (name, image) in enumerate(images.items()):
                video, row = one_video(args.model, image, multiple * window, overlap, seed, args.steps,
                                       args.detail_anchor, args.colour_anchor)
                per_image.append({"image": name, **row})
                if args.gif and multiple == 4 and overlap == overlaps[len(overlaps) // 2] and seed == 0:
                    save_video(video, args.gif, fps=8)
            keys = [k for k in per_image[0] if k != "image"]
            mean = {k: float(np.mean([r[k] for r in per_image])) for k in keys}
            rows.append({"overlap": overlap, "multiple": multiple, "mean": mean, "per_image": per_image})
            print(f"overlap {overlap} x{multiple}: seam {mean['seam_psnr']:.1f} dB vs inside {mean['inside_psnr']:.1f} dB, "
                  f"colour drift mean {mean['mean_colour_drift_255']:.1f} last {mean['last_colour_drift_255']:.1f}/255, "
                  f"sharpness last/first {mean['last_sharpness_ratio']:.2f} (last/input "
                  f"{mean['last_sharpness_vs_input']:.2f}), flow {mean['mean_flow']:.2f} px/frame, "
                  f"{mean['seconds']:.1f} s", flush=True)
    memory = {m: peak_rss_child(args.model, m * window, overlaps[len(overlaps) // 2], args.detail_anchor,
                                args.colour_anchor) for m in lengths}
    print("peak RSS (GiB) by length multiple:", {m: round(v, 3) for m, v in memory.items()})
    write_json(args.json, {"machine": machine_info(), "model": args.model, "window": window, "dtype": "fp32",
                           "detail_anchor": args.detail_anchor, "colour_anchor": args.colour_anchor,
                           "threads": torch.get_num_threads(), "images": list(images),
                           "rows": rows, "peak_rss_gib_by_multiple": memory,
                           "max_rss_this_process_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20})
    return 0


if __name__ == "__main__":
    sys.exit(main())
