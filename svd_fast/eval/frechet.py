"""Fréchet distance between two feature sets, each summarised as a Gaussian (mean, covariance):

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)

This is FID's and FVD's formula. The trace of the matrix square root is computed as tf-gan's
`trace_sqrt_product` does (the FVD reference uses tf-gan): S1^1/2 from a symmetric eigen
decomposition, then the eigenvalues of the symmetric PSD matrix S1^1/2 S2 S1^1/2, so no
non-symmetric sqrtm (pytorch-fid's scipy route) and no complex parts. Rank-deficient covariances
(fewer samples than feature dimensions, the usual case for small evaluations) get pytorch-fid's
eps * I offset on both, which moves the distance by O(eps * dim).
"""
from __future__ import annotations

import numpy as np

EPS = 1e-6  # pytorch-fid's offset for near-singular covariances


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D), in float64, of features (N, D)."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need at least 2 feature vectors of shape (N, D), got shape {x.shape}")
    return x.mean(0), np.atleast_2d(np.cov(x, rowvar=False))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def _near_singular(matrix: np.ndarray, eps: float) -> bool:
    values = np.linalg.eigvalsh(matrix)
    return values[0] <= eps * values[-1]  # relative: features come in any scale


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S1 S2)^1/2) = tr((S1^1/2 S2 S1^1/2)^1/2) for symmetric PSD S1, S2."""
    root = _psd_sqrt(sigma1)
    inner = root @ sigma2 @ root
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = EPS) -> float:
    """Squared Fréchet distance of N(mu1, sigma1) and N(mu2, sigma2) (what FID/FVD report)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"feature dimensions differ: means {mu1.shape} / {mu2.shape}, "
                         f"covariances {sigma1.shape} / {sigma2.shape}")
    if eps and (_near_singular(sigma1, eps) or _near_singular(sigma2, eps)):
        offset = eps * np.eye(len(sigma1))
        sigma1, sigma2 = sigma1 + offset, sigma2 + offset
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2)
    return float(max(value, 0.0))  # rounding can leave -1e-12 for identical sets


def frechet_distance_of(features_a, features_b, eps: float = EPS) -> float:
    """Fréchet distance between two feature sets (N1, D) and (N2, D)."""
    return frechet_distance(*gaussian_stats(features_a), *gaussian_stats(features_b), eps=eps)
