"""Rule for ``nn.LayerNorm`` over the trailing ``normalized_shape`` dims, any leading (batch, sequence) dims."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dpplat.engine.rules.group_norm import clipped_from_per_sample, norm_from_per_sample, per_sample_affine_grads
from dpplat.engine.rules.registry import LayerRule, RuleContext, register_rule


@register_rule(nn.LayerNorm)
class LayerNormRule(LayerRule):
    def forward(self, module: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
        weight = module.weight.detach() if module.weight is not None else None
        bias = module.bias.detach() if module.bias is not None else None
        return F.layer_norm(x, module.normalized_shape, weight, bias, module.eps)

    def _shape(self, module: nn.Module) -> tuple[int, ...]:
        return tuple(module.normalized_shape)

    def _normalized(self, ctx: RuleContext) -> torch.Tensor:
        """The input normalised without the affine parameters: what the weight multiplies."""
        return F.layer_norm(ctx.x, self._shape(ctx.module), eps=ctx.module.eps)

    def _per_sample(self, ctx: RuleContext):
        shape = self._shape(ctx.module)
        normalized = self._normalized(ctx)
        # Sum over the leading non-batch dims, keep the normalized dims flattened.
        rows = ctx.x.shape[0]
        flat = lambda t: t.reshape(rows, -1, int(torch.Size(shape).numel()))  # noqa: E731
        sub = RuleContext(ctx.module, ctx.x, flat(ctx.grad_output), ctx.views, ctx.cache)
        return per_sample_affine_grads(sub, flat(normalized), (1,))

    def norm_sq(self, ctx: RuleContext) -> torch.Tensor:
        return norm_from_per_sample(ctx, self._per_sample(ctx))

    def clipped_grads(self, ctx: RuleContext, factors: torch.Tensor) -> dict[str, torch.Tensor]:
        if "per_sample" not in ctx.cache:
            self.norm_sq(ctx)
        shapes = {name: getattr(ctx.module, name).shape for name in ctx.cache["per_sample"]}
        return clipped_from_per_sample(ctx, factors, shapes)
