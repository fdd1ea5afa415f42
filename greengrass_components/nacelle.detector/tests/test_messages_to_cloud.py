"""The detector's messages, through template.yaml's IoT rules, into the cloud functions' rows: one definition
(shared.messages) at every hop."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
from detector.messages import BadMessage as DetectorBadMessage
from detector.messages import MessageBuilder, encode, parse_sensor_message, sensor_message

from nacelle.local.state import SqliteStateStore
from nacelle.local.template import load_template, topic_rules
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
    assert deps.devices.get(STREAMS, f"{THING}#anomalies")["high"] == 2


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


def test_the_detector_reads_the_sensor_definition_and_refuses_what_it_refuses() -> None:
    spec = default_spec()
    columns = list(spec.input_columns)
    samples = [{"seq": i, "ts": 1_772_323_200.0 + i / 20, **dict.fromkeys(columns, 1.5)} for i in range(20)]
    samples[3][columns[0]] = float("nan")  # a missing reading: null on the wire
    good = sensor_message(THING, samples)
    assert len(decode(SensorMessage, good).samples) == 20
    assert len(parse_sensor_message(good, spec, THING)) == 20
    doc = json.loads(good)
    with pytest.raises(DetectorBadMessage):  # text is fine in a sample, not where the spec wants a number
        parse_sensor_message(sensor_message(THING, [{**samples[0], columns[0]: "high"}]), spec, THING)
    for change in ({"seq": -1}, {"seq": 1.5}, {"ts": 0.0}, {"ts": "now"}, {columns[0]: True}):
        bad = {**doc, "samples": [*doc["samples"][:5], {**doc["samples"][5], **change}, *doc["samples"][6:]]}
        payload = json.dumps(bad).encode()
        with pytest.raises(BadMessage):
            decode(SensorMessage, payload)
        with pytest.raises(DetectorBadMessage):
            parse_sensor_message(payload, spec, THING)
    for payload in (good.replace(b"1.5", b"NaN", 1), b"{", b"x" * (SensorMessage.MAX_BYTES + 1)):
        with pytest.raises(BadMessage):
            decode(SensorMessage, payload)
        with pytest.raises(DetectorBadMessage):
            parse_sensor_message(payload, spec, THING)
