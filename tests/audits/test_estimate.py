"""The Bayesian epsilon estimator against independent computations, symmetries, edge cases, bad inputs."""

import numpy as np
import pytest
from scipy import stats

from dpplat.audits import Posterior, estimate_epsilon, one_run_lower_bound
from dpplat.audits.one_run import p_value
from dpplat.audits.region import epsilon_of_rates

DELTA = 1e-5


def monte_carlo_epsilons(fp, fn, neg, pos, a=0.5, draws=1_000_000, seed=0):
    rng = np.random.default_rng(seed)
    fpr = rng.beta(fp + a, neg - fp + a, draws)
    fnr = rng.beta(fn + a, pos - fn + a, draws)
    return epsilon_of_rates(fpr, fnr, DELTA)


@pytest.mark.parametrize("counts", [(10, 10, 100, 100), (3, 40, 200, 120), (0, 0, 50, 50), (0, 7, 1000, 300)])
@pytest.mark.parametrize("prior", ["jeffreys", "uniform"])
def test_quantiles_match_a_million_monte_carlo_draws(counts, prior):
    result = estimate_epsilon(*counts, delta=DELTA, prior=prior)
    eps = monte_carlo_epsilons(*counts, a=0.5 if prior == "jeffreys" else 1.0)
    n = len(eps)
    for q, e in [(0.025, result.low), (0.975, result.high), (0.05, result.lower_bound)]:
        tolerance = 5 * np.sqrt(q * (1 - q) / n)  # five standard errors of an empirical CDF value
        assert abs(np.mean(eps <= e) - q) < tolerance, (q, e)


def test_quadrature_error_is_below_1e_4_in_epsilon():
    for counts in [(10, 10, 100, 100), (0, 0, 10000, 10000), (1, 30, 1000, 500)]:
        coarse = Posterior(*counts, delta=DELTA)
        fine = Posterior(*counts, delta=DELTA, nodes=65536)
        for q in (0.025, 0.05, 0.5, 0.975):
            assert abs(coarse.quantile(q) - fine.quantile(q)) < 1e-4


def test_pymc_model_agrees_with_quadrature():
    pytest.importorskip("pymc")
    from dpplat.audits.pymc_model import sample_epsilon

    counts = (10, 10, 100, 100)
    draws = sample_epsilon(*counts, delta=DELTA, draws=8000)
    result = estimate_epsilon(*counts, delta=DELTA)
    # MCMC draws are correlated; a 0.02 tolerance on the CDF is a few effective standard errors.
    assert abs(np.mean(draws <= result.low) - 0.025) < 0.02
    assert abs(np.mean(draws <= result.high) - 0.975) < 0.02
    assert abs(np.median(draws) - Posterior(*counts, delta=DELTA).quantile(0.5)) < 0.1


@pytest.mark.parametrize("counts", [(10, 25, 100, 150), (0, 3, 40, 90), (7, 7, 30, 300)])
def test_symmetries_leave_the_interval_unchanged(counts):
    fp, fn, neg, pos = counts
    base = estimate_epsilon(fp, fn, neg, pos, DELTA)
    swapped = estimate_epsilon(fn, fp, pos, neg, DELTA)
    complemented = estimate_epsilon(neg - fp, pos - fn, neg, pos, DELTA)
    for other in (swapped, complemented):
        assert other.low == pytest.approx(base.low, abs=1e-5)  # equal up to quadrature error
        assert other.high == pytest.approx(base.high, abs=1e-5)
    cp = estimate_epsilon(fp, fn, neg, pos, DELTA, method="clopper-pearson")
    cp_swapped = estimate_epsilon(fn, fp, pos, neg, DELTA, method="clopper-pearson")
    assert (cp.low, cp.high) == pytest.approx((cp_swapped.low, cp_swapped.high))


