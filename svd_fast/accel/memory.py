"""Give freed activation memory back to the operating system on CPU (glibc).

glibc's malloc serves requests below its mmap threshold from heaps that it rarely returns to the
OS, and the threshold grows with the largest buffer freed so far, up to 32 MiB. A video model's
activations are megabytes each, so after a few layers they all come from those heaps, and the
process keeps the high-water mark of every stage (the UNet's steps, then the VAE decoder's
chunks) resident although little of it is alive: measured on the SVD pipeline at 14x128x128,
0.80 GiB peak resident above the weights against 0.22 GiB of live tensors.

A fixed 1 MiB threshold maps every buffer of 1 MiB or more on its own and unmaps it when freed,
so resident memory follows the live tensors. It costs nothing measurable here: the page faults
of a UNet step were the same in number either way (a freed heap block is zero-filled by page
faults again too, once glibc has trimmed it). The setting is process-wide (mallopt has no
per-library scope) and applied once, by the first pipeline call on CPU; SVD_FAST_MALLOC=keep
leaves the allocator as it is.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
MMAP_THRESHOLD_BYTES = 1 << 20

_applied: bool | None = None  # None: not tried yet; then whether the setting is in force


def return_freed_memory_to_os() -> bool:
    """Set glibc's mmap threshold to 1 MiB once per process. Returns whether it is in force
    (False on other C libraries, or with SVD_FAST_MALLOC=keep)."""
    global _applied
    if _applied is None:
        _applied = False
        if os.environ.get("SVD_FAST_MALLOC", "").lower() != "keep":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                _applied = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
            except (OSError, AttributeError):  # not glibc: no mallopt
                pass
    return _applied
