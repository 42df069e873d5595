"""Engine rules for the equivariant layers: exact per-sample gradients of the *base* parameters.

The layer's filter bank is ``E(theta)`` for a linear expansion E, so the per-sample
gradient of theta is ``E^T`` applied to the per-sample gradient of the expanded filter.
We form the expanded per-sample gradients one chunk of samples at a time with the plain
convolution's machinery (:mod:`dpplat.engine.rules.conv`), pull each chunk back with E^T
(the layer's ``pull_back``: for rotations and flips E is a gather, so E^T is a scatter-add;
the steerable layers' einsum and the field GroupNorm's expansion are pulled back with
``torch.func.vjp`` under ``vmap``), and clip and sum while
the chunk exists. The expanded per-sample filters of the whole model never exist at once.

Flat clipping asks for every layer's norms before any layer's sum. The per-sample *base* gradients are small
(weight sharing divides the filter's size by the group's order), so the norm pass keeps them, up to
``KEEP_PER_SAMPLE_VALUES`` values a layer, and the sum is one product with the clip factors instead of a
second weight-gradient convolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import vjp, vmap

from dpplat.engine.rules import conv, fused_sum
from dpplat.engine.rules.group_norm import clipped_from_per_sample, norm_from_per_sample, per_sample_affine_grads
from dpplat.engine.rules.registry import LayerRule, RuleContext, clip_factors, register_rule, trainable
from dpplat.models.equivariant.layers import FieldGroupNorm, GroupConv2d, LiftingConv2d
from dpplat.models.equivariant.steerable import SteerableGroupConv2d, SteerableLiftingConv2d


KEEP_PER_SAMPLE_VALUES = 2**24  # 64 MB of float32 a layer; c4-cnn's larger group layer holds 2.4M at batch 2048


def _keep_trainable(module, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: g for name, g in grads.items() if trainable(module, name)}


def _pull_bias_batch(module, expanded: torch.Tensor) -> torch.Tensor:
    """E^T for the bias, which is repeated over the group axis: sum over it."""
    return expanded.view(expanded.shape[0], -1, module.group.order).sum(2)


@register_rule(LiftingConv2d, GroupConv2d, SteerableLiftingConv2d, SteerableGroupConv2d)
class ExpandedConvRule(LayerRule):
    def forward(self, module, x):
        bias = module.bias.detach() if module.bias is not None else None
        return module.forward_with(x, module.weight.detach(), bias)

    def _bias_expanded(self, ctx: RuleContext) -> torch.Tensor | None:
        if ctx.module.bias is None:
            return None
        return ctx.grad_output.flatten(2).sum(2).view(ctx.num_samples, ctx.views, -1).sum(1)

    def _chunks(self, ctx: RuleContext):
        """Per-sample base-weight (and base-bias) gradients, a chunk of samples at a time."""
        module = ctx.module
        bias_expanded = self._bias_expanded(ctx)
        for rows, per_sample in conv.per_sample_weight_grads(module, ctx, weight_shape=module.expanded_shape()):
            b = _pull_bias_batch(module, bias_expanded[rows]) if bias_expanded is not None else None
            yield rows, module.pull_back(per_sample), b

    def norm_sq(self, ctx: RuleContext) -> torch.Tensor:
        module = ctx.module
        train_weight = trainable(module, "weight")
        if not train_weight:  # then the bias trains (the engine skips modules with nothing to train): its
            # per-sample gradients come from the output gradient alone
            return _pull_bias_batch(module, self._bias_expanded(ctx)).square().sum(1)
        total = ctx.x.new_zeros(ctx.num_samples)
        keep = ctx.num_samples * module.weight.numel() <= KEEP_PER_SAMPLE_VALUES
        kept = []
        for rows, w, b in self._chunks(ctx):
            total[rows] += fused_sum.row_norm_sq(w)
            if keep:
                kept.append(w)
            if b is not None and trainable(module, "bias"):
                total[rows] += b.square().sum(1)
        if keep:  # the flat path's clipped sum is then one product with the factors, as for GroupNorm
            ctx.cache["per_sample"] = {"weight": torch.cat(kept).flatten(1)}
        return total

    def clipped_grads(self, ctx: RuleContext, factors: torch.Tensor) -> dict[str, torch.Tensor]:
        module = ctx.module
        train_weight = trainable(module, "weight")
        train_bias = module.bias is not None and trainable(module, "bias")
        kept = "per_sample" in ctx.cache
        if train_bias or (train_weight and not kept):  # the output gradient scaled per sample: a map-sized product
            scaled = ctx.grad_output * factors.repeat_interleave(ctx.views).view(-1, 1, 1, 1)
        grads = {}
        if train_weight and kept:
            kept_dtype = ctx.cache["per_sample"]["weight"].dtype
            grads = clipped_from_per_sample(ctx, factors.to(kept_dtype), {"weight": module.weight.shape})
        elif train_weight:
            x, padding = conv.padded_input(module, ctx.x)
            expanded_w = conv.weight_grad(module, x, padding, scaled, module.expanded_shape(), 1)
            grads = {"weight": module.pull_back(expanded_w[None])[0]}
        if train_bias:
            grads["bias"] = _pull_bias_batch(module, scaled.sum((0, 2, 3))[None])[0]
        return grads

    def clipped_grads_per_layer(self, ctx: RuleContext, bound: float) -> dict[str, torch.Tensor]:
        module = ctx.module
        if not (trainable(module, "weight") and (module.bias is None or trainable(module, "bias"))):
            return self.clipped_grads(ctx, clip_factors(self.norm_sq(ctx), bound))
        # Base bias gradients are small (samples x fields): form them whole; stream the weight chunks.
        bias_expanded = self._bias_expanded(ctx)
        small = {"bias": _pull_bias_batch(module, bias_expanded)} if bias_expanded is not None else {}
        return fused_sum.clip_and_sum(((r, w) for r, w, _ in self._chunks(ctx)), "weight", module.weight.shape,
                                      small, bound, ctx.x)


@register_rule(FieldGroupNorm)
class FieldGroupNormRule(LayerRule):
    def forward(self, module, x):
        return module.forward_with(x, module.weight.detach(), module.bias.detach())

    def _per_sample(self, ctx: RuleContext) -> dict[str, torch.Tensor]:
        if "per_sample" in ctx.cache:
            return ctx.cache["per_sample"]
        module = ctx.module
        normalized = F.group_norm(ctx.x, module.num_groups, eps=module.eps)
        expanded = per_sample_affine_grads(ctx, normalized, tuple(range(2, ctx.x.dim())))
        _, pull = vjp(module.expand, module.weight.detach(), module.bias.detach())
        zeros = ctx.x.new_zeros(ctx.num_samples, module.weight.numel() * module.group.order)
        w, b = vmap(lambda gw, gb: pull((gw, gb)))(expanded.get("weight", zeros), expanded.get("bias", zeros))
        ctx.cache["per_sample"] = _keep_trainable(module, {"weight": w, "bias": b})
        return ctx.cache["per_sample"]

    def norm_sq(self, ctx: RuleContext) -> torch.Tensor:
        return norm_from_per_sample(ctx, self._per_sample(ctx))

    def clipped_grads(self, ctx: RuleContext, factors: torch.Tensor) -> dict[str, torch.Tensor]:
        shapes = {name: getattr(ctx.module, name).shape for name in self._per_sample(ctx)}
        return clipped_from_per_sample(ctx, factors, shapes)
