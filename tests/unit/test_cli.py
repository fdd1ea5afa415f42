"""Every `nacelle` subcommand answers --help."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from nacelle.cli import build_parser, main
from tests.unit.tiny_plant import write_plant, write_spec


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
                     ("alerts", "tail"), ("aws", "images"), ("spec", "check"), ("spec", "put")]:
        assert expected in PATHS


@pytest.mark.parametrize("path", PATHS, ids=" ".join)
def test_every_subcommand_has_help(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*path, "--help"])
    assert exit_info.value.code == 0
    assert "usage: nacelle" in capsys.readouterr().out


def test_train_with_a_relative_out_directory(tmp_path, monkeypatch, capsys):
    """The job runs with its directory as cwd: relative --out, --data and --spec must still resolve."""
    monkeypatch.chdir(tmp_path)
    write_plant(Path("data") / "p1.csv", rows=400)
    write_spec(Path("tiny.yaml"))
    assert main(["train", "--data", "data", "--out", "job", "--spec", "tiny.yaml", "--hp", "families=pca"]) == 0
    assert (tmp_path / "job" / "output" / "model.tar.gz").is_file()
    assert (tmp_path / "job" / "input" / "data" / "spec" / "tiny.yaml").is_file()
    assert "model:  " in capsys.readouterr().out
