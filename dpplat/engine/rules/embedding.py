"""Rule for ``nn.Embedding``: ghost norm over token positions, clipped sum by ``index_add``.

Sample i's gradient puts ``sum_{t: idx_t = v} g_t`` in row v, so its squared norm is
``sum_{t,s} [idx_t = idx_s] <g_t, g_s>``: never a (vocabulary x dim) tensor per sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dpplat.engine.rules.matmul import CHUNK_FLOATS
from dpplat.engine.rules.registry import LayerRule, RuleContext, register_rule


def _fold(ctx: RuleContext) -> tuple[torch.Tensor, torch.Tensor]:
    n = ctx.num_samples
    idx = ctx.x.reshape(n, -1)
    G = ctx.grad_output.reshape(n, idx.shape[1], -1)
    if ctx.module.padding_idx is not None:
        G = G * (idx != ctx.module.padding_idx).unsqueeze(-1)
    return idx, G


@register_rule(nn.Embedding)
class EmbeddingRule(LayerRule):
    param_names = ("weight",)

    def validate(self, module: nn.Embedding) -> None:
        if module.sparse:
            raise ValueError("Embedding(sparse=True) is not supported: use sparse=False (the clipped sum is dense).")
        if module.max_norm is not None:
            raise ValueError("Embedding(max_norm=...) renormalises weights in the forward; use max_norm=None.")
        if module.scale_grad_by_freq:
            raise ValueError("Embedding(scale_grad_by_freq=True) scales gradients by batch counts; use False.")

    def forward(self, module: nn.Embedding, x: torch.Tensor) -> torch.Tensor:
        return F.embedding(x, module.weight.detach(), module.padding_idx, None, 2.0, False, False)

    def norm_sq(self, ctx: RuleContext) -> torch.Tensor:
        idx, G = _fold(ctx)
        n, T = idx.shape
        out = G.new_empty(n)
        step = max(1, CHUNK_FLOATS // max(1, T * T))
        for s in range(0, n, step):
            i, g = idx[s : s + step], G[s : s + step]
            same = (i.unsqueeze(2) == i.unsqueeze(1)).to(g.dtype)
            out[s : s + step] = (same * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))
        return out

    def clipped_grads(self, ctx: RuleContext, factors: torch.Tensor) -> dict[str, torch.Tensor]:
        idx, G = _fold(ctx)
        scaled = (G * factors.view(-1, 1, 1)).reshape(-1, G.shape[-1])
        grad = G.new_zeros(ctx.module.weight.shape)
        grad.index_add_(0, idx.reshape(-1), scaled)
        return {"weight": grad}
