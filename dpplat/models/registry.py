"""The model zoo's registry: name -> builder, with what a user needs to choose one."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from torch import nn

from dpplat.models.imported import build_imported, import_builder, is_import_path


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    group: str | None  # the group the model is equivariant to
    description: str
    builder: Callable[..., nn.Module]
    invariant_to: str | None = None  # the group its logits are invariant to (None: no invariance claimed)

    def parameter_count(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> int:
        model = self.builder(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
        return sum(p.numel() for p in model.parameters() if p.requires_grad)


_MODELS: dict[str, ModelInfo] = {}


def register_model(name: str, *, family: str, group: str | None = None, description: str = "",
                   invariant_to: str | None = None):
    """Decorator: register ``builder(num_classes, in_channels, image_size) -> nn.Module`` under ``name``."""

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered.")
        _MODELS[name] = ModelInfo(name, family, group, description or (builder.__doc__ or "").strip(), builder,
                                  invariant_to)
        return builder

    return decorator


def register_variants(build: Callable[..., nn.Module], variants, *, family: str, in_channels: int,
                      image_size: int, invariant_to: str | None) -> None:
    """Register ``build(group, width, num_classes, in_channels, image_size)`` once per (name, group, width,
    description): one architecture, several groups, each its own registry entry, all invariant to
    ``invariant_to``. ``width`` is the size argument ``build`` takes (a field count)."""
    for name, group, width, description in variants:
        builder = partial(_build_variant, build, group, width, in_channels=in_channels, image_size=image_size)
        register_model(name, family=family, group=group, description=description,
                       invariant_to=invariant_to)(builder)


def _build_variant(build, group: str, width, *, num_classes: int = 10, in_channels: int, image_size: int):
    return build(group, width, num_classes, in_channels, image_size)


def available() -> list[ModelInfo]:
    return sorted(_MODELS.values(), key=lambda m: m.name)


def create(name: str, *, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    """Build a registered model, or a user's ``module:function``, for images of ``in_channels`` x ``image_size``
    x ``image_size``."""
    if is_import_path(name):
        return build_imported(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    try:
        info = _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(_MODELS))}.") from None
    return info.builder(num_classes=num_classes, in_channels=in_channels, image_size=image_size)


def info(name: str) -> ModelInfo:
    """The zoo entry ``name``; for an import path, an entry of family ``user`` (the module is imported here)."""
    if is_import_path(name):
        builder = import_builder(name)
        return ModelInfo(name, "user", None, (builder.__doc__ or "").strip().split("\n")[0], builder)
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(_MODELS))}.")
    return _MODELS[name]
