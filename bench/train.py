"""Training throughput and memory: svd_fast's trainer against a plain PyTorch loop over diffusers' UNet.

    python bench/train.py --json bench/results/train-cpu-<date>.json
    python bench/train.py --preset wide --frames 8 --latent 16 --batch 1 \
        --variants diffusers_plain diffusers_ckpt ours_plain ours_ckpt ours_zero3_ckpt --json ...

Every variant trains the same UNet configuration (same random init, same inputs, the EDM
v-objective with the paper's weighting) for a few optimizer steps, each in its own process:
  diffusers_plain      diffusers UNetSpatioTemporalConditionModel + torch AdamW, a plain loop
  diffusers_ckpt       the same with diffusers' gradient checkpointing (its ResBlocks only)
  ours_plain           svd_fast.train's plain engine on svd_fast's VideoUNet
  ours_ckpt            the same with per-block gradient checkpointing
  ours_zero3_ckpt      DeepSpeed ZeRO-3 + checkpointing, 1 process
  ours_zero3_ckpt_x2   DeepSpeed ZeRO-3 + checkpointing, 2 processes (gloo), same global batch
Reported per variant: samples/s (median step time over --steps), and peak memory of a step per
process: the CUDA allocator's peak on GPU; on CPU the peak of the CPU allocator's live bytes over
the whole process (model, optimizer and DeepSpeed buffers included), from the profiler's
allocation timeline. Ratios are against diffusers_plain measured in the same run.

--preset wide is SVD's widths (320/640, head dim 64, CLIP-H context, 1280-wide time embedding)
with one layer per level (svd_fast.train.memory.wide_few_layer_unet, 213M parameters), so the
full-width GEMMs and convs dominate. Each variant also gets the memory estimator's prediction for
its own set-up (static parts by formula + activations traced on FakeTensors, on diffusers' graph
for the diffusers variants) and its error against the measured peak.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


REPO = Path(__file__).resolve().parents[1]


def _harness():
    """bench/harness.py, loaded by path: putting bench/ on sys.path would expose bench/kernels.py
    as a top-level `kernels` module, a name diffusers and bitsandbytes probe."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_harness", Path(__file__).with_name("harness.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
VARIANTS = ("diffusers_plain", "diffusers_ckpt", "ours_plain", "ours_ckpt", "ours_zero3_ckpt", "ours_zero3_ckpt_x2")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="default", choices=["default", "tiny", "wide"],
                   help="default: the embedded default model's UNet; tiny: svd_fast's tiny preset; "
                        "wide: SVD's widths, one layer per level")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--latent", type=int, default=12, help="latent height and width")
    p.add_argument("--batch", type=int, default=2, help="global batch (clips per optimizer step)")
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps (after 2 warm-up steps)")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def unet_config(preset: str, frames: int):
    from svd_fast.config import SVDConfig

    if preset == "tiny":
        return dataclasses.replace(SVDConfig.from_name("tiny").unet, num_frames=frames)
    if preset == "wide":
        from svd_fast.train.memory import wide_few_layer_unet

        return wide_few_layer_unet(frames=frames, levels=2)
    sys.path.insert(0, str(REPO / "training" / "recipes"))
    from default_model import CONFIG

    # diffusers' UNet always has 32 GroupNorm groups (the default model uses 8): both sides get 32
    # here, so they train the same network.
    return dataclasses.replace(CONFIG.unet, num_frames=frames, norm_num_groups=32)


def make_inputs(config, batch: int, frames: int, latent: int) -> dict:
    g = torch.Generator().manual_seed(0)
    shape = (batch, frames, config.out_channels, latent, latent)
    return {
        "latents": torch.randn(shape, generator=g), "noise": torch.randn(shape, generator=g),
        "sigma": torch.exp(torch.randn(batch, generator=g) * 1.2 - 1.2),
        "image_latents": torch.randn(shape, generator=g), "context": torch.randn(batch, 1, config.cross_attention_dim, generator=g),
        "added_time_ids": torch.tensor([[6.0, 127.0, 0.02]]).repeat(batch, 1),
        "image_only_indicator": torch.zeros(batch, frames),
    }


