"""Speed and quality of svd_fast's approximate sampling modes against exact mode, in one run.

    python bench/quality.py --modes exact,cache2,cache3,cache5 --json bench/results/quality-cpu-DATE.json

Every approximate mode is compared with exact mode on the same seed, in the same process:

1. The embedded default model (svd_fast/assets/default_model, or --model) on held-out images: the
   held-out real photographs of its recipe (training/recipes/default_model.py, fetched from their
   packages) and held-out procedural first frames. For each mode and image the whole sampling call
   (image encode, --steps steps, decode) is timed, calls of all modes interleaved image by image;
   the video is compared with exact mode's: PSNR and SSIM of the frames, and the model card's own
   figures (svd_fast.train.video_metrics: first-frame PSNR vs the input, mean optical flow,
   flow-warped frame consistency) for both.
2. Random full-size SVD UNet weights at a small shape (--unet-config svd, a tiny CLIP tower: the
   image encoder is not what is compared): the sampling run of each mode with its latents put back
   onto exact mode's trajectory after every step, so each UNet call sees exact mode's input; the
   relative error of every UNet output against exact mode's, and the time of the whole call.
3. The DeepCache package (pip DeepCache) on diffusers' pipeline with the same weights, when it is
   installed: its DeepCacheSDHelper against diffusers' exact pipeline, measured as in 2.

Modes are pluggable: MODES maps a name to a Mode (how to turn a freshly loaded exact pipeline into
the mode's, and which call arguments it changes). Timings taken while other jobs run are not
benchmark figures: the load average is recorded with each part.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

# Python puts this script's folder first on sys.path, where bench/kernels.py would shadow the
# `kernels` library that diffusers probes for: the repository root replaces it (as bench/run.py).
REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)
from bench.harness import PeakMemory, machine_info, recipe_module, write_json  # noqa: E402
from bench.run import build_config  # noqa: E402

from svd_fast import accelerate, restore  # noqa: E402
from svd_fast.pipeline import SVDPipeline  # noqa: E402

TARGETS = {"cache3": {"speedup_whole_sampling": 1.6, "frames_psnr_vs_exact_db": 28.0}}
"""issue 13's targets, checked in the JSON where the mode was run"""
DISTILLED_TARGETS = {"distilled4": {"speedup_vs_exact": 5.0, "first_frame_psnr_within_db": 1.0, "mean_flow_within": 0.25}}
"""issue 13: the student at 4 steps vs the teacher's exact sampling (run with --steps 25)"""


# ------------------------------------------------------------------------------------- modes
@dataclass(frozen=True)
class Mode:
    """One way to sample. `prepare(pipe)` turns a freshly loaded exact pipeline (an SVDPipeline,
    or diffusers' pipeline for part 3) into this mode's, in place; `call` overrides arguments of
    the pipeline call (steps, sampler); `model` is another model to load (a distilled student)
    instead of the benchmarked one; `unet_level`: also compared at the UNet output (part 2);
    `saved_sampling`: the model's own saved sampler settings (SVDPipeline.saved_sampling: steps,
    guidance, start, first-frame hold, render) replace the benchmark's, as the sample CLI uses them."""

    name: str
    prepare: Callable[[Any], Any] = lambda pipe: pipe
    call: dict = field(default_factory=dict)
    model: Path | None = None
    unet_level: bool = True
    saved_sampling: bool = False


def _cache_mode(interval: int) -> Mode:
    return Mode(f"cache{interval}", prepare=lambda pipe: accelerate(pipe, cache_interval=interval))


DISTILLED_MODEL = REPO / "svd_fast" / "assets" / "default_model_distilled"


def _distilled_mode(steps: int) -> Mode:
    """The default model's consistency-distilled student (training/recipes/distill_consistency.py):
    `steps` consistency steps without guidance, against the teacher's exact sampling."""
    return Mode(f"distilled{steps}", call={"num_inference_steps": steps, "max_guidance_scale": 1.0},
                model=DISTILLED_MODEL, unet_level=False)


