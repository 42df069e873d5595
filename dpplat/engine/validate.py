"""Refuse, before training starts, any model the engine cannot train with a DP guarantee."""

from __future__ import annotations

from torch import nn

from dpplat.engine.rules import get_rule
from dpplat.engine.rules.registry import LayerRule

_BATCH_NORMS = (nn.modules.batchnorm._BatchNorm, nn.SyncBatchNorm)


def check_module(module: nn.Module) -> list[tuple[str, nn.Module, LayerRule]]:
    """The clipping groups of ``module`` (name, submodule, rule), in module order.

    Raises ``ValueError`` naming the module and the fix for BatchNorm, a trainable
    module with no rule, a trainable parameter that its module's rule does not
    cover, or one that two modules share (tied weights): no parameter may train
    without DP, nor under two clipping groups.
    """
    _check_frozen_bases(module)
    groups = []
    owners: dict[int, str] = {}  # id of each trainable parameter -> the name it was first seen under
    for name, sub in module.named_modules():
        label = name or "<root>"
        if isinstance(sub, _BATCH_NORMS):
            raise ValueError(
                f"module '{label}' is {type(sub).__name__}: batch normalisation mixes samples, so per-sample "
                "gradients (and DP) are undefined. Replace it with nn.GroupNorm (e.g. GroupNorm(min(32, C), C))."
            )
        own = [(n, p) for n, p in sub.named_parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        for n, p in own:
            full = f"{name}.{n}" if name else n
            if id(p) in owners:
                raise ValueError(_tied_message(owners[id(p)], full))
            owners[id(p)] = full
        rule = get_rule(sub)
        if rule is None:
            raise ValueError(
                f"module '{label}' ({type(sub).__name__}) has trainable parameters but no DP clipping rule. "
                "Freeze it (requires_grad_(False)), replace it with a supported layer, or register a rule with "
                "@dpplat.engine.register_rule. Supported: " + ", ".join(sorted(t.__name__ for t in _supported()))
            )
        try:
            rule.validate(sub)
        except ValueError as err:
            raise ValueError(f"module '{label}': {err}") from None
        uncovered = [n for n, _ in own if n not in rule.param_names]
        if uncovered:
            raise ValueError(
                f"module '{label}' ({type(sub).__name__}) has trainable parameter(s) {uncovered} that its rule "
                f"does not cover (it covers {list(rule.param_names)}): freeze them or register a rule for this type."
            )
        groups.append((label, sub, rule))
    if not groups:
        raise ValueError("the model has no trainable parameters: nothing to train privately.")
    return groups


def _check_frozen_bases(module: nn.Module) -> None:
    """Refuse an adapter model (LoRA) whose frozen base layers were made trainable again.

    A module with a ``frozen_base`` submodule (:class:`dpplat.models.lora.LoRALinear`) trains only its adapters;
    a trainable base would silently become clipping groups of its own, with per-sample work and noise on every
    pretrained weight. The message counts the unexpected parameters and names the first ones."""
    frozen = {id(p) for sub in module.modules() if isinstance(getattr(sub, "frozen_base", None), nn.Module)
              for p in sub.frozen_base.parameters()}
    stray = [(n, p) for n, p in module.named_parameters() if p.requires_grad and id(p) in frozen]
    if stray:
        names = ", ".join(n for n, _ in stray[:3]) + (", ..." if len(stray) > 3 else "")
        count = sum(p.numel() for _, p in stray)
        raise ValueError(
            f"{count:,} unexpected trainable parameters ({len(stray)} tensors: {names}) in the frozen base layers "
            "of LoRA adapters: only the adapters should train. Freeze them with "
            "dpplat.models.lora.freeze_bases(model), or train those layers whole without adapters.")


def _tied_message(first: str, second: str) -> str:
    """Why a parameter used by two modules (tied weights) is refused, and the two ways out."""
    where = f"model.{second}"
    return (f"parameter '{second}' is the same tensor as '{first}' (tied weights). Each module is its own clipping "
            "group, so a tied parameter would get two clipped contributions per sample, adding up to more than "
            f"the bound the accountant assumes. Untie it ({where} = nn.Parameter({where}.detach().clone())) "
            "or freeze it (requires_grad_(False)).")


def _supported():
    from dpplat.engine.rules import registered_types

    return registered_types()
