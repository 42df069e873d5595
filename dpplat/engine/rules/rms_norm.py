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

from dpplat.engine.rules.layer_norm import LayerNormRule
from dpplat.engine.rules.registry import RuleContext, register_rule, register_rule_by_name


def _eps(module: nn.Module) -> float | None:
    for name in ("eps", "variance_epsilon"):
        if hasattr(module, name):
            return getattr(module, name)
    return None


class RMSNormRule(LayerNormRule):
    """LayerNorm's per-sample affine gradients, with the input normalised by its root mean square only."""

    def forward(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        weight = module.weight.detach() if getattr(module, "weight", None) is not None else None
        return F.rms_norm(x, self._shape(module), weight, _eps(module))

    def _shape(self, module: nn.Module) -> tuple[int, ...]:
        shape = getattr(module, "normalized_shape", None)
        return tuple(shape) if shape is not None else tuple(module.weight.shape)

    def _normalized(self, ctx: RuleContext) -> torch.Tensor:
        return F.rms_norm(ctx.x, self._shape(ctx.module), None, _eps(ctx.module))


register_rule(nn.RMSNorm)(RMSNormRule)
register_rule_by_name("transformers.models.llama.modeling_llama", "LlamaRMSNorm", RMSNormRule())


def register_rms_norm(module_type: type[nn.Module]) -> type[nn.Module]:
    """Use the RMSNorm rule for another library's RMSNorm class (e.g. a Llama model's); returns the class."""
    register_rule(module_type)(RMSNormRule)
    return module_type
