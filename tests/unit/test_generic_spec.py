"""Any numeric multivariate CSV with a time column trains and evaluates by writing a spec, no code change."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from nacelle.cli import main

SPEC = """
spec_version: 2
name: pump-station
version: "1"
delimiter: ";"
time_column: ts
time_format: epoch_ms
label_column: fault
columns: [ts, flow, pressure, temp, fault]
features: [flow, pressure, temp]
sampling: {rate_hz: 1.0, tolerance: 0.2}
windows: {length_s: 40, stride_s: 4, max_gap_s: 5}
validation: {max_nan_fraction: 0.02, max_gap_s: 60, min_windows: 1}
"""


def write_plant(path, seed: int, hours: float) -> None:
    """A 1 Hz semicolon CSV: flow drives pressure; a labelled pressure fault in the second half."""
    rng = np.random.default_rng(seed)
    n = int(hours * 3600)
    flow = 10 + np.cumsum(rng.normal(0, 0.05, n)).clip(-3, 3) + rng.normal(0, 0.1, n)
    pressure = 2.0 * flow + rng.normal(0, 0.2, n)
    temp = 40 + 0.1 * np.arange(n) / n + rng.normal(0, 0.05, n)
    fault = np.zeros(n, dtype=int)
    a = int(n * 0.85)
    pressure[a:a + 120] += 3.0
    fault[a:a + 120] = 1
    ts = 1_767_225_600_000 + 1000 * np.arange(n)
    lines = ["ts;flow;pressure;temp;fault"] + [f"{t};{f:.3f};{p:.3f};{c:.3f};{x}"
                                                for t, f, p, c, x in zip(ts, flow, pressure, temp, fault, strict=True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def test_a_plant_csv_trains_and_evaluates_with_only_a_spec(tmp_path, capsys):
    spec = tmp_path / "pump.yaml"
    spec.write_text(SPEC)
    write_plant(tmp_path / "data" / "p1" / "p1_day1.csv", 1, 1.5)
    write_plant(tmp_path / "heldout" / "p1" / "p1_day2.csv", 2, 1.0)
    out = tmp_path / "job"
    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(out), "--spec", str(spec),
                 "--hp", "epochs=2"]) == 0
    manifest = json.loads((out / "model" / "manifest.json").read_text())
    assert manifest["feature_spec"]["name"] == "pump-station" and len(manifest["normalisation"]["mean"]) == 3
    assert manifest["threshold"]["value"] > 0 and manifest["model"]["family"] in ("pca", "conv1d")
    assert manifest["model"]["length"] == 40 and manifest["lineage"]["mode"] == "folds"  # 5400 samples
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out / "output" / "model.tar.gz"), "--data", str(tmp_path / "heldout")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["event"] is not None and result["event"]["per_fault"]["labelled"]["count"] == 1


def test_the_feature_pipeline_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None; "
            "import shared.ml.features, shared.ml.episodes, shared.ml.spec, shared.ml.validation, "
            "shared.ml.dataset, shared.ml.metrics, shared.ml.bundle, shared.ml.edge_bundle")
    subprocess.run([sys.executable, "-c", code], check=True)
