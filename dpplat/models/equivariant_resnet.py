"""The D4 ResNet-9 of Hölzl, Rueckert & Kaissis (2023), its C4 and C8 variants, and the WRN-16-4
GroupNorm baseline (De et al. 2022).

Equivariant ResNet-9: lifting conv, group convs with field GroupNorm and Mish, two residual
blocks, restriction to the rotation subgroup C4 in the last stage (a D4 or C8 regular field
is exactly two C4 regular fields, ``Restrict``), group pooling, invariant pooling and a linear
head. Its logits are invariant to C4 (rotations by 90 degrees); images are zero-padded
symmetrically to a multiple of 8. C8 uses steerable 3x3 filters (6 coefficients each).
"""

from __future__ import annotations

import math

from torch import nn

from dpplat.models.equivariant import (FieldGroupNorm, GroupPool, InvariantPool, Restrict, get_group, group_conv,
                                       lifting_conv)
from dpplat.models.registry import register_model, register_variants


def _norm_act(fields: int, group: str) -> list[nn.Module]:
    """Field GroupNorm in two groups of whole fields, then Mish.

    Few groups on purpose: a group of a single field is normalised over its own orientations and
    pixels, per image, which sets to zero exactly the mean that the invariant head pools. With
    gcd(8, fields) groups (one field each in D4's and C8's first stage) the ResNet-9 did not learn
    CIFAR-10 (16% train accuracy after 120 non-private steps of 64 images, against 25% with two groups).
    """
    return [FieldGroupNorm(math.gcd(2, fields), fields, group), nn.Mish()]


class GroupResidual(nn.Module):
    def __init__(self, fields: int, group: str) -> None:
        super().__init__()
        self.body = nn.Sequential(group_conv(fields, fields, 3, group), *_norm_act(fields, group),
                                  group_conv(fields, fields, 3, group), *_norm_act(fields, group))

    def forward(self, x):
        return x + self.body(x)


def equivariant_resnet9(group: str, width: int, num_classes: int, in_channels: int, image_size: int,
                        last: str = "C4") -> nn.Sequential:
    """``group`` in the first stages, restricted to its subgroup ``last`` for the last stage."""
    pad = (-image_size) % 8
    w, G = width, group
    split = get_group(group).order // get_group(last).order  # each field becomes this many ``last`` fields
    return nn.Sequential(
        nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2)),
        lifting_conv(in_channels, w, 3, G), *_norm_act(w, G),
        group_conv(w, 2 * w, 3, G), *_norm_act(2 * w, G), nn.MaxPool2d(2),
        GroupResidual(2 * w, G),
        group_conv(2 * w, 4 * w, 3, G), *_norm_act(4 * w, G), nn.MaxPool2d(2),
        Restrict(G, last),
        group_conv(split * 4 * w, 4 * w, 3, last), *_norm_act(4 * w, last), nn.MaxPool2d(2),
        GroupResidual(4 * w, last),
        GroupPool(last), InvariantPool(), nn.Linear(4 * w, num_classes),
    )


# name, group, fields of the first layer, what the registry says (parameter counts as tested)
_RESNETS = (
    ("d4-resnet9", "D4", 8, "Hölzl et al.'s equivariant ResNet-9: D4 stages restricted to C4 in the last stage, "
                            "field GroupNorm, Mish, residual blocks, group pooling; 231,498 parameters on CIFAR-10 "
                            "(invariant to C4)."),
    ("c4-resnet9", "C4", 10, "The equivariant ResNet-9 with C4 throughout (10 fields wide, matching D4's size); "
                             "238,970 parameters on CIFAR-10."),
    ("c8-resnet9", "C8", 8, "The equivariant ResNet-9 with steerable C8 stages restricted to C4 in the last stage; "
                            "203,778 parameters on CIFAR-10 (invariant to C4)."),
)


register_variants(equivariant_resnet9, _RESNETS, family="equivariant", in_channels=3, image_size=32,
                  invariant_to="C4")


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
