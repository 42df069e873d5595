"""The one-run audit read through f-DP: Mahloujifar, Melis & Chaudhuri (2024), "Auditing f-Differential Privacy in
One Run" (arXiv:2410.22235).

Steinke et al.'s one-run bound asks whether v correct of r guesses on m canaries (each included with
probability 1/2) is likely under (epsilon, delta)-DP, which dominates each guess by randomised response. A
DP-SGD run is much closer to a Gaussian mechanism, whose trade-off curve is far below what its (epsilon,
delta) pair allows, so the same guesses refute much more of it. This module tests the Gaussian trade-off
curves G_mu: the largest mu that the guesses refute at the given confidence is the bound, and it is reported
with the epsilon that mu-GDP gives at the run's delta.

What it claims: "the run is not mu-GDP" for every mu below the bound, with the given confidence. A run that is
(epsilon, delta)-DP without being close to Gaussian is not covered; for DP-SGD, whose composed privacy loss is
close to Gaussian, it is the tighter reading of the same guesses.

The test follows the paper's algorithm for guesses with abstention, in which an adversary that makes r guesses
on m canaries gets at least v right with a probability that a recursion over the count of correct guesses
bounds, using the curve's inverse "blow-up" x -> Phi(Phi^-1(x) - mu).
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from dpplat.audits.canary_estimates import GUESS_FRACTIONS, GuessCounts, gdp_epsilon, top_and_bottom_guesses

_NORMAL = NormalDist()


def _shrink(x: float, mu: float) -> float:
    """Phi(Phi^-1(x) - mu): how little an outcome of probability x under one neighbour can have under the other."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    return _NORMAL.cdf(_NORMAL.inv_cdf(x) - mu)


def refutes(mu: float, m: int, guesses: int, correct: int, confidence: float = 0.95) -> bool:
    """Whether ``correct`` of ``guesses`` right (``m`` canaries, membership guesses) refutes mu-GDP at ``confidence``.

    The recursion runs from ``correct`` down to no correct guesses: ``h`` is the mass the adversary can put on
    wrong guesses and ``r`` on right ones, each step spending what the trade-off curve forces; mu is refuted when
    the total exceeds the share of canaries guessed on.
    """
    if not 0 <= correct <= guesses <= m:
        raise ValueError(f"need 0 <= correct <= guesses <= m, got correct={correct}, guesses={guesses}, m={m}.")
    if guesses == 0 or correct == 0:
        return False
    tau = (1 - confidence) * guesses / m
    r = tau * correct / guesses
    h = tau * (guesses - correct) / guesses
    for i in range(correct - 1, -1, -1):
        h_next = max(h, _shrink(r, mu))  # two possible answers per canary: one wrong answer each (k - 1 = 1)
        r = r + i / (guesses - i) * (h_next - h)
        h = h_next
    return r + h > guesses / m


def mu_lower_bound(m: int, guesses: int, correct: int, confidence: float = 0.95, tol: float = 1e-4) -> float:
    """The largest mu that the guesses refute (bisection; refutation holds for every smaller mu); 0 if none."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    if not refutes(0.0, m, guesses, correct, confidence):
        return 0.0
    lo, hi = 0.0, 1.0
    while refutes(hi, m, guesses, correct, confidence):
        lo, hi = hi, hi * 2
        if hi > 64:
            return float("inf")
    while hi - lo > tol:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if refutes(mid, m, guesses, correct, confidence) else (lo, mid)
    return lo


@dataclass(frozen=True)
class FdpOneRunBound(GuessCounts):
    """The best mu bound over the guess counts tried, its epsilon at delta, and the guesses that gave it."""

    mu: float = 0.0
    epsilon: float = 0.0


def fdp_one_run_bound(scores: np.ndarray, included: np.ndarray, delta: float, confidence: float = 0.95,
                      fractions: tuple[float, ...] | None = None) -> FdpOneRunBound:
    """The f-DP one-run bound with abstention over the same guess counts as :func:`one_run_bound`, with the
    confidence split over them (a union bound), so the best of them is still a bound at ``confidence``."""
    fractions = fractions or GUESS_FRACTIONS
    each = 1 - (1 - confidence) / len(fractions)
    m = len(scores)
    best = FdpOneRunBound(m, 0, 0, confidence, delta)
    for guesses, correct in top_and_bottom_guesses(scores, included, fractions):
        mu = mu_lower_bound(m, guesses, correct, each)
        if mu > best.mu:
            epsilon = gdp_epsilon(mu, delta) if np.isfinite(mu) else float("inf")
            best = FdpOneRunBound(m, guesses, correct, confidence, delta, mu=mu, epsilon=epsilon)
    return best
