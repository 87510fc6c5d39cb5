"""Benchmark svd_fast against diffusers with identical random weights, in one process.

    python bench/run.py --config svd --frames 14 --height 128 --width 128 --dtype bf16 \
        --mode unet --repeat 5 --json bench/results/unet-svd-cpu.json

--mode unet times one UNet evaluation (batch 2 when CFG is on, as in sampling); --mode pipeline
times the whole image-to-video call with per-stage times (image encode, each UNet step, VAE
decode). Both report median/min of repeats, peak memory, achieved TFLOP/s (FLOPs counted on the
real graph with torch's FlopCounterMode) against this machine's measured matmul peak, and the
ratio ours/theirs. --mode unet also splits FLOPs and time into convolutions, GEMMs, attention
and the rest (torch.profiler self times of an eager call) for the TFLOP/s of each class.

--dtype auto takes svd_fast's choice for this machine (svd_fast.accel.dtypes).
--baseline-dtypes fp32,bf16 times diffusers in each and compares against its fastest.
--compile compiles both sides: ours through svd_fast.accelerate(compile=True) (inductor,
freezing on CPU), diffusers' UNet as its docs recommend (torch.compile(pipe.unet)); the first
call's extra time is reported as compile time (cold or warm: see inductor_cache in the JSON).
--drop-in adds a side: diffusers' own pipeline accelerated by svd_fast.accelerate (what a diffusers
user gets from one line), with its speed-up over the same pipeline without it.
Ours runs as svd_fast runs by default: on CUDA the UNet step replays from a CUDA graph
(--no-cuda-graphs for eager). Stage times are synchronised on CUDA on both sides; outputs are compared
(UNet: relative L2 of each baseline's output from ours; pipeline: video PSNR, same weights and seed);
peak memory is reported for the timed calls and, separately, for the first call (one-time caches,
CUDA-graph capture). bench/device_check.sh runs these at 576x1024 on a GPU with the GPU tests.
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
from bench.harness import PeakMemory, machine_info, matmul_peak_tflops, summary, sync, time_repeats, write_json  # noqa: E402

from svd_fast.config import SVDConfig  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", choices=["tiny", "small", "svd", "svd_xt"])
    p.add_argument("--mode", default="unet", choices=["unet", "pipeline"])
    p.add_argument("--frames", type=int, help="default: the preset's")
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--dtype", default="auto", choices=["auto", *sorted(DTYPES)])
    p.add_argument("--baseline-dtypes", help="comma-separated dtypes to time diffusers in (default: --dtype's)")
    p.add_argument("--compile", action="store_true", help="torch.compile both sides")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="replay our UNet step from CUDA graphs (default: as svd_fast does, on with CUDA)")
    p.add_argument("--steps", type=int, default=3, help="denoising steps per pipeline call")
    p.add_argument("--no-cfg", action="store_true", help="UNet batch 1 (no classifier-free guidance)")
    p.add_argument("--baseline", default="diffusers", choices=["diffusers", "none"])
    p.add_argument("--drop-in", action="store_true",
                   help="also time diffusers' pipeline accelerated by svd_fast.accelerate (the drop-in), in ours' dtype")
    p.add_argument("--backend", help="svd_fast kernel backend (default: SVD_FAST_BACKEND or auto)")
    p.add_argument("--vae-frame-chunk-mb", type=int,
                   help="input MiB per chunk of frames in the VAE's per-frame layers (svd_fast.vae.FRAME_CHUNK_BYTES, "
                        "default 32: a memory/speed trade-off to measure per device)")
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


def build_pipelines(args, dtype):
    """Ours in `dtype`, and diffusers (same weights) in each baseline dtype: {name: pipeline}."""
    from svd_fast.pipeline import SVDPipeline

    config = build_config(args.config, args.frames)
    if args.mode == "unet":  # the UNet alone is timed: a tiny CLIP tower saves GBs of memory
        import dataclasses

        config = dataclasses.replace(config, image_encoder=SVDConfig.from_name("tiny").image_encoder)
    start = time.perf_counter()
    ours = SVDPipeline.from_config(config, torch_dtype=dtype, device=args.device)
    ours.set_progress_bar_config(disable=True)
    load = {"ours_s": time.perf_counter() - start, "diffusers_s": None}
    theirs = {}
    if args.baseline == "diffusers":
        from svd_fast.diffusers_bridge import to_diffusers_pipeline

        for name in baseline_dtypes(args, dtype):
            start = time.perf_counter()
            pipe = to_diffusers_pipeline(ours)
            if DTYPES[name] != dtype:  # its own copies in its dtype (the CLIP tower is shared otherwise)
                pipe.unet.to(DTYPES[name])
                if args.mode == "pipeline":  # --mode unet needs only the UNet
                    import copy

                    pipe.image_encoder = copy.deepcopy(ours.image_encoder).to(DTYPES[name])
                    pipe.vae.to(DTYPES[name])
            pipe.set_progress_bar_config(disable=True)
            theirs[f"diffusers_{name}"] = pipe
            load["diffusers_s"] = time.perf_counter() - start
        if args.drop_in:  # accelerated in accelerate_sides, after any compile of the plain baselines
            pipe = to_diffusers_pipeline(ours)
            pipe.set_progress_bar_config(disable=True)
            theirs[drop_in_name(dtype)] = pipe
    return ours, theirs, load


def baseline_dtypes(args, dtype) -> list[str]:
    if args.baseline_dtypes:
        names = [n.strip() for n in args.baseline_dtypes.split(",")]
        unknown = [n for n in names if n not in DTYPES]
        if unknown:
            raise SystemExit(f"error: unknown baseline dtype(s) {unknown}; choose from {sorted(DTYPES)}")
        return names
    return [{v: k for k, v in DTYPES.items()}[dtype]]


DROP_IN = "+svd_fast"  # name suffix of the side that is diffusers' pipeline through svd_fast.accelerate


def drop_in_name(dtype) -> str:
    from svd_fast.accel.dtypes import dtype_name

    return f"diffusers_{dtype_name(dtype)}{DROP_IN}"


def accelerate_sides(ours, theirs, args) -> None:
    """Ours as svd_fast runs it (CUDA graphs on with CUDA unless --no-cuda-graphs; --compile through
    svd_fast.accelerate); diffusers eager, or torch.compile(pipe.unet) with --compile, as its docs do;
    the drop-in side: diffusers' pipeline through svd_fast.accelerate with ours' settings."""
    from svd_fast.accel import accelerate

    graphs = args.cuda_graphs if args.cuda_graphs is not None else str(args.device).startswith("cuda")
    if args.compile or graphs:
        accelerate(ours, compile=args.compile, cuda_graphs=graphs)
    for name, pipe in theirs.items():
        if name.endswith(DROP_IN):
            accelerate(pipe, compile=args.compile, cuda_graphs=graphs)
        elif args.compile:
            pipe.unet = torch.compile(pipe.unet, fullgraph=True)


def eager_unet(pipe):
    """The eager UNet behind CUDA-graph replay and torch.compile (FLOPs and op classes are counted on it)."""
    from svd_fast.accel.compile import uncompile
    from svd_fast.accel.graphs import GraphedModule

    unet = pipe.unet.module if isinstance(pipe.unet, GraphedModule) else pipe.unet
    return uncompile(unet)


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
    inputs = {"ours": unet_inputs(cfg, args, ours.device, ours.dtype)}
    sides = {"ours": lambda: ours.unet(*inputs["ours"])}
    for name, pipe in theirs.items():
        inputs[name] = unet_inputs(cfg, args, pipe.device, pipe.unet.dtype)
        sides[name] = (lambda p, i: lambda: p.unet(*i, return_dict=False)[0])(pipe, inputs[name])
    # Counters see the ops of an eager module only: compiled code, graph replays (ours, the drop-in) hide them.
    eager = {name: not args.compile and not name.endswith(DROP_IN) for name in sides}
    eager["ours"] = not args.compile and eager_unet(ours) is ours.unet
    flops, memory, first_call, times, classes = {}, {}, {}, {name: [] for name in sides}, {}
    with torch.inference_mode():
        for name, run in sides.items():
            with PeakMemory() as first_mem:  # compiles with --compile, captures with CUDA graphs
                start = time.perf_counter()
                run()
                sync()
                first_call[name] = time.perf_counter() - start
            flops[name] = count_flops(run) if eager[name] else None
            with PeakMemory() as mem:  # a further call: the peak above the resting level
                time_repeats(run, 1, warmup=max(args.warmup - 1, 0))
            memory[name] = (mem.peak_bytes, first_mem.peak_bytes)
            if eager[name] and ours.device.type == "cpu":  # the profiler's CPU self times: GPU work is async
                classes[name] = op_classes(run)
        for _ in range(args.repeat):
            for name, run in sides.items():
                times[name] += time_repeats(run, 1, warmup=0)
        # Same weights, same inputs: how far each baseline's output is from ours (relative L2).
        outputs = {name: run().float() for name, run in sides.items()}
    results = {}
    for name in sides:
        stats = summary(times[name])
        counted = "ours" if name.endswith(DROP_IN) else name  # the drop-in runs ours' UNet, same weights
        n_flops = flops[name] or flops_of_eager(ours, theirs, counted, inputs[counted])
        rate = n_flops / stats["median_s"] / 1e12
        results[name] = {
            "unet_step": stats,
            "flops": n_flops,
            "tflops_per_s": rate,
            "fraction_of_peak": rate / peak_tflops[name],
            "frames_per_s": cfg.num_frames * inputs[name][0].shape[0] / stats["median_s"],
            # above the resting level: in the timed calls, and in the first (one-time caches: Winograd
            # weights on CPU; CUDA-graph capture, whose pool stays reserved for the replays)
            "peak_memory_bytes": memory[name][0],
            "first_call_peak_memory_bytes": memory[name][1],
            "first_call_s": first_call[name],
            "compile_s": max(first_call[name] - stats["median_s"], 0.0) if args.compile else None,
        }
        if name != "ours":
            diff = (outputs[name] - outputs["ours"]).norm() / outputs[name].norm()
            results[name]["output_rel_diff_vs_ours"] = diff.item()
        if name == "ours":  # resident beside the weights, so not in the peak above them
            results[name]["winograd_weight_bytes"] = winograd_weight_bytes()
        if name in classes:
            results[name]["op_classes"] = {
                k: {**v, "fraction_of_peak": v["tflops_per_s"] / peak_tflops[name]} for k, v in classes[name].items()
            }
    if args.profile:
        profile(sides["ours"], args.profile)
    return results


def winograd_weight_bytes() -> int:
    """Bytes of 3x3 conv weights cached in the Winograd domain (0 when the native kernels are absent)."""
    try:
        from svd_fast.kernels.native import load
        return load().winograd_weight_bytes()
    except ImportError:
        return 0


def flops_of_eager(ours, theirs, name, inputs) -> int:
    """FLOPs of the eager model behind a compiled or graphed side (counters see no ops in either)."""
    model = eager_unet(ours) if name == "ours" else getattr(theirs[name].unet, "_orig_mod", theirs[name].unet)
    if name == "ours":
        return count_flops(lambda: model(*inputs))
    return count_flops(lambda: model(*inputs, return_dict=False))


# per class: (profiler event keys, matched by substring, self time) and (FlopCounterMode op names, by prefix).
# Winograd convs count their direct convolution's FLOPs (kernels/native/ops.py) and their GEMMs' time;
# the native temporal conv (shifted GEMMs) counts conv3d's FLOPs and its GEMMs' time.
NATIVE_CONVS = ("winograd_conv3x3", "temporal_conv_fwd")
OP_CLASSES = {
    "conv": (("convolution", *NATIVE_CONVS),
             ("convolution", "svd_fast_native.winograd_conv3x3", "svd_fast_native.temporal_conv_fwd")),
    "gemm": (("aten::addmm", "aten::mm", "aten::bmm", "linear_pointwise", "mkl_linear"), ("addmm", "mm", "bmm")),
    "attention": (("scaled_dot_product", "temporal_attention"), ("_scaled_dot_product",)),
}


def _class_key(event) -> str:
    """The event's name, or the enclosing native conv's for the GEMMs that conv runs."""
    parent = event.cpu_parent
    while parent is not None:
        if any(name in parent.name for name in NATIVE_CONVS):
            return parent.name
        parent = parent.cpu_parent
    return event.name


def op_classes(run) -> dict:
    """Per op class: FLOPs, self time in one profiled eager call, TFLOP/s (and 'other' time)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        run()
    op_flops = {str(op).removeprefix("aten."): n for op, n in counter.get_flop_counts().get("Global", {}).items()}
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    events = [(_class_key(e), e.self_cpu_time_total / 1e6) for e in prof.events()]
    total_time = sum(t for _, t in events)
    out, claimed = {}, 0.0
    for cls, (event_keys, flop_prefixes) in OP_CLASSES.items():
        seconds = sum(t for key, t in events if any(k in key for k in event_keys))
        n_flops = sum(n for op, n in op_flops.items() if op.startswith(flop_prefixes))
        claimed += seconds
        out[cls] = {"flops": n_flops, "seconds": seconds, "tflops_per_s": n_flops / seconds / 1e12 if seconds else 0.0}
    out["other"] = {"flops": 0, "seconds": total_time - claimed, "tflops_per_s": 0.0}
    for v in out.values():
        v["share_of_time"] = v["seconds"] / total_time if total_time else 0.0
    return out


