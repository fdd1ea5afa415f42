"""Captured data in data_arrival: validated as its turbine's raw data, quarantined when it names another turbine, and
labelled by an operator's verdict on its episode whichever of the two arrives first (labels meet data)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from nacelle.local.adapters.state import SqliteStateStore
from nacelle.simulator.generate import csv_bytes
from nacelle.simulator.physics import TurbineModel
from shared.capture import EPISODE, NORMAL, CaptureName, capture_key, capture_label_key
from shared.messages import EpisodeRow, validate
from shared.ml.metrics import parse_false_alarms, parse_labels
from shared.usecases import state_keys as sk
from shared.usecases.alerts import AlertDeps, AlertPolicy, acknowledge, label_key, on_anomaly
from shared.usecases.retraining import ArrivalDeps, RetrainPolicy, on_object_created
from tests.fakes import (
    Clock,
    FakeTraining,
    MemoryRegistry,
    MemoryState,
    MemoryStore,
    RecordingEvents,
    RecordingNotifier,
)

GROUP = "nacelle-turbine"
THING = "turbine-01"
START = datetime(2026, 3, 1, tzinfo=UTC)
EPISODE_ID = f"{THING}-{int(START.timestamp() * 1000) + 90_000}"


class Chain:
    """data_arrival and anomaly_alert on one bucket, as on the stack."""

    def __init__(self, tmp_path: Path) -> None:
        clock = Clock()
        self.store = MemoryStore()
        self.state = MemoryState()
        self.arrival = ArrivalDeps(self.store, self.state, RecordingNotifier(), RecordingEvents(clock), FakeTraining(),
                                   MemoryRegistry(), RetrainPolicy(GROUP, quiet_period_s=15.0), clock)
        self.alerts = AlertDeps(SqliteStateStore(tmp_path / "alerts.db"), SqliteStateStore(tmp_path / "state.db"),
                                MemoryRegistry(), RecordingNotifier(), clock, GROUP, AlertPolicy(), store=self.store)

    def arrive(self, key: str, data: bytes | None = None) -> str:
        if data is not None:
            self.store.put(key, data)
        return on_object_created(key, self.arrival).action

    def record(self, key: str) -> dict[str, object] | None:
        return self.state.get(sk.group_pk(GROUP), sk.FILE + key)

    def label(self, key: str) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.store.get(capture_label_key(key)))
        return doc


@pytest.fixture
def chain(tmp_path: Path) -> Chain:
    return Chain(tmp_path)


def captured(kind: str = EPISODE, seconds: float = 150.0, offset_s: float = 0.0, part: int = 1,
             turbine: str = THING) -> tuple[str, bytes, CaptureName]:
    """A file as the detector writes it: the turbine's samples, named with their span."""
    model = TurbineModel(turbine, 5, START)
    if offset_s:
        model.step(offset_s)
    columns = model.step(seconds)
    ts = columns["ts"]
    name = CaptureName(float(ts[0]), float(ts[-1]), kind, 3, EPISODE_ID if kind == EPISODE else None, part)
    named = CaptureName.parse(name.file_name)  # its span as the key says it: milliseconds, rounded outwards
    assert named is not None and named.start <= ts[0] and ts[-1] <= named.end
    return capture_key(THING, name), csv_bytes(columns), named


def alert(chain: Chain) -> str:
    t0 = START.timestamp()
    for kind, seq in (("open", 1), ("close", 2)):
        row = validate(EpisodeRow, {
            "v": 2, "kind": kind, "episode_id": EPISODE_ID, "turbine_id": THING, "features": ["rps"], "score": 2.0,
            "contributions": {"rps": 1.0}, "missing": [], "started_at": t0 + 90, "opened_at": t0 + 98,
            "last_flagged_at": t0 + 110, "ended_at": t0 + 125 if kind == "close" else None, "model_version": 3,
            "seq": seq, "thing_name": THING, "received_at": int(t0 * 1000), "client_id": THING})
        on_anomaly(row, chain.alerts)
    return f"episode:{THING}:{EPISODE_ID}"


def test_a_verdict_labels_the_captured_episode_whichever_arrives_first(chain: Chain) -> None:
    alert_id = alert(chain)
    key, data, name = captured()
    assert chain.arrive(key, data) == "accepted"
    record = chain.record(key)
    assert record is not None and record["turbines"] == [THING]  # read as the right turbine's data
    assert not chain.store.exists(capture_label_key(key))  # no verdict yet: unlabelled

    acknowledge(alert_id, "alice", chain.alerts, verdict="fault", note="bearing")
    assert chain.arrive(label_key(alert_id)) == "accepted"  # the alert's label arrives: the capture is labelled
    doc = chain.label(key)
    [fault] = parse_labels(json.dumps(doc), "label")
    assert (fault.turbine_id, fault.start, fault.end) == (THING, name.start, name.end)  # the whole captured window
    assert doc["source"]["verdict"] == "fault" and doc["source"]["capture_key"] == key

    key2, data2, name2 = captured(offset_s=150.0, part=2)  # the episode's second part arrives after the verdict
    assert chain.arrive(key2, data2) == "accepted"
    assert parse_labels(json.dumps(chain.label(key2)), "label")[0].start == name2.start

    acknowledge(alert_id, "bob", chain.alerts, verdict="false-alarm", note="recalibrated sensor")
    assert chain.arrive(label_key(alert_id)) == "accepted"  # a new version of the alert's label
    for k, n in ((key, name), (key2, name2)):
        text = json.dumps(chain.label(k))
        assert parse_labels(text, "x") == [] and [(s.start, s.end) for s in parse_false_alarms(text, "x")] == \
            [(n.start, n.end)]
    for k in (key, key2):  # the rewritten capture labels are accepted as new versions of their keys
        assert chain.arrive(capture_label_key(k)) == "accepted"


def test_redelivery_writes_nothing_new_and_normal_captures_need_no_label(chain: Chain) -> None:
    alert_id = alert(chain)
    acknowledge(alert_id, "alice", chain.alerts, verdict="false-alarm")
    assert chain.arrive(label_key(alert_id)) == "accepted"
    key, data, _ = captured()
    assert chain.arrive(key, data) == "accepted"
    label = chain.store.get(capture_label_key(key))
    assert chain.arrive(key) == "duplicate" and chain.arrive(label_key(alert_id)) == "duplicate"
    assert chain.store.get(capture_label_key(key)) == label
    normal_key, normal_data, _ = captured(NORMAL, offset_s=600.0)
    assert chain.arrive(normal_key, normal_data) == "accepted"
    assert not chain.store.exists(capture_label_key(normal_key))


def test_a_capture_holding_another_turbines_rows_is_quarantined_and_never_labelled(chain: Chain) -> None:
    alert_id = alert(chain)
    acknowledge(alert_id, "alice", chain.alerts, verdict="fault")
    assert chain.arrive(label_key(alert_id)) == "accepted"
    key, data, _ = captured(turbine="turbine-02")  # turbine-01's prefix, turbine-02's rows
    assert chain.arrive(key, data) == "quarantined"
    report = json.loads(chain.store.get(f"quarantine/{key}.report.json"))
    assert report["errors"][-1]["code"] == "foreign_capture" and "turbine-02" in report["errors"][-1]["message"]
    assert not chain.store.exists(capture_label_key(key))
    bad = f"raw/capture/{THING}/notes.csv"  # under the capture prefix, not a name the detector writes
    assert chain.arrive(bad, data) == "quarantined"
