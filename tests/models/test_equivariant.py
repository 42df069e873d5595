"""Equivariant layers: equivariance for every group element that maps the grid onto itself (all of C4
and D4; the quarter turns and flips of C8 and D8), invariance of a classifier, export, and exact
per-sample gradients of the base parameters against a float64 per-sample loop."""

import math

import pytest
import torch
from torch import nn

from dpplat import models
from dpplat.models.equivariant import (C4, C8, D4, D8, FieldGroupNorm, GroupConv2d, GroupPool, InvariantPool,
                                       OrbitPool, Restrict, SteerableGroupConv2d,
                                       SteerableLiftingConv2d, group_conv, lifting_conv, sampled_basis)
from dpplat.models.equivariant.steerable import basis_functions
from tests.engine.reference import check_rule

GROUPS = [C4, D4, C8, D8]


def act_on_fields(group, y, g):
    """How a group element acts on group feature maps: rotate space, permute the group axis."""
    return group.permute_fields(group.act(y, g), g)


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
def test_lifting_and_group_conv_are_equivariant(group):
    torch.manual_seed(0)
    lift = lifting_conv(3, 4, 3, group).double()
    conv = group_conv(4, 5, 3, group).double()
    norm = FieldGroupNorm(1, 4, group).double()
    with torch.no_grad():
        for m in (lift, conv, norm):
            m.bias.normal_()
        norm.weight.normal_()
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    f = torch.randn(2, 4 * group.order, 9, 9, dtype=torch.float64)
    for g in group.grid_elements:
        assert (lift(group.act(x, g)) - act_on_fields(group, lift(x), g)).abs().max() < 1e-10
        assert (conv(act_on_fields(group, f, g)) - act_on_fields(group, conv(f), g)).abs().max() < 1e-10
        assert (norm(act_on_fields(group, f, g)) - act_on_fields(group, norm(f), g)).abs().max() < 1e-10
        pooled = GroupPool(group)(act_on_fields(group, f, g))
        assert (pooled - group.act(GroupPool(group)(f), g)).abs().max() < 1e-10


def small_gcnn(group, width=3):
    return nn.Sequential(
        lifting_conv(1, width, 3, group), FieldGroupNorm(1, width, group), nn.Mish(),
        group_conv(width, width, 3, group), FieldGroupNorm(1, width, group), nn.Mish(), nn.MaxPool2d(2),
        group_conv(width, width, 3, group), GroupPool(group), InvariantPool(), nn.Linear(width, 4),
    )


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
def test_classifier_logits_are_invariant(group):
    torch.manual_seed(0)
    model = small_gcnn(group).double()
    x = torch.randn(3, 1, 10, 10, dtype=torch.float64)
    for g in group.grid_elements:
        assert (model(group.act(x, g)) - model(x)).abs().max() < 1e-10


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
def test_orbit_pool_head_is_invariant_and_keeps_a_quadrant(group):
    torch.manual_seed(0)
    model = nn.Sequential(lifting_conv(1, 2, 3, group), nn.Mish(), GroupPool(group), OrbitPool(group)).double()
    x = torch.randn(2, 1, 9, 9, dtype=torch.float64)
    assert model(x).shape == (2, 2, 5, 5)
    for g in group.grid_elements:
        assert (model(group.act(x, g)) - model(x)).abs().max() < 1e-10


