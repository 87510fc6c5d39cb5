"""Frame interpolation on held-out clips subsampled by 4: the in-between frames against the truth.

    python bench/interpolation.py --json bench/results/interpolation-DATE.json [--fi-model PATH] [--model PATH]
        [--panel OUT.png]
    python bench/interpolation.py --headroom --json bench/results/interpolation-headroom-DATE.json

Held-out clips of the default model's world at its resolution, each 5 consecutive frames at its
own frame rate (frames 0 and 4 are the ends, 4 apart; frames 1-3 the truth):
- procedural: clips of indices the default model's recipe never trains on;
- photo_pans: camera moves over the held-out real photographs (never trained on);
- real_footage: windows of real videos that no svd_fast model trains on (svd_fast.real_media's
  EVALUATION_ONLY: carphone, a moving car; megamind, a film excerpt), windows across a cut skipped.
Methods: linear blending of the ends (the baseline to beat), classical optical-flow interpolation
(flow_warp: no model, for scale: what a non-generative interpolator does on the same clips), the training-free bidirectional
sampler on the image-to-video default model (SVDPipeline's last_image; --model), and SVD-FI
(SVDInterpolationPipeline; --fi-model, default the shipped default interpolator) without and with
guidance. Reported: PSNR of the three in-between frames against the truth, mean per kind of clip,
and the ceiling of any latent model with the default model's VAE: the true in-between frames
encoded and decoded (vae_ceiling; the SVD-FI output goes through the same decoder).
--headroom measures no model: blending, flow from the ends, the ends warped with the true motion
(true_motion, which reads the truth: a bound, not a method), the same motion made a straight even
move, and how far the true motion runs off that straight path: how much of a kind of clip's error an
interpolator could remove from what the ends show.
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
if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(REPO)
from bench.harness import recipe_module  # noqa: E402

FACTOR = 4  # the paper's SVD-FI: 3 in-between frames, 4x the frame rate
KINDS = ("procedural", "photo_pans", "real_footage")
"""the kinds of held-out clips, in the order of the tables"""
REAL_FOOTAGE = ("carphone", "megamind")
"""real videos never trained on by any svd_fast model (svd_fast.real_media.EVALUATION_ONLY)"""
CUT_PSNR_DB = 14.0
"""a window with two consecutive frames further apart than this is across a cut: skipped"""
GUIDED_SCALE = 2.0  # svd_fi_guided: the guidance of the default model's own sampling defaults


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


def footage_clips(per_video: int, size: int) -> list[tuple[np.ndarray, float]]:
    """`per_video` windows of FACTOR + 1 consecutive frames, evenly spread over each real video,
    scaled to cover size x size and centre-cropped (as training clips are)."""
    from svd_fast.real_media import EVALUATION_ONLY, fetch
    from svd_fast.train.data import _resize_crop, decode_video
    from svd_fast.train.video_metrics import psnr

    clips = []
    for name in REAL_FOOTAGE:
        assert name in EVALUATION_ONLY, f"{name} must be footage no model trains on"
        frames, fps = decode_video(fetch(name), name)
        starts = np.linspace(0, len(frames) - FACTOR - 1, 4 * per_video).round().astype(int)
        kept = 0
        for start in starts:
            x = torch.from_numpy(frames[start : start + FACTOR + 1]).permute(0, 3, 1, 2).float() / 255
            x = _resize_crop(x, size, size).clamp(0, 1).permute(0, 2, 3, 1).numpy()
            if min(psnr(a, b) for a, b in zip(x, x[1:])) < CUT_PSNR_DB or x.mean() < 0.05:  # a cut, or black
                continue
            clips.append((x, fps))
            kept += 1
            if kept == per_video:
                break
    return clips


def linear_blend(clip: np.ndarray) -> np.ndarray:
    weights = np.linspace(0, 1, FACTOR + 1)[1:FACTOR].reshape(-1, 1, 1, 1)
    return (1 - weights) * clip[0] + weights * clip[FACTOR]


def flow_warp(clip: np.ndarray) -> np.ndarray:
    """The in-between frames by optical flow, no model (svd_fast.interpolation.flow_interpolate)."""
    from svd_fast.interpolation import flow_interpolate

    return flow_interpolate(clip[0], clip[FACTOR], FACTOR + 1)[1:FACTOR]


def true_motion(clip: np.ndarray) -> dict:
    """The in-between frames made from the ends with the TRUE motion, and how that motion runs.

    They read the truth, so neither is an interpolator: they bound what warping the ends can reach.
    v0, v1 are the flows (fused_flow) from the true frame at t to the first and the last end.
    - "true_motion": each end warped by its flow, blended (1 - t, t); per-pixel flows fitted to the
      truth also absorb some change that is not motion, so this bound is loose;
    - "true_motion_linear": the same flows made a straight, even move between the ends (the
      least-squares V with v0 = -t V, v1 = (1 - t) V): the best an interpolator that moves content on
      straight paths can do, however well it estimates the motion;
    - "ends_apart_px": mean |v1 - v0|, how far content moves between the ends;
    - "off_line_px": mean |(1 - t) v0 + t v1|, how far the true position is from the straight path
      (0 for linear motion; about 0.2 px here is what DIS measures on a still picture with noise)."""
    from svd_fast.interpolation import INTERPOLATION_FLOW, fused_flow, warp_by_flow

    free, linear, apart, off_line = [], [], [], []
    first, last = clip[0], clip[FACTOR]
    for k in range(1, FACTOR):
        t, truth = k / FACTOR, clip[k]
        v0, v1 = fused_flow(truth, first, **INTERPOLATION_FLOW), fused_flow(truth, last, **INTERPOLATION_FLOW)
        free.append((1 - t) * warp_by_flow(first, v0) + t * warp_by_flow(last, v1))
        move = ((1 - t) * v1 - t * v0) / (t * t + (1 - t) ** 2)
        linear.append((1 - t) * warp_by_flow(first, -t * move) + t * warp_by_flow(last, (1 - t) * move))
        apart.append(np.linalg.norm(v1 - v0, axis=-1).mean())
        off_line.append(np.linalg.norm((1 - t) * v0 + t * v1, axis=-1).mean())
    return {"true_motion": np.clip(free, 0, 1), "true_motion_linear": np.clip(linear, 0, 1),
            "ends_apart_px": float(np.mean(apart)), "off_line_px": float(np.mean(off_line))}


def headroom() -> dict:
    """Model-free figures per kind of held-out clip: linear blending, optical flow from the ends, and the
    true-motion bound with how the true motion runs (true_motion)."""
    from bench.harness import machine_info

    from svd_fast.train.video_metrics import psnr

    size = recipe_module().HIGH
    sources = {"procedural": procedural_clips(12, size), "photo_pans": photo_clips(3, size),
               "real_footage": footage_clips(6, size)}
    results = {}
    for kind, clips in sources.items():
        rows = []
        for clip, _ in clips:
            truth = clip[1:FACTOR]
            bound = true_motion(clip)
            videos = {"linear_blend": linear_blend(clip), "flow_warp": flow_warp(clip),
                      "true_motion": bound.pop("true_motion"), "true_motion_linear": bound.pop("true_motion_linear")}
            row = {m: float(np.mean([psnr(a, b) for a, b in zip(v, truth)])) for m, v in videos.items()} | bound
            rows.append(row)
        mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        results[kind] = {"clips": len(rows), "mean": mean, "rows": rows}
        print(f"{kind} ({len(rows)} clips): linear blend {mean['linear_blend']:.2f} dB, flow from the ends "
              f"{mean['flow_warp']:.2f} dB, true motion {mean['true_motion']:.2f} dB, made linear "
              f"{mean['true_motion_linear']:.2f} dB; content moves {mean['ends_apart_px']:.2f} px "
              f"between the ends, {mean['off_line_px']:.2f} px off the straight line in between", flush=True)
    return {"machine": machine_info(), "factor": FACTOR, "resolution": size, "results": results}


@torch.no_grad()
def vae_round_trip(vae, frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) frames in [0, 1] encoded (latent mean) and decoded as one clip by `vae`."""
    x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)).permute(0, 3, 1, 2) * 2 - 1
    z = vae.encode(x)
    decoded = vae.decode(z, num_frames=len(z)).float().clamp(-1, 1)
    return ((decoded + 1) / 2).permute(0, 2, 3, 1).numpy()


