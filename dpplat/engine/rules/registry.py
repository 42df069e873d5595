"""The registry of per-layer clipping rules and the interface each rule implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch
from torch import nn

_RULES: dict[type[nn.Module], "LayerRule"] = {}


@dataclass
class RuleContext:
    """What one backward of one layer hands its rule.

    ``x`` is the layer's input and ``grad_output`` the gradient of the loss with
    respect to the layer's output, as autograd delivers it (tuples of them, one pair per
    projection, for a rule with ``several_inputs``); the engine accounts for
    the loss reduction's scale outside the rule. ``views`` consecutive rows belong to
    one sample (augmentation multiplicity): a rule folds them into one sample so the
    clipped quantity is the gradient of the sample's averaged loss. ``cache`` lets a
    rule keep what it computed for the norm and reuse it for the clipped sum.
    """

    module: nn.Module
    x: torch.Tensor | tuple[torch.Tensor, ...]
    grad_output: torch.Tensor | tuple[torch.Tensor, ...]
    views: int = 1
    cache: dict = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        x = self.x[0] if isinstance(self.x, tuple) else self.x
        return x.shape[0] // self.views


class LayerRule:
    """Base class of a per-layer rule; subclasses override the three methods.

    ``param_names`` lists the parameters the rule computes gradients for; the
    engine refuses a module with a trainable parameter outside that list.
    """

    param_names: ClassVar[tuple[str, ...]] = ("weight", "bias")
    several_inputs: ClassVar[bool] = False  # True: the rule's tapped_forward takes the module's own arguments

    def forward(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Module output computed with detached parameters."""
        raise NotImplementedError

    def tapped_forward(self, module: nn.Module, tap: Callable, *args, **kwargs):
        """For a rule with ``several_inputs``: the module's forward, with its own signature, computed with
        detached parameters. ``tap(outputs, inputs)`` takes a tuple of projections' outputs and the tuple of
        their batch-first inputs, and returns the outputs to go on with; the rule then sees those inputs and
        the outputs' gradients as tuples in :class:`RuleContext`."""
        raise NotImplementedError

    def norm_sq(self, ctx: RuleContext) -> torch.Tensor:
        """Per-sample squared L2 norm, shape (num_samples,), of the trainable parameters' gradient."""
        raise NotImplementedError

    def clipped_grads(self, ctx: RuleContext, factors: torch.Tensor) -> dict[str, torch.Tensor]:
        """``sum_i factors_i * g_i`` for each trainable parameter, keyed by parameter name."""
        raise NotImplementedError

    def clipped_grads_per_layer(self, ctx: RuleContext, bound: float) -> dict[str, torch.Tensor]:
        """Norms, clip factors ``min(1, bound / ||g_i||)`` and the clipped sum in one call.

        Per-layer clipping needs only this layer's norms, so a rule that instantiates
        per-sample gradients can clip and sum each chunk while it has it (FlashDP's
        fusion) instead of paying for a second weight-gradient pass.
        """
        return self.clipped_grads(ctx, clip_factors(self.norm_sq(ctx), bound))

    def validate(self, module: nn.Module) -> None:
        """Raise ``ValueError`` if this module's configuration is outside what the rule supports."""


def clip_factors(norm_sq: torch.Tensor, bound: float) -> torch.Tensor:
    """``min(1, C / ||g_i||)``, written as ``C / max(||g_i||, C)`` so a zero gradient gives 1 exactly."""
    return bound / norm_sq.sqrt().clamp_min(bound)


def register_rule(*module_types: type[nn.Module]) -> Callable[[type[LayerRule]], type[LayerRule]]:
    """Class decorator: register a rule for one or more exact module types."""

    def decorator(rule_cls: type[LayerRule]) -> type[LayerRule]:
        rule = rule_cls()
        for module_type in module_types:
            _RULES[module_type] = rule
        return rule_cls

    return decorator


# Rules for other libraries' layers, by the class's module and name, so that dpplat needs no import of the
# library: (module, qualified name) -> rule. The first module of such a class registers its type.
_BY_NAME: dict[tuple[str, str], "LayerRule"] = {}


def register_rule_by_name(module_name: str, class_name: str, rule: "LayerRule") -> None:
    """Use ``rule`` for the class ``module_name.class_name`` of another library, without importing it."""
    _BY_NAME[(module_name, class_name)] = rule


def get_rule(module: nn.Module) -> LayerRule | None:
    """The rule for exactly this module's type (subclasses may change the forward, so no MRO walk)."""
    kind = type(module)
    rule = _RULES.get(kind)
    if rule is None and (kind.__module__, kind.__qualname__) in _BY_NAME:
        rule = _RULES[kind] = _BY_NAME[(kind.__module__, kind.__qualname__)]
    return rule


def registered_types() -> list[type[nn.Module]]:
    return list(_RULES)


def trainable(module: nn.Module, name: str) -> bool:
    param = getattr(module, name, None)
    return isinstance(param, nn.Parameter) and param.requires_grad
