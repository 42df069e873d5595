"""Plain (non-equivariant) baselines, trained the same way as the zoo's equivariant models."""

from __future__ import annotations

import torch
from torch import nn

from dpplat.models.registry import register_model


def _flat_size(features: nn.Module, in_channels: int, image_size: int) -> int:
    with torch.no_grad():
        return features(torch.zeros(1, in_channels, image_size, image_size)).numel()


@register_model("mlp", family="plain", description="Two hidden layers of 256 units, tanh (a quick baseline).")
def mlp(*, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    d = in_channels * image_size * image_size
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, num_classes))


@register_model(
    "cnn",
    family="plain",
    description=(
        "Tramer & Boneh (2021) end-to-end CNN with tanh, as in Opacus's MNIST/CIFAR-10 examples: "
        "for 28x28 inputs conv 16@8x8/2, pool, conv 32@4x4/2, pool, fc 32 (about 26k parameters); "
        "for 32x32 inputs conv 32-32-M-64-64-M-128-128-M, fc 128 (about 550k parameters)."
    ),
)
def cnn(*, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    if image_size <= 28:
        features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 8, stride=2, padding=3), nn.Tanh(), nn.MaxPool2d(2, 1),
            nn.Conv2d(16, 32, 4, stride=2), nn.Tanh(), nn.MaxPool2d(2, 1), nn.Flatten(),
        )
        hidden = 32
    else:
        layers: list[nn.Module] = []
        channels = in_channels
        for width in (32, 64, 128):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.Tanh(), nn.Conv2d(width, width, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2)]
            channels = width
        features = nn.Sequential(*layers, nn.Flatten())
        hidden = 128
    flat = _flat_size(features, in_channels, image_size)
    return nn.Sequential(features, nn.Linear(flat, hidden), nn.Tanh(), nn.Linear(hidden, num_classes))
