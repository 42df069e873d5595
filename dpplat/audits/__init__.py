"""Audits: empirical epsilon from membership inference (Bayesian and Clopper–Pearson), one-run bounds."""

from dpplat.audits.estimate import EpsilonInterval, Posterior, estimate_epsilon
from dpplat.audits.one_run import one_run_lower_bound

__all__ = ["EpsilonInterval", "Posterior", "estimate_epsilon", "one_run_lower_bound"]
