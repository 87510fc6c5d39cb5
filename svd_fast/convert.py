"""Convert an SVD checkpoint between layouts.

    python -m svd_fast.convert SRC DST --to {diffusers,sgm} [--dtype fp32|fp16|bf16] [--ema] [--overwrite]

SRC is a diffusers pipeline folder or an sgm single file (detected automatically). DST is a folder
(--to diffusers) or a .safetensors file (--to sgm). --ema takes the UNet from SRC's EMA weights.
Everything is validated before anything is written, and the write is atomic.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from svd_fast.checkpoints import LAYOUTS, CheckpointError, load_components, save_components

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m svd_fast.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="diffusers pipeline folder or sgm .safetensors/.ckpt file")
    parser.add_argument("dst", type=Path, help="output folder (diffusers) or .safetensors file (sgm)")
    parser.add_argument("--to", required=True, choices=LAYOUTS, help="layout to write")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="cast floating-point weights (default: keep)")
    parser.add_argument("--ema", action="store_true", help="use SRC's EMA UNet weights")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        # refuse early what save_components would refuse after a long load
        if args.dst.exists() and not args.overwrite:
            raise CheckpointError(f"{args.dst}: already exists (pass --overwrite to replace it)")
        if args.to == "sgm" and args.dst.suffix != ".safetensors":
            raise CheckpointError(f"{args.dst}: sgm checkpoints are written as .safetensors files")
        start = time.perf_counter()
        parts = load_components(args.src, dtype=DTYPES.get(args.dtype), use_ema=args.ema)
        loaded = time.perf_counter()
        save_components(parts, args.dst, layout=args.to, overwrite=args.overwrite)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    towers = [name for name in ("image_encoder", "text_encoder") if name in parts]  # text models: text_encoder
    count = sum(p.numel() for name in ("unet", "vae", *towers) for p in parts[name].parameters())
    print(
        f"wrote {args.to} checkpoint {args.dst} ({count / 1e6:.1f}M parameters; "
        f"load {loaded - start:.1f} s, save {time.perf_counter() - loaded:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
