"""The zoo's registry: documented parameter counts, invariant equivariant classifiers, DP training works."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from dpplat import PrivacyEngine, models
from dpplat.models.equivariant import get_group


@pytest.mark.parametrize("name,count,shape", [
    ("c4-cnn", 18914, (1, 28)), ("d4-cnn", 35042, (1, 28)), ("cnn", 26010, (1, 28)), ("mlp", 269322, (1, 28)),
    ("c8-cnn", 6762, (1, 28)), ("d8-cnn", 12138, (1, 28)),
    ("d4-resnet9", 231498, (3, 32)), ("c4-resnet9", 238970, (3, 32)), ("c8-resnet9", 203778, (3, 32)),
    ("wrn-16-4", 2748890, (3, 32)),
    ("scatnet-linear", 39700, (1, 28)), ("scatnet-linear", 155530, (3, 32)),
    ("scatnet-cnn", 32938, (1, 28)), ("scatnet-cnn", 179530, (3, 32)),
    ("scatnet-linear-datanorm", 39700, (1, 28)), ("scatnet-cnn-datanorm", 179530, (3, 32)),
    ("scatnet-linear-centered", 39700, (1, 28)), ("scatnet-linear-centered", 155530, (3, 32)),
])
def test_parameter_counts_match_the_registry_description(name, count, shape):
    info = models.info(name)
    assert info.parameter_count(in_channels=shape[0], image_size=shape[1]) == count
    assert f"{count:,}" in info.description or name in ("cnn", "mlp")


# the ResNets restrict to C4 in their last stage; C8/D8 act exactly on the grid by their C4/D4 elements
INVARIANT_TO = {"c4-cnn": "C4", "d4-cnn": "D4", "c8-cnn": "C8", "d8-cnn": "D8",
                "d4-resnet9": "C4", "c4-resnet9": "C4", "c8-resnet9": "C4"}


@pytest.mark.parametrize("name", [m.name for m in models.available() if m.family == "equivariant"])
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_equivariant_classifiers_are_invariant_to_their_group(name, channels, size):
    torch.manual_seed(0)
    model = models.create(name, num_classes=10, in_channels=channels, image_size=size).double().eval()
    group = get_group(INVARIANT_TO[name])
    x = torch.randn(2, channels, size, size, dtype=torch.float64)
    for g in group.grid_elements:
        assert (model(group.act(x, g)) - model(x)).abs().max() < 1e-10


def test_unknown_model_lists_the_available_ones():
    with pytest.raises(ValueError, match="available: c4-cnn, c4-resnet9, c8-cnn, c8-resnet9, cnn, d4-cnn, d4-resnet9, d8-cnn, mlp, "
                       "scatnet-cnn, scatnet-cnn-datanorm, scatnet-linear, scatnet-linear-centered, scatnet-linear-datanorm, "
                       "wrn-16-4"):
        models.create("resnet-1000")


@pytest.mark.parametrize("name", ["d4-resnet9", "c8-resnet9", "wrn-16-4", "scatnet-cnn"])
def test_cifar_architectures_take_a_private_step(name):
    torch.manual_seed(0)
    model = models.create(name, num_classes=10, in_channels=3, image_size=32)
    data = TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    dp_model, opt, loader = PrivacyEngine().make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), data_loader=DataLoader(data, batch_size=4),
        noise_multiplier=1.0, max_grad_norm=1.0)
    x, y = next(iter(loader))
    opt.zero_grad()
    torch.nn.functional.cross_entropy(dp_model(x), y).backward()
    opt.step()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_equivariant_model_trains_under_the_engine():
    torch.manual_seed(0)
    model = models.create("c4-cnn")
    data = TensorDataset(torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,)))
    dp_model, opt, loader = PrivacyEngine().make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), data_loader=DataLoader(data, batch_size=16),
        noise_multiplier=1.0, max_grad_norm=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = next(iter(loader))
    opt.zero_grad()
    torch.nn.functional.cross_entropy(dp_model(x), y).backward()
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert len(dp_model.clipping_groups) == 9  # 4 group convs, 4 field norms, 1 linear head


def test_shipped_recipes_parse_and_name_registered_models():
    from pathlib import Path

    from dpplat.training import TrainConfig

    recipes = sorted((Path(__file__).resolve().parents[2] / "models").glob("*.toml"))
    assert recipes
    for recipe in recipes:
        config = TrainConfig.from_toml(recipe)
        config.validate()
        assert models.info(config.model) and "machine" in config.extra["result"]