def bench_pipeline(ours, theirs, args, peak_tflops):
    from PIL import Image

    cfg = ours.config
    g = torch.Generator().manual_seed(0)
    image = Image.fromarray((torch.rand(args.height, args.width, 3, generator=g) * 255).byte().numpy())
    common = dict(height=args.height, width=args.width, num_frames=cfg.num_frames,
                  max_guidance_scale=1.0 if args.no_cfg else 3.0, output_type="np")
    results = {}

    def run_ours(steps=args.steps):
        return ours(image, generator=torch.Generator().manual_seed(0), num_inference_steps=steps, **common)

    results["ours"], video_ours = _pipeline_stats(run_ours, args, lambda out: (out.timings, out.frames))
    results["ours"]["winograd_weight_bytes"] = winograd_weight_bytes()
    if args.compile:
        from svd_fast.accel import compile_seconds

        results["ours"]["compile_s"] = compile_seconds(ours)
    for name, pipe in theirs.items():
        timer = _DiffusersStageTimer(pipe)

        def run_theirs(steps=args.steps, timer=timer):
            return timer.run(image, generator=torch.Generator().manual_seed(0), num_inference_steps=steps, **common)

        results[name], video = _pipeline_stats(run_theirs, args, lambda out: (out, out.pop("frames")))
        results[name]["video_psnr_vs_ours_db"] = video_psnr(video, video_ours)  # same weights and seed
    if args.profile:
        profile(run_ours, args.profile)
    return results


