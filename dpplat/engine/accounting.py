"""Privacy accounting with Opacus's accountants; the budget arithmetic lives here only.

Epsilon is always the accountant's upper bound (PRV's ``eps_upper``, RDP's
conversion), so it is never under-reported. A budget becomes a number of steps,
found by searching the accountant itself, so the training loop can stop *before*
the step that would exceed it.
"""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np

from opacus.accountants import create_accountant
from opacus.accountants.accountant import IAccountant
from opacus.accountants.utils import get_noise_multiplier

ACCOUNTANTS = ("prv", "rdp")


class PrivacyWarning(UserWarning):
    """A setting that is legal but weakens the guarantee a user probably expects."""


def make_accountant(name: str) -> IAccountant:
    if name not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {name!r}.")
    return create_accountant(mechanism=name)


def check_budget(epsilon: float | None, delta: float, dataset_size: int | None = None, *,
                 allow_large_delta: bool = False) -> None:
    """Validate (epsilon, delta) at the boundary.

    delta >= 1/N is refused: a mechanism that publishes one random example outright satisfies
    (0, 1/N)-DP, so such a delta allows leaking whole examples. ``allow_large_delta=True`` lets it
    through with a warning, for a user who means it.
    """
    if epsilon is not None and not (isinstance(epsilon, (int, float)) and epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be a positive finite number, got {epsilon}. For no privacy, train without the engine.")
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise ValueError(f"delta must be in (0, 1), got {delta}. A common choice is 1e-5 or 1/(10 N).")
    if dataset_size and delta >= 1.0 / dataset_size:
        message = (f"delta = {delta:g} is at least 1/N = {1.0 / dataset_size:.3g} for N = {dataset_size} examples: "
                   "such a guarantee allows publishing a whole example. Use delta < 1/N (e.g. 1e-5)")
        if not allow_large_delta:
            raise ValueError(message + ", or pass --allow-large-delta (allow_large_delta=True) if you mean it.")
        warnings.warn(message + ".", PrivacyWarning, stacklevel=3)


def check_noise_multiplier(noise_multiplier: float) -> float:
    """A noise multiplier must be a finite number >= 0 (0 means no noise: training that is not private)."""
    if isinstance(noise_multiplier, bool) or not isinstance(noise_multiplier, (int, float)) \
            or not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"the noise multiplier (--sigma) must be a finite number >= 0, got {noise_multiplier!r}.")
    return float(noise_multiplier)


def epsilon_of(accountant: IAccountant, delta: float, history: list | None = None) -> float:
    """Epsilon of ``history`` (default: the accountant's own), without touching the accountant.

    A step without noise (sigma = 0) makes epsilon infinite. Where the PRV accountant cannot
    discretise a history (a noise multiplier so small that its grid would not fit in memory),
    the RDP accountant's bound is used instead: also an upper bound, only looser.
    """
    probe = copy.deepcopy(accountant)
    if history is not None:
        probe.history = history
    if not probe.history:
        return 0.0
    if any(float(sigma) == 0.0 and int(count) > 0 for sigma, _, count in probe.history):
        return math.inf
    try:
        with np.errstate(divide="ignore"):  # PRV takes log(1 - q): -inf, handled, for a full-data release (q = 1)
            epsilon = float(probe.get_epsilon(delta=delta))
    except (ValueError, OverflowError, MemoryError, FloatingPointError, RuntimeError):
        if probe.mechanism() == "rdp":
            return math.inf
        fallback = create_accountant(mechanism="rdp")
        fallback.history = list(probe.history)
        return epsilon_of(fallback, delta)
    return epsilon if not math.isnan(epsilon) else math.inf


def with_steps(history: list, noise_multiplier: float, sample_rate: float, steps: int) -> list:
    """``history`` followed by ``steps`` more steps at (sigma, q), merged into its last entry when that matches."""
    history = [tuple(h) for h in history]
    if steps <= 0:
        return history
    if history and history[-1][0] == noise_multiplier and history[-1][1] == sample_rate:
        return history[:-1] + [(noise_multiplier, sample_rate, history[-1][2] + steps)]
    return history + [(noise_multiplier, sample_rate, steps)]


def steps_within_budget(
    accountant: IAccountant,
    *,
    noise_multiplier: float,
    sample_rate: float,
    target_epsilon: float,
    delta: float,
    limit: int = 10**8,
) -> int:
    """How many more steps at (sigma, q) keep epsilon <= target, on top of the accountant's history."""
    if not noise_multiplier > 0:
        return 0
    fits = lambda k: epsilon_of(accountant, delta, with_steps(accountant.history, noise_multiplier, sample_rate, k)) <= target_epsilon  # noqa: E731
    if not fits(0 if accountant.history else 1):
        return 0
    low, high = (0 if accountant.history else 1), 1
    while high <= limit and fits(high):
        low, high = high, high * 2
    if high > limit:
        return limit
    while high - low > 1:
        mid = (low + high) // 2
        if fits(mid):
            low = mid
        else:
            high = mid
    return low


def calibrate_noise(
    *, target_epsilon: float, target_delta: float, sample_rate: float, steps: int, accountant: str,
    prior: list | tuple = (),
) -> float:
    """Smallest sigma (to Opacus's tolerance) whose epsilon after ``steps`` is at most the target.

    ``prior`` is history already spent on the same data (a private release of normalisation
    statistics, say): the steps are composed after it, so sigma covers only what is left.
    """
    if not prior:
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=target_delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
                epsilon_tolerance=0.01,
            )
        )
    probe = make_accountant(accountant)
    prior = [tuple(h) for h in prior]
    spent = epsilon_of(probe, target_delta, prior)
    if spent >= target_epsilon:
        raise ValueError(f"what was released before training already spends epsilon = {spent:.3f} of the "
                         f"{target_epsilon} budget; raise the budget or add more noise to those releases.")
    epsilon = lambda sigma: epsilon_of(probe, target_delta, prior + [(sigma, sample_rate, steps)])  # noqa: E731
    low, high = 0.0, 10.0
    eps_high = epsilon(high)
    while eps_high > target_epsilon:  # the same search as Opacus's get_noise_multiplier
        low, high = high, 2 * high
        eps_high = epsilon(high)
    while target_epsilon - eps_high > 0.01:
        mid = (low + high) / 2
        eps_mid = epsilon(mid)
        if eps_mid <= target_epsilon:
            high, eps_high = mid, eps_mid
        else:
            low = mid
    return high
