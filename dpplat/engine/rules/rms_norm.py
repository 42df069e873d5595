"""Rule for RMSNorm: ``nn.RMSNorm`` and Llama-style modules (``weight * x / sqrt(mean(x^2) + eps)``).

The per-sample gradient of the scale is ``sum over positions of grad_out * x / rms(x)``, small
(samples x normalized size), so it is instantiated as for LayerNorm. A Llama-style module from
another library (one ``weight`` and ``variance_epsilon`` or ``eps``) is made known with
:func:`register_rms_norm`, since the registry matches exact types; ``transformers``' ``LlamaRMSNorm``
is known by its name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dpplat.engine.rules.group_norm import clipped_from_per_sample, norm_from_per_sample, per_sample_affine_grads
from dpplat.engine.rules.registry import LayerRule, RuleContext, register_rule, register_rule_by_name


def _eps(module: nn.Module) -> float | None:
    for name in ("eps", "variance_epsilon"):
        if hasattr(module, name):
            return getattr(module, name)
    return None


def _shape(module: nn.Module, x: torch.Tensor) -> tuple[int, ...]:
    shape = getattr(module, "normalized_shape", None)
    return tuple(shape) if shape is not None else tuple(module.weight.shape)


class RMSNormRule(LayerRule):
    def forward(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        weight = module.weight.detach() if getattr(module, "weight", None) is not None else None
        return F.rms_norm(x, _shape(module, x), weight, _eps(module))

    def _per_sample(self, ctx: RuleContext):
        shape = _shape(ctx.module, ctx.x)
        normalized = F.rms_norm(ctx.x, shape, None, _eps(ctx.module))
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


register_rule(nn.RMSNorm)(RMSNormRule)
register_rule_by_name("transformers.models.llama.modeling_llama", "LlamaRMSNorm", RMSNormRule())


def register_rms_norm(module_type: type[nn.Module]) -> type[nn.Module]:
    """Use the RMSNorm rule for another library's RMSNorm class (e.g. a Llama model's); returns the class."""
    register_rule(module_type)(RMSNormRule)
    return module_type
