"""Gradient canaries' directions: sparse random supports, unit length, and per-step signs that keep thousands of
canaries from adding up to a fixed offset on each other's projections."""

import numpy as np
import pytest
import torch
from torch import nn

from dpplat.audits.gradient_canaries import (CANARY_RANGE, canary_directions, default_canaries, overlap_variance,
                                             random_supports, step_signs)


@pytest.mark.parametrize("size", [300, 20_000])  # the ranked branch and the redraw branch
def test_each_support_has_distinct_coordinates_spread_evenly(size):
    k, count = 64, 3000
    index = random_supports(count, size, k, torch.Generator().manual_seed(0))
    assert index.shape == (count, k) and int(index.min()) >= 0 and int(index.max()) < size
    ordered = index.sort(dim=1).values
    assert not (ordered[:, 1:] == ordered[:, :-1]).any()
    hits = torch.bincount(index.flatten(), minlength=size).double()
    expected = count * k / size  # each coordinate's share of a uniform k-subset
    assert float(hits.mean()) == pytest.approx(expected)
    assert float(hits.std()) < 1.3 * expected ** 0.5  # binomial spread, no favoured coordinates


def test_directions_are_unit_length_with_each_group_weighted_by_its_bound():
    directions = canary_directions([1.0, 2.0], [40, 5000], 50, torch.Generator().manual_seed(1), "per_layer")
    dense = directions.dense(np.arange(50), np.ones(50, np.float32))
    assert dense.norm(dim=1).numpy() == pytest.approx(np.ones(50), abs=1e-5)
    small, large = dense[:, :40].norm(dim=1), dense[:, 40:].norm(dim=1)
    assert (large / small).numpy() == pytest.approx(np.full(50, 2.0), rel=1e-4)


def _summed_cross_talk(signs_of_step) -> np.ndarray:
    """Canaries only, no noise: each step adds the sampled canaries and projects the sum on every canary."""
    count, steps, rate = 4000, 200, 0.2
    directions = canary_directions([1.0], [300], count, torch.Generator().manual_seed(2), "per_layer")
    rng = np.random.default_rng(3)
    included = rng.random(count) < 0.5
    total = np.zeros(count)
    for _ in range(steps):
        signs = signs_of_step(rng, count)
        sampled = np.flatnonzero(included & (rng.random(count) < rate))
        update = directions.dense(sampled, signs).sum(dim=0)
        total += directions.project(update, signs).numpy()
    return total[~included]  # the excluded canaries see only the others


def test_fresh_signs_each_step_keep_the_canaries_overlaps_from_adding_up():
    fixed = _summed_cross_talk(lambda rng, count: np.ones(count, np.float32))
    fresh = _summed_cross_talk(step_signs)
    assert abs(fresh.mean()) < 0.1 * fresh.std()
    # with fixed directions each canary's overlap with the others repeats every step and grows like the steps;
    # with fresh signs it is a new draw each step and grows like their square root
    assert fixed.std() > 4 * fresh.std()
    # each step adds q m / 2 overlaps of 1 / n each: the variance the audit removes from the measured noise
    assert fresh.var() == pytest.approx(200 * overlap_variance([300], [1.0], 4000, 1.0, 0.2), rel=0.2)


def test_the_default_canary_count_shrinks_with_the_noise_and_stays_in_its_range():
    model = nn.Sequential(nn.Linear(100, 50), nn.ReLU(), nn.Linear(50, 10))  # groups of 5,050 and 510 values
    counts = [default_canaries(model, "per_layer", sigma, 0.02) for sigma in (5.0, 1.0, 0.5, 0.1)]
    assert counts[0] == CANARY_RANGE[1] and counts[-1] == CANARY_RANGE[0]
    assert counts == sorted(counts, reverse=True) and CANARY_RANGE[0] < counts[1] < CANARY_RANGE[1]
    # at the chosen count the overlaps add a tenth of the noise's variance
    overlap = 0.02 / 2 * counts[1] * (1 / 5050 + 1 / 510) / 4
    assert overlap == pytest.approx(0.1, rel=1e-3)
