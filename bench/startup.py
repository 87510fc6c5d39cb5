"""Time to a first video: the README's sample command, whole, in fresh processes.

    python bench/startup.py --json bench/results/startup-DATE.json [--repeat 5] [--model PATH]

Each repeat runs `python -m svd_fast.sample --image assets/example.png --out TMP.gif` in a new
process (the kernel choices are cached on disk by then: one untimed warm-up run first) and records
its wall time and the stages the CLI prints (load, image encode, denoise, decode, write). In the
same run, for scale: a process that only imports torch (the floor of any PyTorch CLI), and one that
imports torch and transformers' CLIPVisionModelWithProjection (what the CLI imported before svd_fast
had its own CLIP tower).
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:  # bench/kernels.py must not shadow `kernels`
    sys.path[0] = str(REPO)

STAGE = re.compile(r"(load|image encode|denoise|decode|write) ([0-9.]+)s")


def _run(args: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=600)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return seconds, out.stdout + out.stderr


def measure(repeat: int = 5, model: str | None = None) -> dict:
    from bench.harness import machine_info, summary

    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "svd_fast.sample", "--image", "assets/example.png", "--out", f"{tmp}/v.gif"]
        if model:
            command += ["--model", model]
        _run(command)  # warm-up: kernel choices timed and cached once per machine
        walls, stages = [], {}
        for _ in range(repeat):
            seconds, text = _run(command)
            walls.append(seconds)
            for name, value in STAGE.findall(text):
                stages.setdefault(name, []).append(float(value))
    torch_only = [_run([sys.executable, "-c", "import torch"])[0] for _ in range(repeat)]
    with_clip = [_run([sys.executable, "-c", "import torch; from transformers import CLIPVisionModelWithProjection"])[0]
                 for _ in range(repeat)]
    return {"machine": machine_info(), "command": " ".join(["python", *command[1:]]), "repeats": repeat,
            "sample_command": summary(walls), "stages": {k: summary(v) for k, v in stages.items()},
            "python_import_torch": summary(torch_only),
            "python_import_torch_and_transformers_clip": summary(with_clip),
            "transformers_clip_import_s": statistics.median(with_clip) - statistics.median(torch_only)}


def main(argv=None) -> int:
    from bench.harness import write_json

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--model", help="model folder or file (default: the embedded default model)")
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    result = measure(args.repeat, args.model)
    write_json(args.json, result)
    print(f"sample command: median {result['sample_command']['median_s']:.2f} s (min {result['sample_command']['min_s']:.2f}); "
          f"import torch alone {result['python_import_torch']['median_s']:.2f} s; transformers' CLIP import would add "
          f"{result['transformers_clip_import_s']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
