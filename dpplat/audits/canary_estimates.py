"""Epsilon from the scores of canaries that each entered training with probability 1/2.

Two estimates, which answer different questions:

- :func:`one_run_bound`: the non-parametric lower bound of Steinke, Nasr & Jagielski (2023). The
  auditor guesses "in" for the highest scores and "out" for the lowest, abstains on the rest,
  and counts correct guesses. Several numbers of guesses are tried; the confidence is split
  over them (a union bound), so taking the best is still a 95% bound.
- :func:`gdp_fit`: a model-based estimate. It assumes the in and out scores are two Gaussians of
  one variance, i.e. that the mechanism's trade-off curve is that of mu-Gaussian DP (Dong, Roth
  & Su 2022), fits mu = (mean in - mean out) / sd, and turns mu into epsilon at delta. It is an
  estimate of the privacy loss, not a bound, and holds only as far as the Gaussian shape does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize, stats

from dpplat.audits.one_run import one_run_lower_bound

GUESS_FRACTIONS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 1.0)  # shares of the canaries guessed on, tried in turn


def gdp_delta(mu: float, epsilon: float) -> float:
    """delta(epsilon) of mu-Gaussian DP: Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)."""
    if mu <= 0:
        return 0.0
    return float(stats.norm.cdf(-epsilon / mu + mu / 2) - math.exp(epsilon) * stats.norm.cdf(-epsilon / mu - mu / 2))


def gdp_epsilon(mu: float, delta: float) -> float:
    """The smallest epsilon with delta(epsilon) <= delta under mu-Gaussian DP; 0 when mu is that small."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}.")
    if mu <= 0 or gdp_delta(mu, 0.0) <= delta:
        return 0.0
    hi = 1.0
    while gdp_delta(mu, hi) > delta:
        hi *= 2
    return float(optimize.brentq(lambda e: gdp_delta(mu, e) - delta, 0.0, hi, xtol=1e-10))


def gdp_mu(epsilon: float, delta: float) -> float:
    """The mu of the Gaussian DP curve that gives ``epsilon`` at ``delta``: a claim read as mu-GDP."""
    if not epsilon > 0:
        return 0.0
    if not math.isfinite(epsilon):
        return math.inf
    hi = 1.0
    while gdp_epsilon(hi, delta) < epsilon:
        hi *= 2
    return float(optimize.brentq(lambda mu: gdp_epsilon(mu, delta) - epsilon, 1e-9, hi, xtol=1e-9))


@dataclass(frozen=True)
class GdpFit:
    """The fitted mu and its epsilon at delta (model-based: it assumes the Gaussian trade-off curve)."""

    mu: float
    epsilon: float
    delta: float

    def as_dict(self) -> dict:
        return asdict(self)


