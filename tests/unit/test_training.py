"""The training job under the SageMaker contract, on the session's small models (conv1d and pca)."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch

from nacelle.cli import main
from nacelle.train_runner import run_training_job
from shared.ml.bundle import Manifest
from shared.ml.dataset import load_dataset
from shared.ml.feasibility import usable
from shared.ml.metrics import Allowance
from shared.ml.spec import default_spec
from training_jobs.bundle_io import load_model, read_manifest_from_tar
from training_jobs.evaluation import eval_set
from training_jobs.hyperparameters import Hyperparameters
from training_jobs.selection import CHOICE_RULE, plan
from training_jobs.train import METRIC_KEYS, score_champion


def test_model_tar_is_laid_out_like_sagemaker(trained_model):
    with tarfile.open(trained_model.model_archive) as tar:
        names = set(tar.getnames())
    assert {"manifest.json", "model.pt", "evaluation.json"} <= names
    assert all("/" not in n for n in names)  # files at the root, as SageMaker packs SM_MODEL_DIR


def test_manifest_carries_spec_statistics_threshold_rule_metrics_lineage(trained_model):
    raw = read_manifest_from_tar(trained_model.model_archive)
    manifest = Manifest.from_dict(raw)
    assert raw["format_version"] == 2
    # the requested spec with `drift.features: auto` resolved, as recorded in the lineage
    lineage = raw["lineage"]
    assert manifest.spec == default_spec().with_drift(lineage["drift_features"])
    assert manifest.spec.drift.features is not None
    assert manifest.family == "conv1d"
    assert manifest.mean.shape == manifest.std.shape == (6,) and (manifest.std > 0).all()
    # one threshold on the one score, calibrated for the target false-alarm rate
    calibration = raw["threshold"]["calibration"]
    assert manifest.threshold > 0 and calibration["threshold"] == manifest.threshold
    assert calibration["target_false_alarms_per_day"] == Hyperparameters().target_false_alarms_per_day
    assert calibration["method"] in ("gumbel", "max") and manifest.threshold >= calibration["highest"]
    assert calibration["margin"] == 1.0  # enough data for the calibrated level itself
    assert manifest.rule == manifest.spec.rule() and (manifest.rule.k, manifest.rule.n) == (16, 20)
    g = manifest.spec.geometry
    model = raw["model"]
    assert model["inputs"] == {"windows": ["batch", 6, g.width]}
    assert (model["length"], model["context"], model["context_step"]) == (g.length, g.context_inputs, g.context_step)
    assert model["outputs"] == {"score": ["batch"], "contributions": ["batch", 6], "missing": ["batch", 6]}
    assert set(model["per_feature"]) == set(manifest.spec.features)  # enough data: no glitch filter
    assert all(v["glitch_limit"] is None and v["tail_power"] > 0 for v in model["per_feature"].values())
    assert lineage["dataset_hash"] == "f" * 64 and lineage["job_name"] == "nacelle-test-conv1d"
    assert lineage["code_version"].startswith("0.1.0+")
    assert lineage["spec_digest"] == default_spec().digest()  # what was asked for...
    assert lineage["model_spec_digest"] == manifest.spec.digest()  # ...and what the model carries
    assert lineage["mode"] == "holdout" and lineage["usable_samples"] >= Hyperparameters().fold_below_samples
    assert raw["metrics"]["headline"]["event_f1"] is not None  # the quality gate always has numbers
    assert set(raw["metrics"]["headline"]) == set(METRIC_KEYS)
    assert len(raw["metrics"]["history"]) >= 1
    assert raw["selection"]["chosen"] == "conv1d" and raw["selection"]["rule"] == CHOICE_RULE


def test_the_pca_family_is_a_bundle_too(trained_pca):
    raw = read_manifest_from_tar(trained_pca.model_archive)
    manifest = Manifest.from_dict(raw)
    assert manifest.family == "pca" and raw["model"]["components"] >= 1
    assert raw["model"]["t2_weight"] == pytest.approx(Hyperparameters().pca_t2_weight)  # a float32 buffer
    assert raw["metrics"]["history"] == []  # nothing iterative to report
    assert raw["lineage"]["job_name"] == "nacelle-test-pca"


def test_metric_lines_report_and_evaluation_are_written(trained_model):
    log = trained_model.log_file.read_text()
    for name in (*METRIC_KEYS, "train_seconds", "family"):
        assert f"\n{name}=" in log
    assert "family=conv1d" in log
    assert "epoch 1/" in log  # progress is shown while training
    data = trained_model.job_dir / "output" / "data"
    assert (data / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    evaluation = json.loads((data / "evaluation.json").read_text())
    assert evaluation["data"]["labels"] in ("labelled", "injected") and evaluation["champion"] is None
    assert evaluation["data"]["mode"] == "holdout" and evaluation["data"]["turbines"] == ["wt-01", "wt-02"]
    selection = evaluation["selection"]
    assert selection["chosen"] == "conv1d" and selection["rule"] == CHOICE_RULE
    [candidate] = selection["candidates"]
    assert candidate["family"] == "conv1d" and candidate["calibration"]["threshold"] > 0
    assert evaluation["candidate"]["point"]["confusion"]  # point metrics are always present
    assert json.loads((trained_model.job_dir / "model" / "evaluation.json").read_text()) == evaluation


def test_holdout_slices_leave_a_gap_between_parts(small_dataset):
    spec = default_spec().with_drift([])
    series = load_dataset([small_dataset], spec)
    the_plan = plan(series, spec, Hyperparameters(), usable(series, spec).samples)
    assert the_plan.mode == "holdout"
    [split] = the_plan.splits
    for train, val, test in zip(split.train, split.held, the_plan.test, strict=True):
        assert train.turbine_id == val.turbine_id == test.turbine_id
        assert train.t[-1] + spec.window_seconds <= val.t[0]
        assert val.t[-1] + spec.window_seconds <= test.t[0]
        shares = np.array([train.duration_s, val.duration_s, test.duration_s]) / (test.t[-1] - train.t[0])
        np.testing.assert_allclose(shares, [0.70, 0.15, 0.15], atol=0.01)


def test_failure_file_names_the_bad_input(tmp_path, small_dataset):
    result = run_training_job(tmp_path / "bad-hp", "j", {"train": small_dataset}, {"epochz": "3"}, echo=None)
    assert not result.ok and "unknown hyperparameter" in (result.failure_reason or "")
    assert (tmp_path / "bad-hp" / "output" / "failure").is_file()

    broken = tmp_path / "broken" / "wt-09"
    broken.mkdir(parents=True)
    (broken / "wt-09_x.csv").write_text("not,a,turbine\n1,2,3\n")
    result = run_training_job(tmp_path / "bad-data", "j", {"train": broken.parent}, {}, echo=None)
    assert not result.ok and "wt-09_x.csv" in (result.failure_reason or "")


def test_champion_is_scored_on_the_same_data(trained_model, trained_pca, small_dataset, tmp_path):
    champion_dir = tmp_path / "champion"
    champion_dir.mkdir()
    (champion_dir / "model.tar.gz").write_bytes(trained_pca.model_archive.read_bytes())
    spec = load_model(trained_model.model_archive).manifest.spec
    pieces = [s.between(float(s.t[0]), float(s.t[0]) + 900.0) for s in load_dataset([small_dataset], spec)]
    held = eval_set(pieces, [], spec, Hyperparameters().injection_seed)
    result = score_champion(champion_dir, held, spec, Allowance.of(spec), {})
    assert result is not None and result["metrics"]["labels"] == "injected"
    assert result["metrics"]["counts"]["faults"] == len(held.faults) > 0  # the candidate's injected faults
    assert result["lineage"]["job_name"] == "nacelle-test-pca" and result["family"] == "pca"
    assert score_champion(tmp_path / "nothing-here", held, spec, Allowance.of(spec), {}) is None


def test_evaluate_prints_one_json_object(trained_model, small_dataset, capsys):
    assert main(["evaluate", "--model", str(trained_model.model_archive), "--data", str(small_dataset)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["event"]) == {"precision", "recall", "f1", "per_fault", "per_severity", "mean_delay_s"}
    assert set(out["point"]) == {"precision", "recall", "f1", "far", "mar", "confusion"}
    assert out["false_alarms_per_turbine_day"] is not None


def test_evaluate_without_labels_gives_null_event_metrics_and_exit_0(trained_model, small_dataset, tmp_path,
                                                                      capsys):
    unlabelled = tmp_path / "unlabelled"
    for src in small_dataset.rglob("*.csv.gz"):
        dst = unlabelled / src.relative_to(small_dataset)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
    assert main(["evaluate", "--model", str(trained_model.model_archive), "--data", str(unlabelled)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["event"] is None
    assert out["point"]["mar"] is None and out["point"]["recall"] == 0.0  # no faulty sample to miss
    assert out["point"]["far"] is not None and out["point"]["confusion"]["tp"] == 0


@pytest.mark.parametrize("fixture", ["trained_model", "trained_pca"])
def test_loaded_model_scores_windows(fixture, request):
    model = load_model(request.getfixturevalue(fixture).model_archive)
    width = model.manifest.spec.geometry.width
    x = np.random.default_rng(0).normal(0, 1, (3, 6, width)).astype(np.float32)
    x[1, 5, -50:] = np.nan  # half of the scored samples of one feature
    x[2, 0, :] = 0.25  # a frozen sensor: as good as missing
    with torch.no_grad():
        score, contributions, missing = model.scorer(torch.from_numpy(x))
    assert score.shape == (3,) and contributions.shape == missing.shape == (3, 6)
    assert missing[1, 5].item() == pytest.approx(0.5) and missing[0].sum().item() == 0
    assert missing[2].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert torch.isfinite(score).all() and (contributions >= 0).all()
    # The contributions are the terms of the power mean: score**4 is their sum, plus for PCA the
    # weighted Hotelling T² term, which no feature owns.
    total, fourth = contributions.double().sum(dim=1), score.double().pow(4)
    if model.manifest.family == "pca":
        assert (fourth >= total * (1 - 1e-5)).all()
    else:
        torch.testing.assert_close(fourth, total, rtol=1e-4, atol=0.0)


def test_a_local_job_computes_with_no_more_threads_than_the_cores_it_is_given(trained_model):
    """Oversubscribed torch/BLAS threads on a shared machine slow training many times over."""
    import os
    import re

    from nacelle.train_runner import available_cores, job_threads

    log = trained_model.log_file.read_text()
    threads = int(re.search(r"(\d+) thread\(s\)", log).group(1))  # type: ignore[union-attr]
    assert threads == min(available_cores(), int(os.environ.get("OMP_NUM_THREADS") or available_cores()))
    assert job_threads({"threads": "1"}) == 1 and job_threads({}) == available_cores() == len(os.sched_getaffinity(0))
    assert job_threads({"threads": "many"}) == available_cores()  # the job reports the bad value, not the runner


def test_the_job_runner_yields_the_cores_to_the_devices(tmp_path):
    import os
    import subprocess
    import sys

    from nacelle.local.runtime.jobrunner import JOB_NICENESS

    run = subprocess.run([sys.executable, "-m", "nacelle.local.runtime.jobrunner", str(tmp_path), "no-such-job"],
                         capture_output=True, text=True, check=False)
    assert run.stdout.splitlines()[0] == f"job runner at nice {min(os.nice(0) + JOB_NICENESS, 19)}"
