"""The zoo's registry: documented parameter counts, invariant equivariant classifiers, DP training works."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dpplat import PrivacyEngine, models
from dpplat.models.equivariant import get_group


@pytest.mark.parametrize("name,count,shape", [
    ("c4-cnn", 20214, (1, 28)), ("d4-cnn", 19504, (1, 28)), ("cnn", 26010, (1, 28)), ("mlp", 269322, (1, 28)),
    ("c8-cnn", 19256, (1, 28)), ("d8-cnn", 19025, (1, 28)), ("c4-scatnet", 18330, (1, 28)),
    ("c4-scatnet", 28378, (3, 32)),
    ("d4-resnet9", 287413, (3, 32)), ("c4-resnet9", 290307, (3, 32)), ("c8-resnet9", 265207, (3, 32)),
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


EQUIVARIANT = [m.name for m in models.available() if m.family == "equivariant"]


@pytest.mark.parametrize("name", EQUIVARIANT)
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_equivariant_classifiers_keep_the_symmetry_the_registry_claims(name, channels, size):
    """The body (``model[0]``, or a fixed stem and the head's first part) commutes with every grid element of the model's group. The logits are invariant to
    the group the registry names; a model that names none keeps orientation, so its logits do not follow a half turn
    (a 6 and a 9 can get different classes)."""
    torch.manual_seed(0)
    info = models.info(name)
    model = models.create(name, num_classes=10, in_channels=channels, image_size=size).double().eval()
    group = get_group(info.group)
    body = model[0] if isinstance(model, nn.Sequential) else nn.Sequential(model.stem, model.head[0])
    x = torch.randn(2, channels, size, size, dtype=torch.float64)
    for g in group.grid_elements:
        expected = group.permute_fields(group.act(body(x), g), g)
        assert (body(group.act(x, g)) - expected).abs().max() < 1e-10
    if info.invariant_to:
        invariant = get_group(info.invariant_to)
        for g in invariant.grid_elements:
            assert (model(invariant.act(x, g)) - model(x)).abs().max() < 1e-10
    else:
        assert (model(torch.rot90(x, 2, (-2, -1))) - model(x)).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["c4-cnn", "d8-cnn"])
@pytest.mark.parametrize("size", [30, 8])
def test_a_side_the_strided_layout_cannot_take_is_refused_with_the_sizes_it_can(name, size):
    with pytest.raises(ValueError, match=f"{name} takes square images whose side is a multiple of 4.*got {size}"):
        models.create(name, image_size=size)


@pytest.mark.parametrize("name", ["d4-resnet9", "c8-resnet9"])
@pytest.mark.parametrize("size", [31, 7])
def test_a_side_the_resnet_cannot_pad_evenly_is_refused_with_the_sizes_it_can(name, size):
    with pytest.raises(ValueError, match=f"{name} takes square images whose side is a multiple of 2 \\(e.g.*"
                                         f"got {size}: it pads"):
        models.create(name, in_channels=3, image_size=size)


@pytest.mark.parametrize("name", ["c4-cnn", "d4-cnn", "c8-cnn", "d8-cnn", "c4-resnet9", "d4-resnet9", "c8-resnet9",
                                  "c4-scatnet"])
def test_orientation_keeping_classifiers_per_sample_gradients(name):
    """The whole model against the float64 per-sample loop, every clipping group at once."""
    from tests.engine.reference import check_rule

    torch.manual_seed(0)
    model = models.create(name, num_classes=3, image_size=12)
    check_rule(model, torch.randn(4, 1, 12, 12), clipping="per_layer", C=0.05)


def test_unknown_model_lists_the_available_ones():
    with pytest.raises(ValueError, match="available: c4-cnn, c4-resnet9, c4-scatnet, c8-cnn, c8-resnet9, cnn, d4-cnn, d4-resnet9, d8-cnn, mlp, "
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
    assert len(dp_model.clipping_groups) == 4  # 2 group convs and the head's 2 linear layers; the norms have no parameters


def test_shipped_recipes_parse_and_name_registered_models():
    from pathlib import Path

    from dpplat.training import TrainConfig

    recipes = sorted((Path(__file__).resolve().parents[2] / "models").glob("*.toml"))
    assert recipes
    for recipe in recipes:
        config = TrainConfig.from_toml(recipe)
        config.validate()
        assert models.info(config.model)
        if "result" in config.extra:
            assert "machine" in config.extra["result"], recipe.name
        else:  # only a GPU recipe may ship before it is measured, and its header says so
            header = recipe.read_text()
            assert "Not yet measured" in header and "--device cuda" in header, recipe.name


def test_a_recipe_naming_a_group_the_model_does_not_have_is_refused():
    from dpplat.training import TrainConfig

    assert TrainConfig(model="d4-resnet9", dataset="cifar10", group="D4").group == "D4"
    with pytest.raises(ValueError, match=r"group \(--group\) is 'D4', but model 'c4-cnn' is equivariant to C4"):
        TrainConfig(model="c4-cnn", group="D4")
    with pytest.raises(ValueError, match="model 'cnn' is not group-equivariant"):
        TrainConfig(model="cnn", group="C4")
