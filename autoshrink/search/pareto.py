"""Pareto fronts and their hypervolume, over points to minimize (normalized objective values)."""

from __future__ import annotations

import numpy as np


def non_dominated(points: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows of `points` (minimization) no other row dominates."""
    n = len(points)
    keep = np.ones(n, dtype=bool)
    for i in range(n):
        dominated = np.all(points <= points[i], axis=1) & np.any(points < points[i], axis=1)
        keep[i] = not dominated.any()
    return keep


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Hypervolume dominated by `points` (minimization) up to `reference`."""
    if len(points) == 0:
        return 0.0
    inside = points[np.all(points < reference, axis=1)]
    if len(inside) == 0:
        return 0.0
    if points.shape[1] == 1:
        return float(reference[0] - inside.min())
    from optuna._hypervolume import compute_hypervolume  # private in Optuna 5; covered by a test

    front = inside[non_dominated(inside)]
    return float(compute_hypervolume(front, reference, assume_pareto=True))
