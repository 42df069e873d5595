"""Triton kernels for the Linear rule on sequences, FlashDP-style: per-sample gradient norms computed tile by
tile, and the clipped sum, without writing a per-sample gradient to memory.

For sample n the weight gradient is ``G_n^T A_n`` (q x p), with ``A_n`` (T, p) the layer's input and ``G_n``
(T, q) its output gradient. The norm kernel gives each program one sample and one (BQ x BP) tile of that
gradient: it accumulates the tile over T in registers, squares and sums it, and writes one number. The
clipped-sum kernel gives each program one tile of the summed gradient and accumulates
``factor_n * G_n^T A_n`` over samples and positions. Per-layer clipping needs exactly these two passes: a
layer's clip factors depend on its own norms only.

Opt-in: ``DPPLAT_TRITON=1`` routes the Linear rule's sequence inputs here. On a GPU the kernels compile; on
the CPU they run through Triton's interpreter (``TRITON_INTERPRET=1``), which is how the suite checks them
against the rule's PyTorch path and the per-sample loop in float32 and float64.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch


@functools.cache
def _installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def enabled(x: torch.Tensor) -> bool:
    """Whether the Linear rule should use these kernels for ``x``: asked for, importable, and runnable there."""
    if os.environ.get("DPPLAT_TRITON") != "1":
        return False
    if not _installed():  # asked on every layer's backward: the package search runs once
        raise RuntimeError("DPPLAT_TRITON=1 asks for the Triton kernels, but triton is not installed: "
                           'pip install "dpplat[triton]" (or unset DPPLAT_TRITON).')
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("DPPLAT_TRITON=1 on CPU tensors needs Triton's interpreter: set TRITON_INTERPRET=1 before "
                           "Python starts (slow; for checking), or unset DPPLAT_TRITON.")
    return True


def _kernels():
    """The kernels' module, imported on first use (Triton reads TRITON_INTERPRET when they are defined)."""
    import triton

    from dpplat.engine.rules import linear_triton_kernels

    return triton.cdiv, linear_triton_kernels.norm_kernel, linear_triton_kernels.sum_kernel


BLOCK_T, BLOCK_P, BLOCK_Q = 32, 32, 32


def _prepared(A: torch.Tensor, G: torch.Tensor):
    if A.dtype not in (torch.float32, torch.float64) or G.dtype != A.dtype:
        raise TypeError(f"the Triton Linear kernels take float32 or float64 inputs, got {A.dtype} and {G.dtype}.")
    return A.contiguous(), G.contiguous(), _kernels()


def weight_norm_sq(A: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """Squared Frobenius norm of ``G_n^T A_n`` for each sample; A: (N, T, p), G: (N, T, q)."""
    A, G, (cdiv, norm_kernel, _) = _prepared(A, G)
    N, T, P = A.shape
    Q = G.shape[2]
    tiles = (N, cdiv(Q, BLOCK_Q), cdiv(P, BLOCK_P))
    partial = A.new_empty(tiles)
    if N:
        norm_kernel[tiles](A, G, partial, T, P, Q, A.stride(0), A.stride(1), G.stride(0), G.stride(1),
                           BT=BLOCK_T, BP=BLOCK_P, BQ=BLOCK_Q)
    return partial.sum((1, 2))


def weight_clipped_sum(A: torch.Tensor, G: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """``sum_n factors_n G_n^T A_n`` as a (q, p) matrix."""
    A, G, (cdiv, _, sum_kernel) = _prepared(A, G)
    N, T, P = A.shape
    Q = G.shape[2]
    out = A.new_zeros(Q, P)
    if N:
        sum_kernel[(cdiv(Q, BLOCK_Q), cdiv(P, BLOCK_P))](
            A, G, factors.to(A.dtype).contiguous(), out, N, T, P, Q, A.stride(0), A.stride(1), G.stride(0),
            G.stride(1), BT=BLOCK_T, BP=BLOCK_P, BQ=BLOCK_Q)
    return out
