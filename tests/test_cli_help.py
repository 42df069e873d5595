"""The command line explains itself: plain top-level help naming every command, and every option of every
subcommand with help text of its own and its default."""

import argparse

import pytest

from dpplat.cli import build_parser


def subcommands(parser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield path + (name,), child
                yield from subcommands(child, path + (name,))


def test_the_top_level_help_is_plain_text_and_names_every_command(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for command in ("train", "audit", "dashboard", "runs", "recipes", "demo"):
        assert f"\n    {command} " in text
    assert "``" not in text and ":mod:" not in text


@pytest.mark.parametrize("path,parser", list(subcommands(build_parser())), ids=lambda v: " ".join(v)
                         if isinstance(v, tuple) else "")
def test_every_option_has_its_own_help_and_shows_its_default(path, parser):
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        text = action.help or ""
        assert text.split(" (default")[0] != action.dest.replace("_", " "), (path, action.option_strings)
        has_default = action.default not in (None, False, argparse.SUPPRESS)
        if has_default:
            assert "default" in parser.formatter_class("x")._get_help_string(action), (path, action.option_strings)
    help_text = parser.format_help()
    assert "%(default)" not in help_text
