"""The model zoo: ``create(name, ...)`` and ``available()``; importing registers the built-in models."""

from dpplat.models import equivariant_cnn, equivariant_resnet, equivariant_scatnet, plain, scatnet  # noqa: F401  (registers the zoo's models)
from dpplat.models.registry import ModelInfo, available, create, info, register_model

__all__ = ["ModelInfo", "available", "create", "info", "register_model"]
