"""The one-run lower bound of Steinke, Nasr & Jagielski (NeurIPS 2023), "Privacy Auditing with One (1) Training Run".

m canaries are each included in training with probability 1/2; the auditor guesses
membership for r of them (abstaining on the rest) and gets v right. Under
(epsilon, delta)-DP the number of correct guesses is dominated by
Binomial(r, e^eps / (1 + e^eps)) up to a delta term (their Theorem 5.2); the
epsilon lower bound at confidence 1 - beta is the largest epsilon whose p-value for
v correct guesses stays below beta.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize, special, stats


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P(at least v correct of r guesses) under (epsilon, delta)-DP, with the paper's delta correction."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}.")
    q = special.expit(epsilon)  # accuracy of epsilon-DP randomised response
    tail = stats.binom.sf(v - 1, r, q)
    if delta == 0 or v == 0:
        return float(min(1.0, tail))
    # alpha = max_i P(v - i <= Bin(r, q) < v) / i, over i = 1..v
    pmf = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)
    alpha = float(np.max(np.cumsum(pmf) / np.arange(1, v + 1)))
    return float(min(1.0, tail + alpha * delta * 2 * m))


def one_run_lower_bound(m: int, r: int, v: int, delta: float, confidence: float = 0.95) -> float:
    """Largest epsilon that v correct of r guesses (m canaries) refutes at the given confidence; 0 if none."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    if not 0 <= delta < 1:
        raise ValueError(f"delta must be in [0, 1), got {delta}.")
    beta = 1 - confidence
    if r == 0 or p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    hi = 1.0
    while p_value(m, r, v, hi, delta) < beta:
        hi *= 2
        if hi > 1e3:
            return float("inf")
    return float(optimize.brentq(lambda e: p_value(m, r, v, e, delta) - beta, 0.0, hi, xtol=1e-6))
