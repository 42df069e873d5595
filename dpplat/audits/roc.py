"""ROC curves and the summary numbers ML Privacy Meter reports: AUC and TPR at low FPR."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Roc:
    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auc: float

    def tpr_at(self, max_fpr: float) -> float:
        """Highest TPR among thresholds whose FPR is at most ``max_fpr``."""
        ok = self.fpr <= max_fpr
        return float(self.tpr[ok].max()) if ok.any() else 0.0

    def summary(self, points: int = 200) -> dict:
        """AUC, TPR at 1% and 0.1% FPR, and the curve thinned to about ``points`` points (log-spaced in FPR)."""
        keep = np.unique(np.concatenate([
            np.searchsorted(self.fpr, np.geomspace(1e-5, 1, points)).clip(0, len(self.fpr) - 1),
            [0, len(self.fpr) - 1],
        ]))
        return {
            "auc": self.auc, "tpr_at_1pct_fpr": self.tpr_at(0.01), "tpr_at_0.1pct_fpr": self.tpr_at(0.001),
            "fpr": self.fpr[keep].tolist(), "tpr": self.tpr[keep].tolist(),
        }


def roc_curve(scores: np.ndarray, members: np.ndarray) -> Roc:
    """ROC of "member if score >= t" over all thresholds t (higher score = more likely member)."""
    scores, members = np.asarray(scores, float), np.asarray(members, bool)
    if members.all() or not members.any():
        raise ValueError("an ROC curve needs both members and non-members among the scored points.")
    order = np.argsort(-scores, kind="stable")
    s, m = scores[order], members[order]
    last_of_tie = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(m)[last_of_tie]
    fp = np.cumsum(~m)[last_of_tie]
    tpr = np.r_[0.0, tp / m.sum()]
    fpr = np.r_[0.0, fp / (~m).sum()]
    thresholds = np.r_[np.inf, s[last_of_tie]]
    return Roc(fpr, tpr, thresholds, float(np.trapezoid(tpr, fpr)))
