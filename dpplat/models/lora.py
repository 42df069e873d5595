"""Low-rank adapters (LoRA, Hu et al. 2022) for private fine-tuning: train two small matrices per layer.

:class:`LoRALinear` keeps the pretrained ``nn.Linear`` frozen and adds ``scale * B(A(x))`` with
``A: in -> rank`` and ``B: rank -> out`` as two plain ``nn.Linear`` layers without bias. The
engine clips them with its Linear rule like any layer (each is a clipping group), and a frozen
module gets no tap at all: the pretrained weights cost no per-sample work. B starts at zero, so
the adapted model starts as the pretrained one.
"""

from __future__ import annotations

import math

from torch import nn


class LoRALinear(nn.Module):
    """A frozen ``base`` linear layer plus a trainable low-rank update ``(alpha / rank) * B A``."""

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError(f"LoRALinear adapts an nn.Linear, got {type(base).__name__}.")
        if rank < 1:
            raise ValueError(f"rank must be at least 1, got {rank}.")
        self.base = base.requires_grad_(False)
        self.lora_a = nn.Linear(base.in_features, rank, bias=False)
        self.lora_b = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b.weight)
        self.scale = alpha / rank

    def forward(self, x):
        return self.base(x) + self.scale * self.lora_b(self.lora_a(x))


def add_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0,
             targets: tuple[type[nn.Module], ...] = (nn.Linear,)) -> nn.Module:
    """Freeze every parameter of ``model`` and wrap each ``nn.Linear`` (in place) with a :class:`LoRALinear`.

    Returns the model; only the adapters' parameters are left trainable.
    """
    model.requires_grad_(False)
    for name, child in list(model.named_children()):
        if isinstance(child, targets) and isinstance(child, nn.Linear):
            setattr(model, name, LoRALinear(child, rank, alpha))
        else:
            add_lora(child, rank, alpha, targets)
    return model