MODES = {"exact": Mode("exact"), "int8": Mode("int8", prepare=lambda pipe: accelerate(pipe, quantize="int8")),
         **{f"cache{k}": _cache_mode(k) for k in (2, 3, 4, 5)},
         **{f"distilled{k}": _distilled_mode(k) for k in (1, 2, 4, 8)},
         # what `python -m svd_fast.sample` does without flags, with the model and with its student
         "defaults": Mode("defaults", saved_sampling=True, unet_level=False),
         "distilled_defaults": Mode("distilled_defaults", model=DISTILLED_MODEL, saved_sampling=True, unet_level=False)}


def parse_modes(spec: str) -> list[Mode]:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODES]
    if unknown:
        raise SystemExit(f"error: unknown mode(s) {unknown}; choose from {sorted(MODES)}")
    return [MODES["exact"]] + [MODES[n] for n in names if n != "exact"]  # exact first: the reference


# ------------------------------------------------------------------------------------ metrics
def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004) of two RGB images in [0, 1]: 11x11 Gaussian window, sigma 1.5,
    K1 = 0.01, K2 = 0.03, per channel on the valid area, averaged (scikit-image's
    gaussian_weights=True convention)."""
    import cv2

    c1, c2 = 0.01**2, 0.03**2
    blur = lambda x: cv2.GaussianBlur(x, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)[5:-5, 5:-5]  # noqa: E731
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scores = []
    for ch in range(a.shape[-1]):
        x, y = a[..., ch], b[..., ch]
        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        scores.append(s.mean())
    return float(np.mean(scores))


def compare_videos(video: np.ndarray, reference: np.ndarray) -> dict:
    """Frames of a mode against exact mode's (T, H, W, 3) in [0, 1]."""
    from svd_fast.train.video_metrics import psnr

    frame_psnr = [psnr(v, r) for v, r in zip(video, reference)]
    return {"psnr_db": psnr(video, reference), "min_frame_psnr_db": float(min(frame_psnr)),
            "ssim": float(np.mean([ssim(v, r) for v, r in zip(video, reference)]))}


def _mean(rows: list[dict], key: str) -> float:
    from svd_fast.train.video_metrics import finite_mean

    return finite_mean(r[key] for r in rows)


# ------------------------------------------------------------------ part 1: the default model
def held_out_images(args, size: int, frames: int) -> list[dict]:
    """[{name, image (3, size, size) in [0, 1], fps, motion}] of held-out photos and procedural frames."""
    from svd_fast.train.data import motion_bucket
    from svd_fast.train.procedural import random_clip_spec, render_clip

    recipe = recipe_module()
    images = []
    if args.photos:
        photos = recipe.held_out_photos(size)
        for name in args.photos.split(","):
            images.append({"name": name, "image": photos[name], "fps": None, "motion": None})
    for i in range(args.procedural):
        spec = random_clip_spec(recipe.HELD_OUT + 1000 + i)  # the clips the model card is measured on
        clip, flow = render_clip(spec, frames, size, size)
        images.append({"name": f"procedural_{i}", "image": ((clip[0] + 1) / 2).clamp(0, 1), "fps": int(spec.fps),
                       "motion": motion_bucket(float(flow.norm(dim=1).mean()), size)})
    return images


