"""QEBA (Li et al. 2020): HopSkipJump with gradient-estimation directions in a low-frequency DCT subspace.

Directions are random coefficients on the lowest ``1/ratio`` of frequencies in each
axis, mapped to pixels by the orthonormal inverse 2-D DCT; in that smaller subspace
the boundary's normal is estimated from fewer queries. Everything else, OARS form
included, is HopSkipJump's, except the tile: the subspace already makes the directions coarse,
so QEBA takes no ``tile`` and stage 1 measures its one set of directions.

``ratio=2`` (half the frequencies in each axis: 16x16 of 32x32 on CIFAR-10) rather than 4: on
CIFAR-10 at an L2 budget of 0.05 * sqrt(d), undefended, ratio 4 lost 2 of 8 images (they ended at
0.059 and 0.055, the minimal perturbation within that subspace lying outside the budget) and ratio 2
won all 8, most in fewer queries (``benchmarks/results/oars-cifar10-cpu-qeba-ratio2.md``).
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
    def __init__(self, *, ratio: int = 2, **params) -> None:
        given = sorted({"tile", "auto_tiles", "coarsen_above"} & params.keys())
        if given:
            raise ValueError(f"QEBA draws its directions in a low-frequency DCT subspace and has no tiles: drop "
                             f"{', '.join(given)} (set the subspace with ratio=) or use hsja for tiled directions.")
        super().__init__(tile=1, **params)
        if ratio < 1:
            raise ValueError(f"ratio must be at least 1, got {ratio}.")
        self.ratio = ratio

    def directions(self, n: int, shape, generator: torch.Generator) -> torch.Tensor:
        return unit(low_frequency(n, shape, self.ratio, generator))
