"""Field data in training (training_jobs/field_data.py): captured episodes without a verdict are left out, a fault
verdict keeps every captured window out of the normal training data, a false-alarm verdict is normal data and a hard
example; the gate reports "fires on k of n" and refuses a regression against the champion; the registry keeps it."""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from nacelle.simulator.generate import csv_bytes
from nacelle.simulator.physics import TurbineModel
from shared.capture import EPISODE, NORMAL, CaptureName, capture_key, capture_label_key
from shared.gate import GatePolicy, apply_gate
from shared.ml.dataset import TurbineSeries, load_all_labels, load_dataset
from shared.ml.metrics import Fault
from shared.ml.spec import default_spec
from shared.usecases.registration import RegistrationDeps, on_training_finished
from tests.fakes import Clock, MemoryRegistry, MemoryState, MemoryStore, RecordingEvents, RecordingNotifier
from tests.unit.test_registration import GROUP, JOB, MANIFEST, metrics, running_job
from training_jobs.calibration import Calibration
from training_jobs.evaluation import Detector
from training_jobs.field_data import (
    candidate_judge,
    false_alarm_spans,
    hard_example_report,
    unverified_captures,
)
from training_jobs.selection import Candidate, Plan, Split, normal_windows

SPEC = default_spec().with_drift(())
THING = "turbine-01"
START = datetime(2026, 3, 1, tzinfo=UTC)


def write(root: Path, key: str, data: bytes | dict[str, Any]) -> None:
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())


