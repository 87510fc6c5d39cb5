"""Benchmark svd_fast against diffusers with identical random weights, in one process.

    python bench/run.py --config svd --frames 14 --height 128 --width 128 --dtype bf16 \
        --mode unet --repeat 5 --json bench/results/unet-svd-cpu.json

--mode unet times one UNet evaluation (batch 2 when CFG is on, as in sampling); --mode pipeline
times the whole image-to-video call with per-stage times (image encode, each UNet step, VAE
decode). Both report median/min of repeats, peak memory, achieved TFLOP/s (FLOPs counted on the
real graph with torch's FlopCounterMode) against this machine's measured matmul peak, and the
ratio ours/theirs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

# Python puts this script's folder first on sys.path, where bench/kernels.py would shadow the
# `kernels` library that transformers and diffusers probe for: the repository root replaces it.
sys.path[0] = str(Path(__file__).resolve().parents[1])
from bench.harness import PeakMemory, machine_info, matmul_peak_tflops, summary, time_repeats, write_json  # noqa: E402

from svd_fast.config import SVDConfig  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", choices=["tiny", "small", "svd", "svd_xt"])
    p.add_argument("--mode", default="unet", choices=["unet", "pipeline"])
    p.add_argument("--frames", type=int, help="default: the preset's")
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--steps", type=int, default=3, help="denoising steps per pipeline call")
    p.add_argument("--no-cfg", action="store_true", help="UNet batch 1 (no classifier-free guidance)")
    p.add_argument("--baseline", default="diffusers", choices=["diffusers", "none"])
    p.add_argument("--backend", help="svd_fast kernel backend (default: SVD_FAST_BACKEND or auto)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--profile", help="write a torch profiler trace (chrome JSON) of one of our runs here")
    return p.parse_args(argv)


def build_config(name: str, frames: int | None) -> SVDConfig:
    if name == "small":  # full depth and head layout at a quarter of the width
        import dataclasses

        base = SVDConfig.from_name("svd")
        unet = dataclasses.replace(base.unet, block_out_channels=(64, 128, 256, 256), num_attention_heads=(1, 2, 4, 4),
                                   cross_attention_dim=256)
        image_encoder = dataclasses.replace(base.image_encoder, hidden_size=256, num_hidden_layers=4,
                                            num_attention_heads=4, intermediate_size=1024, projection_dim=256)
        vae = dataclasses.replace(base.vae, block_out_channels=(32, 64, 128, 128))
        config = SVDConfig(unet=unet, vae=vae, image_encoder=image_encoder)
    else:
        config = SVDConfig.from_name(name)
    if frames:
        import dataclasses

        config = dataclasses.replace(config, num_frames=frames)
    return config


def build_pipelines(args):
    from svd_fast.pipeline import SVDPipeline

    dtype = DTYPES[args.dtype]
    start = time.perf_counter()
    ours = SVDPipeline.from_config(build_config(args.config, args.frames), torch_dtype=dtype, device=args.device)
    ours.set_progress_bar_config(disable=True)
    load_ours = time.perf_counter() - start
    theirs, load_theirs = None, None
    if args.baseline == "diffusers":
        from svd_fast.diffusers_bridge import to_diffusers_pipeline

        start = time.perf_counter()
        theirs = to_diffusers_pipeline(ours)
        theirs.set_progress_bar_config(disable=True)
        load_theirs = time.perf_counter() - start
    return ours, theirs, {"ours_s": load_ours, "diffusers_s": load_theirs}


def unet_inputs(config: SVDConfig, args, device, dtype):
    batch = 1 if args.no_cfg else 2
    t, h, w = config.num_frames, args.height // 8, args.width // 8
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(batch, t, config.unet.in_channels, h, w, generator=g).to(device, dtype),
        torch.full((batch,), 0.5, device=device),
        torch.randn(batch, 1, config.unet.cross_attention_dim, generator=g).to(device, dtype),
        torch.tensor([[6.0, 127.0, 0.02]] * batch, device=device, dtype=dtype),
    )


def count_flops(fn) -> int:
    """FLOPs of one call of fn, counted on the real graph (this call doubles as a warm-up)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        fn()
    return counter.get_total_flops()


def bench_unet(ours, theirs, args, peak_tflops):
    """One UNet evaluation per side; the sides' repeats alternate, so load drift hits both alike."""
    cfg = ours.config
    inputs = unet_inputs(cfg, args, ours.device, ours.dtype)
    sides = {"ours": lambda: ours.unet(*inputs)}
    if theirs is not None:
        sides["diffusers"] = lambda: theirs.unet(*inputs, return_dict=False)[0]
    flops, memory, times = {}, {}, {name: [] for name in sides}
    with torch.inference_mode():
        for name, run in sides.items():
            flops[name] = count_flops(run)  # doubles as the first warm-up call
            with PeakMemory() as mem:  # a second call: the peak above the resting level
                time_repeats(run, 1, warmup=max(args.warmup - 1, 0))
            memory[name] = mem.peak_bytes
        for _ in range(args.repeat):
            for name, run in sides.items():
                times[name] += time_repeats(run, 1, warmup=0)
    results = {}
    for name in sides:
        stats = summary(times[name])
        rate = flops[name] / stats["median_s"] / 1e12
        results[name] = {
            "unet_step": stats,
            "flops": flops[name],
            "tflops_per_s": rate,
            "fraction_of_peak": rate / peak_tflops,
            "frames_per_s": cfg.num_frames * inputs[0].shape[0] / stats["median_s"],
            "peak_memory_bytes": memory[name],
        }
    if args.profile:
        profile(lambda: ours.unet(*inputs), args.profile)
    return results


