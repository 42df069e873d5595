"""Help text for ``dpplat``'s command line: every option says its default."""

from __future__ import annotations

import argparse


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that ends each option with its default, unless the text already gives it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def show_defaults(parser: argparse.ArgumentParser, config_cls) -> None:
    """Append each flag's default, taken from the configuration class it fills, to its help text."""
    import dataclasses

    defaults = {f.name: f.default for f in dataclasses.fields(config_cls) if f.default is not dataclasses.MISSING}
    for action in parser._actions:
        if action.dest in defaults and defaults[action.dest] is not None and action.default is None \
                and "default" not in (action.help or ""):
            value = defaults[action.dest]
            shown = ",".join(value) if isinstance(value, (list, tuple)) else value
            action.help = f"{action.help or action.dest.replace('_', ' ')} (default: {shown})"


def name_unexplained_options(parser: argparse.ArgumentParser) -> None:
    """Give an option without help text its name as help, so that --help still shows its default."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                name_unexplained_options(child)
        elif action.option_strings and not action.help:
            action.help = action.dest.replace("_", " ")


DATASET_HELP = ("mnist, fashion-mnist, cifar10 (downloaded on first use), cifar10-jpeg (the project's JPEG q75 copy), "
                "or your own data: a path to an .npz (x_train, y_train, x_test, y_test) or to an ImageFolder directory "
                "(DIR/train/<class>/*.png, DIR/test/<class>/...)")
