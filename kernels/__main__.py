"""python -m svd_fast.kernels --list [--backend NAME]: which implementation each op uses here, and why.

For backend "auto" every op also lists the call shapes measured on this machine (from the kernel
choice cache, see svd_fast.kernels.tuning): each candidate's time and the winner.
--clear deletes that cache (every choice is measured again at its next call).
"""
from __future__ import annotations

import argparse
import sys
import warnings

import torch

from . import BACKENDS, describe, get_backend, set_backend


def _times(entry: dict) -> str:
    timed = "  ".join(f"{name} {ms:.4g} ms" for name, ms in sorted(entry["times_ms"].items(), key=lambda kv: kv[1]))
    failed = "".join(f"  {name} failed" for name in entry.get("failed", {}))
    return f"{timed}{failed}  -> {entry['winner']}"


def _print_measured(tuning, devices: list[str]) -> dict:
    """Print the cache's location and state; return {(op, device): [entries]} of this machine."""
    path = tuning.cache_path()
    if not tuning.tuning_enabled():
        print(f"kernel choices: SVD_FAST_TUNE=0, the starting choices below are used (cache {path} not read)")
        return {}
    here = {device: tuning.machine_key(torch.device(device)) for device in devices}
    per_op = {}
    for device, machine in here.items():
        for entry in tuning.measured(device, machine).values():
            per_op.setdefault((entry["op"], device), []).append(entry)
    count = sum(len(v) for v in per_op.values())
    cost = sum(e.get("cost_ms", 0) for v in per_op.values() for e in v) / 1e3
    print(f"kernel choices measured on this machine: {count} call shapes ({cost:.1f} s of timing) in {path}")
    for device, machine in here.items():
        print(f"  {device}: {machine}")
    others = {m: n for m, n in tuning.cached_machines().items() if m not in here.values()}
    for machine, n in others.items():
        print(f"  (also cached: {n} shapes for {machine})")
    return per_op


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)  # a CLI user needs the message, not our source line


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m svd_fast.kernels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="print the implementation chosen for every op")
    parser.add_argument("--backend", choices=BACKENDS, help="describe this backend instead of the current one")
    parser.add_argument("--clear", action="store_true", help="delete the measured kernel choices of every machine")
    args = parser.parse_args(argv)
    if not (args.list or args.clear):
        parser.print_help()
        return 0
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        if args.clear:
            from . import tuning

            tuning.clear()
            print(f"deleted {tuning.cache_path()}")
        if args.list:
            _list(args.backend)
    return 0


def _list(backend: str | None) -> None:
    if backend:
        set_backend(backend)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"backend: {get_backend()}  (torch {torch.__version__}, {torch.get_num_threads()} threads)")
    try:
        from .native import isa, load

        load()
        print(f"native extension: svd_fast._C built for {isa()}")
    except ImportError as err:
        print(f"native extension: {err}")
    per_op = {}
    if get_backend() == "auto":
        from . import tuning

        per_op = _print_measured(tuning, devices)
    for op, device, impl, reason in describe():
        if device in devices:
            print(f"  {op:22s} {device:5s} {impl:10s} {reason}")
            for entry in sorted(per_op.get((op, device), []), key=lambda e: e["args"]):
                print(f"      {entry['args']}:  {_times(entry)}")


if __name__ == "__main__":
    sys.exit(main())
