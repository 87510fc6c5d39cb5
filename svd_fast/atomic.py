"""Atomic file writes without heavy imports: readers see the old file or the new one, never half
of one, and a failed write leaves nothing behind.

The result gets the permissions every other new file gets (0666 less the umask), whoever wrote
the temporary: tempfile.mkstemp and safetensors' writer (0.8) make 0600 files, videos, weights and
caches that other users of a shared folder cannot read.
"""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path


def temporary_sibling(path) -> Path:
    """A fresh name next to `path`, hidden, keeping its suffix (writers such as ffmpeg choose the
    format by it): `.clip.mp4.tmp-1a2b3c4d.mp4`."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}{path.suffix}")


def default_file_mode() -> int:
    """0666 less this process's umask: the mode open() gives a new file."""
    try:  # Linux says it without changing it; os.umask can only be read by setting it
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path` (its folder created); on success it replaces `path`,
    on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
