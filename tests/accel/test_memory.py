"""accel/memory.py: the heap a stage freed goes back to the OS before the next stage (glibc)."""
import platform
import subprocess
import sys
from pathlib import Path

import pytest

# A fresh process: with glibc's threshold where it settles once a model has freed a few large
# buffers (its dynamic maximum, 32 MiB, pinned so the result does not depend on the heap's
# history), allocate 64 MiB as 4 MiB tensors interleaved with 512 KiB ones that stay alive (so
# the heap cannot shrink from its top), free the big ones, optionally release, and report the
# resident memory that stayed behind.
_SCRIPT = """
import ctypes, sys, torch
from bench.harness import _rss_bytes
from svd_fast.accel.memory import release_free_memory
ctypes.CDLL("libc.so.6").mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
base = _rss_bytes()
big, small = [], []
for _ in range(16):
    big.append(torch.ones(1 << 20))  # 4 MiB
    small.append(torch.ones(1 << 17))  # 512 KiB
del big
if sys.argv[1] == "release":
    assert release_free_memory()
print((_rss_bytes() - base) / 2**20)
"""


def _retained_mib(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_heap_goes_back_to_the_os():
    kept = _retained_mib("keep")
    released = _retained_mib("release")
    assert kept > 40  # glibc keeps most of the 64 MiB: the test can tell the difference
    assert released < 4 + 8  # the live 512 KiB tensors, and no more than two 4 MiB blocks


def test_the_pipeline_releases_between_sampling_and_decoding(monkeypatch):
    """The UNet steps' freed heap is returned before the decoder runs, once per call."""
    import torch

    import svd_fast.pipeline as pipeline_module
    from svd_fast.pipeline import SVDPipeline

    pipe = SVDPipeline.from_config("tiny", torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    events = []
    monkeypatch.setattr(pipeline_module, "release_free_memory", lambda: events.append("release"))
    decode = pipe.decode
    monkeypatch.setattr(pipe, "decode", lambda *a, **k: events.append("decode") or decode(*a, **k))
    pipe(torch.rand(3, 64, 64), height=64, width=64, num_inference_steps=2, output_type="np")
    assert events == ["release", "decode"]
