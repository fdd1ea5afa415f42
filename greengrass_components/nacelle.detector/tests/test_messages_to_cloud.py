"""The detector's messages, through template.yaml's IoT rules, into the cloud functions' rows: one definition
(shared.messages) at every hop."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from detector.messages import MessageBuilder, encode, parse_sensor_batch, parse_sensor_message, sensor_message

from nacelle.local.adapters.state import SqliteStateStore
from nacelle.local.runtime.template import load_template, topic_rules
from services.anomaly_alert.app import handle as anomaly_handle
from shared.iot_sql import parse
from shared.messages import BadMessage, EpisodeRow, HealthMessage, HealthRow, SensorMessage, decode, validate
from shared.ml.episodes import EpisodeRule, EpisodeTracker
from shared.ml.spec import default_spec
from shared.usecases.alerts import AlertDeps, AlertPolicy, list_alerts
from shared.usecases.intake import STREAMS, admit
from tests.fakes import Clock, MemoryRegistry, RecordingNotifier

THING = "turbine-05"
RULE_OF_STREAM = {"anomalies": "AnomalyRule", "health": "HealthRule"}


def rows_of(stream: str, payloads: list[bytes]) -> list[dict]:
    (rule,) = [r for r in topic_rules(load_template()) if r.rule == RULE_OF_STREAM[stream]]
    sql = parse(rule.sql)
    rows = [sql.evaluate(f"turbines/{THING}/{stream}", p, THING, 1_772_323_200_000 + i) for i, p in enumerate(payloads)]
    assert all(row is not None for row in rows)
    return rows  # type: ignore[return-value]


def episode_payloads() -> list[bytes]:
    tracker = EpisodeTracker(THING, EpisodeRule(k=2, n=3, m=2), threshold=2.0, feature_names=["a", "b"])
    builder = MessageBuilder(THING)
    out = []
    for t, score in [(100.0, 1.0), (101.0, 5.0), (102.0, 6.0), (103.0, 1.0), (104.0, 1.0)]:
        out += [encode(builder.anomaly(e, 4)) for e in tracker.step(t, score, [0.7, 0.3], [0.0, 0.0])]
    return out


def test_every_rule_row_field_is_declared_once() -> None:
    for row_type in (EpisodeRow, HealthRow):
        names = [f.name for f in fields(row_type)]
        assert len(names) == len(set(names)) and {"thing_name", "received_at", "client_id", "seq", "v"} <= set(names)


def test_episodes_reach_the_alert_function_as_rows(tmp_path: Path) -> None:
    deps = AlertDeps(alerts=SqliteStateStore(tmp_path / "alerts.db"), devices=SqliteStateStore(tmp_path / "s.db"),
                     registry=MemoryRegistry(), notifier=RecordingNotifier(), clock=Clock(), group="g",
                     policy=AlertPolicy())
    rows = rows_of("anomalies", episode_payloads())
    assert [validate(EpisodeRow, r).kind for r in rows] == ["open", "close"]
    assert [anomaly_handle(r, deps)["action"] for r in rows] == ["new", "updated"]
    (alert,) = list_alerts(deps)
    assert (alert["alert_id"], alert["status"], alert["model_version"]) == (
        f"episode:{THING}:{THING}-101000", "closed", 4)
    stream = deps.devices.get(STREAMS, f"{THING}#anomalies")
    assert stream is not None and stream["high"] == 2


def test_health_reaches_the_rollout_function_as_a_row(tmp_path: Path) -> None:
    builder = MessageBuilder(THING)
    message = builder.health(model_version=3, inference_rate_hz=20.0, latency_p50_ms=0.1, latency_p99_ms=0.3,
                             spool_depth=0, spool_dropped=0, bad_messages=0, uptime_s=5.0, windows_scored=90,
                             detector_version="1.2.0")
    (row,) = rows_of("health", [encode(message)])
    health = admit(SqliteStateStore(tmp_path / "s.db"), HealthRow, row, 0.0)
    assert health is not None and (health.model_version, health.thing_name, health.seq) == (3, THING, 1)


def test_the_builder_refuses_what_the_cloud_would_refuse() -> None:
    with pytest.raises(ValueError, match="inference_rate_hz"):
        MessageBuilder(THING).health(model_version=3, inference_rate_hz=float("nan"), latency_p50_ms=None,
                                     latency_p99_ms=None, spool_depth=0, spool_dropped=0, bad_messages=0,
                                     uptime_s=1.0, windows_scored=0)
    assert json.loads(HealthMessage(v=1, turbine_id=THING, seq=1).to_json())["model_version"] is None
    v1 = {"v": 1, "turbine_id": THING, "seq": 1, "capture": {"written": 1}}
    with pytest.raises(BadMessage, match="'capture' needs schema version v=2"):
        decode(HealthMessage, json.dumps(v1).encode())
    with pytest.raises(BadMessage, match=r"capture\.uploaded"):
        decode(HealthMessage, json.dumps({**v1, "v": 2, "capture": {"uploaded": -1}}).encode())


def _sensor_changes(columns: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(what, change) pairs: each makes a good sensor message one the definition refuses."""
    col = columns[0]
    long_text = "x" * 201
    return [
        ("top-level unknown field", {"extra": 1}),
        ("no samples (one sample at the top level)", {"samples": None, "seq": 0, "ts": 1.0, col: 1.0}),
        ("samples not a list", {"samples": {"seq": 0}}),
        ("empty turbine id", {"turbine_id": ""}),
        ("turbine id too long", {"turbine_id": long_text}),
        ("negative top-level seq", {"seq": -1}),
        ("boolean top-level seq", {"seq": True}),
        ("version as text", {"v": "1"}),
        ("version 2", {"v": 2}),
        ("no version", {"v": None}),
        *[(f"sample change {change}", {"sample": change}) for change in (
            {"seq": -1}, {"seq": 1.5}, {"seq": "7"}, {"seq": None}, {"ts": "now"}, {"ts": None}, {"ts": 0.5},
            {col: True}, {col: [1.0]})],
        ("sample not an object", {"sample": 42}),
    ]


