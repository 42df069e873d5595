"""The recipes (``models/*.toml``) and audit plans (``audits/*.toml``) that ship with dpplat, found by name.

An installed dpplat holds them as package data (``dpplat/recipes`` and ``dpplat/plans``, copied
from the top-level folders when the wheel is built, see ``setup.py``); a checkout reads the
top-level folders themselves. ``--config NAME`` and ``dpplat audit run NAME`` take a bare name
(with or without ``.toml``); anything that names an existing file is read as a path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dpplat.tomlfile import read_toml

# kind -> (folder inside the package, top-level folder of a checkout)
FOLDERS = {"recipe": ("recipes", "models"), "plan": ("plans", "audits")}


@dataclass(frozen=True)
class Shipped:
    """One shipped file: its name, path, and what its header comment and ``[result]`` table say."""

    name: str
    path: Path
    summary: str
    settings: dict


def shipped_folder(kind: str) -> Path | None:
    """Where this dpplat's recipes or plans are: the package's copy, else the checkout's folder."""
    package = Path(__file__).resolve().parent
    packaged = package / FOLDERS[kind][0]
    if packaged.is_dir():
        return packaged
    checkout = package.parent / FOLDERS[kind][1]
    if (package.parent / "pyproject.toml").is_file() and checkout.is_dir():
        return checkout
    return None


def available(kind: str) -> list[Shipped]:
    """Every shipped recipe or plan, by name."""
    folder = shipped_folder(kind)
    if folder is None:
        return []
    found = []
    for path in sorted(folder.glob("*.toml")):
        lines = path.read_text().splitlines()
        comment = []
        for line in lines:
            if not line.startswith("#"):
                break
            text = line.lstrip("# ").strip()
            if text.lower().startswith(("reproduce:", "run with:")):
                break
            comment.append(text)
        found.append(Shipped(path.stem, path, " ".join(comment), read_toml(path, kind)))
    return found


def resolve(kind: str, given: str | Path) -> Path:
    """The file ``given`` names: an existing path as it is, else the shipped recipe or plan of that name."""
    path = Path(given).expanduser()
    if path.is_file():
        return path
    name = path.name[:-5] if path.name.endswith(".toml") else path.name
    folder = shipped_folder(kind)
    bare = str(given) == path.name or path.parent.as_posix() == FOLDERS[kind][1]  # "NAME" or "models/NAME.toml"
    if bare and folder is not None and (folder / f"{name}.toml").is_file():
        return folder / f"{name}.toml"
    names = ", ".join(s.name for s in available(kind)) or "none"
    raise FileNotFoundError(f"{kind} {given} is neither a file nor the name of a shipped {kind}; shipped: {names} "
                            f"(dpplat {'recipes' if kind == 'recipe' else 'audit plans'} lists them).")


def format_recipes() -> str:
    """``dpplat recipes``: each shipped recipe with what it trains and the result measured with it."""
    recipes = available("recipe")
    if not recipes:
        return "No recipes ship with this installation."
    machines: list[str] = []
    lines = [f"{'recipe':<44}{'dataset':<15}{'model':<18}{'epsilon':>8}{'test acc':>10}{'spent':>7}{'time':>8}  on"]
    for recipe in recipes:
        s, r = recipe.settings, recipe.settings.get("result", {})
        machine = r.get("machine")
        if machine and machine not in machines:
            machines.append(machine)
        acc = f"{r['test_accuracy']:.2%}" if "test_accuracy" in r else "-"
        spent = f"{r['epsilon_spent']:.3g}" if "epsilon_spent" in r else "-"
        seconds = f"{r['wall_time_s']:.0f}s" if "wall_time_s" in r else "-"
        on = f"[{machines.index(machine) + 1}]" if machine else "not measured yet"
        lines.append(f"{recipe.name:<44}{s.get('dataset', '-'):<15}{s.get('model', '-'):<18}"
                     f"{s.get('epsilon', '-'):>8}{acc:>10}{spent:>7}{seconds:>8}  {on}")
    lines += ["", "Measured on:"] + [f"  [{i + 1}] {m}" for i, m in enumerate(machines)]
    lines += ["", "Train with one: dpplat train --config NAME (flags given beside it override the recipe)."]
    return "\n".join(lines)


def format_plans() -> str:
    """``dpplat audit plans``: each shipped audit plan with its kind and description."""
    plans = available("plan")
    if not plans:
        return "No audit plans ship with this installation."
    lines = [f"{'plan':<16}{'kind':<7}description"]
    for plan in plans:
        description = plan.settings.get("description") or plan.summary
        lines.append(f"{plan.name:<16}{plan.settings.get('kind', 'mia'):<7}{description}")
    lines += ["", "Run one: dpplat audit run NAME (--backend ray fans it out over Ray)."]
    return "\n".join(lines)
