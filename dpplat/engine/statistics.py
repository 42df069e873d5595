"""Private statistics of a dataset's features: the Gaussian mechanisms that data normalisation and centring need.

Tramer & Boneh (2021) standardise ScatterNet features with the training set's per-channel mean
and variance. Those read every training image, so they are released with the Gaussian mechanism:
each example's vector of channel means (over positions) and its vector of channel mean squares are
clipped to L2 norm ``clip``, summed, and each sum gets N(0, (noise_multiplier * clip)^2) noise.
Adding or removing one example moves each sum by at most ``clip``, so the release is two Gaussian
mechanisms at ``noise_multiplier`` over the whole dataset (sample rate 1), which is what
``accountant_entry`` says to the accountant; the DP-SGD noise is then calibrated to what is left.
Dividing by the dataset size follows Opacus and the reference code (N is treated as public).

Unlike the reference code, ``clip`` is a fixed public bound, not the median of the private norms.

``private_mean`` releases the mean feature vector itself, coordinate by coordinate, for Sun, Suresh &
Menon's (2024) DPSGD-F: centring the features before a private linear head, since DP-SGD's error grows
with the features' distance from the origin, not with their spread.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dpplat.engine.noise import gaussian_noise


@dataclass(frozen=True)
class ChannelMoments:
    mean: torch.Tensor
    var: torch.Tensor
    noise_multiplier: float
    clip: float

    def accountant_entry(self) -> tuple[float, float, int]:
        """(noise multiplier, sample rate, count) as Opacus's accountants keep their history."""
        return (self.noise_multiplier, 1.0, 2)


@dataclass(frozen=True)
class ReleasedMean:
    mean: torch.Tensor
    noise_multiplier: float
    clip: float

    def accountant_entry(self) -> tuple[float, float, int]:
        """One Gaussian mechanism over the whole dataset."""
        return (self.noise_multiplier, 1.0, 1)


def _check_release(features: torch.Tensor, noise_multiplier: float, clip: float, least_dim: int) -> None:
    if features.dim() < least_dim or len(features) == 0:
        shape = "(N, C, ...)" if least_dim > 1 else "(N, ...)"
        raise ValueError(f"features must be {shape} with N >= 1, got shape {tuple(features.shape)}.")
    if not noise_multiplier > 0:
        raise ValueError(f"noise_multiplier must be > 0 for a private release, got {noise_multiplier}.")
    if not clip > 0:
        raise ValueError(f"clip must be > 0, got {clip}.")


def _clipped_sum(vectors: torch.Tensor, clip: float) -> torch.Tensor:
    norms = vectors.norm(dim=1, keepdim=True)
    return (vectors * (clip / norms.clamp(min=1e-12)).clamp(max=1.0)).sum(0)


@torch.no_grad()
def private_channel_moments(features: torch.Tensor, *, noise_multiplier: float, clip: float,
                            secure: bool = False, generator: torch.Generator | None = None,
                            chunk: int = 4096) -> ChannelMoments:
    """Per-channel mean and variance of ``features`` (N, C, ...) over examples and positions, released privately."""
    _check_release(features, noise_multiplier, clip, least_dim=2)
    channels = features.shape[1]
    sums = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for part in features.split(chunk):  # (N, C, H, W) of CIFAR-10 features is 3 GB: no second copy of it
        flat = part.reshape(len(part), channels, -1).double()
        sums += _clipped_sum(flat.mean(2), clip)
        squares += _clipped_sum((flat ** 2).mean(2), clip)
    std = noise_multiplier * clip
    sums += gaussian_noise(sums, std, secure=secure, generator=generator)
    squares += gaussian_noise(squares, std, secure=secure, generator=generator)
    mean, second = sums / len(features), squares / len(features)
    var = (second - mean ** 2).clamp(min=0)
    return ChannelMoments(mean.to(features.dtype), var.to(features.dtype), noise_multiplier, clip)


@torch.no_grad()
def private_mean(features: torch.Tensor, *, noise_multiplier: float, clip: float, secure: bool = False,
                 generator: torch.Generator | None = None, chunk: int = 4096) -> ReleasedMean:
    """The mean of ``features`` (N, ...) over examples, each example clipped to L2 norm ``clip`` as one vector, plus
    N(0, (noise_multiplier * clip)^2) noise on each coordinate of the sum: one Gaussian mechanism."""
    _check_release(features, noise_multiplier, clip, least_dim=1)
    total = torch.zeros(features[0].numel(), dtype=torch.float64)
    for part in features.split(chunk):
        total += _clipped_sum(part.reshape(len(part), -1).double(), clip)
    total += gaussian_noise(total, noise_multiplier * clip, secure=secure, generator=generator)
    mean = (total / len(features)).view(features.shape[1:])
    return ReleasedMean(mean.to(features.dtype), noise_multiplier, clip)
