"""Per-sample norms and clipped sums for layers whose weight gradient is a matrix product.

A Linear layer on sequences and a convolution on unfolded patches both have, per
sample i, the weight gradient ``g_i = G_i^T A_i`` with ``A_i`` of shape (T, p) and
``G_i`` of shape (T, q). Its squared norm can be computed two ways (Li et al. 2022,
"ghost clipping"; Bu et al. 2023, "mixed" rule of fastDP):

* ghost norm: ``sum_{t,s} (A_i A_i^T)_{ts} (G_i G_i^T)_{ts}``, cost ~ T^2 (p + q);
* instantiation: form ``g_i`` (q x p) in chunks of samples, cost ~ T p q.

For the norms alone (flat clipping, which then needs a clipped-sum pass anyway) we
take the ghost norm when ``T (p + q) < p q`` (fastDP's mixed rule, with exact costs).
Per-layer clipping instantiates whenever T > 1: clipping and summing each chunk
while it exists costs T p q in all, while the ghost route costs T^2 (p + q) for the
norms *plus* T p q for the clipped sum. Neither keeps per-sample gradients beyond
one chunk.
"""

from __future__ import annotations

import torch

from dpplat.engine.rules import fused_sum

# Per-sample gradients are instantiated for at most this many floats at a time.
CHUNK_FLOATS = 1 << 22


def use_ghost_norm(T: int, p: int, q: int) -> bool:
    return T * (p + q) < p * q


def weight_norm_sq(A: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """Squared Frobenius norm of ``G_i^T A_i`` for each sample; A: (N, T, p), G: (N, T, q)."""
    N, T, p = A.shape
    q = G.shape[-1]
    if N == 0:
        return A.new_zeros(0)
    if T == 1:
        return A.square().sum((1, 2)) * G.square().sum((1, 2))
    if use_ghost_norm(T, p, q):
        out = A.new_empty(N)
        step = max(1, CHUNK_FLOATS // max(1, T * T))
        for s in range(0, N, step):
            a, g = A[s : s + step], G[s : s + step]
            out[s : s + step] = (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))
        return out
    out = A.new_empty(N)
    for rows, per_sample in per_sample_weight_chunks(A, G):
        out[rows] = fused_sum.row_norm_sq(per_sample)
    return out


def per_sample_weight_chunks(A: torch.Tensor, G: torch.Tensor):
    """Chunks of per-sample weight gradients ``G_i^T A_i``, shape (chunk, q, p)."""
    N, p, q = A.shape[0], A.shape[2], G.shape[2]
    step = max(1, CHUNK_FLOATS // max(1, p * q))
    for s in range(0, N, step):
        yield slice(s, min(N, s + step)), torch.bmm(G[s : s + step].transpose(1, 2), A[s : s + step])


def weight_clipped_sum(A: torch.Tensor, G: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """``sum_i factors_i G_i^T A_i`` as a (q, p) matrix, one matmul over all rows."""
    q, p = G.shape[-1], A.shape[-1]
    scaled = (G * factors.view(-1, 1, 1)).reshape(-1, q)
    return scaled.t().mm(A.reshape(-1, p))


def bias_norm_sq(G: torch.Tensor) -> torch.Tensor:
    return G.sum(1).square().sum(1)


def bias_clipped_sum(G: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    return torch.einsum("n,nq->q", factors, G.sum(1))
