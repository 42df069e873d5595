"""Rule for Hugging Face GPT-2's ``Conv1D``: ``y = x @ W + b`` with ``W`` of shape (in, out).

It is a linear layer with its weight stored transposed, so the Linear rule's norms hold as they
are (a norm does not see the transpose), on the same fused per-layer path (per-sample gradients
clipped and summed chunk by chunk), whose per-sample gradients it forms in the stored (in, out)
layout so that the clipped sum needs no transposed copy. The rule
is known by the class's name (``transformers.pytorch_utils.Conv1D``), so dpplat does not import
``transformers``; :func:`register_conv1d` adds another class of that form.
"""

from __future__ import annotations

import torch
from torch import nn

from dpplat.engine.rules.linear import LinearRule
from dpplat.engine.rules.registry import register_rule, register_rule_by_name


class TransposedLinearRule(LinearRule):
    """A linear layer whose weight is stored as (in, out)."""

    weight_transposed = True

    def forward(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = x @ module.weight.detach()
        return out + module.bias.detach() if module.bias is not None else out


register_rule_by_name("transformers.pytorch_utils", "Conv1D", TransposedLinearRule())


def register_conv1d(module_type: type[nn.Module]) -> type[nn.Module]:
    """Use the transposed-linear rule for a class with ``weight`` (in, out) and ``bias`` (out); returns the class."""
    register_rule(module_type)(TransposedLinearRule)
    return module_type
