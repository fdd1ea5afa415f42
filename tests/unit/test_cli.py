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


def test_fleet_status_shows_what_the_cloud_noticed_of_a_devices_messages(tmp_path, capsys):
    import json

    from nacelle.local.stack import Stack
    from shared.usecases.intake import record_rejected, track_sequence

    home = tmp_path / "home"
    state = Stack(home).state
    record_rejected(state, "turbine-01", "anomalies", "quota", "over 100 messages/s", 1.0, count=900)
    record_rejected(state, "turbine-01", "health", "schema", "field 'seq' is missing", 2.0)
    for seq in (1, 2, 5):
        track_sequence(state, "turbine-01", "health", seq)
    state.put("devices", "turbine-01", {"thing_name": "turbine-01", "model_version": 9,
                                        "unexpected_version": "turbine-01 reports model v9, which was never "
                                                              "deployed to it"})
    capsys.readouterr()  # the use cases' log lines
    assert main(["--data-dir", str(home), "fleet", "status", "--json"]) == 0
    (row,) = [r for r in json.loads(capsys.readouterr().out) if r["thing"] == "turbine-01"]
    assert row["messages_missing"] == {"health": 2}
    assert row["messages_refused"] == {"quota": 900, "schema": 1}
    assert main(["--data-dir", str(home), "fleet", "status"]) == 0
    assert ("turbine-01: turbine-01 reports model v9, which was never deployed to it; 2 health message(s) missing; "
            "900 refused (quota), 1 refused (schema)") in capsys.readouterr().out
