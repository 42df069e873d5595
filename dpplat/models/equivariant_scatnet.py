"""A C4-equivariant ScatterNet hybrid: Tramer & Boneh's fixed scattering front end with an equivariant head.

The scattering's wavelets are the turns of one Morlet filter, so a quarter turn of the image turns its
feature maps and moves each orientation channel by L/2 of the L angles in [0, pi); a half turn brings it
back (a wavelet turned by pi gives the same modulus). Each orbit of that cycle is two channels (a, b), and
(a, b, a, b) is a regular field of C4; the order-0 channel, which no turn moves, becomes the constant field
(a, a, a, a). The stem regroups the channels into those fields (41 per input channel with J = 2, L = 8) and
normalises each field on its own (GroupNorm with one field per group, without parameters). The trained part is a
1x1 C4 group convolution to 16 fields (Mish, GroupNorm without parameters) and a linear classifier over the
fields' half-turn pools, which keeps orientation as ``c4-cnn``'s head does. A 3x3 group convolution with a hidden
layer in the head reached 97.55% on MNIST at epsilon 1 at about six times the plain cnn's step time; the 1x1 mix
and the linear classifier reach more at about its step time (``benchmarks/README.md``).

The stem has no parameters, so training computes it once per image (``dpplat.fixed_stem``) and the head's
steps run on 7x7 maps. The model is ``FixedStemClassifier(stem, Sequential(equivariant part, head))``.
"""

from __future__ import annotations

import torch
from torch import nn

from dpplat.models.equivariant import C4, FieldGroupNorm, GroupPool, Restrict, group_conv
from dpplat.models.equivariant_cnn import field_norm
from dpplat.models.registry import register_model
from dpplat.models.scatnet import FixedStemClassifier
from dpplat.models.scattering import Scattering2D


def orientation_fields(scattering: Scattering2D, in_channels: int) -> torch.Tensor:
    """The channel gather that turns the scattering's output into C4 regular fields, field-major.

    ``shift = orientation_shift(1)`` says which channel a quarter turn puts in each place. A field's channel h
    (h quarter turns) is the channel that a quarter turn puts in the place of channel h - 1, so that
    scattering(rot90(x)) is ``rot90`` of the fields with their group axis cycled: C4's regular representation.
    """
    if scattering.L % 4:
        raise ValueError(f"a C4 field needs L divisible by 4 (a quarter turn is L/4 angles), got L={scattering.L}.")
    shift = scattering.orientation_shift(1).tolist()
    before = {target: source for source, target in enumerate(shift)}  # shift[c_h] = c_(h-1)  ->  c_h = before^-1
    per_input = scattering.channels_per_input
    order, seen = [], set()
    for c in range(per_input):
        if c in seen:
            continue
        orbit = [c]
        while len(orbit) < 4 and before[orbit[-1]] != c:
            orbit.append(before[orbit[-1]])
        if len(orbit) not in (1, 2, 4):
            raise ValueError(f"scattering channel {c} has an orbit of {len(orbit)} under quarter turns.")
        seen.update(orbit)
        order += orbit * (4 // len(orbit))  # a shorter orbit repeats: the half turn (or every turn) fixes it
    return torch.tensor([c + i * per_input for i in range(in_channels) for c in order])


class OrientationFields(nn.Module):
    """Scattering channels -> C4 regular fields (a gather; no parameters)."""

    def __init__(self, index: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("index", index, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.index]


def c4_scatnet(fields: int, *, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    scattering = Scattering2D(J=2, L=8, image_size=image_size)
    index = orientation_fields(scattering, in_channels)
    in_fields = len(index) // C4.order
    # one field per GroupNorm group, like Tramer & Boneh's groups of 3 channels
    stem = nn.Sequential(scattering, OrientationFields(index), FieldGroupNorm(in_fields, in_fields, C4, affine=False))
    side = image_size // 4  # the scattering's resolution (J = 2)
    equivariant = nn.Sequential(
        group_conv(in_fields, fields, 1, C4), nn.Mish(), field_norm(fields, "C4"),
    )
    head = nn.Sequential(Restrict(C4, "C2"), GroupPool("C2"), nn.Flatten(),
                         nn.Linear(fields * 2 * side * side, num_classes))
    return FixedStemClassifier(stem, nn.Sequential(equivariant, head))


@register_model(
    "c4-scatnet", family="equivariant", group="C4", invariant_to=None,
    description=("A C4 ScatterNet hybrid: the fixed scattering (J=2, L=8) regrouped into 41 C4 fields per input "
                 "channel, GroupNorm per field, a 1x1 C4 group convolution to 16 fields, Mish, GroupNorm, and a "
                 "linear classifier over the half-turn pools (keeps orientation); 18,330 parameters on MNIST "
                 "(28,378 on CIFAR-10)."),
)
def c4_scatnet_16(*, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    return c4_scatnet(16, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
