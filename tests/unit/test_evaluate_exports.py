"""`nacelle evaluate --episodes/--points`: CSV and JSON shapes, stdout handling, labelled and unlabelled data."""

from __future__ import annotations

import csv
import io
import json
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from nacelle.cli import main
from nacelle.train_runner import run_training_job
from shared.ml.metrics import flagged_samples
from tests.unit.tiny_plant import T0, write_labels, write_plant, write_spec

FAULT_ROWS = (400, 520)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PCA model trained on 600 clean rows (a few seconds)."""
    root = tmp_path_factory.mktemp("tiny-model")
    write_plant(root / "train" / "p1" / "p1_train.csv", rows=600, seed=2)
    result = run_training_job(root / "job", "tiny-pca", {"train": root / "train"}, {"families": "pca"},
                              spec_file=write_spec(root / "tiny.yaml"), echo=None)
    assert result.ok, result.log_file.read_text()
    assert result.model_archive is not None
    return result.model_archive


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """900 later rows with a step fault on `b` and its labels.json."""
    root = tmp_path_factory.mktemp("labelled")
    start = T0 + 86_400
    write_plant(root / "p1" / "p1_test.csv", rows=900, seed=3, start=start, fault=FAULT_ROWS)
    write_labels(root / "labels.json", [{"turbine_id": "p1", "fault": "step", "severity": "high",
                                         "start": start + FAULT_ROWS[0], "end": start + FAULT_ROWS[1] - 1}])
    return root


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory: pytest.TempPathFactory, labelled: Path) -> Path:
    root = tmp_path_factory.mktemp("unlabelled")
    shutil.copytree(labelled / "p1", root / "p1")
    return root


@pytest.fixture(scope="module")
def reference(tiny_model: Path, labelled: Path) -> tuple[list, list]:
    """What evaluate_model_on returns for the labelled data: (scored, episodes)."""
    from training_jobs.evaluation import evaluate_model_on

    _, scored, episodes, _, _ = evaluate_model_on(tiny_model, labelled)
    return scored, episodes


def evaluate(capsys: pytest.CaptureFixture[str], model: Path, data: Path, *extra: str) -> tuple[int, str, str]:
    code = main(["evaluate", "--model", str(model), "--data", str(data), *extra])
    out, err = capsys.readouterr()
    return code, out, err


def test_points_and_episodes_csv(tmp_path, tiny_model, labelled, reference, capsys):
    scored, episodes = reference
    assert episodes, "the step fault should open an episode"
    code, out, _ = evaluate(capsys, tiny_model, labelled, "--points", str(tmp_path / "points.csv"),
                            "--episodes", str(tmp_path / "out" / "episodes.csv"))
    assert code == 0
    metrics = json.loads(out)  # the metrics stay on stdout
    assert metrics["event"]["per_fault"]["step"]["count"] == 1

    with (tmp_path / "points.csv").open(newline="") as fh:
        points = list(csv.DictReader(fh))
    assert list(points[0]) == ["turbine_id", "time", "epoch_s", "flagged", "fault"]
    t = scored[0].t
    assert len(points) == len(t) == 900
    assert [float(p["epoch_s"]) for p in points] == t.tolist()
    assert points[0]["time"] == "2026-01-02T00:00:00Z" and points[0]["epoch_s"] == str(T0 + 86_400)
    expected = flagged_samples(t, episodes).astype(int)
    assert np.array_equal(np.array([int(p["flagged"]) for p in points]), expected)
    assert sum(int(p["fault"]) for p in points) == FAULT_ROWS[1] - FAULT_ROWS[0]

    with (tmp_path / "out" / "episodes.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["turbine_id", "episode_id", "started_at", "started_at_epoch_s", "opened_at",
                             "opened_at_epoch_s", "ended_at", "ended_at_epoch_s", "closed_at", "closed_at_epoch_s",
                             "peak_ratio", "features", "missing"]
    assert len(rows) == len(episodes)
    first, ep = rows[0], sorted(episodes, key=lambda e: e.started_at)[0]
    assert first["episode_id"] == ep.episode_id and float(first["ended_at_epoch_s"]) == ep.last_flagged_at
    assert datetime.fromisoformat(first["started_at"]).timestamp() == ep.started_at
    assert float(first["peak_ratio"]) > 1.0 and "b" in first["features"].split(";")


def test_episodes_json_and_points_to_stdout(tmp_path, tiny_model, labelled, reference, capsys):
    _, episodes = reference
    code, out, err = evaluate(capsys, tiny_model, labelled, "--episodes", str(tmp_path / "episodes.json"),
                              "--points", "-", "--format", "json")
    assert code == 0
    assert "event" in json.loads(err)  # the metrics moved to stderr
    points = json.loads(out)["points"]
    assert set(points[0]) == {"turbine_id", "time", "epoch_s", "flagged", "fault"}
    assert sum(p["flagged"] for p in points) == int(flagged_samples(np.array([p["epoch_s"] for p in points]),
                                                                     episodes).sum())
    doc = json.loads((tmp_path / "episodes.json").read_text())
    assert list(doc) == ["episodes"] and len(doc["episodes"]) == len(episodes)
    ep = doc["episodes"][0]
    assert isinstance(ep["features"], list) and isinstance(ep["missing"], list)
    assert ep["opened_at_epoch_s"] >= ep["started_at_epoch_s"] and ep["opened_at"].endswith("Z")


def test_without_labels_points_have_no_fault_column(tmp_path, tiny_model, unlabelled, capsys):
    code, out, err = evaluate(capsys, tiny_model, unlabelled, "--points", "-")
    assert code == 0 and json.loads(err)["event"] is None
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["turbine_id", "time", "epoch_s", "flagged"] and len(rows) == 901
    code, out, _ = evaluate(capsys, tiny_model, unlabelled, "--episodes", str(tmp_path / "e.txt"))
    assert code == 0 and json.loads(out)["counts"]["faults"] == 0
    assert (tmp_path / "e.txt").read_text().startswith("turbine_id,episode_id,started_at,")  # csv by default


def test_only_one_output_can_use_stdout(tiny_model, labelled, capsys):
    code, _, err = evaluate(capsys, tiny_model, labelled, "--points", "-", "--episodes", "-")
    assert code == 2 and "only one of --episodes and --points" in err


def test_exports_never_overwrite_the_data_or_each_other(tmp_path, tiny_model, labelled, capsys):
    data_file = next(p for p in sorted(labelled.rglob("*")) if p.is_file())
    before = data_file.read_bytes()
    for extra, says in ((["--points", str(data_file)], "would overwrite"),
                        (["--episodes", str(labelled / "new.csv")], "would overwrite"),
                        (["--points", str(tmp_path / "x.csv"), "--episodes", str(tmp_path / "x.csv")], "same file")):
        code, _, err = evaluate(capsys, tiny_model, labelled, *extra)
        assert code == 2 and says in err
    assert data_file.read_bytes() == before and not (labelled / "new.csv").exists()


def test_one_data_file_can_be_evaluated_like_a_folder(tiny_model, unlabelled, capsys):
    data_file = next(p for p in sorted(unlabelled.rglob("*.csv")))
    code, out, _ = evaluate(capsys, tiny_model, data_file)
    assert code == 0 and json.loads(out)["counts"]["turbine_days"] > 0
