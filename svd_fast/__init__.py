"""svd_fast: Stable Video Diffusion inference, kernels, training and data curation."""
import logging

__version__ = "0.1.0"

# transformers imports torchao whenever it is installed (svd_fast's int8 mode uses it), and that
# import logs warnings about torchao's CUDA-only extensions and a torch pytree deprecation on every
# run: noise on a CPU machine, not something a user can act on.
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

__all__ = ["SVDPipeline", "SVDInterpolationPipeline", "SVDConfig", "load_components", "accelerate", "restore", "save_motion_module",
           "load_motion_module", "SVDMultiViewPipeline", "SVDTextToVideoPipeline"]


def __getattr__(name):
    # Lazy: `import svd_fast` stays cheap (no torch/transformers import until something is used).
    if name == "SVDPipeline":
        from svd_fast.pipeline import SVDPipeline

        return SVDPipeline
    if name == "SVDInterpolationPipeline":
        from svd_fast.interpolation import SVDInterpolationPipeline

        return SVDInterpolationPipeline
    if name == "SVDMultiViewPipeline":
        from svd_fast.multiview import SVDMultiViewPipeline

        return SVDMultiViewPipeline
    if name == "SVDTextToVideoPipeline":
        from svd_fast.text_to_video import SVDTextToVideoPipeline

        return SVDTextToVideoPipeline
    if name == "SVDConfig":
        from svd_fast.config import SVDConfig

        return SVDConfig
    if name in ("accelerate", "restore"):
        from svd_fast import accel

        return getattr(accel, name)
    if name in ("save_motion_module", "load_motion_module"):
        from svd_fast import motion_module

        return getattr(motion_module, name)
    if name == "load_components":
        from svd_fast.checkpoints import load_components

        return load_components
    raise AttributeError(f"module 'svd_fast' has no attribute {name!r}")
