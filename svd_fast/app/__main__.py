"""python -m svd_fast.app [--port P] [--host H] [--model PATH] [--dtype D] [--outputs DIR]"""
from __future__ import annotations

import argparse
import sys


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m svd_fast.app", description="Web demo: image to video in the browser.")
    p.add_argument("--port", type=int, default=7860, help="port to listen on (0: any free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 serves other machines too (the page can load any "
                        "LoRA path on this machine: expose it only where that is fine)")
    p.add_argument("--model", help="diffusers folder or sgm .safetensors file (default: the embedded model)")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default="auto")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--outputs", help="folder for the videos (default: a new temporary folder)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from svd_fast.app.engine import Engine
    from svd_fast.app.server import DemoServer
    from svd_fast.checkpoints import CheckpointError

    try:
        engine = Engine(args.model, dtype=args.dtype, device=args.device)
        server = DemoServer(engine, args.host, args.port, args.outputs)
    except (ValueError, OSError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"svd_fast demo on {server.url} (model {engine.model_path}; videos in {server.jobs.outputs})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
