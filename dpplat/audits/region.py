"""The (FPR, FNR) pairs that (epsilon, delta)-DP allows, and the smallest epsilon a pair implies.

For any membership test against an (epsilon, delta)-DP mechanism (Kairouz et al.
2015; Zanella-Béguelin et al. 2023, eq. 2), with alpha = FPR and beta = FNR:

    alpha + e^eps beta >= 1 - delta        e^eps alpha + beta >= 1 - delta
    (1 - alpha) + e^eps (1 - beta) >= 1 - delta     e^eps (1 - alpha) + (1 - beta) >= 1 - delta

The last two are the first two for the complemented test.
"""

from __future__ import annotations

import numpy as np


def epsilon_of_rates(fpr, fnr, delta: float):
    """Smallest epsilon >= 0 for which (fpr, fnr) satisfies all four inequalities (vectorised)."""
    fpr, fnr = np.asarray(fpr, dtype=float), np.asarray(fnr, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = [
            (1 - delta - fpr) / fnr,
            (1 - delta - fnr) / fpr,
            (fpr - delta) / (1 - fnr),
            (fnr - delta) / (1 - fpr),
        ]
        logs = [np.where(r > 1, np.log(np.where(r > 1, r, 1.0)), 0.0) for r in ratios]
    return np.maximum.reduce(logs)


def fnr_bounds(fpr: np.ndarray, epsilon: float, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """For each FPR, the interval [low, high] of FNRs that (epsilon, delta)-DP allows."""
    e = np.exp(min(epsilon, 700.0))
    low = np.maximum.reduce([np.zeros_like(fpr), (1 - delta - fpr) / e, 1 - delta - e * fpr])
    high = np.minimum.reduce([np.ones_like(fpr), 1 - (fpr - delta) / e, e * (1 - fpr) + delta])
    return low, high
