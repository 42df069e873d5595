"""Clip-and-sum over chunks of instantiated per-sample gradients (per-layer clipping, fused).

A rule hands over the per-sample gradients of its large parameter (the weight) one
chunk of samples at a time, and the per-sample gradients of its small parameters
(a bias: N x out) whole. Each chunk's norms, clip factors and weighted sum are formed
while the chunk exists, so the layer's clipped gradient costs one instantiation and
no second weight-gradient pass, and at most one chunk is alive at a time.
"""

from __future__ import annotations

from typing import Iterable

import torch

from dpplat.engine.rules.registry import clip_factors


def norm_sq_from_chunks(
    chunks: Iterable[tuple[slice, torch.Tensor]], small: dict[str, torch.Tensor], num_samples: int, like: torch.Tensor
) -> torch.Tensor:
    total = like.new_zeros(num_samples)
    for rows, per_sample in chunks:
        total[rows] += row_norm_sq(per_sample)
    for per_sample in small.values():
        total += row_norm_sq(per_sample)
    return total


# A float32 sum along one long row loses accuracy with the row's length (about 1e-5 relative over 800,000 values,
# enough to let a clipped gradient exceed its bound by as much); longer rows are reduced in two levels.
LONG_ROW = 1 << 16


def row_norm_sq(per_sample: torch.Tensor) -> torch.Tensor:
    """Each sample's squared norm, without a squared copy of the chunk (which would cost as much memory again).

    A sample of more than ``LONG_ROW`` values with several axes is reduced along its last axes first, then
    across the first: a float32 error about 250 times smaller on a 1536 x 512 weight.
    """
    if per_sample.dim() > 2 and per_sample[0].numel() > LONG_ROW:
        return torch.linalg.vector_norm(per_sample.flatten(2), dim=2).square().sum(1)
    return torch.linalg.vector_norm(per_sample.flatten(1), dim=1).square()


def clip_and_sum(
    chunks: Iterable[tuple[slice, torch.Tensor]],
    big_name: str,
    big_shape: torch.Size,
    small: dict[str, torch.Tensor],
    bound: float,
    like: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """``sum_i min(1, bound / ||g_i||) g_i`` for the big parameter (from chunks) and the small ones."""
    big = None  # the first chunk's product allocates the sum, so it is never zero-filled first
    sums = {name: like.new_zeros(g.shape[1:]) for name, g in small.items()}
    for rows, per_sample in chunks:
        flat = per_sample.flatten(1)
        norm_sq = row_norm_sq(per_sample)
        for g in small.values():
            norm_sq = norm_sq + row_norm_sq(g[rows])
        factors = clip_factors(norm_sq, bound)
        if big is None:
            big = torch.mv(flat.t(), factors)
        else:
            big.addmv_(flat.t(), factors)  # in place: no chunk-sized temporary
        for name, g in small.items():
            sums[name] += torch.tensordot(factors, g[rows], dims=1)
    if big is None:  # no samples
        big = like.new_zeros(big_shape)
    return {big_name: big.view(big_shape), **sums}
