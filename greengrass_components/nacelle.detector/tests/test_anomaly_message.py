"""The anomaly message (schema v2) built from a real episode tracker, and the alert the cloud makes of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from detector import SCHEMA_VERSION
from detector.messages import MessageBuilder, encode

from nacelle.local.adapters.state import SqliteStateStore
from shared.aws.sns import sns_subject
from shared.messages import EpisodeMessage, EpisodeRow, HealthMessage, SensorMessage, validate
from shared.ml.episodes import EpisodeRule, EpisodeTracker
from shared.usecases.alerts import AlertDeps, AlertPolicy, get_alert, on_anomaly
from tests.fakes import Clock, MemoryRegistry, RecordingNotifier

THING = "turbine-02"
FEATURES = ["rps", "voltage", "gen_temp"]
KEYS = ["v", "kind", "episode_id", "turbine_id", "features", "score", "contributions", "missing", "started_at",
        "opened_at", "last_flagged_at", "ended_at", "model_version", "seq"]


def messages() -> list[dict[str, Any]]:
    """open (peak 3.4x, mostly rps), update (voltage stops reporting), close: as the detector publishes them."""
    tracker = EpisodeTracker(THING, EpisodeRule(k=2, n=3, m=2), threshold=2.0, feature_names=FEATURES)
    ok, gone = [0.0, 0.0, 0.0], [0.0, 0.5, 0.0]
    windows = [(100.0, 1.0, [0.5, 0.3, 0.2], ok), (101.0, 4.0, [0.6, 0.3, 0.1], ok),
               (102.0, 6.8, [3.2, 1.05, 0.75], ok), (103.0, 3.0, [1.0, 1.0, 1.0], gone),
               (104.0, 1.0, [1.0, 1.0, 1.0], ok), (105.0, 1.0, [1.0, 1.0, 1.0], ok)]
    builder = MessageBuilder(THING)
    out = []
    for t, score, contributions, missing in windows:
        out += [builder.anomaly(e, 3) for e in tracker.step(t, score, contributions, missing)]
    return [json.loads(encode(m)) for m in out]  # what goes over MQTT (NaN would raise)


def test_the_anomaly_message_is_schema_v2() -> None:
    assert (EpisodeMessage.VERSION, HealthMessage.VERSION, SCHEMA_VERSION, SensorMessage.VERSION) == (2, 2, 1, 1)
    opened, updated, closed = messages()
    assert [sorted(m) for m in (opened, updated, closed)] == [sorted(KEYS)] * 3
    assert {k: opened[k] for k in KEYS if k not in ("contributions",)} == {
        "v": 2, "kind": "open", "episode_id": f"{THING}-101000", "turbine_id": THING, "features": ["rps"],
        "score": 3.4, "missing": [], "started_at": 101.0, "opened_at": 102.0, "last_flagged_at": 102.0,
        "ended_at": None, "model_version": 3, "seq": 1}
    assert opened["contributions"] == {"gen_temp": 0.15, "rps": 0.64, "voltage": 0.21}
    assert list(opened["contributions"]) == sorted(opened["contributions"])
    assert (updated["kind"], updated["features"], updated["missing"], updated["last_flagged_at"]) == \
        ("update", ["rps", "voltage"], ["voltage"], 103.0)
    assert updated["score"] == 3.4 and updated["contributions"] == opened["contributions"]  # peak window kept
    assert (closed["kind"], closed["ended_at"], closed["seq"]) == ("close", 105.0, 3)


def test_the_cloud_turns_the_messages_into_one_alert_and_one_resolution(tmp_path: Path) -> None:
    clock = Clock()
    notifier = RecordingNotifier()
    deps = AlertDeps(alerts=SqliteStateStore(tmp_path / "alerts.db"), devices=SqliteStateStore(tmp_path / "s.db"),
                     registry=MemoryRegistry(), notifier=notifier, clock=clock, group="g", policy=AlertPolicy())
    for m in messages():
        on_anomaly(validate(EpisodeRow, {**m, "thing_name": THING, "received_at": 1, "client_id": THING}), deps)
    alert, resolution = notifier.messages
    assert alert.subject == (f"[MEDIUM] {THING}: score 3.4x threshold, mostly rps (64 %), voltage (21 %), "
                             "gen_temp (15 %)")
    assert resolution.subject == sns_subject(  # over SNS's limit: subscribers get it cut
        f"[RESOLVED] {THING}: score 3.4x threshold, mostly rps (64 %), voltage (21 %), gen_temp (15 %); "
        "voltage missing")
    assert "  rps: 64 % of the score\n  voltage: 21 % of the score" in alert.message
    item = get_alert(f"episode:{THING}:{THING}-101000", deps)
    assert (item["score"], item["features"], item["missing"]) == (3.4, ["rps", "voltage"], ["voltage"])
    assert item["severity"] == "medium"  # 3.4x its threshold, but for 2 s only (high needs 5 s)
