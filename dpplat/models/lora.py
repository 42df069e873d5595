"""Low-rank adapters (LoRA, Hu et al. 2022) for private fine-tuning: train two small matrices per layer.

:class:`LoRALinear` keeps the pretrained ``nn.Linear`` frozen and adds ``scale * B(A(x))`` with
``A: in -> rank`` and ``B: rank -> out`` as two plain ``nn.Linear`` layers without bias. The
engine clips them with its Linear rule like any layer (each is a clipping group), and a frozen
module gets no tap at all: the pretrained weights cost no per-sample work. B starts at zero, so
the adapted model starts as the pretrained one. The base is an ``nn.Linear`` or a linear layer
whose weight is stored transposed, (in, out), with a transposed-linear rule in the engine (Hugging
Face GPT-2's ``Conv1D``).
"""

from __future__ import annotations

import math

from torch import nn


def _features(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) of a linear layer the adapters can wrap, or None."""
    from dpplat.engine.rules import get_rule
    from dpplat.engine.rules.conv1d_hf import TransposedLinearRule

    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(get_rule(module), TransposedLinearRule):
        return tuple(module.weight.shape)
    return None


class LoRALinear(nn.Module):
    """A frozen ``base`` linear layer plus a trainable low-rank update ``(alpha / rank) * B A``."""

    def __init__(self, base: nn.Module, rank: int = 8, alpha: float = 16.0) -> None:
        super().__init__()
        features = _features(base)
        if features is None:
            raise ValueError(f"LoRALinear adapts an nn.Linear or a transposed linear layer (GPT-2's Conv1D), got "
                             f"{type(base).__name__}.")
        if rank < 1:
            raise ValueError(f"rank must be at least 1, got {rank}.")
        self.base = base.requires_grad_(False)
        self.lora_a = nn.Linear(features[0], rank, bias=False)
        self.lora_b = nn.Linear(rank, features[1], bias=False)
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b.weight)
        self.scale = alpha / rank

    @property
    def frozen_base(self) -> nn.Module:
        """The pretrained layer, which must stay frozen (the engine refuses a trainable one)."""
        return self.base

    def forward(self, x):
        return self.base(x) + self.scale * self.lora_b(self.lora_a(x))


def freeze_bases(model: nn.Module) -> nn.Module:
    """Freeze the base layer of every :class:`LoRALinear` in ``model`` (after, say, ``model.requires_grad_(True)``)."""
    for module in model.modules():
        if isinstance(module, LoRALinear):
            module.base.requires_grad_(False)
    return model


def add_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0,
             targets: tuple[type[nn.Module], ...] | None = None) -> nn.Module:
    """Freeze every parameter of ``model`` and wrap each linear layer (in place) with a :class:`LoRALinear`.

    ``targets`` limits the wrapping to those module types; by default every ``nn.Linear`` and every layer with
    the transposed-linear rule (GPT-2's ``Conv1D``). Returns the model; only the adapters' parameters are left
    trainable.
    """
    model.requires_grad_(False)
    for name, child in list(model.named_children()):
        if (targets is None or isinstance(child, targets)) and _features(child) is not None:
            setattr(model, name, LoRALinear(child, rank, alpha))
        else:
            add_lora(child, rank, alpha, targets)
    return model
