"""The model zoo's registry: name -> builder, with what a user needs to choose one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    group: str | None
    description: str
    builder: Callable[..., nn.Module]

    def parameter_count(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> int:
        model = self.builder(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
        return sum(p.numel() for p in model.parameters() if p.requires_grad)


_MODELS: dict[str, ModelInfo] = {}


def register_model(name: str, *, family: str, group: str | None = None, description: str = ""):
    """Decorator: register ``builder(num_classes, in_channels, image_size) -> nn.Module`` under ``name``."""

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered.")
        _MODELS[name] = ModelInfo(name, family, group, description or (builder.__doc__ or "").strip(), builder)
        return builder

    return decorator


def available() -> list[ModelInfo]:
    return sorted(_MODELS.values(), key=lambda m: m.name)


def create(name: str, *, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    """Build a registered model for images of ``in_channels`` x ``image_size`` x ``image_size``."""
    try:
        info = _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(_MODELS))}.") from None
    return info.builder(num_classes=num_classes, in_channels=in_channels, image_size=image_size)


def info(name: str) -> ModelInfo:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(_MODELS))}.")
    return _MODELS[name]
