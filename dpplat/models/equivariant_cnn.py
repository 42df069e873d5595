"""Equivariant CNNs for the zoo (Hölzl, Rueckert & Kaissis 2023): a lifting layer, group convolutions,
field-wise GroupNorm and Mish, then group pooling and an orbit-averaged linear head, so logits are invariant.

The head: global average pooling made the first version learn slowly (27% MNIST test accuracy after one
non-private epoch on 10k images, against 95% for the plain CNN); averaging the map over the group and
keeping its position (``OrbitPool``) gave 89% in the same run with a flatten head."""

from __future__ import annotations

from torch import nn

from dpplat.models.equivariant import FieldGroupNorm, GroupPool, OrbitPool, group_conv, lifting_conv
from dpplat.models.registry import register_variants


def equivariant_cnn(group: str, width: int, num_classes: int, in_channels: int, image_size: int) -> nn.Sequential:
    def block(conv, fields):
        return [conv, FieldGroupNorm(min(4, fields), fields, group), nn.Mish()]

    return nn.Sequential(
        *block(lifting_conv(in_channels, width, 3, group), width),
        *block(group_conv(width, width, 3, group), width), nn.MaxPool2d(2),
        *block(group_conv(width, 2 * width, 3, group), 2 * width),
        *block(group_conv(2 * width, 2 * width, 3, group), 2 * width), nn.MaxPool2d(2),
        GroupPool(group), OrbitPool(group), nn.Flatten(),
        nn.Linear(2 * width * ((image_size // 4 + 1) // 2) ** 2, num_classes),
    )


# name, group, fields of the first layer, what the registry says (parameter counts as tested)
_VARIANTS = (
    ("c4-cnn", "C4", 8, "C4 group CNN, 4 group-conv layers of 8-8-16-16 fields, Mish, field GroupNorm, "
                        "an orbit-averaged linear head; 18,914 parameters on MNIST."),
    ("d4-cnn", "D4", 8, "D4 group CNN, 4 group-conv layers of 8-8-16-16 fields, Mish, field GroupNorm, "
                        "an orbit-averaged linear head; 35,042 parameters on MNIST."),
    ("c8-cnn", "C8", 4, "C8 group CNN with steerable 3x3 filters, 4 layers of 4-4-8-8 fields (the channels of "
                        "c4-cnn), Mish, field GroupNorm, an orbit-averaged head; 6,762 parameters on MNIST "
                        "(invariant to C4, equivariant to C8 up to sampling)."),
    ("d8-cnn", "D8", 4, "D8 group CNN with steerable 3x3 filters, 4 layers of 4-4-8-8 fields (the channels of "
                        "d4-cnn), Mish, field GroupNorm, an orbit-averaged head; 12,138 parameters on MNIST "
                        "(invariant to D4, equivariant to D8 up to sampling)."),
)


register_variants(equivariant_cnn, _VARIANTS, family="equivariant", in_channels=1, image_size=28)