@pytest.fixture(scope="module")
def field(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A train channel as the stack materialises it: four consecutive captured files of one turbine (a fault, a
    false alarm, one without verdict, normal operation) and the labels data_arrival wrote for the first two."""
    root = tmp_path_factory.mktemp("train")
    model = TurbineModel(THING, 5, START)
    names = {}
    for label, kind in (("fault", EPISODE), ("false-alarm", EPISODE), ("unverified", EPISODE), ("normal", NORMAL)):
        columns = model.step(240)
        ts = columns["ts"]
        name = CaptureName(float(ts[0]), float(ts[-1]), kind, 3, f"{THING}-{label}-1" if kind == EPISODE else None)
        parsed = CaptureName.parse(name.file_name)
        assert parsed is not None
        write(root, capture_key(THING, name), csv_bytes(columns))
        names[label] = parsed
    span = lambda n: {"turbine_id": THING, "start": n.start, "end": n.end}  # noqa: E731
    write(root, capture_label_key(capture_key(THING, names["fault"])),
          {"episodes": [{**span(names["fault"]), "fault": "operator-confirmed", "severity": "high"}]})
    write(root, capture_label_key(capture_key(THING, names["false-alarm"])),
          {"episodes": [], "false_alarms": [span(names["false-alarm"])]})
    inner = names["false-alarm"]  # the alert's own label: the episode inside the captured window
    write(root, "labels/alerts/episode_x/labels.json",
          {"episodes": [], "false_alarms": [{"turbine_id": THING, "start": inner.start + 60, "end": inner.end - 60}]})
    return {"root": root, "names": names}


def test_captured_episodes_without_a_verdict_are_left_out(field: dict[str, Any]) -> None:
    root, names = field["root"], field["names"]
    left_out = unverified_captures([root])
    assert [p.name for p in left_out] == [names["unverified"].file_name]
    [series] = load_dataset([root], SPEC, skip=left_out)
    unverified = names["unverified"]
    assert not ((series.t >= unverified.start) & (series.t <= unverified.end)).any()
    assert series.t[0] <= names["fault"].start + 0.1 and series.t[-1] >= names["normal"].end - 0.1


def test_a_fault_verdict_keeps_the_captured_window_out_of_the_normal_training_data(field: dict[str, Any]) -> None:
    root, names = field["root"], field["names"]
    [series] = load_dataset([root], SPEC, skip=unverified_captures([root]))
    faults = load_all_labels([root], [series])
    margin = SPEC.evaluation.detection_tolerance_s

    def normal_in(name: CaptureName) -> int:
        return len(normal_windows([series.between(name.start, name.end + 1e-3)], SPEC, faults, margin))

    assert [(f.turbine_id, f.severity) for f in faults] == [(THING, "high")]
    assert normal_in(names["fault"]) == 0  # never normal training data
    assert normal_in(names["false-alarm"]) > 0 and normal_in(names["normal"]) > 0  # normal operation


def test_false_alarm_spans_of_one_episode_are_merged(field: dict[str, Any]) -> None:
    fa = field["names"]["false-alarm"]
    assert [(s.turbine_id, s.start, s.end) for s in false_alarm_spans([field["root"]])] == [(THING, fa.start, fa.end)]


def constant(level: float) -> Detector:
    def score(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        f = SPEC.n_features
        return (np.full(len(x), level, np.float32), np.full((len(x), f), 1.0 / f, np.float32),
                np.zeros((len(x), f), np.float32))

    return Detector(SPEC, score, 1.0, SPEC.rule())


def series_of(field: dict[str, Any]) -> TurbineSeries:
    [series] = load_dataset([field["root"]], SPEC, skip=unverified_captures([field["root"]]))
    return series


def test_the_report_counts_what_the_candidate_and_the_champion_fire_on(field: dict[str, Any]) -> None:
    series = series_of(field)
    spans = false_alarm_spans([field["root"]])
    quiet, loud = constant(0.1), constant(5.0)
    late = Fault("turbine-09", "false-alarm", "none", 0.0, 10.0)  # no data for it: not judged
    report = hard_example_report([*spans, late], [series], lambda span: (quiet, False), champion=(loud, {}), offsets={})
    assert report is not None
    assert (report["episodes"], report["fired"], report["champion_fired"], report["without_data"]) == (1, 0, 1, 1)
    assert hard_example_report([], [series], lambda span: (quiet, False), None, {}) is None
    worse = hard_example_report(spans, [series], lambda span: (loud, True), champion=(quiet, {}), offsets={})
    assert worse is not None and (worse["fired"], worse["held_out"], worse["champion_fired"]) == (1, 0, 0)


def test_each_span_is_judged_by_a_model_that_did_not_train_on_it() -> None:
    def piece(t0: float, t1: float) -> TurbineSeries:
        t = np.arange(t0, t1, 0.05)
        return TurbineSeries(THING, t, np.zeros((len(t), SPEC.n_features), np.float32))

    a, b, final = constant(0.1), constant(0.2), constant(0.3)
    folds = Plan("folds", [Split([piece(100, 200)], [piece(0, 100)]), Split([piece(0, 100)], [piece(100, 200)])])
    chosen = Candidate("pca", [], cast(Calibration, None), [a, b], {})  # the calibration is not read
    judge = candidate_judge(folds, chosen, final)
    assert judge(Fault(THING, "", "", 120, 130)) == (b, False)
    assert judge(Fault(THING, "", "", 90, 110)) == (final, True)  # across two folds: only the refit covers it
    holdout = Plan("holdout", [Split([piece(0, 100)], [piece(110, 150)])], [piece(160, 200)])
    judge = candidate_judge(holdout, replace(chosen, detectors=[a]), final)
    assert judge(Fault(THING, "", "", 170, 180)) == (final, False)
    assert judge(Fault(THING, "", "", 50, 60)) == (final, True)


# -- the gate and the registry ---------------------------------------------------------------------------------------
def evaluation(fired: int, champion_fired: int | None, held_out: int = 3) -> dict[str, Any]:
    good = metrics(0.9, 0.9, 0.1)
    return {"candidate": good, "champion": {"metrics": good, "lineage": {}},
            "hard_examples": {"episodes": 3, "fired": fired, "held_out": held_out, "fired_held_out": fired,
                              "champion_fired": champion_fired, "without_data": 0, "spans": []}}


def test_the_gate_reports_hard_examples_and_refuses_a_regression() -> None:
    passed = apply_gate(evaluation(1, 3), GatePolicy())
    assert passed.passed
    assert passed.hard_examples == ("the candidate fires on 1 of 3 episodes operators called false alarms; "
                                    "the champion on 3")
    assert passed.hard_examples in passed.notes
    seen = apply_gate(evaluation(0, None, held_out=1), GatePolicy())
    assert seen.passed and seen.hard_examples is not None and "(2 of them in its training data)" in seen.hard_examples
    worse = apply_gate(evaluation(2, 1), GatePolicy())
    assert not worse.passed and worse.reasons == [
        "the candidate fires on 2 of 3 episodes operators called false alarms, more than the champion's 1"]


def test_the_registry_keeps_the_hard_example_sentence() -> None:
    store, state, registry = MemoryStore(), MemoryState(), MemoryRegistry()
    registry.ensure_group(GROUP)
    running_job(state)
    docs = {"manifest.json": MANIFEST, "evaluation.json": evaluation(2, 1)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, doc in docs.items():
            blob = json.dumps(doc).encode()
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    store.put(f"jobs/{JOB}/output/model.tar.gz", buf.getvalue())
    clock = Clock()
    deps = RegistrationDeps(store, state, registry, RecordingNotifier(), RecordingEvents(clock), GatePolicy(), GROUP,
                            clock)
    assert on_training_finished(JOB, "Completed", None, None, deps).action == "registered"
    [version] = registry.list(GROUP)
    assert version.status == "Rejected"
    assert version.metadata["nacelle:hard_examples"] == ("the candidate fires on 2 of 3 episodes operators called "
                                                         "false alarms / more than the champion s 1")
    assert "nacelle:gate_reasons" in version.metadata
