"""Type and range checks for the configuration dataclasses, run when a configuration is built.

A configuration arrives by the command line, a TOML file or the Python API; each door hands
the same dataclass its values, and the dataclass checks them here, in ``__post_init__``,
before anything trains or is stored. A wrong value gets one line that names the key (and
its flag) and what it must be.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Callable


def _matches(value: Any, expected: Any) -> bool:
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, option) for option in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(expected)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(expected, type):
        return isinstance(value, expected)
    return True


def _describe(expected: Any) -> str:
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        options = [o for o in typing.get_args(expected) if o is not type(None)]
        text = " or ".join(_describe(o) for o in options)
        return text + (" (or left out)" if len(options) < len(typing.get_args(expected)) else "")
    if origin is list:
        (item,) = typing.get_args(expected)
        return 'a list of strings, e.g. ["a", "b"]' if item is str else f"a list, each {_describe(item)}"
    if origin is dict:
        return "a table"
    names = {float: "a number", int: "an integer", bool: "true or false", str: "a string", dict: "a table"}
    return names.get(expected, getattr(expected, "__name__", str(expected)))


def check_types(config: Any, *, label: Callable[[str], str] = str, allow_infinite: tuple[str, ...] = ()) -> None:
    """Every field of the dataclass ``config`` has its annotated type; numbers are finite (NaN never passes,
    infinity only in ``allow_infinite``). ``label(name)`` is how a message names a field."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        expected = hints[f.name]
        if dataclasses.is_dataclass(expected):
            continue  # a nested configuration checks itself
        if not _matches(value, expected):
            raise ValueError(f"{label(f.name)} must be {_describe(expected)}, got {value!r}.")
        if isinstance(value, float) and not math.isfinite(value):
            if math.isnan(value) or f.name not in allow_infinite:
                raise ValueError(f"{label(f.name)} must be a finite number, got {value!r}.")


def check_range(name: str, value: float | int | None, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> None:
    """``value`` (when given) lies in the interval; ``name`` is how the message names it."""
    if value is None:
        return
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left = "" if low is None else ("> " if low_open else ">= ") + f"{low:g}"
        right = "" if high is None else ("< " if high_open else "<= ") + f"{high:g}"
        raise ValueError(f"{name} must be {' and '.join(p for p in (left, right) if p)}, got {value!r}.")


def check_choice(name: str, value: str, choices: typing.Iterable[str]) -> None:
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}.")


def check_keys(what: str, given: typing.Iterable[str], known: typing.Iterable[str]) -> None:
    """Refuse keys a configuration does not have, naming them and listing the known ones."""
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"{what} has unknown key(s) {', '.join(unknown)}; the known keys are "
                         f"{', '.join(sorted(known))}.")