def load_mode_pipeline(mode: Mode, model: Path, dtype) -> SVDPipeline:
    pipe = SVDPipeline.from_pretrained(mode.model or model, torch_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return mode.prepare(pipe)


def bench_default_model(args, modes: list[Mode], dtype) -> dict:
    from svd_fast.train.video_metrics import video_report

    pipes = {m.name: load_mode_pipeline(m, args.model, dtype) for m in modes}
    cfg = pipes["exact"].config
    images = held_out_images(args, cfg.height, cfg.num_frames)

    def sample(mode: Mode, item: dict) -> tuple[np.ndarray, float]:
        kwargs = dict(height=cfg.height, width=cfg.width, num_frames=cfg.num_frames, num_inference_steps=args.steps,
                      fps=item["fps"] or cfg.fps, motion_bucket_id=cfg.motion_bucket_id if item["motion"] is None else item["motion"],
                      max_guidance_scale=args.max_guidance, output_type="np")
        kwargs.update(pipes[mode.name].saved_sampling() if mode.saved_sampling else {})
        kwargs.update(mode.call)  # the mode's own steps / guidance replace the benchmark's
        start = time.perf_counter()
        video = pipes[mode.name](item["image"], generator=torch.Generator().manual_seed(args.seed), **kwargs).frames[0]
        return video, time.perf_counter() - start

    for mode in modes:  # warm-up: kernel choices are timed at the first call of each shape
        sample(mode, images[0])
    rows = {m.name: [] for m in modes}
    times = {m.name: [] for m in modes}
    for item in images:
        picture = item["image"].permute(1, 2, 0).numpy()
        exact_video = None
        for _ in range(args.repeat):
            for mode in modes:  # interleaved, so a change of machine load hits every mode alike
                video, seconds = sample(mode, item)
                times[mode.name].append(seconds)
                if mode.name == "exact":
                    exact_video = video
                elif not rows[mode.name] or rows[mode.name][-1]["image"] != item["name"]:
                    rows[mode.name].append({"image": item["name"], **compare_videos(video, exact_video),
                                            **video_report(video, picture)})
        rows["exact"].append({"image": item["name"], **video_report(exact_video, picture)})
    exact_median = statistics.median(times["exact"])
    summary = {}
    for mode in modes:
        keys = [k for k in rows[mode.name][0] if k != "image"]
        median = statistics.median(times[mode.name])
        summary[mode.name] = {"call_median_s": median, "call_min_s": min(times[mode.name]),
                              "speedup_vs_exact": exact_median / median, "mean": {k: _mean(rows[mode.name], k) for k in keys},
                              "per_image": rows[mode.name], "call_times_s": times[mode.name]}
    return {"model": str(args.model), "dtype": str(dtype), "steps": args.steps,
            "shape": f"{cfg.num_frames} frames {cfg.height}x{cfg.width}, CFG batch 2 (max guidance {args.max_guidance})",
            "images": [i["name"] for i in images], "repeat": args.repeat, "modes": summary,
            "load_average_after": list(os.getloadavg())}


# --------------------------------------------------------------- part 2: full-size UNet weights
def trajectory_run(pipe, run_call, forced: list[torch.Tensor] | None):
    """Run `run_call(callback)` and return (latents after each step, UNet output of each call, seconds).

    With `forced`, the latents after step i are replaced by forced[i], so every UNet call of the
    run sees the input exact mode saw. UNet outputs are taken with a forward hook on pipe.unet's
    module (svd_fast's VideoUNet, or diffusers' UNet whose output is a tuple)."""
    latents, outputs = [], []
    module = pipe.unet.inner if hasattr(pipe.unet, "inner") else pipe.unet

    def keep_output(_module, _inputs, out):
        outputs.append((out[0] if isinstance(out, tuple) else out).detach().float().clone())

    def callback(_pipe, i, _t, values):
        latents.append(values["latents"].detach().clone())
        return {"latents": forced[i].clone()} if forced is not None else {}

    handle = module.register_forward_hook(keep_output)
    try:
        start = time.perf_counter()
        run_call(callback)
        seconds = time.perf_counter() - start
    finally:
        handle.remove()
    return latents, outputs, seconds


def relative_errors(outputs: list[torch.Tensor], reference: list[torch.Tensor]) -> dict:
    if len(outputs) != len(reference):
        raise RuntimeError(f"{len(outputs)} UNet calls against exact mode's {len(reference)}")
    errors = [float((o - r).norm() / r.norm()) for o, r in zip(outputs, reference)]
    return {"mean": float(np.mean(errors)), "max": float(max(errors)), "per_call": errors}


def full_size_pipeline(args, dtype) -> SVDPipeline:
    config = build_config(args.unet_config, args.unet_frames)
    tiny_tower = build_config("tiny", None).image_encoder  # projected to the UNet's cross-attention width
    config = dataclasses.replace(config, image_encoder=dataclasses.replace(
        tiny_tower, projection_dim=config.unet.cross_attention_dim))
    pipe = SVDPipeline.from_config(config, torch_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bench_full_size(args, modes: list[Mode], dtype) -> tuple[dict, SVDPipeline, dict]:
    pipe = full_size_pipeline(args, dtype)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, args.unet_size, args.unet_size, generator=g)
    call = dict(height=args.unet_size, width=args.unet_size, num_frames=args.unet_frames, num_inference_steps=args.unet_steps,
                max_guidance_scale=3.0, output_type="np", callback_on_step_end_tensor_inputs=["latents"])

    def run_call(callback, pipe=pipe, extra=None):
        return pipe(image, generator=torch.Generator().manual_seed(args.seed), callback_on_step_end=callback,
                    **{**call, **(extra or {})})

    with torch.inference_mode():
        run_call(None, extra={"num_inference_steps": 2})  # warm-up: kernel choices timed here
        with PeakMemory() as mem:
            trajectory, reference, exact_s = trajectory_run(pipe, run_call, None)
    results = {"exact": {"call_s": exact_s, "peak_memory_bytes": mem.peak_bytes}}
    for mode in modes:
        if mode.name == "exact" or not mode.unet_level:
            continue
        mode.prepare(pipe)
        with torch.inference_mode():
            _, outputs, seconds = trajectory_run(pipe, lambda cb: run_call(cb, extra=mode.call), trajectory)
        restore(pipe)
        results[mode.name] = {"call_s": seconds, "speedup_vs_exact": exact_s / seconds,
                              "unet_output_relative_error": relative_errors(outputs, reference)}
    report = {"config": args.unet_config, "dtype": str(dtype), "steps": args.unet_steps,
              "shape": f"{args.unet_frames} frames {args.unet_size}x{args.unet_size}, CFG batch 2",
              "weights": "random (torch default init, seed 0), full-size UNet and VAE, tiny CLIP tower",
              "note": "one timed call per mode: the whole call (encode, steps, decode), latents forced onto exact mode's trajectory",
              "modes": results, "load_average_after": list(os.getloadavg())}
    return report, pipe, {"trajectory": trajectory, "image": image, "call": call}


# --------------------------------------------------------------------------- part 3: DeepCache
def bench_deepcache(args, pipe: SVDPipeline, exact_run: dict, intervals: list[int]) -> dict:
    """The DeepCache package's helper on diffusers' pipeline with the same weights."""
    try:
        from DeepCache import DeepCacheSDHelper
    except ImportError as err:
        return {"status": f"not installed ({err}); pip install DeepCache"}
    import DeepCache

    info = {"package_version": _version("DeepCache"), "helper": "DeepCache.DeepCacheSDHelper (cache_branch_id=0, uniform)"}
    try:  # its own SVD pipeline fork, written against diffusers 0.24-era module paths
        import DeepCache.svd  # noqa: F401
        info["svd_fork"] = "imports"
    except Exception as err:  # ImportError/AttributeError from moved diffusers modules
        info["svd_fork"] = f"DeepCache.svd does not import with this diffusers: {type(err).__name__}: {err}"
    del DeepCache
    from svd_fast.diffusers_bridge import to_diffusers_pipeline

    from PIL import Image

    theirs = to_diffusers_pipeline(pipe)
    theirs.set_progress_bar_config(disable=True)
    call = exact_run["call"]
    # a PIL image, as diffusers' docs pass it: its _encode_image resizes PIL input to the CLIP size, not tensors
    image = Image.fromarray((exact_run["image"].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())

    def run_call(callback):
        return theirs(image, generator=torch.Generator().manual_seed(args.seed), callback_on_step_end=callback, **call)

    with torch.inference_mode():
        run_call(None)  # warm-up
        trajectory, reference, exact_s = trajectory_run(theirs, run_call, None)
    info["diffusers_exact_call_s"] = exact_s
    # the forced trajectory is diffusers' own; exact_run's is ours (the same to ~1e-3 in bf16)
    for interval in intervals:
        helper = DeepCacheSDHelper(pipe=theirs)
        helper.set_params(cache_interval=interval, cache_branch_id=0)
        name = f"deepcache{interval}"
        try:
            helper.enable()
            with torch.inference_mode():
                _, outputs, seconds = trajectory_run(theirs, run_call, trajectory)
            info[name] = {"call_s": seconds, "speedup_vs_diffusers_exact": exact_s / seconds,
                          "unet_output_relative_error": relative_errors(outputs, reference),
                          "full_unet_calls": "steps i with i % interval == 0 (no forced last step)"}
        except Exception as err:  # the helper wraps diffusers' blocks by name: report what broke
            info[name] = {"status": f"does not run on diffusers' SVD UNet: {type(err).__name__}: {err}"}
        finally:
            try:
                helper.disable()
            except Exception as err:
                info[name]["disable_error"] = f"{type(err).__name__}: {err}"
    info["load_average_after"] = list(os.getloadavg())
    return info


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


# ------------------------------------------------------------------------------------ report
def check_targets(report: dict) -> dict:
    checks = {}
    default = report.get("default_model", {}).get("modes", {})
    full = report.get("full_size_unet", {}).get("modes", {})
    for name, target in TARGETS.items():
        if name not in default:
            continue
        psnr = default[name]["mean"]["psnr_db"]
        speed_default = default[name]["speedup_vs_exact"]
        speed_full = full.get(name, {}).get("speedup_vs_exact")
        checks[name] = {
            "frames_psnr_vs_exact_db": psnr, "needed_db": target["frames_psnr_vs_exact_db"],
            "speedup_default_model": speed_default, "speedup_full_size_unet": speed_full,
            "needed_speedup": target["speedup_whole_sampling"],
            "met": bool(psnr >= target["frames_psnr_vs_exact_db"]
                        and max(speed_default, speed_full or 0) >= target["speedup_whole_sampling"]),
        }
    exact = default.get("exact", {}).get("mean", {})
    for name, target in DISTILLED_TARGETS.items():
        if name not in default:
            continue
        mode = default[name]
        first_frame_gap = exact["first_frame_psnr"] - mode["mean"]["first_frame_psnr"]
        flow_change = abs(mode["mean"]["mean_flow"] / exact["mean_flow"] - 1)
        checks[name] = {"speedup_vs_exact": mode["speedup_vs_exact"], "first_frame_psnr_below_exact_db": first_frame_gap,
                        "mean_flow_relative_change": flow_change, "needed": target,
                        "met": bool(mode["speedup_vs_exact"] >= target["speedup_vs_exact"]
                                    and first_frame_gap <= target["first_frame_psnr_within_db"]
                                    and flow_change <= target["mean_flow_within"])}
    return checks


def print_report(report: dict) -> None:
    d = report.get("default_model")
    if d:
        print(f"default model, {d['shape']}, {d['steps']} steps, {len(d['images'])} held-out images:")
        for name, m in d["modes"].items():
            mean = m["mean"]
            vs = "" if name == "exact" else (f" | vs exact: PSNR {mean['psnr_db']:.2f} dB, SSIM {mean['ssim']:.4f}")
            print(f"  {name:10s} call {m['call_median_s']:.3f} s ({m['speedup_vs_exact']:.2f}x){vs} | first frame "
                  f"{mean['first_frame_psnr']:.2f} dB, flow {mean['mean_flow']:.3f} px, warp {mean['warp_consistency']:.2f} dB")
    f = report.get("full_size_unet")
    if f:
        print(f"full-size {f['config']} UNet (random weights), {f['shape']}, {f['steps']} steps:")
        for name, m in f["modes"].items():
            err = m.get("unet_output_relative_error")
            extra = f" | UNet output rel. error mean {err['mean']:.4f}, max {err['max']:.4f}" if err else ""
            print(f"  {name:10s} call {m['call_s']:.2f} s ({m.get('speedup_vs_exact', 1.0):.2f}x){extra}")
    dc = report.get("deepcache")
    if dc:
        print("DeepCache package on diffusers' pipeline:", {k: v for k, v in dc.items() if not isinstance(v, dict)})
        for name, m in dc.items():
            if isinstance(m, dict) and "call_s" in m:
                err = m["unet_output_relative_error"]
                print(f"  {name:12s} call {m['call_s']:.2f} s ({m['speedup_vs_diffusers_exact']:.2f}x vs diffusers exact) | "
                      f"UNet output rel. error mean {err['mean']:.4f}, max {err['max']:.4f}")
            elif isinstance(m, dict):
                print(f"  {name}: {m}")
    for name, check in report.get("targets", {}).items():
        print(f"target {name}: {check}")


def parse_args(argv=None):
    from svd_fast.sample import DEFAULT_MODEL

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", default="exact,cache2,cache3,cache5", help=f"comma-separated, from {sorted(MODES)}")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="part 1's model (default: the embedded one)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "auto"], help="part 1's dtype")
    p.add_argument("--steps", type=int, default=25, help="sampling steps of part 1")
    p.add_argument("--max-guidance", type=float, default=2.0,
                   help="part 1's guidance on the last frame (SVD's per-frame guidance 1 -> 2, CFG batch 2; the "
                        "distilled student's teacher setting, not the default model's own sampling default)")
    p.add_argument("--photos", default="astronaut,chelsea,coffee,rocket", help="held-out photos ('' for none)")
    p.add_argument("--procedural", type=int, default=4, help="held-out procedural first frames")
    p.add_argument("--repeat", type=int, default=1, help="timed calls per mode and image (part 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--unet-config", default="svd", choices=["svd", "svd_xt", "small", "none"],
                   help="part 2's architecture ('none' skips parts 2 and 3)")
    p.add_argument("--unet-frames", type=int, default=14)
    p.add_argument("--unet-size", type=int, default=128, help="part 2's height and width in pixels")
    p.add_argument("--unet-steps", type=int, default=25)
    p.add_argument("--unet-dtype", default="auto", choices=["fp32", "bf16", "auto"])
    p.add_argument("--deepcache", default="3", help="intervals for the DeepCache package ('' skips part 3)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    p.add_argument("--json", help="write the results here")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_flush_denormal(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    from svd_fast.accel.dtypes import resolve_dtype

    modes = parse_modes(args.modes)
    machine = machine_info()
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "machine": machine, "modes": [m.name for m in modes]}
    if args.photos or args.procedural:  # part 1 needs images; --photos '' --procedural 0 skips it
        report["default_model"] = bench_default_model(args, modes, resolve_dtype(args.dtype, "cpu")[0])
    gc.collect()
    if args.unet_config != "none":
        unet_dtype = resolve_dtype(args.unet_dtype, "cpu")[0]
        report["full_size_unet"], pipe, exact_run = bench_full_size(args, modes, unet_dtype)
        if args.deepcache:
            report["deepcache"] = bench_deepcache(args, pipe, exact_run, [int(k) for k in args.deepcache.split(",")])
        del pipe
    report["targets"] = check_targets(report)
    report["load_average_end"] = list(os.getloadavg())
    print_report(report)
    if args.json:
        print(f"wrote {write_json(args.json, report)}")
    return report


if __name__ == "__main__":
    main()
