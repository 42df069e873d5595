"""A user's own model, named by an import path ``package.module:function`` wherever a zoo name is accepted.

The function is called as ``function(num_classes=..., in_channels=..., image_size=...)`` and
must return an ``nn.Module``. The path is stored with the run, so a resume, an audit's
workers (spawned processes, Ray tasks) and ``--nproc`` ranks import the same function. A
module that is not installed is looked up in the current folder too, as ``python -m`` would,
since a console script such as ``dpplat`` does not put the current folder on ``sys.path``.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import sys
from typing import Callable

from torch import nn

_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def is_import_path(name: str) -> bool:
    """Whether ``name`` names a user's function (``module:function``) rather than a zoo model."""
    return ":" in name


def _import(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        here = os.getcwd()
        missing_is_ours = err.name is not None and module_name.split(".")[0] == err.name.split(".")[0]
        if not missing_is_ours or here in sys.path:
            raise
        sys.path.insert(0, here)
        return importlib.import_module(module_name)


@functools.lru_cache(maxsize=None)
def import_builder(path: str) -> Callable[..., nn.Module]:
    """The function an import path names; a ValueError in one line when it cannot be had."""
    if not _PATH.match(path):
        raise ValueError(f"--model {path!r} is neither a zoo name nor an import path of the form "
                         "package.module:function.")
    module_name, attr = path.split(":")
    try:
        module = _import(module_name)
    except ModuleNotFoundError as err:
        raise ValueError(f"--model {path}: cannot import {module_name} ({err}); install the module or run dpplat "
                         "from the folder that holds it.") from None
    except Exception as err:  # noqa: BLE001 - the user's module failed while importing: say how, in one line
        raise ValueError(f"--model {path}: importing {module_name} raised {type(err).__name__}: {err}") from None
    target = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(f"--model {path}: {module_name} has no attribute {attr!r}.")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"--model {path}: {attr} is a {type(target).__name__}, not a function that builds a model.")
    return target


def build_imported(path: str, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """Call the user's function for these shapes and check that it returned a module."""
    try:
        model = import_builder(path)(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001 - the user's builder failed: say how, in one line
        raise ValueError(f"--model {path}: calling it with num_classes={num_classes}, in_channels={in_channels}, "
                         f"image_size={image_size} raised {type(err).__name__}: {err}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"--model {path} returned a {type(model).__name__}, not a torch.nn.Module.")
    return model
