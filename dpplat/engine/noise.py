"""Gaussian noise for DP-SGD, from torch's generator or from the operating system's CSPRNG.

``secure_mode=True`` does not use torchcsprng, which is unmaintained. It draws
the uniform bits from ``os.urandom`` (the kernel's CSPRNG: getrandom(2) on Linux),
turns them into normals with the Box-Muller transform in float64, and, like Opacus's
secure mode, sums two independent draws of standard deviation ``std / sqrt(2)`` to
blunt floating-point attacks on the Gaussian's low bits (Holohan & Braghin 2021).
It is slower than torch's generator, which is why it is opt-in.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch


def secure_uniform(n: int) -> np.ndarray:
    """``n`` float64 values uniform on (0, 1], from 53 random bits each of ``os.urandom``."""
    bits = np.frombuffer(os.urandom(8 * n), dtype=np.uint64)
    return ((bits >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53


def _secure_standard_normal(n: int) -> np.ndarray:
    half = (n + 1) // 2
    u1, u2 = secure_uniform(half), secure_uniform(half)
    radius = np.sqrt(-2.0 * np.log(u1))
    z = np.concatenate([radius * np.cos(2 * math.pi * u2), radius * np.sin(2 * math.pi * u2)])
    return z[:n]


def gaussian_noise(
    like: torch.Tensor, std: float, *, secure: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """N(0, std^2) noise with ``like``'s shape, dtype and device."""
    if std == 0:
        return torch.zeros_like(like)
    if not secure:
        return torch.normal(0.0, std, like.shape, generator=generator, dtype=like.dtype, device=like.device)
    n = like.numel()
    z = (_secure_standard_normal(n) + _secure_standard_normal(n)) * (std / math.sqrt(2.0))
    return torch.from_numpy(z).to(dtype=like.dtype, device=like.device).view_as(like)


_CHUNK = 1 << 20


def add_gaussian_noise_(
    tensor: torch.Tensor, std: float, *, secure: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Add N(0, std^2) noise to ``tensor`` in place.

    Torch's generator fills a reused buffer of at most 2^20 values at a time, so the
    noise for a large parameter never needs a second parameter-sized tensor (and its
    page faults) in memory. A bf16 or fp16 tensor gets its noise added to a float32 copy,
    cast back once, so the noise is not first rounded to the low precision's few bits.
    """
    if std == 0:
        return tensor
    if tensor.dtype in (torch.float16, torch.bfloat16):
        return tensor.copy_(add_gaussian_noise_(tensor.float(), std, secure=secure, generator=generator))
    if secure or not tensor.is_contiguous():
        return tensor.add_(gaussian_noise(tensor, std, secure=secure, generator=generator))
    flat = tensor.view(-1)
    buffer = torch.empty(min(_CHUNK, flat.numel()), dtype=tensor.dtype, device=tensor.device)
    for start in range(0, flat.numel(), _CHUNK):
        part = flat[start : start + _CHUNK]
        noise = buffer[: part.numel()]
        noise.normal_(0.0, std, generator=generator)
        part.add_(noise)
    return tensor
