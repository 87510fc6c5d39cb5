"""svd_fast: a performance engine for Stable Video Diffusion.

`kernels/` at the repository root is installed as the subpackage `svd_fast.kernels` (never as a
top-level `kernels` package: that name belongs to another library that diffusers probes).
The optional native extension `svd_fast._C` is built with CMake (CMakeLists.txt) when
SVD_FAST_BUILD_NATIVE=1; the package works without it.
"""
from setuptools import find_packages, setup

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
    package_data={"svd_fast": ["assets/**/*"], "svd_fast.kernels": ["native/*"]},
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
        "test": ["pytest", "diffusers>=0.30", "accelerate", "triton"],
        "bench": ["diffusers>=0.30", "accelerate", "nvidia-ml-py", "psutil"],
        "train": ["deepspeed", "bitsandbytes", "tensorboard"],
        "curate": ["ray[data]", "scenedetect", "opencv-python", "pytesseract", "pyarrow", "matplotlib", "pandas"],
        "gpu": ["triton", "flash-attn"],
    },
    entry_points={"console_scripts": ["svd-fast-sample=svd_fast.sample:main"]},
)
