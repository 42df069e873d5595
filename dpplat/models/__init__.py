"""The model zoo: ``create(name, ...)`` and ``available()``; importing registers the built-in models."""

from dpplat.models import plain  # noqa: F401  (registers the baselines)
from dpplat.models.registry import ModelInfo, available, create, info, register_model

__all__ = ["ModelInfo", "available", "create", "info", "register_model"]
