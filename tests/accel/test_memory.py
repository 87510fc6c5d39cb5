"""accel/memory.py: freed activation memory goes back to the OS on glibc."""
import platform
import subprocess
import sys
from pathlib import Path

import pytest

# A fresh process: allocate 64 MiB as 4 MiB tensors interleaved with 512 KiB ones that stay alive
# (so the heap cannot shrink from its top), free the big ones and report the resident memory that
# stayed behind. "default" pins glibc's threshold where it settles once a model has freed a few
# large buffers (its dynamic maximum, 32 MiB), so the result does not depend on the heap's history.
_SCRIPT = """
import ctypes, sys, torch
from bench.harness import _rss_bytes
if sys.argv[1] == "apply":
    from svd_fast.accel.memory import return_freed_memory_to_os
    assert return_freed_memory_to_os()
else:
    ctypes.CDLL("libc.so.6").mallopt(-3, 32 << 20)
base = _rss_bytes()
big, small = [], []
for _ in range(16):
    big.append(torch.ones(1 << 20))  # 4 MiB
    small.append(torch.ones(1 << 17))  # 512 KiB
del big
print((_rss_bytes() - base) / 2**20)
"""


def _retained_mib(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
def test_freed_buffers_leave_no_resident_memory_behind():
    kept = _retained_mib("default")
    returned = _retained_mib("apply")
    assert kept > 40  # glibc keeps most of the 64 MiB: the test can tell the difference
    assert returned < 4 + 8  # the live 512 KiB tensors, and no more than two 4 MiB blocks


def test_the_setting_can_be_declined(monkeypatch):
    import svd_fast.accel.memory as memory

    monkeypatch.setattr(memory, "_applied", None)
    monkeypatch.setenv("SVD_FAST_MALLOC", "keep")
    assert memory.return_freed_memory_to_os() is False
