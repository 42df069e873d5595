"""The white-box audit's estimators on synthetic mechanisms with known privacy, without any training."""

import math

import numpy as np
import pytest

from dpplat.audits.canary_estimates import (gdp_delta, gdp_epsilon, gdp_fit, gdp_mu, likelihood_ratio_scores,
                                            measured_scales, one_run_bound)
from dpplat.audits.one_run_fdp import fdp_one_run_bound, mu_lower_bound, refutes


def gaussian_game(mu, m, seed):
    """m canaries, each in with probability 1/2; an in canary scores N(mu, 1), an out one N(0, 1): mu-GDP exactly."""
    rng = np.random.default_rng(seed)
    included = rng.random(m) < 0.5
    return rng.normal(0, 1, m) + mu * included, included


def test_gdp_epsilon_inverts_gdp_delta():
    for mu in (0.3, 1.0, 2.5):
        eps = gdp_epsilon(mu, 1e-5)
        assert gdp_delta(mu, eps) == pytest.approx(1e-5, rel=1e-6)
    assert gdp_epsilon(0.0, 1e-5) == 0.0 and gdp_epsilon(1.0, 1e-5) < gdp_epsilon(2.0, 1e-5)


@pytest.mark.parametrize("mu", [0.5, 1.0, 2.0])
def test_the_model_based_estimate_is_within_a_few_percent_of_the_truth(mu):
    truth = gdp_epsilon(mu, 1e-5)
    errors = []
    for seed in range(10):
        scores, included = gaussian_game(mu, 20_000, seed)
        errors.append(gdp_fit(scores[included], scores[~included], 1e-5).epsilon / truth - 1)
    assert np.median(np.abs(errors)) < 0.03 and max(np.abs(errors)) < 0.08


def test_the_one_run_bound_stays_below_the_truth_in_95_percent_of_seeds_and_is_not_vacuous():
    mu, delta = 2.0, 1e-5
    truth = gdp_epsilon(mu, delta)
    bounds = [one_run_bound(*gaussian_game(mu, 2_000, seed), delta).lower_bound for seed in range(40)]
    assert sum(b > truth for b in bounds) <= 2
    assert np.median(bounds) > 0.25 * truth  # abstention makes a loose bound useful, not zero


def test_without_signal_the_one_run_bound_is_near_zero():
    bounds = [one_run_bound(*gaussian_game(0.0, 2_000, seed), 1e-5).lower_bound for seed in range(10)]
    assert max(bounds) < 0.3


def test_the_likelihood_ratio_separates_better_than_the_plain_sum_under_subsampling():
    rng = np.random.default_rng(0)
    steps, m, q, sigma = 400, 4_000, 0.02, 0.8
    included = rng.random(m) < 0.5
    sampled = (rng.random((steps, m)) < q) & included
    projections = rng.normal(0, 1, (steps, m)) + sampled / sigma
    ratio = likelihood_ratio_scores(projections, sigma, q)
    plain = projections.sum(axis=0)
    mu_ratio = gdp_fit(ratio[included], ratio[~included], 1e-5).mu
    mu_plain = gdp_fit(plain[included], plain[~included], 1e-5).mu
    clt = q * math.sqrt(steps * (math.exp(1 / sigma**2) - 1))  # the composition's mu (Dong, Roth & Su's CLT)
    assert mu_plain == pytest.approx(q * math.sqrt(steps) / sigma, rel=0.15)
    assert mu_ratio > mu_plain and mu_ratio == pytest.approx(clt, rel=0.15)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="at least 2 canaries"):
        one_run_bound(np.array([1.0]), np.array([True]), 1e-5)
    with pytest.raises(ValueError, match="delta must be in"):
        gdp_epsilon(1.0, 0.0)
    with pytest.raises(ValueError, match="positive noise multiplier"):
        likelihood_ratio_scores(np.zeros((2, 2)), 0.0, 0.1)


def test_measured_scales_read_the_noise_and_the_shift_without_the_inclusions():
    rng = np.random.default_rng(1)
    steps, m, q, sigma = 200, 3_000, 0.05, 1.5
    included = rng.random(m) < 0.5
    sampled = (rng.random((steps, m)) < q) & included
    for noise, shift in ((1.0, 1.0), (0.5, 1.0), (1.0, 3.0)):
        x = rng.normal(0, noise, (steps, m)) + sampled * shift / sigma
        measured_noise, measured_shift, error = measured_scales(x, sigma, q)
        assert measured_noise == pytest.approx(noise, rel=0.05)
        assert abs(measured_shift - shift) < 4 * error and error < 0.2


def test_the_fdp_one_run_bound_stays_below_the_truth_and_is_tighter_than_steinkes():
    """On an exactly mu-GDP game the f-DP bound refutes the true mu in at most 2 of 40 seeds (95% each, split over
    the guess counts), and it reads more of the same guesses than the (epsilon, delta) bound: a higher epsilon."""
    mu, delta = 2.0, 1e-5
    fdp, steinke = [], []
    for seed in range(40):
        scores, included = gaussian_game(mu, 2_000, seed)
        fdp.append(fdp_one_run_bound(scores, included, delta))
        steinke.append(one_run_bound(scores, included, delta).lower_bound)
    assert sum(b.mu > mu for b in fdp) <= 2
    assert all(b.epsilon == pytest.approx(gdp_epsilon(b.mu, delta)) for b in fdp)
    assert np.median([b.epsilon for b in fdp]) > 1.2 * np.median(steinke)
    assert np.median([b.mu for b in fdp]) > 0.4 * mu


def test_without_signal_the_fdp_bound_is_near_zero_and_refutation_is_monotone_in_mu():
    bounds = [fdp_one_run_bound(*gaussian_game(0.0, 2_000, seed), 1e-5).mu for seed in range(10)]
    assert max(bounds) < 0.2
    m, guesses, correct = 1000, 200, 170
    mu = mu_lower_bound(m, guesses, correct)
    assert 0 < mu < 5
    assert refutes(0.9 * mu, m, guesses, correct) and not refutes(1.1 * mu, m, guesses, correct)
    assert not refutes(0.0, m, guesses, guesses // 2)  # chance-level guesses refute nothing
    with pytest.raises(ValueError, match="need 0 <= correct <= guesses <= m"):
        refutes(1.0, 10, 20, 5)


def test_the_claim_read_as_mu_gdp_gives_back_its_epsilon():
    for eps in (0.5, 2.0, 8.0):
        assert gdp_epsilon(gdp_mu(eps, 1e-5), 1e-5) == pytest.approx(eps, rel=1e-6)
