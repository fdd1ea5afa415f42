"""`nacelle spec check` (validation, feasibility, derived settings, verdict) and `nacelle spec put`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nacelle.cli import main
from tests.unit.tiny_plant import SPEC, write_plant, write_spec


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    return write_spec(tmp_path / "tiny.yaml")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_good_dataset_is_trainable_and_shows_what_the_defaults_become(tmp_path, spec_file, capsys):
    write_plant(tmp_path / "data" / "p1" / "p1_day1.csv", rows=400)
    code, out, _ = run(capsys, "spec", "check", str(tmp_path / "data"), "--spec", str(spec_file))
    assert code == 0, out
    assert "ok      " in out and "p1_day1.csv: 400 rows, turbine(s) p1" in out
    assert ("reads       delimiter ',', decimal '.', epoch seconds in 'time', the turbine from the file's folder "
            "(or name)") in out  # how its cells are read
    assert "10 s = 10 samples" in out and "[default: length_s]" in out  # 5 s at 1 Hz is below 10 samples
    assert "stride           1 s = 1 sample(s)" in out
    assert "auto -> c (on this data)" in out  # the warming channel
    assert "k = 15 of n = 20 windows" in out and "m = 20 windows" in out
    assert "5 blocked time-series folds" in out and "pca, conv1d" in out
    assert "x 1.3 (short data)" in out  # the threshold margin the job will use
    assert "a window stays in alarm down to 80% of the threshold  [default: release_ratio]" in out
    assert "verdict: trainable: enough data: 400 usable samples" in out


def test_a_bad_file_fails_naming_the_file_and_the_reason(tmp_path, spec_file, capsys):
    write_plant(tmp_path / "data" / "p1.csv", rows=400)
    bad = write_plant(tmp_path / "data" / "p2.csv", rows=400, seed=1)
    lines = bad.read_text().splitlines()
    lines[5] = lines[5].rsplit(",", 1)[0] + ",warm"
    bad.write_text("\n".join(lines) + "\n")
    code, out, _ = run(capsys, "spec", "check", str(tmp_path / "data"), "--spec", str(spec_file))
    assert code == 1
    assert f"FAILED  {bad}: 1 error(s)" in out
    assert f"{bad}, line 6, column 'c': 'warm' is not a number" in out
    assert "1 of 2 file(s) failed validation" in out and "verdict: NOT trainable" in out
    assert "p1.csv: 400 rows" in out and "usable samples" in out  # the valid file is still judged


def test_too_little_data_names_the_cause(tmp_path, spec_file, capsys):
    write_plant(tmp_path / "short.csv", rows=120)
    code, out, _ = run(capsys, "spec", "check", str(tmp_path / "short.csv"), "--spec", str(spec_file))
    assert code == 1
    assert "only 120 usable sample(s): training needs at least 300 samples" in out and "Add data" in out


def test_gaps_that_leave_no_window_are_named(tmp_path, spec_file, capsys):
    write_plant(tmp_path / "data" / "gappy.csv", rows=400, every=8)  # runs of 8 samples, 11 s apart
    code, out, _ = run(capsys, "spec", "check", str(tmp_path / "data"), "--spec", str(spec_file))
    assert code == 1
    assert "only 0 usable sample(s)" in out and "50 of them shorter than that" in out
    assert "49 gap(s) longer than windows.max_gap_s = 5 s" in out and "raise windows.max_gap_s" in out


def test_json_output(tmp_path, spec_file, capsys):
    write_plant(tmp_path / "data" / "p1.csv", rows=400)
    code, out, _ = run(capsys, "spec", "check", str(tmp_path / "data"), "--spec", str(spec_file), "--json")
    assert code == 0
    doc = json.loads(out)
    assert set(doc) == {"spec", "files", "problems", "turbines", "usable", "labelled_faults", "settings",
                        "training", "verdict"}
    assert doc["spec"]["name"] == "tiny-plant" and len(doc["spec"]["digest"]) == 64
    assert doc["files"] == [{"path": str(tmp_path / "data" / "p1.csv"), "ok": True, "rows": 400, "turbines": ["p1"],
                             "errors": 0, "warnings": 0, "problems": []}]
    turbine = doc["turbines"][0]
    assert turbine["turbine_id"] == "p1" and turbine["samples"] == 400 and turbine["rate_hz"] == 1.0
    assert turbine["start"] == "2026-01-01T00:00:00Z" and turbine["gaps"] == 0 and turbine["usable_samples"] == 400
    s = doc["settings"]
    assert s["windows"]["length_samples"] == 10 and s["windows"]["stride_samples"] == 1
    assert s["drift"] == {"declared": "auto", "features": ["c"], "baseline_s": 20.0, "baseline_samples": 20}
    assert (s["episodes"]["k"], s["episodes"]["n"], s["episodes"]["m"]) == (15, 20, 20)
    assert s["evaluation"]["detection_tolerance_s"] == 120.0 and s["validation"]["max_gap_s"] == 144.0
    assert "windows.length_s" in s["defaulted"] and "sampling.tolerance" in s["defaulted"]
    t = doc["training"]
    assert t["mode"] == "folds" and t["folds"] == 5 and t["families"] == ["pca", "conv1d"]
    assert t["autoencoder"]["batch_size"] >= 16 and t["autoencoder"]["epochs"] >= 10
    assert doc["verdict"]["trainable"] is True and doc["verdict"]["reasons"] == []


def test_hyperparameters_change_the_verdict(tmp_path, spec_file, capsys):
    write_plant(tmp_path / "data" / "p1.csv", rows=400)
    code, out, _ = run(capsys, "spec", "check", str(tmp_path / "data"), "--spec", str(spec_file), "--json",
                       "--hp", "min_samples=1000", "fold_below_samples=100")
    doc = json.loads(out)
    assert code == 1 and doc["verdict"]["trainable"] is False and doc["training"]["mode"] == "holdout"


def test_declared_timescales_are_not_defaults(tmp_path, capsys):
    spec = write_spec(tmp_path / "s.yaml", SPEC + "windows: {length_s: 20, stride_s: 5}\n"
                                                  "drift: {features: [], baseline_s: 0}\n")
    write_plant(tmp_path / "p1.csv", rows=400)
    code, out, _ = run(capsys, "spec", "check", str(tmp_path / "p1.csv"), "--spec", str(spec), "--json")
    s = json.loads(out)["settings"]
    assert code == 0 and s["windows"]["stride_samples"] == 5 and s["drift"]["features"] == []
    assert "windows.length_s" not in s["defaulted"] and "drift.features" not in s["defaulted"]
    assert (s["episodes"]["k"], s["episodes"]["n"], s["episodes"]["m"]) == (6, 8, 8)  # 30 s of 40 s, 40 s at 5 s


def test_usage_errors_exit_2(tmp_path, spec_file, capsys):
    code, _, err = run(capsys, "spec", "check", str(tmp_path / "nowhere"), "--spec", str(spec_file))
    assert code == 2 and "no such file or directory" in err
    write_plant(tmp_path / "p1.csv")
    code, _, err = run(capsys, "spec", "check", str(tmp_path / "p1.csv"), "--spec", str(tmp_path / "none.yaml"))
    assert code == 2 and "cannot read feature spec" in err
    broken = write_spec(tmp_path / "broken.yaml", SPEC.replace("features: [a, b, c]", "features: [a, z]"))
    code, _, err = run(capsys, "spec", "check", str(tmp_path / "p1.csv"), "--spec", str(broken))
    assert code == 2 and "feature 'z' needs column 'z'" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "spec", "check", str(tmp_path / "empty"), "--spec", str(spec_file))
    assert code == 2 and "no data files" in err


# -- spec put -----------------------------------------------------------------------------------------
def installed(home: Path, group: str = "nacelle-turbine") -> list[str]:
    folder = home / "objects" / "nacelle-data" / "specs" / group
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_spec_put_installs_replaces_and_is_idempotent(tmp_path, spec_file, capsys):
    from nacelle.local.runtime.stack import Stack
    from shared.usecases.retraining import load_group_spec

    home = tmp_path / "home"
    code, out, _ = run(capsys, "--data-dir", str(home), "spec", "put", str(spec_file))
    assert code == 0 and "installed specs/nacelle-turbine/tiny.yaml: spec 'tiny-plant'" in out
    assert installed(home) == ["tiny.yaml"]
    code, out, _ = run(capsys, "spec", "put", str(spec_file), "--data-dir", str(home))
    assert code == 0 and out.startswith("already installed (identical) specs/nacelle-turbine/tiny.yaml")

    newer = write_spec(tmp_path / "tiny-v2.json", json.dumps({
        "name": "tiny-plant", "version": "2", "time_column": "time", "time_format": "epoch_s",
        "columns": ["time", "a", "b", "c"], "features": ["a", "b"], "sampling": {"rate_hz": 1.0}}))
    code, out, _ = run(capsys, "--data-dir", str(home), "spec", "put", str(newer))
    assert code == 0 and "removed specs/nacelle-turbine/tiny.yaml" in out
    assert installed(home) == ["tiny-v2.json"]
    spec, key = load_group_spec(Stack(home).store, "nacelle-turbine")
    assert key == "specs/nacelle-turbine/tiny-v2.json" and spec.version == "2" and spec.features == ("a", "b")
    digest = spec.digest()
    assert digest in out

    code, out, _ = run(capsys, "--data-dir", str(home), "spec", "put", str(spec_file), "--group", "pumps")
    assert code == 0 and installed(home, "pumps") == ["tiny.yaml"] and installed(home) == ["tiny-v2.json"]


def test_spec_put_refuses_an_invalid_spec(tmp_path, spec_file, capsys):
    home = tmp_path / "home"
    assert main(["--data-dir", str(home), "spec", "put", str(spec_file)]) == 0
    broken = write_spec(tmp_path / "broken.yaml", SPEC.replace("rate_hz: 1.0", "rate_hz: -1"))
    code, _, err = run(capsys, "--data-dir", str(home), "spec", "put", str(broken))
    assert code == 2 and "sampling.rate_hz must be > 0" in err
    assert installed(home) == ["tiny.yaml"]
    code, _, err = run(capsys, "--data-dir", str(home), "spec", "put", str(write_spec(tmp_path / "spec.txt")))
    assert code == 2 and "must end with one of .yaml, .yml, .json" in err
    fresh = tmp_path / "fresh"
    assert main(["--data-dir", str(fresh), "spec", "put", str(broken)]) == 2
    assert not fresh.exists()  # refused before the stack is created


def test_turbine_levels_and_a_stuck_sensor_seen_behind_a_difference_are_shown(tmp_path, capsys):
    spec = write_spec(tmp_path / "s.yaml", SPEC.replace("features: [a, b, c]", "features: [a, b, c_rise]")
                      + "derived: [{name: c_rise, kind: difference, inputs: {value: c, reference: b}}]\n"
                      + "turbine_levels: [b]\n")
    write_plant(tmp_path / "p1.csv", rows=400)
    code, out, _ = run(capsys, "spec", "check", str(tmp_path / "p1.csv"), "--spec", str(spec))
    assert code == 0 and "turbine levels   b: each turbine's against its own level in the training data" in out
    assert "stuck sensors    also seen behind c_rise (c)" in out


def test_context_features_are_shown(tmp_path, capsys):
    spec = write_spec(tmp_path / "s.yaml", SPEC + "context_features: [a]\n")
    write_plant(tmp_path / "p1.csv", rows=400)
    code, out, _ = run(capsys, "spec", "check", str(tmp_path / "p1.csv"), "--spec", str(spec))
    assert code == 0 and ("context          a: inputs the others are judged by, never an alarm by themselves "
                          "(still flagged when missing or stuck)") in out
