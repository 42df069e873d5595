"""Small equivariant classifiers for 28x28 and 32x32 images: Tramer & Boneh's CNN made group-equivariant.

The layout follows the plain ``cnn``: a strided 8x8 lifting convolution and a strided 3x3 group convolution,
each followed by Mish, GroupNorm over whole fields without affine parameters (Hölzl, Rueckert & Kaissis 2023)
and a 2x2 max-pool of stride 1.
An even kernel of stride 2 on an even-sized map, and an odd one on an odd-sized map, sample the grid
symmetrically, so every layer is exactly equivariant; that is why the side must be a multiple of 4.

The head keeps orientation. It pools each field over the half turn only (a 6 is a 9 turned by 180
degrees, but a 6 rotated by 90 degrees is no digit), then flattens fields, the remaining orientations
and positions into an MLP of 32 hidden units with Mish, so the logits are not invariant to the group: the group's
gain is the weight sharing of the body, which divides the parameters DP-SGD must noise. The MLP's width matters more
than the body's: c4-cnn's 4-8 fields with 32 hidden units beat 6-12 fields with 16 under DP.

Every variant has the same channels as c4-cnn (fields times the group's order: 16 after the lifting layer, 32 after
the group layer), so each private step costs about 1.3-1.45 times the cnn's (one thread, batch 2048); D4 and C8 take
2-4 fields, D8 1-2.
"""

from __future__ import annotations

from torch import nn

from dpplat.models.equivariant import FieldGroupNorm, GroupPool, Restrict, get_group, group_conv, lifting_conv
from dpplat.models.registry import register_variants

HIDDEN = 32  # the head's hidden units: the plain cnn's head width


def check_image_size(name: str, image_size: int, *, multiple: int = 4, minimum: int = 12,
                     why: str = "its stride-2 layers break equivariance on other sizes") -> None:
    """Refuse a side the layout cannot take while staying equivariant."""
    if image_size % multiple or image_size < minimum:
        at_least = f" and at least {minimum}" if minimum > multiple else ""
        raise ValueError(f"{name} takes square images whose side is a multiple of {multiple}{at_least} (e.g. 28 or "
                         f"32), got {image_size}: {why}. Pad or crop the images, or choose a plain model such as cnn.")


def field_norm(fields: int, group: str) -> FieldGroupNorm:
    """GroupNorm without parameters over whole fields: two groups of two fields or more, else one group of all."""
    return FieldGroupNorm(2 if fields % 2 == 0 and fields >= 4 else 1, fields, group, affine=False)


def _block(conv: nn.Module, fields: int, group: str) -> list[nn.Module]:
    return [conv, nn.Mish(), field_norm(fields, group), nn.MaxPool2d(2, stride=1)]


def equivariant_cnn(group: str, fields: int, num_classes: int, in_channels: int, image_size: int) -> nn.Sequential:
    """``Sequential(body, head)``: the body maps images to ``group`` feature maps (``fields``, then 2 x ``fields``
    fields); the head pools the half turn and classifies with ``HIDDEN`` units after Mish."""
    check_image_size(f"{group.lower()}-cnn", image_size)
    order = get_group(group).order
    body = nn.Sequential(
        *_block(lifting_conv(in_channels, fields, 8, group, stride=2, padding=3), fields, group),
        *_block(group_conv(fields, 2 * fields, 3, group, stride=2, padding=1), 2 * fields, group),
    )
    side = image_size // 4 - 1
    head = nn.Sequential(
        Restrict(group, "C2"), GroupPool("C2"), nn.Flatten(),
        nn.Linear(2 * fields * (order // 2) * side * side, HIDDEN), nn.Mish(), nn.Linear(HIDDEN, num_classes),
    )
    return nn.Sequential(body, head)


_HEAD = ("Mish, GroupNorm without parameters, a head of 32 hidden units with Mish that keeps orientation (pools the "
         "half turn only)")
# name, group, fields of the first layer (the channels, fields times the group's order, are c4-cnn's in every variant),
# what the registry says (parameter counts as tested). c4-cnn's 4-8 fields and 32 hidden units beat 6-12 fields with
# 16 on MNIST at ε = 1 at 0.6 of the step time, and Mish in its head beats tanh on held-out Fashion-MNIST by 0.6
# points (benchmarks/README.md); the other variants take the same head and channels.
_VARIANTS = (
    ("c4-cnn", "C4", 4, f"C4 CNN in Tramer & Boneh's strided layout, 4-8 fields, {_HEAD}; 20,214 parameters on MNIST."),
    ("d4-cnn", "D4", 2, f"D4 CNN in Tramer & Boneh's strided layout, 2-4 fields, {_HEAD}; 19,504 parameters on MNIST."),
    ("c8-cnn", "C8", 2, f"C8 CNN with steerable filters in Tramer & Boneh's strided layout, 2-4 fields, {_HEAD}; "
                        "19,256 parameters on MNIST (exactly equivariant to its quarter turns, to the others up to "
                        "sampling)."),
    ("d8-cnn", "D8", 1, f"D8 CNN with steerable filters in Tramer & Boneh's strided layout, 1-2 fields, {_HEAD}; "
                        "19,025 parameters on MNIST (exactly equivariant to its quarter turns and flips, to the "
                        "others up to sampling)."),
)


register_variants(equivariant_cnn, _VARIANTS, family="equivariant", in_channels=1, image_size=28, invariant_to=None)
