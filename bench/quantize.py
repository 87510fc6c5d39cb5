"""Quantized UNet step (int8, fp8) against our exact fp32 and bf16, same random full-size SVD weights,
one process.

    python bench/quantize.py --config svd --frames 14 --height 128 --width 128 --compile \
        --json bench/results/quantize-unet-svd-14f-128px-cpu-DATE.json
    python bench/quantize.py --device cuda --variants fp32,bf16,fp16,int8,fp8 --compile \
        --json bench/results/quantize-unet-svd-14f-128px-cuda-DATE.json

One UNet evaluation (batch 2: both CFG halves, as in sampling; inputs as bench/run.py --mode unet)
per variant: fp32 (exact), bf16 / fp16 (exact in that dtype), int8 (svd_fast.accel.quantize: on CPU int8
convs and linears of the fp32 weights, fp32 elsewhere; on CUDA int8 linears of the bf16 weights, bf16
elsewhere), fp8 (CUDA, compute capability 8.9+: fp8 linears of the bf16 weights). --compile compiles
every variant the same way (svd_fast.accel.compile: inductor with freezing on CPU); fp32 stays eager unless
--compile-fp32 (freezing keeps a prepacked copy of every weight: 12 GB for the fp32 SVD UNet).
The variants run one after the other, each built from the same seed, so that no more than one
full-size model is alive (the fp32 SVD UNet alone is 6 GB).

Reports median/min of --repeat calls, peak memory above the resting level, compile time, and the
UNet-output relative error ||y - y_fp32|| / ||y_fp32|| against the fp32 eager output of the same
inputs; the speed ratios int8 vs fp32 and vs bf16; the CPU model, its int8/bf16 flags and the load.
"""
from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repository root, as in bench/run.py
from bench.harness import PeakMemory, machine_info, summary, sync, time_repeats, write_json  # noqa: E402
from bench.run import build_config, unet_inputs  # noqa: E402

