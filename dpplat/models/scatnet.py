"""Tramer & Boneh's (2021) ScatterNets: a fixed scattering front end and a small private head.

Why they belong in the zoo: DP-SGD's noise grows with the number of trained parameters, and
handcrafted, rotation-equivariant wavelet features let a linear head reach what an end-to-end CNN
needs many more private steps for (their MNIST/Fashion-MNIST/CIFAR-10 anchors in issue 3 are these
models). The head trains under the engine like any other model; the stem has no parameters, so
training computes it once per image instead of once per step (``dpplat.training``).
"""

from __future__ import annotations

from torch import nn

from dpplat.models.registry import register_model
from dpplat.models.scattering import Scattering2D


class FixedStemClassifier(nn.Module):
    """``head(stem(x))`` where ``stem`` has no parameters and is deterministic, so its output can be cached."""

    def __init__(self, stem: nn.Module, head: nn.Module):
        super().__init__()
        if any(True for _ in stem.parameters()):
            raise ValueError("a fixed stem must have no parameters: put trainable layers in the head.")
        self.stem, self.head = stem, head

    def forward(self, x):
        return self.head(self.stem(x))


def scattering_stem(in_channels: int, image_size: int, J: int = 2, L: int = 8) -> tuple[nn.Module, int, int]:
    """Scattering, then GroupNorm without affine parameters over groups of channels (Tramer & Boneh use 27
    groups): a per-image normalisation, so it reads no other image and leaks nothing.

    Returns the stem, its output channels and its output side (the image side over 2^J).
    """
    scattering = Scattering2D(J=J, L=L, image_size=image_size)
    channels = in_channels * scattering.channels_per_input
    groups = 27 if channels % 27 == 0 else 1
    return nn.Sequential(scattering, nn.GroupNorm(groups, channels, affine=False)), channels, image_size // 2 ** J


@register_model(
    "scatnet-linear",
    family="scattering",
    description=(
        "Tramer & Boneh's ScatterNet+linear: a fixed scattering transform (J=2, L=8 Morlet wavelets, 81 "
        "channels per input channel at 1/4 resolution), GroupNorm, one linear layer (39,700 parameters "
        "on 28x28 grey images, 155,530 on 32x32 colour)."
    ),
)
def scatnet_linear(*, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    stem, channels, side = scattering_stem(in_channels, image_size)
    return FixedStemClassifier(stem, nn.Sequential(nn.Flatten(), nn.Linear(channels * side * side, num_classes)))


@register_model(
    "scatnet-cnn",
    family="scattering",
    description=(
        "Tramer & Boneh's ScatterNet+CNN: the fixed scattering front end, then conv 3x3, tanh, max-pool twice "
        "(32 channels for grey images, 64 for colour) and a linear layer (32,938 parameters on 28x28 grey "
        "images, 179,530 on 32x32 colour)."
    ),
)
def scatnet_cnn(*, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    stem, channels, side = scattering_stem(in_channels, image_size)
    width = 32 if in_channels == 1 else 64
    side = side // 2 // 2  # two max-pools
    head = nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2),
        nn.Conv2d(width, width, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(width * side * side, num_classes),
    )
    return FixedStemClassifier(stem, head)
