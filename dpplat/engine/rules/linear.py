"""Rule for ``nn.Linear`` on (B, d) and (B, ..., d) inputs (batch first).

On sequences, ``DPPLAT_TRITON=1`` computes the weight's per-sample norms and clipped sum with the Triton
kernels of :mod:`dpplat.engine.rules.linear_triton`, which never write a per-sample gradient."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dpplat.engine.rules import fused_sum, linear_triton, matmul
from dpplat.engine.rules.registry import LayerRule, RuleContext, clip_factors, register_rule, trainable


def fold(x: torch.Tensor, grad_output: torch.Tensor, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear map's input and output gradient as (samples, rows per sample, features)."""
    return x.reshape(samples, -1, x.shape[-1]), grad_output.reshape(samples, -1, grad_output.shape[-1])


def _fold(ctx: RuleContext) -> tuple[torch.Tensor, torch.Tensor]:
    return fold(ctx.x, ctx.grad_output, ctx.num_samples)


def _weight_kernels(A: torch.Tensor):
    """The module computing the weight's norms and clipped sum: the Triton kernels on sequences when asked for."""
    return linear_triton if A.shape[1] > 1 and linear_triton.enabled(A) else matmul


@register_rule(nn.Linear)
class LinearRule(LayerRule):
    """Weight gradient per sample is ``G_i^T A_i``; bias gradient is ``G_i`` summed over positions.

    A subclass whose module stores its weight as (in, out) sets ``weight_transposed``: the norms do not see the
    transpose, and every path forms the gradient as ``A_i^T G_i`` (its clipped sum ``sum_i f_i A_i^T G_i``, the
    kernels' sum with A and G swapped), already in the stored (in, out) layout."""

    weight_transposed = False

    def forward(self, module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        bias = module.bias.detach() if module.bias is not None else None
        return F.linear(x, module.weight.detach(), bias)

    def norm_sq(self, ctx: RuleContext) -> torch.Tensor:
        A, G = _fold(ctx)
        total = A.new_zeros(A.shape[0])
        if trainable(ctx.module, "weight"):
            total = total + _weight_kernels(A).weight_norm_sq(A, G)
        if trainable(ctx.module, "bias"):
            total = total + matmul.bias_norm_sq(G)
        return total

    def clipped_grads(self, ctx: RuleContext, factors: torch.Tensor) -> dict[str, torch.Tensor]:
        A, G = _fold(ctx)
        grads = {}
        if trainable(ctx.module, "weight"):
            grads["weight"] = _weight_kernels(A).weight_clipped_sum(*self._stored_order(A, G), factors)
        if trainable(ctx.module, "bias"):
            grads["bias"] = matmul.bias_clipped_sum(G, factors)
        return grads

    def clipped_grads_per_layer(self, ctx: RuleContext, bound: float) -> dict[str, torch.Tensor]:
        A, G = _fold(ctx)
        if not trainable(ctx.module, "weight") or A.shape[1] == 1 or linear_triton.enabled(A):
            # 2-D input: the ghost norm is free; Triton: norms, then the clipped sum, neither instantiated
            return self.clipped_grads(ctx, clip_factors(self.norm_sq(ctx), bound))
        small = {"bias": G.sum(1)} if trainable(ctx.module, "bias") else {}
        first, second = self._stored_order(A, G)
        chunks = matmul.per_sample_weight_chunks(first, second)
        shape = torch.Size((second.shape[-1], first.shape[-1]))
        return fused_sum.clip_and_sum(chunks, "weight", shape, small, bound, A)

    def _stored_order(self, A: torch.Tensor, G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, G) for a weight stored (out, in); (G, A) for one stored (in, out): the kernels, given the pair in
        this order, form ``sum_i f_i G_i^T A_i`` or ``sum_i f_i A_i^T G_i``, each in the layout the module stores."""
        return (G, A) if self.weight_transposed else (A, G)
