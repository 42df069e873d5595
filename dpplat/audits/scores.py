"""Membership scores for challenge points: higher means "more likely a member".

``loss`` and ``confidence`` need only the target model. LiRA (Carlini et al. 2022,
"Membership Inference Attacks From First Principles") fits Gaussians to the
logit-scaled confidence ``log(p / (1 - p))`` of each challenge over shadow models
that did (IN) and did not (OUT) train on it: ``lira-offline`` scores by how far
above the OUT distribution the target's value lies, ``lira-online`` by the
likelihood ratio of IN to OUT. With few shadow models the per-example variance is
unreliable, so (as the paper suggests) one variance pooled over challenges is used.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

MEMBERSHIP_SCORES = ("loss", "confidence", "lira-offline", "lira-online")


def lira_scores(phi: np.ndarray, members: np.ndarray, online: bool) -> np.ndarray:
    """LiRA scores for every (model, challenge), each model's shadows being all the *other* models.

    phi, members: (models, challenges) logit-scaled confidences and inclusion masks.
    """
    n_models = phi.shape[0]
    if n_models < 3:
        raise ValueError("LiRA needs at least 3 trained models (each the others' shadows); use --models 8 or more.")
    out = np.empty_like(phi)
    for j in range(n_models):
        others = np.arange(n_models) != j
        p, m = phi[others], members[others]
        mu_out = _masked_mean(p, ~m)
        sd_out = _pooled_sd(p, ~m, mu_out)
        if online:
            mu_in = _masked_mean(p, m)
            sd_in = _pooled_sd(p, m, mu_in)
            out[j] = stats.norm.logpdf(phi[j], mu_in, sd_in) - stats.norm.logpdf(phi[j], mu_out, sd_out)
        else:
            out[j] = stats.norm.logcdf(phi[j], mu_out, sd_out)
    return out


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    counts = mask.sum(0)
    overall = values[mask].mean() if mask.any() else 0.0
    sums = np.where(mask, values, 0.0).sum(0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), overall)


def _pooled_sd(values: np.ndarray, mask: np.ndarray, means: np.ndarray) -> float:
    resid = np.where(mask, values - means[None, :], 0.0)
    dof = max(1, int(mask.sum()) - int((mask.sum(0) > 0).sum()))
    return float(max(np.sqrt((resid**2).sum() / dof), 1e-6))


def attack_scores(attack: str, loss: np.ndarray, prob: np.ndarray, phi: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Scores (models, challenges) for ``attack`` from losses, true-class probabilities and their logits ``phi``."""
    if attack == "loss":
        return -loss
    if attack == "confidence":
        return prob
    if attack in ("lira-offline", "lira-online"):
        return lira_scores(phi, members, online=attack == "lira-online")
    raise ValueError(f"unknown attack {attack!r}; choose one of {MEMBERSHIP_SCORES}.")
