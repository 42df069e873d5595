"""Empirical epsilon from a user's own attack scores: members' and non-members' scores in, three estimates out.

For an attack dpplat did not run (a canary audit of the user's own pipeline, say), in the
spirit of jax_privacy's canary score auditor. A higher score means "member". As in
``dpplat audit mia``, a random half of each group (seeded) chooses the threshold and only
the other half is counted, so the threshold never sees the scores it is judged on; the
counts give the Bayesian interval (Zanella-Béguelin et al. 2023), Clopper–Pearson and the
one-run bound (Steinke, Nasr & Jagielski 2023).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dpplat.audits.estimate import estimate_epsilon
from dpplat.audits.mia import choose_threshold
from dpplat.audits.one_run import one_run_lower_bound
from dpplat.audits.roc import roc_curve


@dataclass(frozen=True)
class ScoreAudit:
    """The estimates from one set of scores; ``lower_bound`` is the Bayesian one-sided lower bound."""

    lower_bound: float
    low: float
    high: float
    clopper_pearson_lower_bound: float
    one_run_lower_bound: float
    threshold: float
    fp: int
    fn: int
    negatives: int
    positives: int
    delta: float
    confidence: float

    def as_dict(self) -> dict:
        return asdict(self)


def read_scores(path: str | Path, what: str) -> np.ndarray:
    """Scores from a ``.npy`` file or a text file with one number per line; at least two, all finite."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} score file {path} does not exist.")
    try:
        scores = np.load(path, allow_pickle=False) if path.suffix == ".npy" else np.loadtxt(path, ndmin=1)
    except (ValueError, OSError) as err:
        raise ValueError(f"{what} score file {path} cannot be read as numbers ({str(err).splitlines()[0]}): give a "
                         ".npy array or one number per line.") from None
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if len(scores) < 2:
        raise ValueError(f"{what} score file {path} holds {len(scores)} score(s); at least 2 are needed (one half "
                         "chooses the threshold, the other is counted).")
    if not np.isfinite(scores).all():
        bad = int(np.flatnonzero(~np.isfinite(scores))[0])
        raise ValueError(f"{what} score file {path} has a non-finite score ({scores[bad]}) at entry {bad + 1}.")
    return scores


def audit_scores(members: np.ndarray, non_members: np.ndarray, *, delta: float, confidence: float = 0.95,
                 seed: int = 0) -> ScoreAudit:
    """Estimate epsilon from attack scores (higher means member), choosing the threshold on a held-out half."""
    members, non_members = np.asarray(members, np.float64), np.asarray(non_members, np.float64)
    for what, scores in (("members", members), ("non-members", non_members)):
        if scores.ndim != 1 or len(scores) < 2 or not np.isfinite(scores).all():
            raise ValueError(f"{what} must be at least 2 finite scores in a 1-D array.")
    rng = np.random.default_rng(seed)
    scores = np.concatenate([members, non_members])
    truth = np.concatenate([np.ones(len(members), bool), np.zeros(len(non_members), bool)])
    calibration = np.zeros(len(scores), bool)
    for group in (np.flatnonzero(truth), np.flatnonzero(~truth)):
        calibration[rng.permutation(group)[: len(group) // 2]] = True
    threshold = choose_threshold(scores[calibration], truth[calibration], delta, confidence)
    guess, counted = scores[~calibration] >= threshold, truth[~calibration]
    fp, fn = int((guess & ~counted).sum()), int((~guess & counted).sum())
    negatives, positives = int((~counted).sum()), int(counted.sum())
    bayes = estimate_epsilon(fp, fn, negatives, positives, delta, confidence, method="bayes")
    cp = estimate_epsilon(fp, fn, negatives, positives, delta, confidence, method="clopper-pearson")
    one_run = one_run_lower_bound(counted.size, counted.size, int((guess == counted).sum()), delta, confidence)
    return ScoreAudit(bayes.lower_bound, bayes.low, bayes.high, cp.lower_bound, one_run, float(threshold), fp, fn,
                      negatives, positives, delta, confidence)


SCORES_NOTE = ("The scores come from your own attack; each member and non-member counts as one independent guess, "
               "so the interval holds as far as that independence does.")


def score_audit_results(result: ScoreAudit, members: np.ndarray, non_members: np.ndarray, *,
                        claimed_epsilon: float | None = None) -> dict:
    """What the store keeps of a score audit, in the shape of a membership-inference audit's results.

    The posterior's grid and density are recomputed from the counts; the ROC is of all the scores.
    """
    bayes = estimate_epsilon(result.fp, result.fn, result.negatives, result.positives, result.delta,
                             result.confidence, method="bayes")
    cp = estimate_epsilon(result.fp, result.fn, result.negatives, result.positives, result.delta, result.confidence,
                          method="clopper-pearson")
    roc = roc_curve(np.concatenate([members, non_members]),
                    np.concatenate([np.ones(len(members), bool), np.zeros(len(non_members), bool)]))
    finite_claim = claimed_epsilon is not None and math.isfinite(claimed_epsilon)
    best = max(result.lower_bound, result.clopper_pearson_lower_bound, result.one_run_lower_bound)
    return {
        "claimed_epsilon": claimed_epsilon if finite_claim else None,
        "delta": result.delta, "confidence": result.confidence, "attack": "your scores", "threshold": result.threshold,
        "members": len(members), "non_members": len(non_members),
        "counts": {"fp": result.fp, "fn": result.fn, "negatives": result.negatives, "positives": result.positives},
        "bayes": bayes.as_dict(), "clopper_pearson": cp.as_dict(),
        "one_run": {"lower_bound": result.one_run_lower_bound},
        "roc": {"your scores": roc.summary()},
        "exceeds_claim": bool(finite_claim and best > claimed_epsilon),
        "independence_note": SCORES_NOTE,
    }