VARIANTS = ("fp32", "bf16", "fp16", "int8", "fp8")
QUANTIZED = ("int8", "fp8")
FLOAT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="svd", choices=["tiny", "small", "svd", "svd_xt"])
    p.add_argument("--frames", type=int, default=14)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--no-cfg", action="store_true", help="UNet batch 1 (no classifier-free guidance)")
    p.add_argument("--variants", default="fp32,bf16,int8", help="comma-separated subset of " + ",".join(VARIANTS))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--compile", action="store_true", help="torch.compile every variant but fp32")
    p.add_argument("--compile-fp32", action="store_true", help="also compile fp32 (needs twice its memory)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",")]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown or "fp32" not in args.variants:
        p.error(f"--variants takes {', '.join(VARIANTS)} and needs fp32 (the reference); got {unknown or args.variants}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: this machine has no CUDA GPU")
    if args.device == "cpu" and "fp8" in args.variants:
        p.error("the fp8 variant needs --device cuda (a GPU of compute capability 8.9 or newer)")
    return args


def base_dtype(name: str, device: str) -> torch.dtype:
    """The float dtype a variant's weights are in: the quantized ones start from fp32 on CPU (oneDNN's
    int8 path rescales to it) and from bf16 on CUDA (torchao's row-wise fp8 takes bf16 only)."""
    if name in QUANTIZED:
        return torch.bfloat16 if device == "cuda" else torch.float32
    return FLOAT_DTYPES[name]


def build_unet(args, dtype):
    """The UNet of a randomly initialised pipeline (the same seed gives the same weights)."""
    from svd_fast.pipeline import SVDPipeline

    config = build_config(args.config, args.frames)
    pipe = SVDPipeline.from_config(config, seed=args.seed)  # initialised in fp32 on the CPU: the same weights everywhere
    return pipe.unet.to(args.device, dtype), config


def run_variant(name, args, reference):
    """Build, (quantize,) (compile,) time one variant; returns (result dict, its output)."""
    dtype = base_dtype(name, args.device)
    unet, config = build_unet(args, dtype)
    float_name = {v: k for k, v in FLOAT_DTYPES.items()}[dtype]
    layers = "convs/linears" if args.device == "cpu" else "linears"
    result = {"dtype": f"{name} {layers}, {float_name} elsewhere" if name in QUANTIZED else name}
    if name in QUANTIZED:
        from svd_fast.accel.quantize import int8_support, quantize_unet

        start = time.perf_counter()
        undo = quantize_unet(unet, name)
        result["quantize_s"] = time.perf_counter() - start
        result["quantized_layers"] = undo.num_layers
        if args.device == "cpu":
            result["int8_support"] = int8_support()
        del undo  # the float weights it keeps for restore are not needed here: free them
        gc.collect()
    compiled = args.compile and (name != "fp32" or args.compile_fp32)
    if compiled:
        from svd_fast.accel.compile import compile_unet

        unet = compile_unet(unet)
    result["compiled"] = compiled
    result["weight_bytes"] = _weight_bytes(unet.inner if compiled else unet)
    inputs = unet_inputs(config, args, args.device, dtype)
    with torch.inference_mode():
        start = time.perf_counter()
        out = unet(*inputs).float()
        sync()
        result["first_call_s"] = time.perf_counter() - start
        with PeakMemory() as mem:
            times = time_repeats(lambda: unet(*inputs), args.repeat, warmup=args.warmup)
    result["unet_step"] = summary(times)
    result["peak_memory_bytes"] = mem.peak_bytes
    if compiled:
        result["compile_s"] = max(result["first_call_s"] - result["unet_step"]["median_s"], 0.0)
    if reference is not None:
        result["rel_error_vs_fp32"] = ((out - reference).norm() / reference.norm()).item()
        result["max_abs_error_vs_fp32"] = (out - reference).abs().max().item()
    del unet
    gc.collect()
    return result, out


def _weight_bytes(module) -> int:
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        data = getattr(t, "qdata", None)
        if data is not None:  # a torchao int8/fp8 weight: its 8-bit data and scales
            total += data.numel() * data.element_size() + t.scale.numel() * t.scale.element_size()
        elif not t.is_mkldnn:
            total += t.numel() * t.element_size()
    for m in module.modules():  # prepacked int8 conv weights are opaque oneDNN tensors: count int8 bytes
        if hasattr(m, "qweight") and hasattr(m, "w_scale"):
            total += m.w_scale.numel() * (m.qweight.numel() // m.w_scale.numel() + 4)
    return total


def main(argv=None):
    args = parse_args(argv)
    torch.set_flush_denormal(True)  # random weights can produce denormals, which are slow on CPU
    if args.threads:
        torch.set_num_threads(args.threads)
    results, reference = {}, None
    for name in ["fp32"] + [v for v in args.variants if v != "fp32"]:
        print(f"{name}: building and timing ...", flush=True)
        results[name], out = run_variant(name, args, reference)
        if name == "fp32":
            reference = out
        r = results[name]
        print(f"  {name}: median/min {r['unet_step']['median_s']:.3f}/{r['unet_step']['min_s']:.3f} s"
              + (f", rel. error vs fp32 {r['rel_error_vs_fp32']:.4f}" if "rel_error_vs_fp32" in r else ""), flush=True)
    machine = machine_info()
    machine["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    report = {
        "args": vars(args),
        "shape": f"{args.frames} frames {args.height}x{args.width} batch {1 if args.no_cfg else 2}",
        "machine": machine,
        "results": results,
        **{f"speedup_{q}": {name: results[name]["unet_step"]["median_s"] / results[q]["unet_step"]["median_s"]
                            for name in results if name not in QUANTIZED} for q in QUANTIZED if q in results},
    }
    gpu = (machine.get("gpu") or {}).get("name")
    print(f"== {report['shape']} | {gpu or machine['host_cpu']} x{machine['torch_threads']} threads | {machine['uptime']}")
    for q in QUANTIZED:
        for name, ratio in report.get(f"speedup_{q}", {}).items():
            print(f"  {q} is {ratio:.2f}x {name}")
    if args.json:
        print(f"wrote {write_json(args.json, report)}")
    return report


if __name__ == "__main__":
    main()
