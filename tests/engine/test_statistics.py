"""The private release of feature statistics (data normalisation, centring) and its composition in the accountant."""

import pytest
import torch
from opacus.accountants import create_accountant
from torch import nn
from torch.utils.data import DataLoader

from dpplat import PrivacyEngine
from dpplat.engine.accounting import calibrate_noise
from dpplat.engine.statistics import private_channel_moments, private_mean
from tests.engine.test_privacy_engine import make_data, make_model


def test_moments_are_the_clipped_sums_of_per_example_channel_statistics_plus_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, 4, 4, generator=g, dtype=torch.float64) * torch.tensor([0.1, 1.0, 3.0]).view(1, 3, 1, 1)
    x += torch.tensor([0.0, 0.5, -2.0], dtype=torch.float64).view(1, 3, 1, 1)
    for clip in (100.0, 1.5):  # no example clipped, then most of them
        sums, squares = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
        for example in x:  # the plain loop
            m, s = example.mean((1, 2)), (example ** 2).mean((1, 2))
            sums += m * min(1.0, clip / m.norm().item())
            squares += s * min(1.0, clip / s.norm().item())
        seeded = torch.Generator().manual_seed(5)
        got = private_channel_moments(x, noise_multiplier=2.0, clip=clip, generator=seeded, chunk=7)
        noise = torch.Generator().manual_seed(5)
        mean = (sums + torch.normal(0.0, 2.0 * clip, (3,), generator=noise, dtype=torch.float64)) / 40
        second = (squares + torch.normal(0.0, 2.0 * clip, (3,), generator=noise, dtype=torch.float64)) / 40
        torch.testing.assert_close(got.mean, mean, rtol=0, atol=1e-12)
        torch.testing.assert_close(got.var, (second - mean ** 2).clamp(min=0), rtol=0, atol=1e-12)
        assert got.accountant_entry() == (2.0, 1.0, 2)
    exact = private_channel_moments(x, noise_multiplier=1e-9, clip=100.0)
    torch.testing.assert_close(exact.mean, x.mean((0, 2, 3)))
    torch.testing.assert_close(exact.var, x.var((0, 2, 3), unbiased=False))


def test_noise_on_each_sum_has_standard_deviation_sigma_times_clip():
    x = torch.zeros(1, 20000, 1, 1, dtype=torch.float64)  # one example: the release is its stats plus noise
    got = private_channel_moments(x, noise_multiplier=3.0, clip=0.5, generator=torch.Generator().manual_seed(1))
    assert got.mean.std().item() == pytest.approx(1.5, rel=0.03)


def test_the_private_mean_is_the_clipped_sum_of_whole_examples_plus_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 2, 3, 3, generator=g, dtype=torch.float64) + 1.5
    for clip in (100.0, 2.0):  # no example clipped, then all of them
        total = torch.zeros(2, 3, 3, dtype=torch.float64)
        for example in x:  # the plain loop: one example is one vector
            total += example * min(1.0, clip / example.norm().item())
        got = private_mean(x, noise_multiplier=3.0, clip=clip, generator=torch.Generator().manual_seed(5), chunk=7)
        noise = torch.normal(0.0, 3.0 * clip, (18,), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        torch.testing.assert_close(got.mean, (total + noise.view(2, 3, 3)) / 30, rtol=0, atol=1e-12)
        assert got.accountant_entry() == (3.0, 1.0, 1)
    torch.testing.assert_close(private_mean(x, noise_multiplier=1e-9, clip=100.0).mean, x.mean(0))
    one = private_mean(torch.zeros(1, 20000), noise_multiplier=3.0, clip=0.5, generator=torch.Generator().manual_seed(1))
    assert one.mean.std().item() == pytest.approx(1.5, rel=0.03)


@pytest.mark.parametrize("release", [private_channel_moments, private_mean])
@pytest.mark.parametrize("kwargs,message", [
    (dict(noise_multiplier=0.0, clip=1.0), "noise_multiplier must be > 0"),
    (dict(noise_multiplier=1.0, clip=0.0), "clip must be > 0"),
])
def test_bad_release_settings_are_refused(release, kwargs, message):
    with pytest.raises(ValueError, match=message):
        release(torch.rand(4, 2, 3, 3), **kwargs)
    with pytest.raises(ValueError, match="N >= 1"):
        release(torch.rand(0, 2, 3, 3), noise_multiplier=1.0, clip=1.0)


def test_a_recorded_release_is_composed_and_the_training_noise_covers_only_what_is_left():
    data, delta = make_data(n=200), 1e-3

    def engine_for(release: bool):
        model = make_model()
        engine = PrivacyEngine(accountant="prv")
        if release:
            engine.record_release(4.0, 1.0, 2)
        triple = engine.make_private_with_epsilon(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            data_loader=DataLoader(data, batch_size=40), target_epsilon=2.0, target_delta=delta, epochs=3,
            max_grad_norm=1.0)
        return engine, triple

    plain, (_, plain_opt, _) = engine_for(False)
    composed, (dp_model, dp_opt, dp_loader) = engine_for(True)
    assert dp_opt.noise_multiplier > plain_opt.noise_multiplier  # the release used part of the budget
    assert composed.get_epsilon(delta) > 0 and composed.steps_taken == 0
    for _ in range(15):
        dp_opt.zero_grad()
        x, y = next(iter(dp_loader))
        nn.functional.cross_entropy(dp_model(x), y).backward()
        dp_opt.step()
    assert composed.steps_taken == 15
    assert 1.95 <= composed.get_epsilon(delta) <= 2.0
    probe = create_accountant("prv")
    probe.history = [(dp_opt.noise_multiplier, 0.2, 15)]
    assert probe.get_epsilon(delta=delta) < composed.get_epsilon(delta) - 0.02  # the release is really counted
    assert "2 Gaussian release(s) of data statistics, noise multiplier 4" in str(composed.privacy_statement())
    with pytest.raises(RuntimeError, match="before make_private"):
        composed.record_release(4.0)


def test_a_release_that_spends_the_whole_budget_is_refused_clearly():
    with pytest.raises(ValueError, match="already spends epsilon"):
        calibrate_noise(target_epsilon=0.5, target_delta=1e-5, sample_rate=0.1, steps=10, accountant="prv",
                        prior=[(1.0, 1.0, 2)])
    with pytest.raises(ValueError, match="noise_multiplier > 0"):
        PrivacyEngine().record_release(0.0)