def _tensor(frame: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frame, dtype=np.float32)).permute(2, 0, 1)


def measure(fi_model=None, base_model=None, procedural: int = 12, per_photo: int = 3, per_video: int = 6,
            steps: int | None = None, panel: Path | None = None) -> dict:
    """The figures of every method on every kind of held-out clip (dict with machine info)."""
    from bench.harness import machine_info

    from svd_fast.interpolate import between
    from svd_fast.interpolation import SVDInterpolationPipeline, motion_bucket_from_ends
    from svd_fast.pipeline import SVDPipeline
    from svd_fast.train.video_metrics import psnr

    fi_model = Path(fi_model or REPO / "svd_fast" / "assets" / "default_interpolator")
    base_model = Path(base_model or REPO / "svd_fast" / "assets" / "default_model")
    base = SVDPipeline.from_pretrained(base_model, torch_dtype=torch.float32)
    fi = SVDInterpolationPipeline.from_pretrained(fi_model, torch_dtype=torch.float32)
    for pipe in (base, fi):
        pipe.set_progress_bar_config(disable=True)
    size = base.config.height
    sources = {"procedural": procedural_clips(procedural, size), "photo_pans": photo_clips(per_photo, size),
               "real_footage": footage_clips(per_video, size)}
    results, panels, start = {}, [], time.perf_counter()
    for kind, clips in sources.items():
        rows = []
        for i, (clip, fps) in enumerate(clips):
            truth = clip[1:FACTOR]
            first, last = _tensor(clip[0]), _tensor(clip[FACTOR])
            fps = int(np.clip(round(fps), 3, 30))
            videos = {"linear_blend": linear_blend(clip), "flow_warp": flow_warp(clip),
                      "vae_ceiling": vae_round_trip(fi.vae, truth)}
            videos["bidirectional"] = between(
                base, first, last, FACTOR + 1, seed=i, height=size, width=size,
                num_inference_steps=steps or base.config.num_inference_steps, fps=fps,
                motion_bucket_id=base.config.motion_bucket_id, max_guidance_scale=base.config.max_guidance_scale)[1:FACTOR]
            bucket = motion_bucket_from_ends(clip[0], clip[FACTOR], FACTOR + 1)
            for name, guidance in (("svd_fi", fi.config.max_guidance_scale), ("svd_fi_guided", GUIDED_SCALE)):
                video = fi(first, last, num_frames=FACTOR + 1, num_inference_steps=steps, fps=fps,
                           motion_bucket_id=bucket, max_guidance_scale=guidance,
                           generator=torch.Generator().manual_seed(i), output_type="np").frames[0]
                videos[name] = video[1:FACTOR]
                if name == "svd_fi":
                    ends = np.mean([psnr(video[0], clip[0]), psnr(video[FACTOR], clip[FACTOR])])
            if fi.unet.config.latent_prior:  # the default flow prior against the blend prior
                videos["svd_fi_blend_prior"] = fi(
                    first, last, num_frames=FACTOR + 1, num_inference_steps=steps, fps=fps, motion_bucket_id=bucket,
                    generator=torch.Generator().manual_seed(i), output_type="np", prior="blend").frames[0][1:FACTOR]
            rows.append({**{m: float(np.mean([psnr(a, b) for a, b in zip(videos[m], truth)])) for m in videos},
                         "svd_fi_ends": float(ends)})
            if i < 2:
                panels.append(np.concatenate([np.concatenate(list(x), axis=1) for x in
                                              (truth, videos["linear_blend"], videos["bidirectional"], videos["svd_fi"])],
                                             axis=0))
        mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        results[kind] = {"clips": len(rows), "mean_psnr_db": mean, "rows": rows}
        print(f"{kind} ({len(rows)} clips): in-between PSNR linear blend {mean['linear_blend']:.2f} dB, "
              f"optical-flow warp {mean['flow_warp']:.2f} dB, "
              f"bidirectional {mean['bidirectional']:.2f} dB, SVD-FI {mean['svd_fi']:.2f} dB "
              f"(guided {mean['svd_fi_guided']:.2f}"
              + (f", blend prior {mean['svd_fi_blend_prior']:.2f}" if "svd_fi_blend_prior" in mean else "")
              + f"; ends re-created at {mean['svd_fi_ends']:.2f} dB); VAE ceiling "
              f"{mean['vae_ceiling']:.2f} dB", flush=True)
    if panel is not None:
        from PIL import Image

        Image.fromarray((np.concatenate(panels, axis=0).clip(0, 1) * 255).round().astype(np.uint8)).save(panel)
    return {"machine": machine_info(), "fi_model": str(fi_model), "base_model": str(base_model), "dtype": "fp32",
            "factor": FACTOR, "resolution": size, "steps": steps or fi.config.num_inference_steps,
            "bidirectional_steps": steps or base.config.num_inference_steps, "torch_threads": torch.get_num_threads(),
            "seconds": time.perf_counter() - start, "results": results}


