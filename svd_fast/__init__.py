"""svd_fast: Stable Video Diffusion inference, kernels, training and data curation."""
__version__ = "0.1.0"

__all__ = ["SVDPipeline", "SVDConfig", "load_components", "accelerate", "restore"]


def __getattr__(name):
    # Lazy: `import svd_fast` stays cheap (no torch/transformers import until something is used).
    if name == "SVDPipeline":
        from svd_fast.pipeline import SVDPipeline

        return SVDPipeline
    if name == "SVDConfig":
        from svd_fast.config import SVDConfig

        return SVDConfig
    if name in ("accelerate", "restore"):
        from svd_fast import accel

        return getattr(accel, name)
    if name == "load_components":
        from svd_fast.checkpoints import load_components

        return load_components
    raise AttributeError(f"module 'svd_fast' has no attribute {name!r}")
