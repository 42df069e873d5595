"""Audits: empirical epsilon from membership inference (Bayesian and Clopper–Pearson), one-run bounds."""

from dpplat.audits.estimate import EpsilonInterval, Posterior, estimate_epsilon
from dpplat.audits.one_run import one_run_lower_bound
from dpplat.audits.score_audit import ScoreAudit, audit_scores, read_scores

__all__ = ["EpsilonInterval", "Posterior", "ScoreAudit", "audit_scores", "estimate_epsilon", "one_run_lower_bound",
           "read_scores"]
