"""The training job end to end on little data: a 10-second-sampled 3-sensor CSV with the spec's defaults."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nacelle.train_runner import run_training_job
from shared.ml.bundle import Manifest
from training_jobs.bundle_io import read_manifest_from_tar
from training_jobs.selection import CHOICE_RULE, SHORT_DATA_MARGIN

SPEC = """\
spec_version: 2
name: slow-plant
version: "1"
time_column: time
time_format: epoch_s
columns: [time, flow, pressure, coolant]
features: [flow, pressure, coolant]
sampling: {rate_hz: 0.1}
"""
T0 = 1_767_225_600


def write_plant(path: Path, rows: int, seed: int = 0) -> Path:
    """One record every 10 s: pressure follows flow (which cycles with the process), the coolant warms
    slowly through the run."""
    rng = np.random.default_rng(seed)
    flow = 20 + 2 * np.sin(2 * np.pi * np.arange(rows) / 150) + rng.normal(0, 0.4, rows)
    pressure = 0.5 * flow + rng.normal(0, 0.1, rows)
    coolant = 30 + 0.004 * np.arange(rows) + rng.normal(0, 0.1, rows)
    t = T0 + 10 * np.arange(rows)
    lines = ["time,flow,pressure,coolant"] + [f"{a},{b:.3f},{c:.3f},{d:.3f}"
                                              for a, b, c, d in zip(t, flow, pressure, coolant, strict=True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "slow-plant.yaml"
    path.write_text(SPEC, encoding="utf-8")
    return path


HPS = {"seed": 1, "epochs": 5, "threads": 1}  # the spec's defaults; a short autoencoder fit


def test_a_small_slow_dataset_trains_with_folds_and_injected_faults(tmp_path, spec_file):
    write_plant(tmp_path / "data" / "unit1" / "run.csv", 3000)
    result = run_training_job(tmp_path / "job", "small-job", {"train": tmp_path / "data"}, HPS, spec_file,
                              echo=None)
    log = result.log_file.read_text()
    assert result.ok, log
    evaluation = json.loads((result.job_dir / "output" / "data" / "evaluation.json").read_text())
    assert evaluation["data"]["mode"] == "folds" and evaluation["data"]["labels"] == "injected"
    candidate = evaluation["candidate"]
    assert candidate["counts"]["faults"] > 0 and candidate["event"] is not None
    assert candidate["event"]["f1"] is not None and candidate["false_alarms_per_turbine_day"] is not None
    assert "fault(s) (sized 1, 0.5, 0.25 times the gate's, in turn)" in log  # the choice sees smaller faults...
    assert set(candidate["event"]["per_severity"]) == {"medium"}  # ...the gate judges full-size ones
    selection = evaluation["selection"]
    fitted = [c["family"] for c in selection["candidates"]]
    assert sorted(fitted + [s["family"] for s in selection["skipped"]]) == ["conv1d", "pca"] and "pca" in fitted
    assert selection["chosen"] in ("pca", "conv1d") and selection["rule"] == CHOICE_RULE
    assert selection["reason"].startswith(selection["chosen"])
    assert result.model_archive is not None
    raw = read_manifest_from_tar(result.model_archive)
    manifest = Manifest.from_dict(raw)
    assert manifest.family == selection["chosen"]
    assert manifest.spec.drift.features == ("coolant",)  # "auto" picked the warming channel only
    g = manifest.spec.geometry  # the 0.1 Hz defaults: 10 records scored after a 200 s baseline, every record
    assert (g.length, g.context, g.stride) == (10, 20, 1)
    assert raw["model"]["inputs"] == {"windows": ["batch", 3, 30]}
    settings = raw["model"]["per_feature"]  # short data: lone bad readings filtered, each feature its own limit
    assert set(settings) == {"flow", "pressure", "coolant"}
    assert all(v["glitch_limit"] > 0 and v["tail_power"] > 0 for v in settings.values())
    assert "per feature (tail power, glitch limit): flow " in log
    assert raw["lineage"]["mode"] == "folds" and raw["lineage"]["usable_samples"] == 3000
    chosen = next(c for c in selection["candidates"] if c["family"] == selection["chosen"])
    assert manifest.threshold == chosen["calibration"]["threshold"]
    assert chosen["calibration"]["margin"] == SHORT_DATA_MARGIN  # minutes of data: a wider threshold
    assert len(chosen["settings"]) == 5  # one fit per fold


def test_too_little_data_is_refused_with_the_reason(tmp_path, spec_file):
    write_plant(tmp_path / "data" / "unit1" / "run.csv", 250)
    result = run_training_job(tmp_path / "job", "tiny-job", {"train": tmp_path / "data"}, HPS, spec_file,
                              echo=None)
    assert not result.ok and result.model_archive is None
    reason = (result.job_dir / "output" / "failure").read_text()
    assert reason == result.failure_reason
    assert "only 250 usable sample(s): training needs at least 300 samples" in reason
    assert "Add data, shorten windows.length_s, or raise windows.max_gap_s" in reason
    assert not (result.job_dir / "model" / "manifest.json").exists()


def test_turbine_levels_are_read_in_training_and_travel_in_the_model(tmp_path):
    """Two units whose pressure sensors read 3 bar apart: each is placed at the fleet's level, the offsets
    are logged and stored in the manifest, and `nacelle evaluate` applies them to the same units."""
    from training_jobs.evaluation import evaluate_model_on

    spec_file = tmp_path / "levels.yaml"
    spec_file.write_text(SPEC + "turbine_levels: [pressure]\n", encoding="utf-8")
    write_plant(tmp_path / "data" / "unit1" / "run.csv", 400, seed=1)
    high = write_plant(tmp_path / "data" / "unit2" / "run.csv", 400, seed=2)
    lines = high.read_text().splitlines()
    shifted = [lines[0]] + [",".join([a, b, f"{float(c) + 3.0:.3f}", d]) for a, b, c, d in
                            (line.split(",") for line in lines[1:])]
    high.write_text("\n".join(shifted) + "\n", encoding="utf-8")
    result = run_training_job(tmp_path / "job", "levels-job", {"train": tmp_path / "data"},
                              {**HPS, "families": "pca"}, spec_file, echo=None)
    log = result.log_file.read_text()
    assert result.ok, log
    assert "turbine levels (offsets from the fleet's): unit1 pressure -1.5" in log
    assert result.model_archive is not None
    manifest = Manifest.from_dict(read_manifest_from_tar(result.model_archive))
    assert manifest.spec.turbine_levels == ("pressure",)
    assert manifest.offsets("unit1")[1] == pytest.approx(-1.5, abs=0.05)
    assert manifest.offsets("unit2")[1] == pytest.approx(1.5, abs=0.05)
    assert manifest.offsets("unit1")[[0, 2]].tolist() == [0.0, 0.0]
    _, scored, _, _, _ = evaluate_model_on(result.model_archive, tmp_path / "data")
    assert {s.turbine_id for s in scored} == {"unit1", "unit2"}
    assert max(float(np.median(s.scores)) for s in scored) < manifest.threshold  # neither unit reads as anomalous