@pytest.mark.parametrize("group,subgroup", [(D4, C4), (C8, C4), (D8, D4), (D8, C8)], ids=str)
def test_restriction_to_a_subgroup_keeps_equivariance(group, subgroup):
    torch.manual_seed(0)
    model = nn.Sequential(lifting_conv(1, 2, 3, group), nn.Mish(), Restrict(group, subgroup),
                          group_conv(2 * group.order // subgroup.order, 3, 3, subgroup)).double()
    x = torch.randn(2, 1, 9, 9, dtype=torch.float64)
    for g in subgroup.grid_elements:
        assert (model(subgroup.act(x, g)) - act_on_fields(subgroup, model(x), g)).abs().max() < 1e-10
    with pytest.raises(ValueError, match="not a subgroup"):
        Restrict(C4, D4)


@pytest.mark.parametrize("group", [C8, D8], ids=lambda g: g.name)
@pytest.mark.parametrize("k", [5, 8])
def test_steerable_basis_rotates_exactly_by_every_element(group, k):
    """For g = (rotation by a, reflection f), a harmonic sampled at g^-1 p is cos(m(phi - a)) for the
    cos part and (-1)^f sin(m(phi - a)) for the sin part: exact on the grid, the 45-degree elements too.
    An even filter's grid is centred between pixels, where quarter turns still permute its pixels."""
    functions = basis_functions(k)
    basis = sampled_basis(group, k)
    assert basis.shape == (group.order, len(functions), k, k)
    assert (len(basis_functions(3)), len(basis_functions(5)), len(basis_functions(8))) == (6, 15, 36)
    quarter = group.elements.index((group.rotations // 4, 0))
    assert (basis[quarter] - torch.rot90(basis[0], 1, (-2, -1))).abs().max() < 1e-12
    for g, (k, flip) in enumerate(group.elements):
        ma = [m * group.angle(g) for _, m, _ in functions]
        for b, (r, m, kind) in enumerate(functions):
            if m == 0:
                expected = basis[0, b]
            elif kind == "cos":
                expected = math.cos(ma[b]) * basis[0, b] + math.sin(ma[b]) * basis[0, b + 1]
            else:
                expected = (-1) ** flip * (math.cos(ma[b]) * basis[0, b] - math.sin(ma[b]) * basis[0, b - 1])
            assert (basis[g, b] - expected).abs().max() < 1e-12, (g, r, m, kind)


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
def test_export_to_plain_conv_gives_identical_outputs(group):
    torch.manual_seed(0)
    for layer, channels in [(lifting_conv(2, 3, 3, group), 2), (group_conv(2, 3, 3, group), 2 * group.order)]:
        layer = layer.double()
        x = torch.randn(2, channels, 7, 7, dtype=torch.float64)
        assert torch.equal(layer.export()(x), layer(x))


def test_parameters_are_the_base_filters():
    assert sum(p.numel() for p in GroupConv2d(4, 5, 3, D4).parameters()) == 5 * 4 * 8 * 9 + 5
    assert GroupConv2d(4, 5, 3, D4).expanded_shape() == (40, 32, 3, 3)
    # steerable: 6 basis coefficients per 3x3 filter instead of 9 pixels
    assert sum(p.numel() for p in SteerableGroupConv2d(4, 5, 3, D8).parameters()) == 5 * 4 * 16 * 6 + 5
    assert SteerableGroupConv2d(4, 5, 3, D8).expanded_shape() == (80, 64, 3, 3)
    assert sum(p.numel() for p in SteerableLiftingConv2d(3, 5, 5, C8).parameters()) == 5 * 3 * 15 + 5
    assert not list(SteerableLiftingConv2d(3, 5, 5, C8).state_dict().keys() - {"weight", "bias"})


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
@pytest.mark.parametrize("clipping", ["per_layer", "flat"])
@pytest.mark.parametrize("C", [0.05, 1e3])
def test_per_sample_gradients_of_base_parameters(group, clipping, C):
    torch.manual_seed(0)
    check_rule(small_gcnn(group), torch.randn(5, 1, 6, 6), clipping=clipping, C=C)


@pytest.mark.parametrize("group", [C4, D8], ids=lambda g: g.name)
def test_flat_clipping_without_keeping_per_sample_base_gradients(group, monkeypatch):
    """Above the keep limit, flat clipping sums by a second weight-gradient pass; both ways match the loop."""
    from dpplat.models.equivariant import rules

    monkeypatch.setattr(rules, "KEEP_PER_SAMPLE_VALUES", 0)
    torch.manual_seed(0)
    check_rule(small_gcnn(group), torch.randn(5, 1, 6, 6), clipping="flat", C=0.05)


@pytest.mark.parametrize("views", [1, 2])
@pytest.mark.parametrize("keep", [True, False], ids=["kept", "second-pass"])
@pytest.mark.parametrize("clipping", ["per_layer", "flat"])
def test_frozen_weight_or_bias_of_a_group_layer(clipping, keep, views, monkeypatch):
    """A frozen base weight or bias gets no gradient, and the parts that train still match the loop. A layer whose
    filter is frozen forms no per-sample filter gradients: the per-sample work goes to the trainable filter only."""
    from dpplat.engine.rules import conv
    from dpplat.models.equivariant import rules

    if not keep:
        monkeypatch.setattr(rules, "KEEP_PER_SAMPLE_VALUES", 0)
    per_sample_weight_grads, formed_for = conv.per_sample_weight_grads, []
    monkeypatch.setattr(conv, "per_sample_weight_grads", lambda module, *args, **kwargs: formed_for.append(module)
                        or per_sample_weight_grads(module, *args, **kwargs))
    torch.manual_seed(0)
    model = small_gcnn(C4)
    model[0].bias.requires_grad_(False)
    model[3].weight.requires_grad_(False)
    got, _ = check_rule(model, torch.randn(6, 1, 6, 6), clipping=clipping, C=0.05, views=views)
    assert "0.weight" in got and "3.bias" in got
    assert "0.bias" not in got and "3.weight" not in got
    assert formed_for and all(module.weight.requires_grad for module in formed_for)


@pytest.mark.parametrize("clipping", ["per_layer", "flat"])
def test_equivariant_layers_with_augmentation_multiplicity_and_strides(clipping):
    torch.manual_seed(0)
    for group in (C4, C8):
        model = nn.Sequential(lifting_conv(2, 3, 3, group, stride=2, bias=False), nn.Tanh(),
                              group_conv(3, 2, 3, group, padding=0), GroupPool(group, "mean"), InvariantPool(),
                              nn.Linear(2, 3))
        check_rule(model, torch.randn(6, 2, 9, 9), clipping=clipping, C=0.1, views=2)


def _rotate(x, angle):
    """Rotate images by ``angle`` in rot90's direction, sampling bilinearly (no torchvision here)."""
    n = x.shape[-1]
    c = (n - 1) / 2
    u, v = torch.meshgrid(torch.arange(n, dtype=x.dtype) - c, torch.arange(n, dtype=x.dtype) - c, indexing="ij")
    qu, qv = math.cos(angle) * u + math.sin(angle) * v, -math.sin(angle) * u + math.cos(angle) * v  # R^-1 p
    grid = torch.stack([qv / c, qu / c], -1)[None].expand(x.shape[0], -1, -1, -1)
    return torch.nn.functional.grid_sample(x, grid, align_corners=True)


def test_steerable_lifting_is_nearly_equivariant_to_45_degree_turns():
    """On a smooth image, rotating by 45 degrees commutes with the C8 lifting layer up to sampling
    error (about 2%; with the wrong group element, 45%), where a generic filter bank is off by about 19%."""
    torch.manual_seed(0)
    n = 65
    u, v = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    image = torch.zeros(1, 1, n, n, dtype=torch.float64)
    for cu, cv, weight in zip(torch.randint(16, 48, (12,)), torch.randint(16, 48, (12,)), torch.randn(12)):
        image[0, 0] += weight * torch.exp(-((u - cu) ** 2 + (v - cv) ** 2) / 18.0)
    centre = (..., slice(20, 45), slice(20, 45))

    def error(layer, on_fields):
        with torch.no_grad():
            expected = _rotate(layer(image), math.pi / 4)
            expected = C8.permute_fields(expected, 1) if on_fields else expected
            return float((layer(_rotate(image, math.pi / 4)) - expected)[centre].norm() / expected[centre].norm())

    assert error(SteerableLiftingConv2d(1, 4, 3, C8).double(), True) < 0.05
    assert error(nn.Conv2d(1, 32, 3, padding=1, bias=False).double(), False) > 0.1


@pytest.mark.parametrize("name", ["d4-resnet9", "c4-resnet9", "c8-resnet9"])
def test_resnet_norms_keep_each_fields_mean_per_image(name):
    """A GroupNorm group of one field sets that field's mean over orientations and pixels to zero for every image,
    which throws away what the field saw. The paper's rule for the groups keeps more than 3 fields in each, or puts
    all fields in one group, so every norm layer leaves each field's mean varying between images."""
    torch.manual_seed(0)
    net = models.create(name, num_classes=10, in_channels=3, image_size=32)
    spreads = []

    def record(module, _, out):
        means = out.view(out.shape[0], -1, module.group.order * out.shape[2] * out.shape[3]).mean(2)
        spreads.append(means.std(0).min().item())  # the least-varying field's mean, across images

    norms = [m for m in net.modules() if isinstance(m, FieldGroupNorm)]
    for norm in norms:
        norm.register_forward_hook(record)
    with torch.no_grad():
        net(torch.randn(8, 3, 32, 32))
    assert len(spreads) == len(norms) >= 8
    assert min(spreads) > 1e-3, spreads
