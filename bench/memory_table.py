"""Which SVD / SVD-XT training set-ups fit a GPU, and with what largest micro-batch.

    python bench/memory_table.py --json bench/results/memory-estimates-<date>.json [--gpu-memory-gb 80]
    python bench/memory_table.py --models svd --sizes 320x576 --json part1.json   # parts in parallel, then
    python bench/memory_table.py --merge part1.json part2.json ... --json bench/results/memory-estimates-<date>.json

For SVD (14 frames) and SVD-XT (25 frames; the same UNet) at 320x576 and 576x1024, trainable
full / temporal / LoRA, with and without gradient checkpointing, under the repository's DeepSpeed
configs (training/ds/zero2.json, zero3.json, zero3_offload.json: bf16 weights, fp32 masters and
AdamW, EMA off) on 1, 8 and 64 GPUs: the per-GPU estimate of `python -m svd_fast.train
--estimate-memory` (static parts by formula, activations traced on FakeTensors at full width) and
the largest micro-batch whose estimate stays within 95% of the GPU. Activations are traced at 1
and 2 clips and grow linearly with the clips (tests/train/test_train_memory.py checks it to 2%);
the largest micro-batch any set-up of a row gets is traced too, and batches in between are
interpolated between traced points.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = {"svd": 14, "svd_xt": 25}
SIZES = ((320, 576), (576, 1024))
TRAINABLE = ("full", "temporal", "lora")
ZERO = {"ZeRO-2": "zero2.json", "ZeRO-3": "zero3.json", "ZeRO-3 + CPU offload": "zero3_offload.json"}
GPUS = (1, 8, 64)
MAX_BATCH = 64


def _harness():
    spec = importlib.util.spec_from_file_location("bench_harness", Path(__file__).with_name("harness.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu-memory-gb", type=float, default=80.0, help="GPU size in GB (1e9 bytes), as the CLI takes it")
    p.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--sizes", nargs="*", default=[f"{h}x{w}" for h, w in SIZES], choices=[f"{h}x{w}" for h, w in SIZES])
    p.add_argument("--merge", nargs="*", metavar="JSON", help="combine the rows of earlier runs' JSON files instead of tracing")
    p.add_argument("--json", help="write the table here (atomically)")
    args = p.parse_args(argv)
    if args.gpu_memory_gb <= 0:
        p.error(f"--gpu-memory-gb must be positive, got {args.gpu_memory_gb}")
    return args


def make_recipe(model: str, height: int, width: int, trainable: str, checkpointing: bool, batch: int = 1):
    from svd_fast.config import SVDConfig
    from svd_fast.train.data import DataConfig
    from svd_fast.train.recipe import Recipe

    return Recipe(name=f"{model}-{height}x{width}", output_dir="unused", model=SVDConfig.from_name(model),
                  trainable=trainable, batch_size=batch, mixed_precision="bf16", gradient_checkpointing=checkpointing,
                  data=DataConfig(num_frames=MODELS[model], height=height, width=width))


def largest_batch(static: float, conditioning: float, act, budget: float) -> int:
    """Largest b <= MAX_BATCH with static + max(act(b), conditioning) <= budget (0: none fits)."""
    best = 0
    for b in range(1, MAX_BATCH + 1):
        if static + max(act(b), conditioning) > budget:
            break
        best = b
    return best


def row(model: str, height: int, width: int, trainable: str, checkpointing: bool, budget: float) -> dict:
    from svd_fast.train.engine import resolve_deepspeed_config
    from svd_fast.train.fake_trace import vae_encode_peak
    from svd_fast.train.memory import count_parameters, static_memory, trace_activations
    from svd_fast.train.objective import ENCODE_CHUNK

    recipe = make_recipe(model, height, width, trainable, checkpointing)
    traced = {1: trace_activations(recipe, True, batch=1), 2: trace_activations(recipe, True, batch=2)}
    one, two = traced[1], traced[2]

    def act(b):  # linear through the traced points (interpolated between them, extrapolated past them)
        if b in traced:
            return traced[b]
        lo = max((k for k in traced if k < b), default=1)
        hi = min((k for k in traced if k > b), default=None)
        if hi is None:
            lo, hi = sorted(traced)[-2:]
        return traced[lo] + (traced[hi] - traced[lo]) * (b - lo) / (hi - lo)

    conditioning = vae_encode_peak(recipe.model.vae, min(ENCODE_CHUNK, recipe.data.num_frames), height, width)
    counts = count_parameters(recipe)
    statics = {}
    for setup, file in ZERO.items():
        for gpus in GPUS:
            ds = resolve_deepspeed_config(REPO / "training" / "ds" / file, recipe, gpus)
            statics[f"{setup} x{gpus}"] = static_memory(recipe, ds, gpus, counts).static
    # One more trace at the largest micro-batch any set-up gets: the far end is measured, not extrapolated.
    top = max(largest_batch(static, conditioning, act, budget) for static in statics.values())
    if top > 2:
        traced[top] = trace_activations(recipe, True, batch=top)
    out = {"model": model, "frames": MODELS[model], "height": height, "width": width, "trainable": trainable,
           "checkpointing": checkpointing, "trainable_parameters": counts["trainable"],
           "activations_bytes_per_clip": two - one, "activations_bytes_batch1": one,
           "traced_activation_bytes": {str(b): v for b, v in sorted(traced.items())},
           "conditioning_bytes": conditioning, "setups": {}}
    for name, static in statics.items():
        out["setups"][name] = {"static_bytes": static, "max_micro_batch": largest_batch(static, conditioning, act, budget),
                               "total_bytes_batch1": static + max(one, conditioning)}
    return out


def markdown(rows: list[dict], gpu_gb: float) -> str:
    cols = [f"{s} x{g}" for s in ZERO for g in GPUS]
    head = ["model", "size", "trains", "ckpt", "act. GiB/clip", *[c.replace(" x", " ×") for c in cols]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['model']} ({r['frames']} f)", f"{r['height']}x{r['width']}", r["trainable"],
                 "on" if r["checkpointing"] else "off", f"{r['activations_bytes_per_clip'] / 2**30:.1f}"]
        cells += [str(r["setups"][c]["max_micro_batch"] or "-") for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nCells: largest micro-batch per GPU that fits {gpu_gb:g} GB (95% of it); '-': batch 1 does not fit."


def _merged(paths: list[str], gpu_gb: float) -> list[dict]:
    import json

    rows = []
    for path in paths:
        try:
            report = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise SystemExit(f"error: --merge {path}: {err}") from None
        if report.get("benchmark") != "memory_estimates" or report.get("gpu_memory_gb") != gpu_gb:
            raise SystemExit(f"error: --merge {path}: not a memory_table.py result for {gpu_gb:g} GB GPUs")
        rows += report["rows"]
    order = {(m, h, w, t, c): i for i, (m, (h, w), t, c) in enumerate(
        (m, s, t, c) for m in MODELS for s in SIZES for t in TRAINABLE for c in (False, True))}
    return sorted(rows, key=lambda r: order[(r["model"], r["height"], r["width"], r["trainable"], r["checkpointing"])])


def main(argv=None) -> int:
    args = parse_args(argv)
    budget = 0.95 * args.gpu_memory_gb * 1e9  # the CLI's rule: 5% for the CUDA context and fragmentation
    if args.merge:
        rows = _merged(args.merge, args.gpu_memory_gb)
    else:
        rows, start = [], time.perf_counter()
        sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes]
        for model in args.models:
            for height, width in sizes:
                for trainable in TRAINABLE:
                    for checkpointing in (False, True):
                        rows.append(row(model, height, width, trainable, checkpointing, budget))
                        print(f"{model} {height}x{width} {trainable} ckpt={checkpointing}: "
                              f"{rows[-1]['activations_bytes_batch1'] / 2**30:.1f} GiB activations at 1 clip "
                              f"({time.perf_counter() - start:.0f} s)", flush=True)
    table = markdown(rows, args.gpu_memory_gb)
    print(table)
    if args.json:
        harness = _harness()
        harness.write_json(args.json, {"benchmark": "memory_estimates", "machine": harness.machine_info(),
                                       "gpu_memory_gb": args.gpu_memory_gb, "budget_bytes": budget,
                                       "precision": "bf16 weights, fp32 master + AdamW (DeepSpeed), EMA off",
                                       "rows": rows, "markdown": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
