"""Equivariant layers: equivariance for every group element, invariance of a classifier, export,
and exact per-sample gradients of the base parameters against a float64 per-sample loop."""

import pytest
import torch
from torch import nn

from dpplat.models.equivariant import (C4, D4, FieldGroupNorm, GroupConv2d, GroupPool, InvariantPool,
                                       LiftingConv2d)
from tests.engine.reference import check_rule

GROUPS = [C4, D4]


def act_on_fields(group, y, g):
    """How a group element acts on group feature maps: rotate space, permute the group axis."""
    return group.permute_fields(group.act(y, g), g)


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
def test_lifting_and_group_conv_are_equivariant(group):
    torch.manual_seed(0)
    lift = LiftingConv2d(3, 4, 3, group).double()
    conv = GroupConv2d(4, 5, 3, group).double()
    norm = FieldGroupNorm(1, 4, group).double()
    with torch.no_grad():
        for m in (lift, conv, norm):
            m.bias.normal_()
        norm.weight.normal_()
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    f = torch.randn(2, 4 * group.order, 9, 9, dtype=torch.float64)
    for g in range(group.order):
        assert (lift(group.act(x, g)) - act_on_fields(group, lift(x), g)).abs().max() < 1e-10
        assert (conv(act_on_fields(group, f, g)) - act_on_fields(group, conv(f), g)).abs().max() < 1e-10
        assert (norm(act_on_fields(group, f, g)) - act_on_fields(group, norm(f), g)).abs().max() < 1e-10
        pooled = GroupPool(group)(act_on_fields(group, f, g))
        assert (pooled - group.act(GroupPool(group)(f), g)).abs().max() < 1e-10


def small_gcnn(group, width=3):
    return nn.Sequential(
        LiftingConv2d(1, width, 3, group), FieldGroupNorm(1, width, group), nn.Mish(),
        GroupConv2d(width, width, 3, group), FieldGroupNorm(1, width, group), nn.Mish(), nn.MaxPool2d(2),
        GroupConv2d(width, width, 3, group), GroupPool(group), InvariantPool(), nn.Linear(width, 4),
    )


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
def test_classifier_logits_are_invariant(group):
    torch.manual_seed(0)
    model = small_gcnn(group).double()
    x = torch.randn(3, 1, 10, 10, dtype=torch.float64)
    for g in range(group.order):
        assert (model(group.act(x, g)) - model(x)).abs().max() < 1e-10


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
def test_export_to_plain_conv_gives_identical_outputs(group):
    torch.manual_seed(0)
    for layer, channels in [(LiftingConv2d(2, 3, 3, group), 2), (GroupConv2d(2, 3, 3, group), 2 * group.order)]:
        layer = layer.double()
        x = torch.randn(2, channels, 7, 7, dtype=torch.float64)
        assert torch.equal(layer.export()(x), layer(x))


def test_parameters_are_the_base_filters():
    assert sum(p.numel() for p in GroupConv2d(4, 5, 3, D4).parameters()) == 5 * 4 * 8 * 9 + 5
    assert GroupConv2d(4, 5, 3, D4).expanded_shape() == (40, 32, 3, 3)


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
@pytest.mark.parametrize("clipping", ["per_layer", "flat"])
@pytest.mark.parametrize("C", [0.05, 1e3])
def test_per_sample_gradients_of_base_parameters(group, clipping, C):
    torch.manual_seed(0)
    check_rule(small_gcnn(group), torch.randn(5, 1, 6, 6), clipping=clipping, C=C)


@pytest.mark.parametrize("clipping", ["per_layer", "flat"])
def test_equivariant_layers_with_augmentation_multiplicity_and_strides(clipping):
    torch.manual_seed(0)
    model = nn.Sequential(LiftingConv2d(2, 3, 3, C4, stride=2, bias=False), nn.Tanh(),
                          GroupConv2d(3, 2, 3, C4, padding=0), GroupPool(C4, "mean"), InvariantPool(),
                          nn.Linear(2, 3))
    check_rule(model, torch.randn(6, 2, 9, 9), clipping=clipping, C=0.1, views=2)
