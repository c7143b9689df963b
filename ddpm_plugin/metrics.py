# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""Sample-quality metrics on the digit judge's outputs: feature statistics, the Frechet distance
`||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))` (the FID formula of Heusel et al. 2017, here in the judge's
feature space) and the confident share / class histogram of its probabilities (`judge_summary`); and a memorisation
check, pixel distances to the nearest training image (`nearest_distances`, `memorisation`).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "CONFIDENCE_THRESHOLD",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_from_features",
    "judge_summary",
    "memorisation",
    "nearest_distances",
]

# a sample counts as a recognisable digit when the judge gives its class at least this probability
CONFIDENCE_THRESHOLD = 0.9


# ---------------------------------------------------------------------------------------------------- Frechet
def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean `(dim,)` and unbiased covariance `(dim, dim)` of features `(num_samples, dim)`, in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need features of shape (num_samples >= 2, dim), got {features.shape}.")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (eigenvalues clipped at 0 against round-off)."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """
    The Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2):
    `d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))`.

    `(sigma1 sigma2)^(1/2)` has the trace of `(sigma1^(1/2) sigma2 sigma1^(1/2))^(1/2)` (the two are similar), which is
    symmetric positive semi-definite, so the trace comes from a symmetric eigendecomposition: real and stable also
    for the singular covariances of few samples in many dimensions.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"mismatched shapes: mu1 {mu1.shape}, mu2 {mu2.shape}, sigma1 {sigma1.shape}, sigma2 {sigma2.shape}."
        )
    root1 = _sqrtm_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def frechet_distance_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """`frechet_distance` between the Gaussians fitted to two feature sets `(n1, dim)` and `(n2, dim)`."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


# ---------------------------------------------------------------------------------------------------- judge outputs
def judge_summary(probs: np.ndarray, threshold: float = CONFIDENCE_THRESHOLD) -> dict:
    """
    Confident share and class histogram of judge probabilities `(num_samples, num_classes)`.

    Returns:
        `{"confident_share", "class_shares" (list, share of samples per argmax class, summing to 1),
        "confident_class_shares" (per class, among the confident samples only), "mean_confidence"}`. A sample with
        non-finite probabilities (a broken model) counts as not confident and is in no class.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError(f"need probabilities of shape (num_samples > 0, num_classes), got {probs.shape}.")
    num_samples, num_classes = probs.shape
    finite = np.isfinite(probs).all(axis=1)
    confidence = np.where(finite, np.nan_to_num(probs).max(axis=1), 0.0)
    labels = np.nan_to_num(probs).argmax(axis=1)
    confident = finite & (confidence >= threshold)
    class_counts = np.bincount(labels[finite], minlength=num_classes)
    confident_counts = np.bincount(labels[confident], minlength=num_classes)
    return {
        "confident_share": float(confident.mean()),
        "class_shares": (class_counts / num_samples).tolist(),
        "confident_class_shares": (confident_counts / max(int(confident.sum()), 1)).tolist(),
        "mean_confidence": float(confidence.mean()),
    }


# ---------------------------------------------------------------------------------------------------- memorisation
def nearest_distances(images, reference, batch_size: int = 256) -> np.ndarray:
    """
    Pixel-L2 distance from each of `images` to its nearest image in `reference`, `(num_images,)` in float64.

    Both are arrays of the same image shape, `(num_images, ...)` and `(num_reference, ...)`, on one scale (e.g. [0, 1]).
    """
    a = torch.as_tensor(np.asarray(images, dtype=np.float64)).flatten(1)
    b = torch.as_tensor(np.asarray(reference, dtype=np.float64)).flatten(1)
    if a.shape[1] != b.shape[1] or len(b) == 0:
        raise ValueError(
            f"images of shape {tuple(np.shape(images))[1:]} cannot be compared with reference images of shape "
            f"{tuple(np.shape(reference))[1:]} (need the same image shape and at least one reference image)."
        )
    nearest = [torch.cdist(a[i : i + batch_size], b).min(dim=1).values for i in range(0, len(a), batch_size)]
    return torch.cat(nearest).numpy()


def memorisation(sample_distances: np.ndarray, heldout_distances: np.ndarray, quantile: float = 0.05) -> dict:
    """
    How close samples come to the training set, measured against real unseen data: the share of samples nearer to
    their nearest training image than the `quantile` of the held-out images' nearest-training distances. A model that
    generalises has about `quantile` of its samples there; one that reproduces its training images has far more.

    Returns:
        `{"quantile", "threshold", "share_below", "sample_median", "heldout_median"}`.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}.")
    sample_distances, heldout_distances = np.asarray(sample_distances), np.asarray(heldout_distances)
    threshold = float(np.quantile(heldout_distances, quantile))
    return {
        "quantile": quantile,
        "threshold": threshold,
        "share_below": float(np.mean(sample_distances < threshold)),
        "sample_median": float(np.median(sample_distances)),
        "heldout_median": float(np.median(heldout_distances)),
    }