def test_edge_cases_zero_counts_all_wrong_unequal_sizes_and_large_epsilon():
    perfect = estimate_epsilon(0, 0, 100_000, 100_000, DELTA)
    assert perfect.low > 10 and np.isfinite(perfect.high)  # no cap at 10
    all_wrong = estimate_epsilon(100, 80, 100, 80, DELTA)
    perfect_small = estimate_epsilon(0, 0, 100, 80, DELTA)
    assert all_wrong.low == pytest.approx(perfect_small.low, abs=1e-6)
    random_guess = estimate_epsilon(50, 50, 100, 100, DELTA)
    assert random_guess.low < 0.05 and random_guess.high < 0.5
    unequal = estimate_epsilon(2, 30, 500, 60, DELTA)
    assert 0 < unequal.low < unequal.high
    assert unequal.grid is not None and np.all(np.diff(unequal.cdf) >= -1e-12)


def test_bayes_is_narrower_than_clopper_pearson():
    bayes = estimate_epsilon(10, 10, 100, 100, DELTA)
    cp = estimate_epsilon(10, 10, 100, 100, DELTA, method="clopper-pearson")
    assert bayes.width < 0.8 * cp.width
    assert cp.low <= bayes.low and bayes.high <= cp.high


def test_clopper_pearson_matches_scipy_exact_intervals():
    fp, fn, n = 10, 15, 100
    alpha = 0.05
    fpr = stats.binomtest(fp, n).proportion_ci(confidence_level=1 - alpha / 2, method="exact")
    fnr = stats.binomtest(fn, n).proportion_ci(confidence_level=1 - alpha / 2, method="exact")
    expected_low = epsilon_of_rates(fpr.high, fnr.high, DELTA)
    expected_high = epsilon_of_rates(fpr.low, fnr.low, DELTA)
    cp = estimate_epsilon(fp, fn, n, n, DELTA, method="clopper-pearson")
    assert cp.low == pytest.approx(float(expected_low)) and cp.high == pytest.approx(float(expected_high))
    crossing = estimate_epsilon(45, 48, 100, 100, DELTA, method="clopper-pearson")
    assert crossing.low == 0.0 and crossing.lower_bound == 0.0


@pytest.mark.parametrize(
    "args,message",
    [
        ((101, 0, 100, 100), "cannot exceed negatives"),
        ((0, 101, 100, 100), "cannot exceed positives"),
        ((-1, 0, 100, 100), "non-negative integer"),
        ((0, 0, 0, 100), "must be positive"),
    ],
)
def test_bad_counts(args, message):
    with pytest.raises(ValueError, match=message):
        estimate_epsilon(*args, delta=DELTA)


@pytest.mark.parametrize("kwargs,message", [
    (dict(delta=1.0), "delta must be in"), (dict(delta=-0.1), "delta must be in"),
    (dict(delta=DELTA, confidence=1.0), "confidence must be in"), (dict(delta=DELTA, confidence=0), "confidence must be in"),
    (dict(delta=DELTA, method="mcmc"), "method must be"), (dict(delta=DELTA, prior="flat"), "prior must be"),
])
def test_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        estimate_epsilon(5, 5, 50, 50, **kwargs)


def test_one_run_bound():
    # delta = 0: the p-value is exactly a binomial tail.
    assert p_value(1000, 100, 70, 1.0, 0.0) == pytest.approx(stats.binom.sf(69, 100, 1 / (1 + np.exp(-1.0))))
    bound = one_run_lower_bound(1000, 100, 90, DELTA)
    assert 0 < bound < np.log(90 / 10)  # below the point estimate log(v / (r - v))
    assert p_value(1000, 100, 90, bound, DELTA) == pytest.approx(0.05, abs=1e-4)
    assert one_run_lower_bound(1000, 100, 50, DELTA) == 0.0  # chance-level guessing proves nothing
    assert one_run_lower_bound(1000, 200, 180, DELTA) > bound  # more evidence, higher bound
