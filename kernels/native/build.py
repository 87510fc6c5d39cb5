"""Build the native extension svd_fast._C with CMake (CMakeLists.txt at the repository root).

    python -m svd_fast.kernels.native.build [--build-dir build/native] [--arch native] [--output-dir DIR]

Configures and builds against the torch of the running Python and writes _C*.so into svd_fast/
(next to svd_fast/__init__.py, where `import svd_fast._C` finds it in an editable install).
setup.py calls `build()` too when SVD_FAST_BUILD_NATIVE=1. Needs cmake >= 3.18 and a C++17
compiler; ninja is used when installed.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def build(output_dir: Path | None = None, build_dir: Path | None = None, arch: str = "native") -> Path:
    """Configure + build; returns the folder holding the built _C*.so. Raises RuntimeError on failure."""
    if not (REPO_ROOT / "CMakeLists.txt").is_file():
        raise RuntimeError(f"{REPO_ROOT / 'CMakeLists.txt'} not found: build from a source checkout of svd_fast")
    if shutil.which("cmake") is None:
        raise RuntimeError("cmake is not installed (apt-get install cmake, or pip install cmake)")
    output_dir = Path(output_dir or REPO_ROOT / "svd_fast").resolve()
    build_dir = Path(build_dir or REPO_ROOT / "build" / "native").resolve()
    configure = [
        "cmake", "-S", str(REPO_ROOT), "-B", str(build_dir),
        f"-DPython_EXECUTABLE={sys.executable}",
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DSVD_FAST_CPU_ARCH={arch}",
        f"-DSVD_FAST_OUTPUT_DIR={output_dir}",
    ]
    if shutil.which("ninja") and not (build_dir / "CMakeCache.txt").exists():
        configure += ["-G", "Ninja"]
    for cmd in (configure, ["cmake", "--build", str(build_dir), "--parallel"]):
        result = subprocess.run(cmd, cwd=REPO_ROOT)
        if result.returncode != 0:
            raise RuntimeError(f"native build failed (exit {result.returncode}): {' '.join(cmd)}")
    return output_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-dir", type=Path, help="CMake build folder (default build/native)")
    parser.add_argument("--output-dir", type=Path, help="where _C*.so goes (default svd_fast/)")
    parser.add_argument("--arch", default="native", help="-march value (default native; x86-64-v3 = portable AVX2)")
    args = parser.parse_args(argv)
    try:
        out = build(args.output_dir, args.build_dir, args.arch)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"built svd_fast._C into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
