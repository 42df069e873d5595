"""QEBA (Li et al. 2020): HopSkipJump with gradient-estimation directions in a low-frequency DCT subspace.

Directions are random coefficients on the lowest ``1/ratio`` of frequencies in each
axis, mapped to pixels by the orthonormal inverse 2-D DCT; in that smaller subspace
the boundary's normal is estimated from fewer queries. Everything else, OARS form
included, is HopSkipJump's.
"""

from __future__ import annotations

import math

import torch

from dpplat.audits.attacks.base import register_attack, unit
from dpplat.audits.attacks.hsja import HopSkipJump


def dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix: row k is the k-th cosine basis vector."""
    k = torch.arange(n, dtype=torch.float64).view(-1, 1)
    i = torch.arange(n, dtype=torch.float64).view(1, -1)
    m = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m.float()


def low_frequency(n: int, shape, ratio: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` random images (C, H, W) spanned by the lowest H/ratio x W/ratio DCT frequencies."""
    c, h, w = shape
    rows, cols = dct_matrix(h)[:max(1, h // ratio)], dct_matrix(w)[:max(1, w // ratio)]
    coefficients = torch.randn((n, c, len(rows), len(cols)), generator=generator)
    return rows.T @ coefficients @ cols


@register_attack("qeba")
class QEBA(HopSkipJump):
    def __init__(self, *, ratio: int = 4, **params) -> None:
        super().__init__(**params)
        if ratio < 1:
            raise ValueError(f"ratio must be at least 1, got {ratio}.")
        self.ratio = ratio

    def directions(self, n: int, shape, generator: torch.Generator) -> torch.Tensor:
        return unit(low_frequency(n, shape, self.ratio, generator))
