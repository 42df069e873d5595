"""A fixed 2-D scattering transform (Mallat; Bruna & Mallat 2013), the front end of Tramer & Boneh's ScatterNets.

Why it suits DP-SGD: the features are computed, not learned, so no privacy budget is spent on them,
and they are stable to small deformations, which is what a small private head needs. The wavelets
are the rotations of one Morlet filter, so the transform is equivariant: a quarter turn of the input
turns the feature maps and cycles the orientation channels by L/4 positions of the L angles in [0, pi)
(a Morlet filter turned by pi gives the same modulus).

Layout follows Kymatio's ``Scattering2D`` (J scales, L angles, Morlet filters built in Fourier and
periodised, orders 0, 1, 2 stacked along channels: 1 + J L + L^2 J (J - 1) / 2 per input channel).
Two choices differ, both for exact equivariance on the pixel grid: every convolution runs at full
resolution on the reflect-padded image (no intermediate subsampling), and the final 2^J downsampling
is an average over 2^J x 2^J blocks of the unpadded support, whose block grid is symmetric under
quarter turns and flips (a point subsampling grid is not).

Kymatio itself is not a dependency: its 0.3 release imports ``scipy.special.sph_harm``, which current
SciPy removed, so ``import kymatio.torch`` fails here.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _gabor(size: tuple[int, int], sigma: float, theta: float, xi: float, slant: float) -> np.ndarray:
    """A Gabor filter g_sigma(u) exp(i xi . u), periodised over 5 x 5 copies of the grid (spatial domain)."""
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    curvature = rot @ np.diag([1.0, slant * slant]) @ rot.T / (2 * sigma * sigma)
    m, n = size
    out = np.zeros(size, dtype=np.complex128)
    for ex in range(-2, 3):
        for ey in range(-2, 3):
            xx, yy = np.mgrid[ex * m:(ex + 1) * m, ey * n:(ey + 1) * n].astype(np.float64)
            quadratic = curvature[0, 0] * xx * xx + 2 * curvature[0, 1] * xx * yy + curvature[1, 1] * yy * yy
            out += np.exp(-quadratic + 1j * xi * (xx * math.cos(theta) + yy * math.sin(theta)))
    return out / (2 * math.pi * sigma * sigma / slant)


def morlet_filter_bank(size: tuple[int, int], J: int, L: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The Fourier transforms of the J x L Morlet wavelets (scale j, angle l) and of the low-pass filter.

    A Morlet wavelet is a Gabor filter minus its Gaussian envelope scaled to give it zero mean, so it
    responds to oscillations, not to brightness. Its spatial filter is Hermitian, so its Fourier
    transform is real: the bank is real, of shape (J * L, H, W), and the low-pass filter (H, W).
    """
    if J < 1 or L < 2 or L % 2:
        raise ValueError(f"the scattering needs J >= 1 and an even L >= 2, got J={J}, L={L}.")
    wavelets = []
    for j in range(J):
        for l in range(L):
            theta = (L // 2 - 1 - l) * math.pi / L
            sigma, xi, slant = 0.8 * 2 ** j, 0.75 * math.pi / 2 ** j, 4.0 / L
            wave = _gabor(size, sigma, theta, xi, slant)
            envelope = _gabor(size, sigma, theta, 0.0, slant)
            wavelets.append(np.fft.fft2(wave - wave.sum() / envelope.sum() * envelope).real)
    low_pass = np.fft.fft2(_gabor(size, 0.8 * 2 ** (J - 1), 0.0, 0.0, 1.0)).real
    return torch.from_numpy(np.stack(wavelets)), torch.from_numpy(low_pass)


class Scattering2D(nn.Module):
    """Order-2 scattering of (N, C, H, W) images into (N, C * K, H / 2^J, W / 2^J), K = 1 + J L + L^2 J (J-1) / 2.

    Channels, per input channel: the low-passed image; then |x * psi_{j,l}| * phi for each (j, l);
    then ||x * psi_{j1,l1}| * psi_{j2,l2}| * phi for j1 < j2, ordered (j1, j2, l1, l2). No parameters:
    the engine trains what follows it, and training computes it once per image (``fixed_stem``).
    """

    def __init__(self, J: int = 2, L: int = 8, image_size: int = 28, chunk: int = 256):
        super().__init__()
        if image_size % 2 ** J:
            raise ValueError(f"the scattering with J={J} needs an image size divisible by {2 ** J}, got {image_size}.")
        if 2 ** J >= image_size:
            raise ValueError(f"J={J} is too coarse for {image_size}-pixel images: 2^J must be below the image size.")
        self.J, self.L, self.image_size, self.chunk = J, L, image_size, chunk
        padded = image_size + 2 * 2 ** J
        wavelets, low_pass = morlet_filter_bank((padded, padded), J, L)
        self.register_buffer("wavelets", wavelets, persistent=False)
        self.register_buffer("low_pass", low_pass, persistent=False)

    @property
    def channels_per_input(self) -> int:
        return 1 + self.J * self.L + self.L * self.L * self.J * (self.J - 1) // 2

    def orientation_shift(self, quarter_turns: int) -> torch.Tensor:
        """The channel permutation P with scatter(rot90(x, k)) = rot90(scatter(x), k)[:, P] for one input channel."""
        L, J, shift = self.L, self.J, (quarter_turns * self.L // 2) % self.L
        first = [(j, (l + shift) % L) for j in range(J) for l in range(L)]
        index = [0] + [1 + j * L + l for j, l in first]
        pairs = [(j1, l1, j2, l2) for j1 in range(J) for j2 in range(j1 + 1, J) for l1 in range(L) for l2 in range(L)]
        position = {p: 1 + J * L + i for i, p in enumerate(pairs)}
        index += [position[(j1, (l1 + shift) % L, j2, (l2 + shift) % L)] for j1, l1, j2, l2 in pairs]
        return torch.tensor(index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"Scattering2D expects (N, C, {self.image_size}, {self.image_size}) images, got "
                             f"{tuple(x.shape)}; build it with image_size={x.shape[-1]} for these.")
        n, c = x.shape[:2]
        planes = x.reshape(n * c, self.image_size, self.image_size)
        out = torch.cat([self._scatter(planes[i:i + self.chunk]) for i in range(0, n * c, self.chunk)])
        return out.reshape(n, c * self.channels_per_input, *out.shape[-2:])

    def _scatter(self, planes: torch.Tensor) -> torch.Tensor:
        J, L, pad = self.J, self.L, 2 ** self.J
        wavelets = self.wavelets.to(planes.dtype)
        low_pass = self.low_pass.to(planes.dtype)
        padded = F.pad(planes[:, None], (pad, pad, pad, pad), mode="reflect")[:, 0]
        spectrum = torch.fft.fft2(padded)
        first = torch.fft.ifft2(spectrum[:, None] * wavelets).abs()  # (B, J*L, H', W')
        first_spectrum = torch.fft.fft2(first)
        maps = [padded[:, None], first]
        for j1 in range(J):
            for j2 in range(j1 + 1, J):
                source = first_spectrum[:, j1 * L:(j1 + 1) * L, None]  # (B, L, 1, H', W')
                maps.append(torch.fft.ifft2(source * wavelets[j2 * L:(j2 + 1) * L]).abs().flatten(1, 2))
        # the maps are real and phi is real and even: the half spectrum of rfft2 is enough
        half = low_pass[..., : low_pass.shape[-1] // 2 + 1]
        maps = torch.cat(maps, 1)
        smooth = torch.fft.irfft2(torch.fft.rfft2(maps) * half, s=maps.shape[-2:])[..., pad:-pad, pad:-pad]
        return F.avg_pool2d(smooth, 2 ** J)
