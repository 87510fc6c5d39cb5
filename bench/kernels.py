"""Benchmark the svd_fast kernels against the PyTorch ops they replace, at SVD's shapes.

    python bench/kernels.py --op group_norm [--shape small|svd|all] [--dtype bf16,fp32] \
        [--impl native|triton] [--repeat 10] [--json bench/results/kernels-cpu-DATE.json]

--op is one op (group_norm, temporal_attention, temporal_conv, geglu, alpha_blend,
alpha_blend_residual) or `all`. Shapes: `small` is the small-latent CPU case (batch 2 for CFG x
14 frames at 16x16 latents, i.e. 128x128 pixels, the baseline profile's setting), `svd` the
576x1024 generation (72x128 latents). For every case the script prints and records the time of
ours (median and min of repeats), the achieved GB/s (minimal traffic: inputs read once, outputs
written once) and TFLOP/s against this machine's measured peaks (a large bf16 matmul and a 512 MB
copy, timed here; small-shape working sets stay in cache and can exceed the DRAM copy rate), and
the speedup over each PyTorch path:
  torch     the PyTorch ops a straightforward model runs (diffusers-style: GroupNorm in the input
            dtype then SiLU, permute + SDPA, conv3d, chunk + gelu + mul, the blend expression);
  reference svd_fast.kernels.reference (fp32 statistics for GroupNorm; otherwise the same ops).
On a GPU (--impl triton) temporal attention also records flash-attn when it is installed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

# Python puts this script's folder first on sys.path, where this very file would shadow the
# `kernels` library that transformers and diffusers probe for: the repository root replaces it.
sys.path[0] = str(Path(__file__).resolve().parents[1])
from bench.harness import machine_info, matmul_peak_tflops, summary, sync, time_repeats, write_json  # noqa: E402

from svd_fast import kernels  # noqa: E402
from svd_fast.kernels import reference  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CLIPS, FRAMES = 2, 14  # CFG batch x frames: N = 28 frames per UNet call
# (label, channels, heads, latent h, latent w) of the UNet levels each shape set benchmarks.
LEVELS = {
    "small": [("L0", 320, 5, 16, 16), ("L2", 1280, 20, 4, 4)],
    "svd": [("L0", 320, 5, 72, 128), ("L2", 1280, 20, 18, 32)],
}


@dataclass
class Case:
    op: str
    label: str
    inputs: tuple
    ours: Callable
    baselines: dict[str, Callable]
    bytes: int          # minimal memory traffic of one call
    flops: int          # arithmetic of one call (approximate for elementwise ops)
    extra: dict = field(default_factory=dict)


def _feature_map(c, h, w, dtype, device):
    n = CLIPS * FRAMES
    return torch.randn(n, c, h, w, dtype=dtype, device=device).contiguous(memory_format=torch.channels_last)


def _torch_group_norm(x, groups, weight, bias, eps, frames):
    """GroupNorm + SiLU as PyTorch ops in the input dtype (diffusers' way; 5-D view for clip statistics)."""
    if frames is None:
        return F.silu(F.group_norm(x, groups, weight, bias, eps))
    n, c = x.shape[:2]
    video = x.reshape(n // frames, frames, c, -1).transpose(1, 2)
    return F.silu(F.group_norm(video, groups, weight, bias, eps)).transpose(1, 2).reshape(x.shape)


def group_norm_cases(levels, dtype, device, impl):
    ours = kernels_impl(impl, "group_norm")
    for label, c, _, h, w in levels:
        x = _feature_map(c, h, w, dtype, device)
        wt, b = torch.randn(c, dtype=dtype, device=device), torch.randn(c, dtype=dtype, device=device)
        for frames, stats in ((None, "per-frame"), (FRAMES, "per-clip")):
            yield Case(
                "group_norm", f"{label} {tuple(x.shape)} channels-last {stats}", (x, 32, wt, b, 1e-5, True, frames),
                ours,
                {"torch": lambda x, g, wt, b, e, s, f: _torch_group_norm(x, g, wt, b, e, f),
                 "reference": reference.group_norm},
                bytes=2 * x.numel() * x.element_size(), flops=10 * x.numel(),
            )


def temporal_attention_cases(levels, dtype, device, impl):
    ours = kernels_impl(impl, "temporal_attention")
    for label, c, heads, h, w in levels:
        q, k, v = (torch.randn(CLIPS * FRAMES, h * w, c, dtype=dtype, device=device) for _ in range(3))
        baselines = {"torch": reference.temporal_attention}
        if device == "cuda":
            flash = _flash_temporal_attention()
            if flash:
                baselines["flash-attn"] = flash
        yield Case(
            "temporal_attention", f"{label} q/k/v {tuple(q.shape)} heads {heads} T {FRAMES}", (q, k, v, FRAMES, heads),
            ours, baselines, bytes=4 * q.numel() * q.element_size(), flops=4 * q.numel() * FRAMES,
        )


def _flash_temporal_attention():
    """flash-attn on the temporal layout: it needs (B*S, T, heads, d), i.e. a permuted copy."""
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        return None

    def run(q, k, v, frames, heads):
        n, s, c = q.shape

        def split(t):
            return t.reshape(n // frames, frames, s, heads, c // heads).transpose(1, 2).reshape(-1, frames, heads, c // heads)

        o = flash_attn_func(split(q), split(k), split(v))
        return o.reshape(n // frames, s, frames, c).transpose(1, 2).reshape(n, s, c)

    return run


def temporal_conv_cases(levels, dtype, device, impl):
    ours = kernels_impl(impl, "temporal_conv")
    for label, c, _, h, w in levels:
        x = _feature_map(c, h, w, dtype, device)
        weight = torch.randn(c, c, 3, 1, 1, dtype=dtype, device=device) * c**-0.5
        bias = torch.randn(c, dtype=dtype, device=device)
        yield Case(
            "temporal_conv", f"{label} {tuple(x.shape)} channels-last {c}->{c} k3", (x, weight, bias, FRAMES), ours,
            {"torch": reference.temporal_conv},
            bytes=(2 * x.numel() + weight.numel()) * x.element_size(), flops=2 * x.numel() * c * 3,
        )


def geglu_cases(levels, dtype, device, impl):
    ours = kernels_impl(impl, "geglu")
    for label, c, _, h, w in levels:
        x = torch.randn(CLIPS * FRAMES * h * w, 8 * c, dtype=dtype, device=device)  # proj to 2 x (4C)
        yield Case(
            "geglu", f"{label} tokens x [value|gate] {tuple(x.shape)}", (x,), ours, {"torch": reference.geglu},
            bytes=3 * x.numel() // 2 * x.element_size(), flops=12 * x.numel() // 2,
        )


def _blend_cases(op, levels, dtype, device, impl):
    ours = kernels_impl(impl, op)
    for label, c, _, h, w in levels:
        a, b = _feature_map(c, h, w, dtype, device), _feature_map(c, h, w, dtype, device)
        alpha = torch.sigmoid(torch.tensor(0.5)).expand(a.shape[0]).to(device)
        yield Case(
            op, f"{label} {tuple(a.shape)} channels-last", (a, b, alpha), ours, {"torch": reference.OPS[op]},
            bytes=3 * a.numel() * a.element_size(), flops=3 * a.numel(),
        )


CASES = {
    "group_norm": group_norm_cases,
    "temporal_attention": temporal_attention_cases,
    "temporal_conv": temporal_conv_cases,
    "geglu": geglu_cases,
    "alpha_blend": lambda *a: _blend_cases("alpha_blend", *a),
    "alpha_blend_residual": lambda *a: _blend_cases("alpha_blend_residual", *a),
}


def kernels_impl(impl: str, op: str):
    if impl == "native":
        from svd_fast.kernels.native import load

        return getattr(load(), op)
    import importlib

    return getattr(importlib.import_module(f"svd_fast.kernels.{kernels.TRITON_MODULES[op]}"), op)


def copy_peak_gbps(device: str, megabytes: int = 512, repeat: int = 5) -> float:
    """Measured copy bandwidth (read + write bytes per second) of a large buffer on this device."""
    src = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    best = min(time_repeats(lambda: dst.copy_(src), repeat, warmup=2))
    return 2 * src.numel() / best / 1e9


def run_case(case: Case, repeat: int, warmup: int, peaks: dict) -> dict:
    with torch.no_grad():
        ours = summary(time_repeats(lambda: case.ours(*case.inputs), repeat, warmup))
        result = {"op": case.op, "case": case.label, "ours": ours, "bytes": case.bytes, "flops": case.flops}
        t = ours["median_s"]
        result["gbps"] = case.bytes / t / 1e9
        result["tflops"] = case.flops / t / 1e12
        result["fraction_of_copy_peak"] = result["gbps"] / peaks["copy_gbps"]
        result["fraction_of_matmul_peak"] = result["tflops"] / peaks["matmul_bf16_tflops"]
        result["baselines"] = {}
        for name, fn in case.baselines.items():
            base = summary(time_repeats(lambda: fn(*case.inputs), repeat, warmup))
            base["speedup_median"] = base["median_s"] / t
            base["speedup_min"] = base["min_s"] / ours["min_s"]
            result["baselines"][name] = base
    return result


def print_result(r: dict, dtype: str) -> None:
    o = r["ours"]
    speedups = "  ".join(f"{n} x{b['speedup_median']:.2f} (min x{b['speedup_min']:.2f})" for n, b in r["baselines"].items())
    print(f"{r['op']:20s} {dtype:4s} {r['case']:55s} {o['median_s'] * 1e3:9.3f} ms (min {o['min_s'] * 1e3:8.3f})  "
          f"{r['gbps']:7.1f} GB/s ({100 * r['fraction_of_copy_peak']:5.1f}%)  {r['tflops']:7.4f} TFLOP/s  "
          f"speedup vs {speedups}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--op", default="all", choices=["all", *CASES])
    p.add_argument("--shape", default="small", choices=["small", "svd", "all"])
    p.add_argument("--dtype", default="bf16,fp32", help="comma-separated: bf16, fp32, fp16")
    p.add_argument("--impl", choices=["native", "triton"], help="default: native on CPU, triton on CUDA")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeat", type=int, help="timed calls per case (default 10 small, 3 svd)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    impl = args.impl or ("triton" if args.device == "cuda" else "native")
    dtypes = [d.strip() for d in args.dtype.split(",")]
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        p.error(f"--dtype: unknown {unknown}; choose from {sorted(DTYPES)}")
    ops = list(CASES) if args.op == "all" else [args.op]
    shape_sets = ["small", "svd"] if args.shape == "all" else [args.shape]

    peaks = {"matmul_bf16_tflops": matmul_peak_tflops(torch.bfloat16, n=4096 if args.device == "cpu" else 8192),
             "copy_gbps": copy_peak_gbps(args.device)}
    kernels.set_backend("auto")
    info = {**machine_info(), "impl": impl, "device": args.device, "peaks": peaks,
            "load_average_at_start": os.getloadavg(),  # other processes on the machine skew timings
            "auto_choices": [{"op": op, "device": dev, "impl": i, "reason": why} for op, dev, i, why in kernels.describe()]}
    if impl == "native":
        from svd_fast.kernels.native import isa

        info["native_isa"] = isa()
    print(f"peaks: bf16 matmul {peaks['matmul_bf16_tflops']:.3f} TFLOP/s, copy {peaks['copy_gbps']:.1f} GB/s; "
          f"{torch.get_num_threads()} threads; ours = {impl}")
    results = []
    for shape_set in shape_sets:
        repeat = args.repeat or (10 if shape_set == "small" else 3)
        for op in ops:
            for dtype in dtypes:
                for case in CASES[op](LEVELS[shape_set], DTYPES[dtype], args.device, impl):
                    r = run_case(case, repeat, args.warmup, peaks)
                    r.update(shape_set=shape_set, dtype=dtype)
                    print_result(r, dtype)
                    results.append(r)
                    del case
                    sync()
    info["load_average_at_end"] = os.getloadavg()
    if args.json:
        # Headline per (op, dtype, shape set): median over cases of the speedup against the torch
        # path, from median times and from min times (the min is robust to other load on the machine).
        for key in ("speedup_median", "speedup_min"):
            per_op = {}
            for r in results:
                per_op.setdefault(f"{r['op']} {r['dtype']} {r['shape_set']}", []).append(r["baselines"]["torch"][key])
            info[f"headline_{key}_vs_torch"] = {k: statistics.median(v) for k, v in per_op.items()}
        print(f"wrote {write_json(args.json, {'machine': info, 'results': results})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
