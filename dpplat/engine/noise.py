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
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from dpplat.engine.fused import LOW_PRECISION


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
    if tensor.dtype in LOW_PRECISION:
        return tensor.copy_(add_gaussian_noise_(tensor.float(), std, secure=secure, generator=generator))
    if secure or not tensor.is_contiguous():
        return tensor.add_(gaussian_noise(tensor, std, secure=secure, generator=generator))
    flat = tensor.view(-1)
    buffer = torch.empty(min(_CHUNK, flat.numel()), dtype=tensor.dtype, device=tensor.device)
    for start in range(0, flat.numel(), _CHUNK):
        _add_block_noise_(flat[start : start + _CHUNK], buffer, std, generator)
    return tensor


def _add_block_noise_(part: torch.Tensor, buffer: torch.Tensor, std: float, generator: torch.Generator | None) -> None:
    """Add N(0, std^2) noise to the flat ``part`` through ``buffer`` (at least ``part``'s size)."""
    noise = buffer[: part.numel()]
    noise.normal_(0.0, std, generator=generator)
    part.add_(noise)


_PARALLEL_MIN = 1 << 22  # from this many values on the CPU, the noise is drawn block by block on several threads


def add_gaussian_noise_all_(
    tensors: list[torch.Tensor], std: float, *, secure: bool = False, generator: torch.Generator | None = None
) -> None:
    """Add independent N(0, std^2) noise to every tensor of ``tensors`` in place.

    Torch's CPU generator draws on one thread, which makes the noise for a model of tens of
    millions of parameters a visible share of a step. From ``_PARALLEL_MIN`` values of contiguous
    CPU float tensors on, each block of ``_CHUNK`` values gets its own generator, seeded from
    ``generator`` with a 63-bit seed drawn in order, and the blocks are drawn on
    ``torch.get_num_threads()`` threads. Which thread draws a block does not change its values,
    so the noise depends on the generator's state, never on the thread count. Secure noise, GPU
    tensors and small models take :func:`add_gaussian_noise_` tensor by tensor.
    """
    blocks = _parallel_blocks(tensors, secure) if std else None
    if blocks is None:
        for tensor in tensors:
            add_gaussian_noise_(tensor, std, secure=secure, generator=generator)
        return
    seeds = torch.randint(0, 2**63 - 1, (len(blocks),), generator=generator).tolist()
    local = threading.local()  # one reused buffer per thread and dtype

    def draw(index: int) -> None:
        part = blocks[index]
        if not hasattr(local, "buffers"):
            local.buffers = {}
        if part.dtype not in local.buffers:
            local.buffers[part.dtype] = torch.empty(_CHUNK, dtype=part.dtype)
        _add_block_noise_(part, local.buffers[part.dtype], std, torch.Generator().manual_seed(seeds[index]))

    # Blocks go to whichever thread is free, largest first, so a model's big weights do not all land on one thread.
    order = sorted(range(len(blocks)), key=lambda index: -blocks[index].numel())
    threads = min(torch.get_num_threads(), len(blocks))
    if threads <= 1:
        for index in order:
            draw(index)
        return
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(draw, order))


def _parallel_blocks(tensors: list[torch.Tensor], secure: bool) -> list[torch.Tensor] | None:
    """The ``_CHUNK``-sized flat views the parallel draw fills, or None where it does not apply."""
    if secure or sum(t.numel() for t in tensors) < _PARALLEL_MIN:
        return None
    if any(t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64) or not t.is_contiguous()
           for t in tensors):
        return None
    return [t.view(-1)[start : start + _CHUNK] for t in tensors for start in range(0, t.numel(), _CHUNK)]
