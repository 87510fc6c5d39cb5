"""svd_fast.kernels: the implementations behind svd_fast.layers, chosen per backend.

`set_backend(name)` picks the backend ("reference" is plain PyTorch); the environment variable
SVD_FAST_BACKEND sets the starting choice. `get_op(name)` returns the callable the current backend
uses for an op.
"""
from __future__ import annotations

if __name__ != "svd_fast.kernels":
    # Reached as a top-level `kernels` because the repository root is on sys.path. That name belongs
    # to another library (Hugging Face `kernels`), which diffusers and bitsandbytes probe for:
    # refusing here makes their probes see it as absent instead of calling into this package.
    raise ImportError("this is svd_fast.kernels (import it as `svd_fast.kernels`), not the `kernels` library")

import os

from . import reference

BACKENDS = ("reference",)
_backend = None
_table: dict = {}


def set_backend(name: str) -> None:
    """Select the implementation set used by svd_fast.layers from now on."""
    global _backend, _table
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; available: {', '.join(BACKENDS)}")
    _backend, _table = name, dict(reference.OPS)


def get_backend() -> str:
    if _backend is None:
        set_backend(os.environ.get("SVD_FAST_BACKEND", "reference"))
    return _backend


def get_op(name: str):
    get_backend()
    return _table[name]
