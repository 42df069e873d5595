"""Tramer & Boneh's (2021) ScatterNets: a fixed scattering front end and a small private head.

Why they belong in the zoo: DP-SGD's noise grows with the number of trained parameters, and
handcrafted, rotation-equivariant wavelet features let a linear head reach what an end-to-end CNN
needs many more private steps for (the zoo's MNIST, Fashion-MNIST and CIFAR-10
accuracy goals are met by these models). The head trains under the engine like any other model; the stem has no parameters, so
training computes it once per image instead of once per step (``dpplat.training``).
"""

from __future__ import annotations

import torch
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


class DataNorm(nn.Module):
    """Standardise each channel with statistics of the whole training set (Tramer & Boneh's frozen "BN").

    Unlike GroupNorm, the statistics come from other images, so they are released privately before
    training (``dpplat.engine.statistics``) and their cost is composed in the accountant; they are
    buffers, saved with the head. Until then (a fresh model) the layer is the identity. A channel whose
    released variance is zero is dropped (set to 0), as in the reference code.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("var", torch.ones(channels))

    def set_statistics(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        if mean.shape != self.mean.shape or var.shape != self.var.shape:
            raise ValueError(f"DataNorm over {len(self.mean)} channels got statistics of shapes "
                             f"{tuple(mean.shape)} and {tuple(var.shape)}.")
        self.mean.copy_(mean)
        self.var.copy_(var.clamp(min=0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        scale = torch.where(self.var > 0, (self.var + self.eps).rsqrt(), torch.zeros_like(self.var))
        return (x - self.mean.view(shape)) * scale.view(shape)


class DataCentering(nn.Module):
    """Subtract the training set's mean feature vector: Sun, Suresh & Menon's (2024) DPSGD-F preprocessing.

    Why: DP-SGD clips each example's gradient, which for a linear head is the feature vector times
    the error, so a large mean shared by all features (after GroupNorm, scattering features keep about
    a quarter of their squared norm in it) fills the clipped gradient with a direction the bias already
    covers, and the noise is scaled to the features' norm rather than their spread. The mean reads
    every training image, so it is released privately before training (``dpplat.engine.statistics``)
    and composed in the accountant; it is a buffer, saved with the head. ``clip`` bounds each
    example's norm in that release: after GroupNorm without affine parameters no example can exceed
    ``sqrt(numel)``, so that bound is public and clips nothing. Until the release, the identity.
    """

    def __init__(self, shape: tuple[int, ...], clip: float | None = None):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape))
        self.clip = float(clip) if clip is not None else float(self.mean.numel()) ** 0.5

    def set_mean(self, mean: torch.Tensor) -> None:
        if mean.shape != self.mean.shape:
            raise ValueError(f"DataCentering over features of shape {tuple(self.mean.shape)} got a mean of shape "
                             f"{tuple(mean.shape)}.")
        self.mean.copy_(mean)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.mean


NORMS = ("group", "data", "group-centered")


def scattering_stem(in_channels: int, image_size: int, J: int = 2, L: int = 8,
                    norm: str = "group") -> tuple[nn.Module, list[nn.Module], int, int]:
    """The fixed stem and the head's first layer: the two places a normalisation can go.

    ``norm="group"``: GroupNorm without affine parameters over groups of channels (Tramer & Boneh use 27
    groups) ends the stem: a per-image normalisation, so it reads no other image and leaks nothing.
    ``norm="data"``: the stem is the scattering alone and the head starts with ``DataNorm``, whose
    statistics are released privately and saved with the head.
    ``norm="group-centered"``: the GroupNorm stem, and the head starts with ``DataCentering``, whose
    mean is released privately and saved with the head.

    Returns the stem, the head's first layers (``[DataNorm]``, ``[DataCentering]`` or none), the channels
    and the output side (the image side over 2^J).
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}.")
    scattering = Scattering2D(J=J, L=L, image_size=image_size)
    channels = in_channels * scattering.channels_per_input
    side = image_size // 2 ** J
    if norm == "data":
        return scattering, [DataNorm(channels)], channels, side
    groups = 27 if channels % 27 == 0 else 1
    stem = nn.Sequential(scattering, nn.GroupNorm(groups, channels, affine=False))
    if norm == "group-centered":
        return stem, [DataCentering((channels, side, side))], channels, side
    return stem, [], channels, side


def _linear(num_classes: int, in_channels: int, image_size: int, norm: str) -> nn.Module:
    stem, head_norm, channels, side = scattering_stem(in_channels, image_size, norm=norm)
    head = nn.Sequential(*head_norm, nn.Flatten(), nn.Linear(channels * side * side, num_classes))
    return FixedStemClassifier(stem, head)


def _cnn(num_classes: int, in_channels: int, image_size: int, norm: str) -> nn.Module:
    stem, head_norm, channels, side = scattering_stem(in_channels, image_size, norm=norm)
    width = 32 if in_channels == 1 else 64
    side = side // 2 // 2  # two max-pools
    head = nn.Sequential(
        *head_norm,
        nn.Conv2d(channels, width, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2),
        nn.Conv2d(width, width, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(width * side * side, num_classes),
    )
    return FixedStemClassifier(stem, head)


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
    return _linear(num_classes, in_channels, image_size, "group")


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
    return _cnn(num_classes, in_channels, image_size, "group")


@register_model(
    "scatnet-linear-datanorm",
    family="scattering",
    description=(
        "scatnet-linear with Tramer & Boneh's data normalisation instead of GroupNorm: per-channel mean and "
        "variance of the training set's scattering features, released privately before training and "
        "composed in the accountant (39,700 parameters on 28x28 grey images, 155,530 on 32x32 colour)."
    ),
)
def scatnet_linear_datanorm(*, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    return _linear(num_classes, in_channels, image_size, "data")


@register_model(
    "scatnet-linear-centered",
    family="scattering",
    description=(
        "scatnet-linear with its GroupNorm features centred by the training set's mean feature vector, released "
        "privately before training and composed in the accountant (Sun, Suresh & Menon 2024's DPSGD-F; 39,700 "
        "parameters on 28x28 grey images, 155,530 on 32x32 colour)."
    ),
)
def scatnet_linear_centered(*, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    return _linear(num_classes, in_channels, image_size, "group-centered")


@register_model(
    "scatnet-cnn-datanorm",
    family="scattering",
    description=(
        "scatnet-cnn with Tramer & Boneh's data normalisation (their CIFAR-10 choice) instead of GroupNorm: "
        "privately released per-channel statistics, composed in the accountant (32,938 parameters on 28x28 "
        "grey images, 179,530 on 32x32 colour)."
    ),
)
def scatnet_cnn_datanorm(*, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    return _cnn(num_classes, in_channels, image_size, "data")
