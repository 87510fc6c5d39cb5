"""python -m svd_fast.train: train, estimate memory, or export a checkpoint.

  python -m svd_fast.train --recipe training/recipes/stage2_video.py --deepspeed training/ds/zero3.json
  torchrun --nproc_per_node=8 -m svd_fast.train --recipe ... --deepspeed ...   (or: deepspeed -m svd_fast.train ...)
  python -m svd_fast.train --recipe ... --resume            # continue from the run's latest checkpoint
  python -m svd_fast.train --estimate-memory --recipe ... --deepspeed ... --world-size 8
  python -m svd_fast.train --export runs/stage3 --layout sgm --out model.safetensors
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m svd_fast.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", help="recipe file defining recipe() -> svd_fast.train.recipe.Recipe")
    p.add_argument("--deepspeed", metavar="JSON", help="DeepSpeed config; without it the plain PyTorch engine runs")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue from the run's latest checkpoint (or from this checkpoint / run folder)")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override recipe fields, e.g. --set optim.lr=3e-5 data.num_frames=8")
    p.add_argument("--output-dir", help="shortcut for --set output_dir=...")
    p.add_argument("--max-steps", type=int, help="shortcut for --set max_steps=...")
    p.add_argument("--collective-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="stop every rank with an error when a collective makes no progress for this long "
                        "(a hung peer; a dead one is noticed at once); default 600")
    p.add_argument("--estimate-memory", action="store_true", help="print the per-GPU memory estimate and exit")
    p.add_argument("--world-size", type=int, default=1, help="processes (GPUs) for --estimate-memory")
    p.add_argument("--gpu-memory-gb", type=float, default=80.0, help="GPU size --estimate-memory compares with")
    p.add_argument("--export", metavar="CHECKPOINT", help="write a checkpoint or run folder as a model and exit")
    p.add_argument("--layout", choices=("diffusers", "sgm"), default="diffusers", help="--export layout")
    p.add_argument("--weights", choices=("ema", "model"), default="ema", help="--export: EMA or raw weights")
    p.add_argument("--out", help="--export destination (a folder for diffusers, a .safetensors file for sgm)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    return p.parse_args(argv)


def _prepare_environment(use_deepspeed: bool) -> None:
    """DeepSpeed on a machine without CUDA needs its CPU accelerator; its JIT-built ops are cached
    in the repository's .cache/ (gitignored) unless TORCH_EXTENSIONS_DIR says otherwise."""
    import torch

    if not use_deepspeed:
        return
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    repo = Path(__file__).resolve().parents[2]
    if (repo / "setup.py").is_file():
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(repo / ".cache" / "torch_extensions"))


def _load_recipe(args):
    from svd_fast.train.recipe import apply_overrides, load_recipe

    if not args.recipe:
        raise SystemExit("error: --recipe is required")
    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    if args.max_steps is not None:
        overrides.append(f"max_steps={args.max_steps}")
    return apply_overrides(load_recipe(args.recipe), overrides)


def _estimate(args) -> int:
    from svd_fast.train.engine import resolve_deepspeed_config
    from svd_fast.train.memory import GIB, estimate_memory

    recipe = _load_recipe(args)
    ds = resolve_deepspeed_config(args.deepspeed, recipe, args.world_size) if args.deepspeed else None
    est = estimate_memory(recipe, ds, args.world_size)
    stage = (ds or {}).get("zero_optimization", {}).get("stage", "none (plain engine)")
    d = recipe.data
    print(f"{recipe.name}: ZeRO stage {stage}, {recipe.mixed_precision}, world size {args.world_size}, "
          f"batch {recipe.batch_size} x {d.num_frames} frames at {d.height}x{d.width}, "
          f"trainable={recipe.trainable}, checkpointing={'on' if recipe.gradient_checkpointing else 'off'}")
    print(est.table())
    fits = est.total <= args.gpu_memory_gb * 1e9 * 0.95  # leave room for the CUDA context and fragmentation
    print(f"  {'fits' if fits else 'does NOT fit'} a {args.gpu_memory_gb:g} GB GPU "
          f"({est.total / GIB:.1f} GiB of {args.gpu_memory_gb * 1e9 / GIB:.1f} GiB, 5% kept free)")
    return 0


def _export(args) -> int:
    from svd_fast.train.export import export_checkpoint

    if not args.out:
        raise SystemExit("error: --export needs --out")
    export_checkpoint(args.export, args.out, layout=args.layout, which=args.weights)
    print(f"wrote {args.out}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    _prepare_environment(args.deepspeed is not None and not args.estimate_memory)
    try:
        if args.export:
            return _export(args)
        if args.estimate_memory:
            return _estimate(args)
        from svd_fast.train.trainer import train

        from svd_fast.train.checkpoint import CheckpointWriteError
        from svd_fast.train.engine import PeerFailure

        if args.collective_timeout <= 0:
            raise ValueError(f"--collective-timeout must be > 0 seconds, got {args.collective_timeout:g}")
        try:
            summary = train(_load_recipe(args), deepspeed_config=args.deepspeed, resume=args.resume or False,
                            collective_timeout_s=args.collective_timeout)
        except (CheckpointWriteError, PeerFailure) as err:  # faults of the machine, not of the input
            print(f"error: {err}", file=sys.stderr)
            return 1
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
