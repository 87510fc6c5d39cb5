"""svd_fast: a performance engine for Stable Video Diffusion.

`kernels/` at the repository root is installed as the subpackage `svd_fast.kernels` (never as a
top-level `kernels` package: that name belongs to another library that diffusers probes).
The optional native extension `svd_fast._C` is built with CMake (CMakeLists.txt) when
SVD_FAST_BUILD_NATIVE=1; the package works without it.
"""
import importlib.util
import os
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext


class NativeBuild(build_ext):
    """Builds svd_fast._C with CMake (kernels/native/build.py) against the torch of the build
    environment, so install with --no-build-isolation. A failed build is reported and skipped:
    svd_fast then runs its PyTorch reference ops."""

    def build_extension(self, ext):
        spec = importlib.util.spec_from_file_location("svd_fast_native_build", Path(__file__).parent / "kernels/native/build.py")
        native_build = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(native_build)
        try:
            native_build.build(output_dir=Path(self.get_ext_fullpath(ext.name)).parent,
                               build_dir=Path(self.build_temp) / "native")
        except Exception as err:  # any failure (no torch, no cmake, compiler error) leaves a working package
            print(f"warning: svd_fast._C not built ({err}); svd_fast falls back to PyTorch ops", file=sys.stderr)
            self.extensions = [e for e in self.extensions if e is not ext]

    def get_outputs(self):
        return [path for path in super().get_outputs() if os.path.exists(path)]


# SVD_FAST_BUILD_NATIVE=1 pip install -c constraints.txt --no-build-isolation -e .
NATIVE = [Extension("svd_fast._C", sources=[])] if os.environ.get("SVD_FAST_BUILD_NATIVE") == "1" else []

packages = find_packages(include=["svd_fast", "svd_fast.*"])
packages += ["svd_fast.kernels"] + [
    "svd_fast.kernels." + p for p in find_packages(where="kernels")
]

setup(
    name="svd_fast",
    version="0.1.0",
    description="Fast Stable Video Diffusion: model, kernels, sampling, training and curation",
    python_requires=">=3.10",
    packages=packages,
    package_dir={"svd_fast.kernels": "kernels"},
    package_data={"svd_fast": ["assets/**/*", "app/*.html"], "svd_fast.kernels": ["native/*"]},
    install_requires=[
        "torch>=2.4",
        "numpy",
        "safetensors>=0.4",
        "transformers>=4.40",
        "pillow",
        "tqdm",
        "imageio",
        "imageio-ffmpeg",
        "av",
    ],
    extras_require={
        "test": ["pytest", "diffusers>=0.30", "accelerate", "triton", "torchao>=0.18"],
        "bench": ["diffusers>=0.30", "accelerate", "nvidia-ml-py", "psutil", "DeepCache"],  # DeepCache: bench/quality.py part 3
        "train": ["deepspeed", "bitsandbytes", "tensorboard"],
        "curate": ["ray[data]", "opencv-python", "pytesseract", "pyarrow", "matplotlib", "pandas", "psutil"],
        "gpu": ["triton", "flash-attn"],
        "int8": ["torchao>=0.18"],
        # The web demo (python -m svd_fast.app) runs on the base install (a stdlib HTTP server);
        # selenium drives Debian's chromium + chromium-driver in its browser test (tests/test_app.py).
        "app": ["selenium>=4.11"],
    },
    entry_points={"console_scripts": ["svd-fast-sample=svd_fast.sample:main"]},
    ext_modules=NATIVE,
    cmdclass={"build_ext": NativeBuild},
)
