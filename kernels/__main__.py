"""python -m svd_fast.kernels --list [--backend NAME]: which implementation each op uses here, and why."""
from __future__ import annotations

import argparse
import sys

from . import BACKENDS, describe, get_backend, set_backend


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m svd_fast.kernels", description=__doc__)
    parser.add_argument("--list", action="store_true", help="print the implementation chosen for every op")
    parser.add_argument("--backend", choices=BACKENDS, help="describe this backend instead of the current one")
    args = parser.parse_args(argv)
    if not args.list:
        parser.print_help()
        return 0
    if args.backend:
        set_backend(args.backend)
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"backend: {get_backend()}  (torch {torch.__version__}, {torch.get_num_threads()} threads)")
    try:
        from .native import isa, load

        load()
        print(f"native extension: svd_fast._C built for {isa()}")
    except ImportError as err:
        print(f"native extension: {err}")
    for op, device, impl, reason in describe():
        if device in devices:
            print(f"  {op:22s} {device:5s} {impl:10s} {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