def diffusers_step_fn(config, inputs, checkpointing: bool = False):
    """A plain PyTorch training step on diffusers' UNet with the same objective."""
    from diffusers import UNetSpatioTemporalConditionModel

    from svd_fast.denoiser import v_scalings
    from svd_fast.train.objective import loss_weight

    torch.manual_seed(0)
    cfg = {k: v for k, v in config.to_diffusers().items() if not k.startswith("_")}
    unet = UNetSpatioTemporalConditionModel(**cfg).train()
    if checkpointing:
        unet.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)

    def step():
        x0, sigma = inputs["latents"], inputs["sigma"]
        c_skip, c_out, c_in, c_noise = (s.reshape(-1, 1, 1, 1, 1) for s in v_scalings(sigma))
        x = x0 + sigma.reshape(-1, 1, 1, 1, 1) * inputs["noise"]
        sample = torch.cat([x * c_in, inputs["image_latents"]], dim=2)
        out = unet(sample, c_noise.flatten(), inputs["context"], inputs["added_time_ids"]).sample
        denoised = c_skip * x + c_out * out
        loss = (loss_weight(sigma) * (denoised - x0).pow(2).mean(dim=(1, 2, 3, 4))).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    return step


def ours_step_fn(config, inputs, variant: str):
    """A step of svd_fast.train's engine (plain, or DeepSpeed ZeRO-3) on VideoUNet."""
    from svd_fast.train.data import DataConfig
    from svd_fast.train.engine import DeepSpeedEngine, PlainEngine, init_distributed, resolve_deepspeed_config
    from svd_fast.train.objective import DiffusionObjective
    from svd_fast.train.recipe import OptimConfig, Recipe
    from svd_fast.train.trainable import enable_gradient_checkpointing
    from svd_fast.unet import VideoUNet

    zero3 = variant.startswith("ours_zero3")
    env = init_distributed(use_deepspeed=zero3)
    batch = inputs["latents"].shape[0] // env.world_size
    local = {k: v[env.rank * batch: (env.rank + 1) * batch] for k, v in inputs.items()}
    recipe = Recipe(name="bench", output_dir="unused", data=DataConfig(num_frames=config.num_frames),
                    optim=OptimConfig(lr=1e-4), batch_size=batch, gradient_checkpointing=variant != "ours_plain")
    torch.manual_seed(0)
    unet = VideoUNet(config)
    if recipe.gradient_checkpointing:
        enable_gradient_checkpointing(unet)
    model = DiffusionObjective(unet).train()
    if zero3:
        ds = resolve_deepspeed_config(REPO / "training" / "ds" / "zero3.json", recipe, env.world_size)
        engine = DeepSpeedEngine(model, recipe, env, ds)
    else:
        engine = PlainEngine(model, recipe, env)

    def step():
        loss = engine.forward_backward(local, last_micro=True)
        engine.optimizer_step()
        return float(loss)

    return step, env


def _count_parameters(config) -> int:
    from svd_fast.unet import VideoUNet

    with torch.device("meta"):  # counted without a second copy of the weights
        return sum(p.numel() for p in VideoUNet(config).parameters())


def _allocation_peak(events) -> int:
    current = peak = 0
    for _, nbytes in sorted(events):
        current += nbytes
        peak = max(peak, current)
    return peak


def worker(args) -> dict:
    """One variant in this process: peak memory (profiled pass), then timed steps."""
    from torch.profiler import ProfilerActivity, profile

    config = unet_config(args.preset, args.frames)
    inputs = make_inputs(config, args.batch, args.frames, args.latent)
    rank, world = 0, 1
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        if args.worker.startswith("diffusers"):
            step = diffusers_step_fn(config, inputs, checkpointing=args.worker == "diffusers_ckpt")
        else:
            step, env = ours_step_fn(config, inputs, args.worker)
            rank, world = env.rank, env.world_size
        for _ in range(2):
            step()
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    times, losses = [], []
    for _ in range(args.steps):
        start = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    result = {
        "variant": args.worker, "rank": rank, "world_size": world, "threads": torch.get_num_threads(),
        "step_median_s": median, "step_min_s": min(times), "samples_per_s": args.batch / median,
        "peak_memory_bytes": _allocation_peak(events), "losses": losses,
        "unet_parameters": _count_parameters(config),
    }
    if args.worker_out:
        Path(f"{args.worker_out}.rank{rank}").write_text(json.dumps(result))
    return result


def run_variant(args, variant: str, tmp: Path) -> dict:
    common = ["--preset", args.preset, "--frames", str(args.frames), "--latent", str(args.latent),
              "--batch", str(args.batch), "--steps", str(args.steps), "--worker", variant,
              "--worker-out", str(tmp / variant)]
    env = dict(os.environ, DS_ACCELERATOR="cpu", TORCH_EXTENSIONS_DIR=str(REPO / ".cache" / "torch_extensions"))
    if variant.endswith("_x2"):
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // 2))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()),
               str(Path(__file__).resolve()), *common]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), *common]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{done.stderr[-3000:]}")
    ranks = [json.loads(p.read_text()) for p in sorted(tmp.glob(f"{variant}.rank*"))]
    worst = max(ranks, key=lambda r: r["peak_memory_bytes"])
    slowest = max(r["step_median_s"] for r in ranks)
    return {**worst, "samples_per_s": args.batch / slowest, "step_median_s": slowest,
            "per_rank_peak_memory_bytes": [r["peak_memory_bytes"] for r in ranks]}


