"""Every `nacelle` subcommand answers --help."""

from __future__ import annotations

import argparse

import pytest

from nacelle.cli import build_parser, main


def command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.append((*prefix, name))
                paths += command_paths(sub, (*prefix, name))
    return paths


PATHS = command_paths(build_parser())


def test_the_command_tree_is_complete():
    for expected in [("up",), ("data", "put"), ("data", "generate"), ("train",), ("evaluate",), ("demo",),
                     ("models", "list"), ("models", "approve"), ("jobs", "retry"), ("events", "dlq"),
                     ("alerts", "tail"), ("aws", "images")]:
        assert expected in PATHS


@pytest.mark.parametrize("path", PATHS, ids=" ".join)
def test_every_subcommand_has_help(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*path, "--help"])
    assert exit_info.value.code == 0
    assert "usage: nacelle" in capsys.readouterr().out
