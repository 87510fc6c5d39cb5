"""svd_fast: Stable Video Diffusion inference, kernels, training and data curation."""
__version__ = "0.1.0"
