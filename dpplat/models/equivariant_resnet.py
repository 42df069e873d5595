"""The equivariant ResNet-9 of Hölzl, Rueckert & Kaissis (2023), its C4 and C8 variants, and the WRN-16-4
GroupNorm baseline (De et al. 2022).

The equivariant ResNet-9 follows the paper's public code (github.com/hlzl/equivariant):

* every convolution block is conv -> Mish -> GroupNorm over whole fields without parameters -> optional
  2x2 max-pool; the norm's groups follow the code's rule (:func:`norm_groups`);
* a lifting block, a pooling block and a residual block at the base widths, a pooling block, then the
  restriction to the subgroup of half the order (D4 -> D2, C4 -> C2, C8 -> C4), a pooling block and a
  residual block in that subgroup; each residual sum is normalised again (the code's "scale norm");
* the head max-pools each field over the subgroup, averages space down to 2x2 and classifies with one
  linear layer, so it keeps where in the image a feature is: the logits are not invariant;
* the widths are the layout (16, 32, 64) scaled to the parameters of a plain network,
  ``int(l * sqrt(1.5 |G|) / |G|)`` fields, with the subgroup's order for the last stage (6, 13, 39 for D4).

The model is ``Sequential(body, head)``: the body is equivariant to the whole group, the head starts at
the restriction. Images are zero-padded symmetrically to a multiple of 8 (three 2x2 pools), so their side must be
even.
"""

from __future__ import annotations

import math
from functools import partial

from torch import nn

from dpplat.models.equivariant import FieldGroupNorm, GroupPool, Restrict, get_group, group_conv, lifting_conv
from dpplat.models.equivariant_cnn import check_image_size
from dpplat.models.registry import register_model

LAYOUT = (16, 32, 64)  # the paper's channel layout before scaling to fields
NORM_GROUPS = 8  # the GroupNorm groups the paper asks for, reduced by norm_groups where they do not divide


def paper_fields(channels: int, order: int) -> int:
    """Fields that give a group layer about the parameters of a plain layer of ``channels`` channels."""
    return max(1, int(channels * math.sqrt(order * 1.5) / order))


def norm_groups(fields: int, wanted: int = NORM_GROUPS) -> int:
    """The paper code's GroupNorm groups: ``wanted`` if it divides ``fields``, else the divisor nearest to it,
    or the second nearest when the nearest leaves 3 fields or fewer per group, or 1 when both do."""
    if fields % wanted == 0:
        return wanted
    divisors = [d for d in range(1, fields + 1) if fields % d == 0]
    nearest = sorted(divisors, key=lambda d: abs(d - wanted))[:2]
    if fields // nearest[0] > 3:
        return nearest[0]
    return nearest[-1] if fields // nearest[-1] > 3 else 1


def _block(conv: nn.Module, fields: int, group: str, pool: bool = False) -> list[nn.Module]:
    layers = [conv, nn.Mish(), FieldGroupNorm(norm_groups(fields), fields, group, affine=False)]
    return layers + [nn.MaxPool2d(2)] if pool else layers


class GroupResidual(nn.Module):
    """``norm(x + body(x))``: two convolution blocks, the skip connection, and a GroupNorm without parameters."""

    def __init__(self, fields: int, group: str) -> None:
        super().__init__()
        self.body = nn.Sequential(*_block(group_conv(fields, fields, 3, group), fields, group),
                                  *_block(group_conv(fields, fields, 3, group), fields, group))
        self.norm = FieldGroupNorm(norm_groups(fields), fields, group, affine=False)

    def forward(self, x):
        return self.norm(x + self.body(x))


def equivariant_resnet9(group: str, last: str, *, num_classes: int = 10, in_channels: int = 3,
                        image_size: int = 32) -> nn.Sequential:
    """``group`` in the body, restricted to its subgroup ``last`` (half the order) in the head's stage."""
    check_image_size(f"{group.lower()}-resnet9", image_size, multiple=2, minimum=2,
                     why="it pads the side to a multiple of 8 by the same amount on each side, which an odd side "
                         "cannot take, and uneven padding breaks equivariance")
    pad = (-image_size) % 8
    G, H = get_group(group), get_group(last)
    f1, f2 = (paper_fields(c, G.order) for c in LAYOUT[:2])
    f3 = paper_fields(LAYOUT[2], H.order)
    body = nn.Sequential(
        nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2)),
        *_block(lifting_conv(in_channels, f1, 3, group), f1, group),
        *_block(group_conv(f1, f2, 3, group), f2, group, pool=True),
        GroupResidual(f2, group),
        *_block(group_conv(f2, f3, 3, group), f3, group, pool=True),
    )
    split = G.order // H.order  # each field of ``group`` is this many fields of ``last``
    head = nn.Sequential(
        Restrict(group, last),
        *_block(group_conv(split * f3, f3, 3, last), f3, last, pool=True),
        GroupResidual(f3, last),
        GroupPool(last), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * f3, num_classes),
    )
    return nn.Sequential(body, head)


# name, group, the subgroup of the last stage, what the registry says (parameter counts as tested)
_RESNETS = (
    ("d4-resnet9", "D4", "D2", "Hölzl et al.'s equivariant ResNet-9 as in the paper's code: D4 stages of 6, 13 and "
                               "39 fields, the last stage restricted to D2, Mish, GroupNorm without parameters, "
                               "residual blocks, a head that pools the subgroup and keeps a 2x2 map; 287,413 "
                               "parameters on CIFAR-10 (the paper's 255,675 come from a band-limited filter basis)."),
    ("c4-resnet9", "C4", "C2", "The equivariant ResNet-9 with C4 stages of 9, 19 and 55 fields, the last restricted "
                               "to C2; 290,307 parameters on CIFAR-10."),
    ("c8-resnet9", "C8", "C4", "The equivariant ResNet-9 with steerable C8 stages of 6, 13 and 39 fields, the last "
                               "restricted to C4; 265,207 parameters on CIFAR-10."),
)

for _name, _group, _last, _description in _RESNETS:
    register_model(_name, family="equivariant", group=_group, invariant_to=None,
                   description=_description)(partial(equivariant_resnet9, _group, _last))


class WideBasic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(16, cin), nn.ReLU(), nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.GroupNorm(16, cout), nn.ReLU(), nn.Conv2d(cout, cout, 3, 1, 1, bias=False))
        self.skip = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return self.skip(x) + self.body(x)


@register_model("wrn-16-4", family="plain",
                description="Wide ResNet 16-4 with GroupNorm(16) instead of BatchNorm, as in De et al. (2022); "
                            "2,748,890 parameters on CIFAR-10.")
def wrn_16_4(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    widths, layers, cin = (64, 128, 256), [nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)], 16
    for i, width in enumerate(widths):
        for j in range(2):  # depth 16 = 6 * 2 + 4
            layers.append(WideBasic(cin, width, 2 if (j == 0 and i > 0) else 1))
            cin = width
    layers += [nn.GroupNorm(16, cin), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)
