"""Reading the TOML files users edit (recipes, audit plans), with errors that name the file and the fix."""

from __future__ import annotations

import tomllib
from pathlib import Path


def read_toml(path: str | Path, what: str, hint: str = "") -> dict:
    """The parsed file; a missing or malformed file raises an error naming it (``what``: "recipe", ...)."""
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist{'; ' + hint if hint else ''}.") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{what} {path} is not valid TOML: {err}") from None
