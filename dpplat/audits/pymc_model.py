"""The same posterior as a pymc model: Beta priors, Binomial likelihoods, epsilon as a deterministic.

It samples (slowly, compared with :mod:`dpplat.audits.estimate`'s quadrature) and is
the base for extensions the closed form cannot do: several attacks pooled, or a
hierarchical prior over their error rates. The test suite uses it to cross-check
the quadrature.
"""

from __future__ import annotations

import numpy as np

PRIOR_SHAPE = {"jeffreys": 0.5, "uniform": 1.0}


def build_model(fp: int, fn: int, negatives: int, positives: int, delta: float, prior: str = "jeffreys"):
    import pymc as pm
    import pytensor.tensor as pt

    a = PRIOR_SHAPE[prior]
    with pm.Model() as model:
        fpr = pm.Beta("fpr", alpha=a, beta=a)
        fnr = pm.Beta("fnr", alpha=a, beta=a)
        pm.Binomial("false_positives", n=negatives, p=fpr, observed=fp)
        pm.Binomial("false_negatives", n=positives, p=fnr, observed=fn)
        ratios = pt.stack([
            (1 - delta - fpr) / fnr, (1 - delta - fnr) / fpr, (fpr - delta) / (1 - fnr), (fnr - delta) / (1 - fpr),
        ])
        pm.Deterministic("epsilon", pt.maximum(pt.max(pt.log(pt.maximum(ratios, 1e-300))), 0.0))
    return model


def sample_epsilon(fp, fn, negatives, positives, delta, prior="jeffreys", draws=20000, seed=0) -> np.ndarray:
    """Posterior draws of epsilon. Beta-Binomial is conjugate, so pymc's NUTS mixes well here."""
    import pymc as pm

    with build_model(fp, fn, negatives, positives, delta, prior):
        trace = pm.sample(draws=draws // 2, tune=1000, chains=2, cores=1, random_seed=seed, progressbar=False,
                          compute_convergence_checks=False)
    return trace.posterior["epsilon"].values.ravel()
