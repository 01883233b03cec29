"""Frechet distance between two Gaussians fitted to features, as the ADM evaluator and pytorch-fid
compute it (FID is this on Inception pool features; the digits demo uses it on a small classifier's).

    d^2 = ||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 sqrtm(sigma1 @ sigma2))

Everything is float64. If the product is singular (scipy reports an exactly zero eigenvalue, e.g. a
feature with no variance) or its square root is not finite, eps is added to both diagonals and the
square root is taken again, with a warning, as both references do. A square root with a
non-negligible imaginary part raises; a negligible one is dropped.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of features (N, F): the mean (F,) and the unbiased covariance (F, F), float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be (N, F), got shape {features.shape}")
    if features.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {features.shape[0]}")
    mu = np.mean(features, axis=0)
    sigma = np.cov(features, rowvar=False)
    return mu, np.atleast_2d(sigma)


def _sqrtm(a: np.ndarray) -> tuple[np.ndarray, bool]:
    """scipy's sqrtm and whether scipy found a singular matrix (it warns instead of failing)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        root = linalg.sqrtm(a)
    singular = any(issubclass(w.category, linalg.LinAlgWarning) and "singular" in str(w.message).lower()
                   for w in caught)
    for w in caught:   # pass on anything else
        if not (issubclass(w.category, linalg.LinAlgWarning) and "singular" in str(w.message).lower()):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return root, singular


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (the squared-distance form of FID)."""
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"means must be vectors of one length, got {mu1.shape} and {mu2.shape}")
    f = mu1.shape[0]
    if sigma1.shape != (f, f) or sigma2.shape != (f, f):
        raise ValueError(f"covariances must be ({f}, {f}), got {sigma1.shape} and {sigma2.shape}")

    diff = mu1 - mu2
    covmean, singular = _sqrtm(sigma1.dot(sigma2))
    if singular or not np.isfinite(covmean).all():
        warnings.warn(f"frechet distance: singular product; adding {eps} to the diagonal of the covariance "
                      "estimates", stacklevel=2)
        offset = np.eye(f) * eps
        covmean, _ = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
        if not np.isfinite(covmean).all():
            raise ValueError("frechet distance: the square root of the covariance product is not finite "
                             f"even with {eps} added to the diagonals")
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            m = np.max(np.abs(covmean.imag))
            raise ValueError(f"frechet distance: imaginary component {m} in the covariance square root")
        covmean = covmean.real
    tr_covmean = np.trace(covmean)
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)
