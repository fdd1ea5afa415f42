"""The training job under the SageMaker contract, on the session's small model."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest

from nacelle.cli import main
from nacelle.train_runner import run_training_job
from shared.ml.bundle import Manifest
from shared.ml.dataset import load_dataset
from shared.ml.spec import default_spec
from training_jobs.bundle_io import load_model, read_manifest_from_tar
from training_jobs.hyperparameters import Hyperparameters
from training_jobs.train import chronological_split


def test_model_tar_is_laid_out_like_sagemaker(trained_model):
    with tarfile.open(trained_model.model_archive) as tar:
        names = set(tar.getnames())
    assert {"manifest.json", "model.pt", "evaluation.json"} <= names
    assert all("/" not in n for n in names)  # files at the root, as SageMaker packs SM_MODEL_DIR


def test_manifest_carries_spec_statistics_thresholds_rule_metrics_lineage(trained_model):
    raw = read_manifest_from_tar(trained_model.model_archive)
    manifest = Manifest.from_dict(raw)
    assert manifest.spec == default_spec()
    assert manifest.thresholds.shape == (6,) and (manifest.thresholds > 0).all()
    assert raw["thresholds"]["quantile"] == Hyperparameters().threshold_quantile
    assert raw["episode_rule"]["k"] <= raw["episode_rule"]["n"]
    lineage = raw["lineage"]
    assert lineage["dataset_hash"] == "f" * 64 and lineage["job_name"] == "nacelle-test-small"
    assert lineage["code_version"].startswith("0.1.0+")
    assert raw["metrics"]["headline"]["event_f1"] is not None  # the quality gate always has numbers
    assert len(raw["metrics"]["history"]) >= 1


def test_metric_lines_report_and_evaluation_are_written(trained_model):
    log = trained_model.log_file.read_text()
    for name in ("event_f1=", "false_alarms_per_turbine_day=", "train_seconds="):
        assert name in log
    assert "epoch 1/" in log  # progress is shown while training
    data = trained_model.job_dir / "output" / "data"
    assert (data / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    evaluation = json.loads((data / "evaluation.json").read_text())
    assert evaluation["data"]["labels"] in ("labelled", "injected") and evaluation["champion"] is None


def test_chronological_split_leaves_a_gap_between_parts(small_dataset):
    spec = default_spec()
    series = load_dataset([small_dataset], spec)
    parts = chronological_split(series, Hyperparameters(), gap_s=spec.window_seconds)
    for train, val, test in zip(parts["train"], parts["val"], parts["test"], strict=True):
        assert train.t[-1] + spec.window_seconds <= val.t[0]
        assert val.t[-1] + spec.window_seconds <= test.t[0]


def test_failure_file_names_the_bad_input(tmp_path, small_dataset):
    result = run_training_job(tmp_path / "bad-hp", "j", {"train": small_dataset}, {"epochz": "3"}, echo=None)
    assert not result.ok and "unknown hyperparameter" in (result.failure_reason or "")
    assert (tmp_path / "bad-hp" / "output" / "failure").is_file()

    broken = tmp_path / "broken" / "wt-09"
    broken.mkdir(parents=True)
    (broken / "wt-09_x.csv").write_text("not,a,turbine\n1,2,3\n")
    result = run_training_job(tmp_path / "bad-data", "j", {"train": broken.parent}, {}, echo=None)
    assert not result.ok and "wt-09_x.csv" in (result.failure_reason or "")


def test_champion_is_scored_on_the_same_data(trained_model, small_dataset, tmp_path):
    from training_jobs.train import score_champion

    champion_dir = tmp_path / "champion"
    champion_dir.mkdir()
    (champion_dir / "model.tar.gz").write_bytes(trained_model.model_archive.read_bytes())
    series = load_dataset([small_dataset], default_spec())
    result = score_champion(champion_dir, series, [], Hyperparameters())
    assert result is not None and result["metrics"]["labels"] == "injected"
    assert result["lineage"]["job_name"] == "nacelle-test-small"


def test_evaluate_prints_one_json_object(trained_model, small_dataset, capsys):
    assert main(["evaluate", "--model", str(trained_model.model_archive), "--data", str(small_dataset)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["event"]) == {"precision", "recall", "f1", "per_fault", "per_severity", "mean_delay_s"}
    assert set(out["point"]) == {"precision", "recall", "f1"}
    assert out["false_alarms_per_turbine_day"] is not None


def test_evaluate_without_labels_gives_nulls_and_exit_0(trained_model, small_dataset, tmp_path, capsys):
    unlabelled = tmp_path / "unlabelled"
    for src in small_dataset.rglob("*.csv.gz"):
        dst = unlabelled / src.relative_to(small_dataset)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
    assert main(["evaluate", "--model", str(trained_model.model_archive), "--data", str(unlabelled)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["event"] is None and out["point"] is None


def test_loaded_model_scores_windows(trained_model):
    model = load_model(trained_model.model_archive)
    x = np.zeros((3, 6, 100), dtype=np.float32)
    x[1, 5, :50] = np.nan
    errors, missing = model.scoring(__import__("torch").from_numpy(x))
    assert errors.shape == (3, 6) and missing[1, 5].item() == pytest.approx(0.5)
