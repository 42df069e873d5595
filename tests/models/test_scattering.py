"""The scattering front end and the ScatterNets: equivariance, filter properties, per-sample gradients, caching."""

import pytest
import torch

from dpplat import data, models
from dpplat.audits.target import load_run_model
from dpplat.models.scatnet import DataCentering, DataNorm
from dpplat.models.scattering import Scattering2D, morlet_filter_bank
from dpplat.store import RunStore
from dpplat.training import TrainConfig, fit, train
from tests.engine.reference import check_rule


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_scattering_shape_is_81_channels_per_input_channel_at_a_quarter_resolution(channels, size):
    out = Scattering2D(J=2, L=8, image_size=size)(torch.rand(2, channels, size, size))
    assert out.shape == (2, 81 * channels, size // 4, size // 4)
    assert Scattering2D(J=3, L=4, image_size=32)(torch.rand(1, 1, 32, 32)).shape == (1, 1 + 12 + 16 * 3, 4, 4)


@pytest.mark.parametrize("J,L", [(2, 8), (3, 4)])
def test_scattering_is_equivariant_to_quarter_turns_with_cycled_orientations(J, L):
    torch.manual_seed(0)
    scattering = Scattering2D(J=J, L=L, image_size=32)
    x = torch.rand(3, 2, 32, 32, dtype=torch.float64)
    out = scattering(x)
    per_input = scattering.channels_per_input
    for k in (1, 2, 3):
        shift = scattering.orientation_shift(k)
        order = torch.cat([shift + c * per_input for c in range(2)])
        turned = scattering(torch.rot90(x, k, (2, 3)))
        assert (turned - torch.rot90(out, k, (2, 3))[:, order]).abs().max() < 1e-10
        if k % 2:  # a quarter turn really moves the orientation channels: without the shift it fails
            assert (turned - torch.rot90(out, k, (2, 3))).abs().max() > 1e-3


def test_wavelets_have_zero_mean_so_a_constant_image_has_only_an_order_zero_response():
    wavelets, low_pass = morlet_filter_bank((36, 36), 2, 8)
    assert wavelets[:, 0, 0].abs().max() < 1e-6 and low_pass[0, 0] == pytest.approx(1.0, abs=1e-6)
    out = Scattering2D(J=2, L=8, image_size=28).double()(torch.full((1, 1, 28, 28), 0.7, dtype=torch.float64))
    assert torch.allclose(out[:, 0], torch.full((1, 7, 7), 0.7, dtype=torch.float64), atol=1e-6)
    assert out[:, 1:].abs().max() < 1e-6


def test_oriented_stripes_excite_the_wavelet_of_their_orientation():
    """Stripes varying along rows and along columns peak at orientation channels L/2 apart."""
    scattering = Scattering2D(J=2, L=8, image_size=32)
    i = torch.arange(32, dtype=torch.float32)
    rows = torch.cos(0.75 * torch.pi * i)[:, None].expand(32, 32)[None, None]
    first = lambda img: scattering(img)[0, 1:9].mean((1, 2))  # noqa: E731  (scale j = 0, the 8 angles)
    a, b = first(rows).argmax().item(), first(rows.transpose(2, 3)).argmax().item()
    assert (a - b) % 8 == 4


@pytest.mark.parametrize("kwargs,message", [
    (dict(J=2, image_size=30), "divisible by 4"), (dict(J=5, image_size=32), "too coarse"),
    (dict(J=0, image_size=32), "J >= 1"), (dict(L=5, image_size=32), "even L"),
])
def test_bad_scattering_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Scattering2D(**kwargs)


def test_scattering_names_the_image_size_it_expects():
    with pytest.raises(ValueError, match=r"expects \(N, C, 28, 28\).*image_size=32"):
        Scattering2D(image_size=28)(torch.rand(1, 3, 32, 32))


@pytest.mark.parametrize("name", ["scatnet-linear", "scatnet-cnn", "scatnet-cnn-datanorm", "scatnet-linear-centered"])
@pytest.mark.parametrize("clipping", ["per_layer", "flat"])
def test_scatnet_per_sample_gradients_match_the_loop(name, clipping):
    torch.manual_seed(0)
    model = models.create(name, in_channels=1, image_size=28)
    for norm in model.modules():
        if isinstance(norm, DataNorm):
            norm.set_statistics(torch.rand(81) * 0.1, torch.rand(81) * 0.02)
        if isinstance(norm, DataCentering):
            norm.set_mean(torch.rand(81, 7, 7))
    check_rule(model, torch.rand(5, 1, 28, 28), clipping=clipping, C=0.05)


def _fit_with_release(monkeypatch, model: str):
    """A small private fit of a ScatterNet whose head starts with a released statistic; the stem runs counted."""
    config = TrainConfig(dataset="mnist", model=model, epsilon=2.0, epochs=2, batch_size=64, subset=256,
                         test_subset=100, optimizer="adam", lr=3e-3, max_grad_norm=1.0)
    train_set = data.load_dataset("mnist", subset=256, seed=0)
    calls = _count_stem_rows(monkeypatch)
    model = fit(config, train_set)
    assert sum(calls) == 256, "the release reads the cached features, not a second pass of the stem"
    with torch.no_grad():
        features = model.stem(train_set.tensors[0])
    return config, train_set, calls, model, features


def _trained_and_loaded(config, tmp_path, releases: int):
    """``train`` with the store: the release is in the privacy statement, and the head loads back with it."""
    result = train(config, store=RunStore(tmp_path / "runs.db"), quiet=True)
    assert (f"Composed before training: {releases} Gaussian release(s) of data statistics, noise multiplier 8"
            in result.statement)
    assert result.epsilon <= 2.0
    loaded, _ = load_run_model(RunStore(tmp_path / "runs.db"), result.run_id)
    test_images = data.load_dataset("mnist", "test", subset=100, seed=0).tensors[0]
    with torch.no_grad():
        assert torch.allclose(loaded.model(test_images), result.model.eval()(test_images))
    return result.model.head[0], loaded.model.head[0]


def test_data_norm_is_released_privately_composed_and_saved_with_the_head(tmp_path, monkeypatch):
    config, train_set, calls, model, raw = _fit_with_release(monkeypatch, "scatnet-linear-datanorm")
    norm = model.head[0]
    # no MNIST example's channel means reach the clip (3), so the mean is off by the noise alone: sigma C / N
    noise = (norm.mean - raw.mean((0, 2, 3))) / (config.data_norm_noise * config.data_norm_clip / 256)
    assert 0.7 < noise.std().item() < 1.3 and noise.abs().max() < 5
    assert not torch.equal(norm.var, torch.ones_like(norm.var)) and (norm.var >= 0).all()

    trained, loaded = _trained_and_loaded(config, tmp_path, releases=2)
    assert torch.equal(loaded.var, trained.var)

    calls.clear()
    views = fit(TrainConfig(**{**config.__dict__, "augmult": 2, "epochs": 1}), train_set)
    assert not torch.equal(views.head[0].var, torch.ones_like(views.head[0].var))
    assert calls[0] == 256, "with the stem in every step, the release first runs it once over the images"


def test_centering_is_released_privately_composed_and_saved_with_the_head(tmp_path, monkeypatch):
    config, _, _, model, features = _fit_with_release(monkeypatch, "scatnet-linear-centered")
    center = model.head[0]
    # GroupNorm bounds every example's norm by sqrt(81 * 7 * 7) = 63, the release's clip: nothing is clipped,
    # so the released mean is off by the noise alone, sigma * 63 / N on each of the 3,969 coordinates
    assert center.clip == 63.0 and features.flatten(1).norm(dim=1).max() <= 63.0
    assert features.mean(0).norm() > 10, "GroupNorm features share a large mean: the point of centring them"
    noise = (center.mean - features.mean(0)) / (config.data_norm_noise * 63.0 / 256)
    assert 0.95 < noise.std().item() < 1.05 and noise.mean().abs() < 0.1
    with torch.no_grad():
        assert torch.allclose(model.head[1](center(features[:3])), (features[:3] - center.mean).flatten(1))

    trained, loaded = _trained_and_loaded(config, tmp_path, releases=1)
    assert torch.equal(loaded.mean, trained.mean) and not torch.equal(loaded.mean, torch.zeros_like(center.mean))
    with pytest.raises(ValueError, match=r"shape \(81, 7, 7\) got a mean of shape \(81,\)"):
        center.set_mean(torch.zeros(81))


def _count_stem_rows(monkeypatch) -> list[int]:
    """Record the batch size of every Scattering2D forward."""
    calls: list[int] = []
    original = Scattering2D.forward
    monkeypatch.setattr(Scattering2D, "forward", lambda self, x: calls.append(len(x)) or original(self, x))
    return calls


def test_fixed_stem_runs_once_per_image_and_checkpoints_load_into_the_registry_model(tmp_path, monkeypatch):
    config = TrainConfig(dataset="mnist", model="scatnet-linear", epsilon=2.0, epochs=3, batch_size=64, subset=256,
                         test_subset=100, optimizer="adam", lr=3e-3, max_grad_norm=1.0)
    train_set = data.load_dataset("mnist", subset=256, seed=0)
    calls = _count_stem_rows(monkeypatch)
    model = fit(config, train_set)
    assert sum(calls) == 256  # three epochs, but each image through the stem once
    with torch.no_grad():
        x = train_set.tensors[0][:4]
        assert torch.equal(model(x), model.head(model.stem(x)))

    result = train(config, store=RunStore(tmp_path / "runs.db"), quiet=True)
    loaded, _ = load_run_model(RunStore(tmp_path / "runs.db"), result.run_id)
    test_set = data.load_dataset("mnist", "test", subset=100, seed=0)
    with torch.no_grad():
        logits = result.model.eval()(test_set.tensors[0])
        assert torch.allclose(loaded.model(test_set.tensors[0]), logits)
    # the accuracy measured on the cached test features is the whole model's accuracy on the images
    assert (logits.argmax(1) == test_set.tensors[1]).float().mean().item() == pytest.approx(result.accuracy)


def test_augmentation_multiplicity_trains_through_the_stem(tmp_path, monkeypatch):
    """With K views per image each step, the stem must see the views: nothing is cached."""
    config = TrainConfig(dataset="mnist", model="scatnet-linear", epsilon=2.0, epochs=1, batch_size=32, subset=64,
                         test_subset=50, optimizer="adam", lr=3e-3, max_grad_norm=1.0, augmult=2)
    calls = _count_stem_rows(monkeypatch)
    result = train(config, store=RunStore(tmp_path / "runs.db"), quiet=True)
    assert result.status == "finished" and result.steps == 2
    assert sum(calls) > 64 + 50 and all(n % 2 == 0 for n in calls[:-2])  # two views a row, per step
