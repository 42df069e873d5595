"""Rule for ``nn.MultiheadAttention``: its input projections as one clipping group, ``out_proj`` as another.

PyTorch's module computes attention in one function call from its weights, so no submodule's forward
runs and nothing can be tapped from outside. The rule computes the same forward itself: the query, key
and value projections (``in_proj_weight``, or ``q_proj_weight``/``k_proj_weight``/``v_proj_weight``
when the key and value have other sizes, and ``in_proj_bias``) go through one tap, whose backward
receives the three projections' output gradients together; then scaled dot-product attention with
the module's masks and dropout, then ``out_proj`` called as a module, which the Linear rule clips as
its own group. Each projection's per-sample gradient is a Linear layer's, ``G_j^T A_j`` over the
sequence; the group's norm sums the three. Inputs may be batch-first or not; an unbatched input,
``add_bias_kv`` and ``add_zero_attn`` are refused.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dpplat.engine.rules import matmul
from dpplat.engine.rules.linear import LinearRule, fold
from dpplat.engine.rules.registry import LayerRule, RuleContext, register_rule, trainable

# nn.MultiheadAttention's out_proj is this subclass of nn.Linear; the registry matches exact types.
register_rule(nn.modules.linear.NonDynamicallyQuantizableLinear)(LinearRule)

_WEIGHTS = ("q_proj_weight", "k_proj_weight", "v_proj_weight")


def _additive(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """A boolean mask (True: not attended) as 0 / -inf, a float mask as it is, in ``like``'s dtype."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=like.dtype, device=like.device).masked_fill(mask, -math.inf)
    return mask.to(like.dtype)


@register_rule(nn.MultiheadAttention)
class MultiheadAttentionRule(LayerRule):
    """Per-sample norms and clipped sums of the three input projections, from their inputs and output gradients."""

    param_names = ("in_proj_weight", *_WEIGHTS, "in_proj_bias")
    several_inputs = True

    def validate(self, module: nn.MultiheadAttention) -> None:
        if module.bias_k is not None:
            raise ValueError("nn.MultiheadAttention with add_bias_kv=True is not supported: its bias_k and bias_v "
                             "join every sample's keys. Use add_bias_kv=False.")
        if module.add_zero_attn:
            raise ValueError("nn.MultiheadAttention with add_zero_attn=True is not supported; use add_zero_attn=False.")

    def _weights(self, module: nn.MultiheadAttention) -> tuple[torch.Tensor, ...]:
        if module._qkv_same_embed_dim:
            return module.in_proj_weight.detach().chunk(3)
        return tuple(getattr(module, name).detach() for name in _WEIGHTS)

    def tapped_forward(self, module: nn.MultiheadAttention, tap: Callable, query: torch.Tensor, key: torch.Tensor,
                       value: torch.Tensor, key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                       attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                       is_causal: bool = False):
        if query.dim() != 3:
            raise ValueError(f"nn.MultiheadAttention under DP needs batched input (3 dimensions), got shape "
                             f"{tuple(query.shape)}: per-sample clipping needs the batch dimension.")
        if not module.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        biases = module.in_proj_bias.detach().chunk(3) if module.in_proj_bias is not None else (None,) * 3
        inputs = (query, key, value)
        q, k, v = tap(tuple(F.linear(x, w, b) for x, w, b in zip(inputs, self._weights(module), biases)), inputs)
        batch, length, source = q.shape[0], q.shape[1], k.shape[1]
        heads, width = module.num_heads, module.head_dim
        q, k, v = (t.reshape(batch, -1, heads, width).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-2, -1) / math.sqrt(width)
        mask = _additive(attn_mask, scores)
        if mask is not None:
            scores = scores + (mask.view(batch, heads, length, source) if mask.dim() == 3 else mask)
        elif is_causal:
            causal = torch.ones(length, source, dtype=torch.bool, device=scores.device).triu(1)
            scores = scores + _additive(causal, scores)
        padding = _additive(key_padding_mask, scores)
        if padding is not None:
            scores = scores + padding.view(batch, 1, 1, source)
        weights = scores.softmax(-1)
        if module.dropout > 0 and module.training:
            weights = F.dropout(weights, p=module.dropout)
        out = module.out_proj((weights @ v).transpose(1, 2).reshape(batch, length, module.embed_dim))
        if not module.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(1) if average_attn_weights else weights

    def _parts(self, ctx: RuleContext) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(input, output gradient) of each projection, as (samples, positions, features)."""
        return [fold(x, g, ctx.num_samples) for x, g in zip(ctx.x, ctx.grad_output)]

    def _weight_parts(self, module: nn.MultiheadAttention, parts: list) -> list[tuple[str, list]]:
        """Each trainable weight with the projections it serves: the packed ``in_proj_weight`` all three."""
        if module._qkv_same_embed_dim:
            return [("in_proj_weight", parts)] if trainable(module, "in_proj_weight") else []
        return [(name, [part]) for name, part in zip(_WEIGHTS, parts) if trainable(module, name)]

    def norm_sq(self, ctx: RuleContext) -> torch.Tensor:
        parts = self._parts(ctx)
        total = ctx.x[0].new_zeros(ctx.num_samples)
        for _, served in self._weight_parts(ctx.module, parts):
            total = total + sum(matmul.weight_norm_sq(A, G) for A, G in served)
        if trainable(ctx.module, "in_proj_bias"):
            total = total + sum(matmul.bias_norm_sq(G) for _, G in parts)
        return total

    def clipped_grads(self, ctx: RuleContext, factors: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = self._parts(ctx)
        grads = {name: torch.cat([matmul.weight_clipped_sum(A, G, factors) for A, G in served])
                 for name, served in self._weight_parts(ctx.module, parts)}
        if trainable(ctx.module, "in_proj_bias"):
            grads["in_proj_bias"] = torch.cat([matmul.bias_clipped_sum(G, factors) for _, G in parts])
        return grads