def card_table(metrics: dict) -> list[str]:
    """Markdown lines of the figures (model card, README)."""
    lines = ["| clips | linear blend | training-free bidirectional (default model) | SVD-FI | SVD-FI, guidance "
             f"{GUIDED_SCALE:g} | SVD-FI vs linear | VAE ceiling | optical-flow warp (no model) |",
             "|---|---|---|---|---|---|---|---|"]
    for kind, r in sorted(metrics["results"].items(), key=lambda item: KINDS.index(item[0])):
        m = r["mean_psnr_db"]
        flow = f"{m['flow_warp']:.2f} dB" if "flow_warp" in m else "-"
        lines.append(f"| {kind.replace('_', ' ')} ({r['clips']}) | {m['linear_blend']:.2f} dB | {m['bidirectional']:.2f} dB "
                     f"| **{m['svd_fi']:.2f} dB** | {m['svd_fi_guided']:.2f} dB | {m['svd_fi'] - m['linear_blend']:+.2f} dB "
                     f"| {m['vae_ceiling']:.2f} dB | {flow} |")
    machine = metrics["machine"]
    lines += ["", f"PSNR of the 3 in-between frames against the true frames (mean over clips), {metrics['resolution']} px, "
              f"fp32, {metrics['steps']} Euler step{'' if metrics['steps'] == 1 else 's'} for SVD-FI and {metrics['bidirectional_steps']} for the "
              f"bidirectional sampler; {machine['host_cpu']}, {machine['date'][:10]} (bench/interpolation.py). "
              "Clips: held-out procedural clips, camera moves over the held-out photographs, and windows of real "
              "footage never trained on (carphone, megamind), each 5 consecutive frames: the ends 4 frames apart. "
              "VAE ceiling: the true in-between frames through the model's VAE (encode, decode), the best a "
              "latent model with this VAE can reach on its own (SVD-FI's pin_ends adds the ends' VAE errors back, "
              "and with the flow prior the VAE's error on the flow frames, so it can pass the ceiling). Optical-flow warp: "
              "fused DIS flow between the ends (grey and each colour channel), both ends warped to each in-between time and blended "
              "(svd_fast.interpolation.flow_interpolate; no model, for scale)."]
    return lines


def main(argv=None) -> int:
    from bench.harness import write_json

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="image-to-video model of the bidirectional baseline (default model)")
    p.add_argument("--fi-model", default=None, help="SVD-FI model (default: svd_fast/assets/default_interpolator)")
    p.add_argument("--procedural", type=int, default=12)
    p.add_argument("--per-photo", type=int, default=3)
    p.add_argument("--per-video", type=int, default=6)
    p.add_argument("--steps", type=int)
    p.add_argument("--panel", type=Path, help="PNG: truth / linear / bidirectional / SVD-FI rows of the first clips")
    p.add_argument("--headroom", action="store_true",
                   help="only the model-free figures: blending, flow, the true-motion bound, off-line motion")
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    if args.headroom:
        write_json(args.json, headroom())
        return 0
    metrics = measure(args.fi_model, args.model, args.procedural, args.per_photo, args.per_video, args.steps, args.panel)
    write_json(args.json, metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
