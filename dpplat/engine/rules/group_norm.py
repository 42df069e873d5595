"""Rule for ``nn.GroupNorm``: per-sample gradients are per-channel sums, so they are formed exactly."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dpplat.engine.rules.registry import LayerRule, RuleContext, register_rule, trainable


def per_sample_affine_grads(ctx: RuleContext, normalized: torch.Tensor, reduce_dims: tuple[int, ...]):
    """Per-sample (weight, bias) gradients of ``y = normalized * w + b``, views folded into samples.

    The tensors are small (samples x affine size), so instantiating them is cheaper
    than any ghost trick; they are cached for the clipped sum.
    """
    n, views = ctx.num_samples, ctx.views
    grads = {}
    if trainable(ctx.module, "weight"):
        g = (ctx.grad_output * normalized).sum(reduce_dims) if reduce_dims else ctx.grad_output * normalized
        grads["weight"] = g.reshape(n, views, -1).sum(1)
    if trainable(ctx.module, "bias"):
        g = ctx.grad_output.sum(reduce_dims) if reduce_dims else ctx.grad_output
        grads["bias"] = g.reshape(n, views, -1).sum(1)
    return grads


def norm_from_per_sample(ctx: RuleContext, grads: dict[str, torch.Tensor]) -> torch.Tensor:
    ctx.cache["per_sample"] = grads
    total = ctx.x.new_zeros(ctx.num_samples)
    for g in grads.values():
        total = total + g.square().sum(1)
    return total


def clipped_from_per_sample(ctx: RuleContext, factors: torch.Tensor, shapes: dict[str, torch.Size]):
    return {name: torch.einsum("n,nk->k", factors, g).view(shapes[name]) for name, g in ctx.cache["per_sample"].items()}


@register_rule(nn.GroupNorm)
class GroupNormRule(LayerRule):
    def forward(self, module: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        weight = module.weight.detach() if module.weight is not None else None
        bias = module.bias.detach() if module.bias is not None else None
        return F.group_norm(x, module.num_groups, weight, bias, module.eps)

    def _per_sample(self, ctx: RuleContext):
        normalized = F.group_norm(ctx.x, ctx.module.num_groups, eps=ctx.module.eps)
        return per_sample_affine_grads(ctx, normalized, tuple(range(2, ctx.x.dim())))

    def norm_sq(self, ctx: RuleContext) -> torch.Tensor:
        return norm_from_per_sample(ctx, self._per_sample(ctx))

    def clipped_grads(self, ctx: RuleContext, factors: torch.Tensor) -> dict[str, torch.Tensor]:
        if "per_sample" not in ctx.cache:
            self.norm_sq(ctx)
        shapes = {name: getattr(ctx.module, name).shape for name in ctx.cache["per_sample"]}
        return clipped_from_per_sample(ctx, factors, shapes)