def _unread_key_changes() -> list[dict[str, Any]]:
    """Sample changes the definition refuses in keys the detector does not read."""
    long_text = "x" * 201
    return [{"source": True}, {"source": [1]}, {"source": {"a": 1}}, {"source": long_text}, {long_text: 1.0},
            {f"k{i}": 1.0 for i in range(300)}]


def _changed(doc: dict, change: dict) -> bytes:
    doc = json.loads(json.dumps(doc))
    change = dict(change)
    if "sample" in change:
        sample = change.pop("sample")
        doc["samples"][5] = {**doc["samples"][5], **sample} if isinstance(sample, dict) else sample
    for key, value in change.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return json.dumps(doc).encode()


def test_the_detector_reads_the_sensor_definition_and_refuses_what_it_refuses_in_what_it_reads() -> None:
    spec = default_spec()
    columns = list(spec.input_columns)
    samples = [{"seq": i, "ts": 1_772_323_200.0 + i / 20, **dict.fromkeys(columns, 1.5), "source": "plc-1"}
               for i in range(20)]
    samples[3][columns[0]] = float("nan")  # a missing reading: null on the wire
    good = sensor_message(THING, samples)
    assert len(decode(SensorMessage, good).samples) == 20
    assert len(parse_sensor_message(good, spec, THING)) == 20
    with pytest.raises(BadMessage, match=re.escape(f"$.samples[0].{columns[0]}")):  # text is no reading
        parse_sensor_message(sensor_message(THING, [{**samples[0], columns[0]: "high"}]), spec, THING)
    doc = json.loads(good)
    payloads = [(what, _changed(doc, change)) for what, change in _sensor_changes(columns)]
    payloads += [("NaN token", good.replace(b"1.5", b"NaN", 1)), ("truncated", b"{"),
                 ("not UTF-8", good.replace(THING.encode(), THING.encode() + b"\xff", 1)),
                 ("too large", b"x" * (SensorMessage.MAX_BYTES + 1))]
    for what, payload in payloads:
        with pytest.raises(BadMessage):
            decode(SensorMessage, payload)
            pytest.fail(f"the definition takes the message with {what}")
        with pytest.raises(BadMessage) as refused:
            parse_sensor_message(payload, spec, THING)
            pytest.fail(f"the detector takes the message with {what}")
        assert refused.value.reason, what
    # keys the spec does not read are skipped unjudged: the definition refuses these, the detector reads on
    unread = [_changed(doc, {"sample": change}) for change in _unread_key_changes()]
    for payload in [*unread, good.replace(b"plc-1", b"plc-\xff", 1)]:
        with pytest.raises(BadMessage):
            decode(SensorMessage, payload)
        batch, expected = parse_sensor_batch(payload, spec, THING), parse_sensor_batch(good, spec, THING)
        for got, want in ((batch.seq, expected.seq), (batch.ts, expected.ts), (batch.values, expected.values)):
            np.testing.assert_array_equal(got, want)  # NaN where null, in both