def gdp_fit(in_scores: np.ndarray, out_scores: np.ndarray, delta: float) -> GdpFit:
    """Fit mu-GDP to the two score samples: the difference of means over the pooled standard deviation."""
    a, b = np.asarray(in_scores, np.float64), np.asarray(out_scores, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("a mu-GDP fit needs at least 2 scores of included and of excluded canaries.")
    sd = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    mu = max(0.0, float(a.mean() - b.mean()) / sd) if sd > 0 else math.inf
    return GdpFit(mu, gdp_epsilon(mu, delta) if math.isfinite(mu) else math.inf, delta)


@dataclass(frozen=True)
class GuessCounts:
    """The guesses behind a one-run bound: of ``canaries``, ``correct`` of ``guesses`` right, and the bound's
    confidence and delta."""

    canaries: int
    guesses: int
    correct: int
    confidence: float
    delta: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class OneRunBound(GuessCounts):
    """The best bound over the guess counts tried, with the guesses that gave it."""

    lower_bound: float = 0.0


def one_run_bound(scores: np.ndarray, included: np.ndarray, delta: float, confidence: float = 0.95,
                  fractions: tuple[float, ...] = GUESS_FRACTIONS) -> OneRunBound:
    """Steinke et al.'s one-run bound with abstention, at ``confidence`` over all the guess counts tried.

    For each fraction f, the auditor guesses on f m canaries: "in" for the f m / 2 highest scores and
    "out" for the f m / 2 lowest. Each count is judged at confidence ``1 - (1 - confidence) / len(fractions)``.
    """
    m = len(scores)
    each = 1 - (1 - confidence) / len(fractions)
    best = OneRunBound(m, 0, 0, confidence, delta)
    for guesses, correct in top_and_bottom_guesses(scores, included, fractions):
        bound = one_run_lower_bound(m, guesses, correct, delta, each)
        if bound > best.lower_bound:
            best = OneRunBound(m, guesses, correct, confidence, delta, lower_bound=bound)
    return best


def top_and_bottom_guesses(scores: np.ndarray, included: np.ndarray,
                           fractions: tuple[float, ...]) -> list[tuple[int, int]]:
    """(guesses, correct) for each fraction f: "in" for the f m / 2 highest scores, "out" for the f m / 2 lowest."""
    scores, included = np.asarray(scores, np.float64), np.asarray(included, bool)
    m = len(scores)
    if m < 2 or len(included) != m:
        raise ValueError(f"need at least 2 canaries with one inclusion flag each, got {m} scores and "
                         f"{len(included)} flags.")
    order = np.argsort(scores, kind="stable")
    counts = []
    for f in fractions:
        half = min(max(1, int(f * m) // 2), m // 2)
        counts.append((2 * half, int(included[order[-half:]].sum() + (~included[order[:half]]).sum())))
    return counts


def likelihood_ratio_scores(projections: np.ndarray, noise_multiplier: float, sample_rate: float, *,
                            noise_scale: float = 1.0, shift_scale: float = 1.0) -> np.ndarray:
    """Each canary's log-likelihood ratio of "in" to "out" over all steps, from its per-step projections.

    ``projections[t, k]`` is step t's noisy update (less the real examples' clipped sum) projected on
    canary k's unit direction, in units of the claimed noise's standard deviation. As claimed, it is
    N(0, 1) without the canary and N(1 / sigma, 1) in the steps that sampled it (probability q).
    ``noise_scale`` and ``shift_scale`` replace the claimed 1 and 1 / sigma by what the run shows
    (:func:`measured_scales`). The per-step ratio is ``1 - q + q exp((x a - a^2 / 2) / s^2)`` with
    a the shift and s the noise scale; the log ratios add over steps.
    """
    if not noise_multiplier > 0:
        raise ValueError(f"the likelihood ratio needs a positive noise multiplier, got {noise_multiplier}.")
    shift, var = shift_scale / float(noise_multiplier), noise_scale**2
    projections = np.asarray(projections)
    scores = np.empty(projections.shape[1])
    for start in range(0, projections.shape[1], 4096):  # blocks of canaries: memory stays bounded
        x = np.asarray(projections[:, start:start + 4096], np.float64)
        log_in = np.log(sample_rate) + (x * shift - shift * shift / 2) / var
        scores[start:start + 4096] = np.logaddexp(np.log1p(-sample_rate), log_in).sum(axis=0)
    return scores


def measured_scales(projections: np.ndarray, noise_multiplier: float, sample_rate: float,
                    included_share: float = 0.5) -> tuple[float, float, float]:
    """The noise's scale and the canaries' shift that the projections show, relative to the claim (1 and 1), and
    the shift's standard error.

    Every canary's projections mix N(0, s^2) with, in the share ``q * included_share`` of entries where
    an included canary was sampled, N(a, s^2); the mixture's mean gives a and its median absolute
    deviation gives s. Neither uses which canaries were included, only that each was with
    probability ``included_share``; a score built on them is as valid a test as any.
    """
    x = np.asarray(projections, np.float64).ravel()
    noise = 1.4826 * float(np.median(np.abs(x - np.median(x))))
    scale = float(noise_multiplier) / (sample_rate * included_share)
    return noise, float(x.mean()) * scale, float(x.std()) / math.sqrt(len(x)) * scale