def bench_pipeline(ours, theirs, args, peak_tflops):
    from PIL import Image

    cfg = ours.config
    g = torch.Generator().manual_seed(0)
    image = Image.fromarray((torch.rand(args.height, args.width, 3, generator=g) * 255).byte().numpy())
    common = dict(height=args.height, width=args.width, num_frames=cfg.num_frames, num_inference_steps=args.steps,
                  max_guidance_scale=1.0 if args.no_cfg else 3.0, output_type="np")
    results = {}
    run_ours = lambda: ours(image, generator=torch.Generator().manual_seed(0), **common)  # noqa: E731
    results["ours"] = _pipeline_stats(run_ours, args, lambda out: out.timings)
    if theirs is not None:
        timer = _DiffusersStageTimer(theirs)
        results["diffusers"] = _pipeline_stats(
            lambda: timer.run(image, generator=torch.Generator().manual_seed(0), **common), args, lambda stages: stages
        )
    if args.profile:
        profile(run_ours, args.profile)
    return results


def _pipeline_stats(run, args, timings_of):
    stage_runs, totals = [], []
    with torch.inference_mode():
        run()  # warm-up
        with PeakMemory() as mem:
            for _ in range(args.repeat):
                start = time.perf_counter()
                out = run()
                totals.append(time.perf_counter() - start)
                stage_runs.append(timings_of(out))
    steps = [s for r in stage_runs for s in r["unet_steps"]]
    return {
        "total": summary(totals),
        "image_encode": summary([r["image_encode"] for r in stage_runs]),
        "unet_step": summary(steps),
        "vae_decode": summary([r["vae_decode"] for r in stage_runs]),
        "peak_memory_bytes": mem.peak_bytes,
    }


class _DiffusersStageTimer:
    """Per-stage wall times of a diffusers SVD pipeline call, by wrapping its stage methods."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.timings = {}
        for name in ("_encode_image", "_encode_vae_image", "decode_latents"):
            setattr(pipe, name, self._timed(getattr(pipe, name), name))
        self._unet_forward = pipe.unet.forward
        pipe.unet.forward = self._timed(pipe.unet.forward, "unet")

    def _timed(self, fn, name):
        def wrapper(*a, **kw):
            start = time.perf_counter()
            out = fn(*a, **kw)
            self.timings.setdefault(name, []).append(time.perf_counter() - start)
            return out

        return wrapper

    def run(self, *args, **kwargs):
        self.timings = {}
        self.pipe(*args, **kwargs)
        t = self.timings
        return {
            "image_encode": sum(t.get("_encode_image", [])) + sum(t.get("_encode_vae_image", [])),
            "unet_steps": t.get("unet", []),
            "vae_decode": sum(t.get("decode_latents", [])),
        }


def profile(fn, path):
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch.inference_mode(), torch_profile(activities=activities, record_shapes=True) as prof:
        fn()
    prof.export_chrome_trace(str(path))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def ratio(results, key):
    if "diffusers" not in results:
        return None
    return results["diffusers"][key]["median_s"] / results["ours"][key]["median_s"]


def print_block(report):
    gib = 1024**3
    print(f"== svd_fast bench: {report['args']['mode']} | config {report['args']['config']} | {report['shape']} | "
          f"{report['args']['dtype']} | {report['machine']['host_cpu']} x{report['machine']['torch_threads']} threads")
    print(f"load: ours {report['load']['ours_s']:.1f}s, diffusers {report['load']['diffusers_s'] or 0:.1f}s | "
          f"compile/capture: none (eager) | measured matmul peak {report['peak_tflops']:.2f} TFLOP/s")
    for side, r in report["results"].items():
        stages = [k for k in ("total", "image_encode", "unet_step", "vae_decode") if k in r]
        line = ", ".join(f"{k} {r[k]['median_s']:.3f}/{r[k]['min_s']:.3f}s" for k in stages)
        extra = ""
        if "tflops_per_s" in r:
            extra = (f" | {r['flops'] / 1e12:.3f} TFLOP, {r['tflops_per_s']:.2f} TFLOP/s "
                     f"({100 * r['fraction_of_peak']:.0f}% of peak), {r['frames_per_s']:.2f} frames/s")
        print(f"  {side:9s} median/min: {line}{extra} | peak memory +{r['peak_memory_bytes'] / gib:.2f} GiB")
    if report["speedup"]:
        print("  speedup (diffusers/ours, median): " + ", ".join(f"{k} {v:.2f}x" for k, v in report["speedup"].items()))


def main(argv=None):
    args = parse_args(argv)
    torch.set_flush_denormal(True)  # random weights can produce denormals, which are slow on CPU
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.backend:
        from svd_fast.kernels import set_backend

        set_backend(args.backend)
    ours, theirs, load = build_pipelines(args)
    peak = matmul_peak_tflops(DTYPES[args.dtype] if args.dtype != "fp16" or torch.cuda.is_available() else torch.bfloat16)
    bench = bench_unet if args.mode == "unet" else bench_pipeline
    results = bench(ours, theirs, args, peak)
    keys = ["unet_step"] if args.mode == "unet" else ["total", "image_encode", "unet_step", "vae_decode"]
    from svd_fast.kernels import get_backend

    report = {
        "args": vars(args),
        "shape": f"{ours.config.num_frames} frames {args.height}x{args.width} batch {1 if args.no_cfg else 2}",
        "kernel_backend": get_backend(),
        "machine": machine_info(),
        "peak_tflops": peak,
        "load": load,
        "results": results,
        "speedup": {k: ratio(results, k) for k in keys} if theirs is not None else {},
    }
    print_block(report)
    if args.json:
        print(f"wrote {write_json(args.json, report)}")
    return report


if __name__ == "__main__":
    main()
