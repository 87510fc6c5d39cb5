"""The native CPU extension svd_fast._C (C++ sources in this folder, built from CMakeLists.txt).

Importing this package does not load the extension: `load()` does, and returns the module of op
wrappers (`svd_fast.kernels.native.ops`), or raises ImportError saying why it is unavailable and
how to build it (`python -m svd_fast.kernels.native.build`).
"""
from __future__ import annotations

BUILD_HINT = "build it with `python -m svd_fast.kernels.native.build` (about a minute on 2 cores)"


def load():
    """Import svd_fast._C and return the op wrappers; ImportError with the reason if it is missing."""
    try:
        import svd_fast._C  # noqa: F401  (registers torch.ops.svd_fast_native.*)
    except ImportError as err:
        raise ImportError(f"native extension svd_fast._C is not available ({err}); {BUILD_HINT}") from err
    from . import ops

    return ops


def isa() -> str:
    """Vector instruction set the loaded extension was compiled for (AVX512, AVX2 or DEFAULT)."""
    import svd_fast._C as ext

    return ext.ISA