def video_psnr(a, b) -> float:
    """PSNR in dB of two videos with values in [0, 1] (inf when identical)."""
    import numpy as np

    mse = float(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


def _pipeline_stats(run, args, timings_and_frames):
    """Stage statistics over the timed calls, and the last call's frames."""
    stage_runs, totals = [], []
    with torch.inference_mode():
        with PeakMemory() as first_mem:  # warm-up (compilation, graph capture) on a short schedule: every
            start = time.perf_counter()  # stage runs, in the same shapes
            run(steps=2)
            sync()
            first_call = time.perf_counter() - start
        with PeakMemory() as mem:
            for _ in range(args.repeat):
                start = time.perf_counter()
                out = run()
                sync()
                totals.append(time.perf_counter() - start)
                timings, frames = timings_and_frames(out)
                stage_runs.append(timings)
    steps = [s for r in stage_runs for s in r["unet_steps"]]
    return {
        "total": summary(totals),
        "image_encode": summary([r["image_encode"] for r in stage_runs]),
        "unet_step": summary(steps),
        "vae_decode": summary([r["vae_decode"] for r in stage_runs]),
        "peak_memory_bytes": mem.peak_bytes,
        "first_call_peak_memory_bytes": first_mem.peak_bytes,
        "warmup_call_s": first_call,
    }, frames


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
        def wrapper(*a, **kw):  # synchronised as svd_fast's stage timings are (CUDA runs asynchronously)
            sync()
            start = time.perf_counter()
            out = fn(*a, **kw)
            sync()
            self.timings.setdefault(name, []).append(time.perf_counter() - start)
            return out

        return wrapper

    def run(self, *args, **kwargs):
        self.timings = {}
        frames = self.pipe(*args, **kwargs).frames
        t = self.timings
        return {
            "frames": frames,
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


def speedups(results, keys) -> dict:
    """diffusers/ours median time per key against diffusers' fastest dtype (the one with the lowest
    median for the first key: unet_step or total), plus the ratios against every baseline."""
    baselines = [name for name in results if name.startswith("diffusers") and not name.endswith(DROP_IN)]
    if not baselines:
        return {}
    best = min(baselines, key=lambda name: results[name][keys[0]]["median_s"])
    out = {"baseline": best}
    for key in keys:
        out[key] = results[best][key]["median_s"] / results["ours"][key]["median_s"]
        out[f"{key}_per_baseline"] = {
            name: results[name][key]["median_s"] / results["ours"][key]["median_s"] for name in baselines
        }
    for name in results:  # the drop-in against the same pipeline without it
        plain = name.removesuffix(DROP_IN)
        if name.endswith(DROP_IN) and plain in results:
            out["drop_in"] = {"side": name, **{key: results[plain][key]["median_s"] / results[name][key]["median_s"]
                                               for key in keys}}
    return out


def print_block(report):
    gib = 1024**3
    m = report["machine"]
    print(f"== svd_fast bench: {report['args']['mode']} | config {report['args']['config']} | {report['shape']} | "
          f"ours {report['dtype']} | {m['host_cpu']} x{m['torch_threads']} threads | load {m['load_average'][0]:.1f}")
    compiled = "torch.compile (both sides)" if report["args"]["compile"] else "none (eager)"
    print(f"load: ours {report['load']['ours_s']:.1f}s, diffusers {report['load']['diffusers_s'] or 0:.1f}s | "
          f"compile: {compiled} | measured matmul peak " +
          ", ".join(f"{k} {v:.2f}" for k, v in report["peak_tflops_by_dtype"].items()) + " TFLOP/s")
    for side, r in report["results"].items():
        stages = [k for k in ("total", "image_encode", "unet_step", "vae_decode") if k in r]
        line = ", ".join(f"{k} {r[k]['median_s']:.3f}/{r[k]['min_s']:.3f}s" for k in stages)
        extra = ""
        if "tflops_per_s" in r:
            extra = (f" | {r['flops'] / 1e12:.3f} TFLOP, {r['tflops_per_s']:.3f} TFLOP/s "
                     f"({100 * r['fraction_of_peak']:.0f}% of peak), {r['frames_per_s']:.2f} frames/s")
        if r.get("output_rel_diff_vs_ours") is not None:
            extra += f" | output vs ours: relative L2 {r['output_rel_diff_vs_ours']:.2e}"
        if r.get("video_psnr_vs_ours_db") is not None:
            extra += f" | video vs ours: PSNR {r['video_psnr_vs_ours_db']:.1f} dB"
        if r.get("compile_s") is not None:
            extra += f" | compile {r['compile_s']:.1f}s"
        if r.get("winograd_weight_bytes"):
            extra += f" | Winograd weights {r['winograd_weight_bytes'] / gib:.2f} GiB"
        print(f"  {side:15s} median/min: {line}{extra} | peak memory +{r['peak_memory_bytes'] / gib:.2f} GiB "
              f"(first call +{r['first_call_peak_memory_bytes'] / gib:.2f})")
        for cls, c in r.get("op_classes", {}).items():
            rate = f"{c['tflops_per_s']:.3f} TFLOP/s ({100 * c['fraction_of_peak']:.0f}% of peak)" if c["flops"] else ""
            print(f"      {cls:9s} {100 * c['share_of_time']:4.0f}% of time {rate}")
    if report["speedup"]:
        sp = report["speedup"]
        print(f"  speedup (diffusers/ours, median, vs the fastest baseline {sp['baseline']}): " +
              ", ".join(f"{k} {v:.2f}x" for k, v in sp.items() if k not in ("baseline", "drop_in")
                        and not k.endswith("per_baseline")))
        if "drop_in" in sp:
            d = sp["drop_in"]
            print(f"  drop-in (diffusers' pipeline / the same through svd_fast.accelerate, {d['side']}): " +
                  ", ".join(f"{k} {v:.2f}x" for k, v in d.items() if k != "side"))


def main(argv=None):
    args = parse_args(argv)
    torch.set_flush_denormal(True)  # random weights can produce denormals, which are slow on CPU
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.vae_frame_chunk_mb:
        import svd_fast.vae

        svd_fast.vae.FRAME_CHUNK_BYTES = args.vae_frame_chunk_mb << 20
    if args.backend:
        from svd_fast.kernels import set_backend

        set_backend(args.backend)
    from svd_fast.accel.dtypes import dtype_name, resolve_dtype

    dtype, dtype_reason = resolve_dtype(args.dtype, args.device)
    ours, theirs, load = build_pipelines(args, dtype)
    accelerate_sides(ours, theirs, args)
    peak_by_dtype = {}
    for name in {dtype_name(dtype), *baseline_dtypes(args, dtype)}:
        d = DTYPES[name]
        peak_by_dtype[name] = matmul_peak_tflops(d if d != torch.float16 or torch.cuda.is_available() else torch.bfloat16)
    peaks = {"ours": peak_by_dtype[dtype_name(dtype)],
             **{k: peak_by_dtype[k.removesuffix(DROP_IN).split("_", 1)[1]] for k in theirs}}
    bench = bench_unet if args.mode == "unet" else bench_pipeline
    results = bench(ours, theirs, args, peaks)
    keys = ["unet_step"] if args.mode == "unet" else ["total", "image_encode", "unet_step", "vae_decode"]
    from svd_fast.kernels import get_backend

    machine = machine_info()
    report = {
        "args": vars(args),
        "dtype": dtype_name(dtype),
        "dtype_reason": dtype_reason,
        "shape": f"{ours.config.num_frames} frames {args.height}x{args.width} batch {1 if args.no_cfg else 2}",
        "kernel_backend": get_backend(),
        "machine": machine,
        "peak_tflops_by_dtype": peak_by_dtype,
        "inductor_cache": inductor_cache_state() if args.compile else None,
        "load": load,
        "results": results,
        "speedup": speedups(results, keys),
    }
    print_block(report)
    if args.json:
        print(f"wrote {write_json(args.json, report)}")
    return report


def inductor_cache_state() -> dict:
    import os

    path = Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR", ""))
    files = sum(1 for _ in path.rglob("*")) if path.is_dir() else 0
    return {"dir": str(path), "files_after_run": files}


if __name__ == "__main__":
    main()
