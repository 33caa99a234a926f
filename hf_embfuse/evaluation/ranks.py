"""Spearman's rank correlation with average ranks for ties, so the library needs no scipy."""

from __future__ import annotations

import numpy as np


def rankdata(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values`, tied values sharing the mean of their ranks (scipy's "average")."""
    values = np.asarray(values, dtype=np.float64).ravel()
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    # A run of tied values occupying ranks start+1 .. end gets their mean, (start + 1 + end) / 2.
    mean_ranks = (ends - counts + 1 + ends) / 2.0
    return mean_ranks[inverse.ravel()]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's ρ between two equal-length sequences; NaN when fewer than 2 values or one is constant.

    Raises:
        ValueError: on different lengths or non-finite values.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"Spearman needs two sequences of equal length, got {a.size} and {b.size}.")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("Spearman got NaN or inf values; drop or fix them first.")
    if a.size < 2:
        return float("nan")
    ra, rb = rankdata(a), rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = np.sqrt((ra**2).sum() * (rb**2).sum())
    if denom == 0:
        return float("nan")
    return float((ra * rb).sum() / denom)
