"""Frechet Inception Distance (Heusel et al. 2017) between two Gaussians fitted to features.

FID = ||mu_r - mu_f||^2 + tr(S_r + S_f - 2 (S_r S_f)^(1/2)), in float64.
"""

from __future__ import annotations

import numpy as np


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix (eigh; eigenvalues
    that rounding made slightly negative count as 0)."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S1 S2)^(1/2)) for covariance matrices S1, S2.

    S1 S2 is not symmetric, so a general matrix root (scipy's sqrtm) can return complex values
    and lose accuracy when the matrices are near-singular (fewer images than features). With
    A = S1^(1/2), A S2 A is symmetric PSD with the same non-zero eigenvalues as S1 S2, so the
    trace of the root is the sum of the square roots of its eigenvalues, computed with eigh.
    """
    root = _sqrt_psd(sigma1)
    middle = root @ sigma2 @ root
    middle = (middle + middle.T) / 2  # symmetric up to rounding: make it exactly so
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(middle), 0, None)).sum())


def _require_finite(**arrays: np.ndarray) -> None:
    """numpy's eigh and SVD fail on NaN or inf with a LinAlgError that names neither: say which."""
    for name, array in arrays.items():
        if not np.isfinite(array).all():
            raise ValueError(f"FID of non-finite statistics: {name} has NaN or inf values")


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"feature statistics of different sizes: {mu1.shape} and {mu2.shape}")
    _require_finite(mu1=mu1, sigma1=sigma1, mu2=mu2, sigma2=sigma2)
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2)
    return max(float(value), 0.0)  # a distance: rounding must not make identical sets negative


def frechet_distance_of_features(x1: np.ndarray, x2: np.ndarray) -> float:
    """The same FID from the features themselves, (n1, d) and (n2, d), exact and fast when there
    are fewer images than features: with centred features X (covariance X^T X / (n - 1)),
    tr((S1 S2)^(1/2)) is the sum of the singular values of X1 X2^T / sqrt((n1 - 1)(n2 - 1)),
    an n1 x n2 problem instead of two d x d eigendecompositions."""
    x1, x2 = np.asarray(x1, np.float64), np.asarray(x2, np.float64)
    if x1.shape[1] != x2.shape[1]:
        raise ValueError(f"features of different sizes: {x1.shape[1]} and {x2.shape[1]}")
    if min(len(x1), len(x2)) < 2:
        raise ValueError(f"FID needs at least 2 images of each set, got {len(x1)} and {len(x2)}")
    _require_finite(x1=x1, x2=x2)
    n1, n2 = len(x1), len(x2)
    mu1, mu2 = x1.mean(0), x2.mean(0)
    c1, c2 = x1 - mu1, x2 - mu2
    trace1, trace2 = (c1 * c1).sum() / (n1 - 1), (c2 * c2).sum() / (n2 - 1)
    cross = np.linalg.svd(c1 @ c2.T, compute_uv=False).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    diff = mu1 - mu2
    return max(float(diff @ diff + trace1 + trace2 - 2 * cross), 0.0)