def estimate_variant(config, variant: str, batch: int, frames: int, latent: int, world: int) -> dict:
    """The memory estimator's per-process prediction for a variant: its static parts (weights,
    gradients, AdamW state, ZeRO partitions; no frozen VAE or image encoder here) plus activations
    traced on FakeTensors on the variant's own graph."""
    from svd_fast.config import SVDConfig
    from svd_fast.train.data import DataConfig
    from svd_fast.train.engine import resolve_deepspeed_config
    from svd_fast.train.fake_trace import diffusers_unet_step_peak
    from svd_fast.train.memory import static_memory, trace_activations
    from svd_fast.train.recipe import OptimConfig, Recipe

    model = dataclasses.replace(SVDConfig.from_name("tiny"), unet=config)
    factor = model.vae.downsample_factor
    per_rank = batch // world
    recipe = Recipe(name="bench", output_dir="unused", model=model, batch_size=per_rank, optim=OptimConfig(lr=1e-4),
                    gradient_checkpointing=variant not in ("ours_plain", "diffusers_plain"),
                    data=DataConfig(num_frames=frames, height=latent * factor, width=latent * factor))
    zero3 = variant.startswith("ours_zero3")
    ds = resolve_deepspeed_config(REPO / "training" / "ds" / "zero3.json", recipe, world) if zero3 else None
    static = static_memory(recipe, ds, world)
    static.items.pop("frozen VAE + image encoder")
    if variant.startswith("diffusers"):
        act = diffusers_unet_step_peak(config, recipe.gradient_checkpointing, torch.float32, None, per_rank, frames,
                                       latent, latent)["peak"]
    else:
        act = trace_activations(recipe, deepspeed=zero3)
    return {"estimate_bytes": static.static + act, "estimate_static_bytes": static.static,
            "estimate_activation_bytes": act}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def print_block(report: dict) -> None:
    base = report["results"].get("diffusers_plain")
    print(f"training step, UNet {report['setup']['unet_parameters'] / 1e6:.2f}M params, batch {report['setup']['batch']} x "
          f"{report['setup']['frames']} frames at {report['setup']['latent']}x{report['setup']['latent']} latents, "
          f"{report['machine']['host_cpu']}")
    print(f"  {'variant':<20} {'procs':>5} {'step (s)':>9} {'samples/s':>10} {'peak MiB/proc':>14} {'x speed':>8} "
          f"{'x memory':>9} {'estimate MiB':>13} {'error':>7}")
    for name, r in report["results"].items():
        speed = r["samples_per_s"] / base["samples_per_s"] if base else float("nan")
        memory = r["peak_memory_bytes"] / base["peak_memory_bytes"] if base else float("nan")
        print(f"  {name:<20} {r['world_size']:>5} {r['step_median_s']:>9.3f} {r['samples_per_s']:>10.2f} "
              f"{r['peak_memory_bytes'] / 2**20:>14.1f} {speed:>8.2f} {memory:>9.2f} "
              f"{r['estimate_bytes'] / 2**20:>13.1f} {r['estimate_error']:>+7.1%}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            results[variant] = run_variant(args, variant, Path(tmp))
            print(f"{variant}: {results[variant]['samples_per_s']:.2f} samples/s, "
                  f"{results[variant]['peak_memory_bytes'] / 2**20:.1f} MiB", flush=True)
    for variant, r in results.items():
        r.update(estimate_variant(unet_config(args.preset, args.frames), variant, args.batch, args.frames, args.latent,
                                  r["world_size"]))
        r["estimate_error"] = r["estimate_bytes"] / r["peak_memory_bytes"] - 1
    base = results.get("diffusers_plain")
    if base:
        for r in results.values():
            r["speed_vs_diffusers"] = r["samples_per_s"] / base["samples_per_s"]
            r["memory_vs_diffusers"] = r["peak_memory_bytes"] / base["peak_memory_bytes"]
    first = next(iter(results.values()))
    harness = _harness()
    report = {"benchmark": "train", "machine": harness.machine_info(),
              "setup": {"preset": args.preset, "frames": args.frames, "latent": args.latent, "batch": args.batch,
                        "steps": args.steps, "unet_parameters": first["unet_parameters"], "precision": "fp32"},
              "results": results}
    print_block(report)
    if args.json:
        harness.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
