"""shared.records: every record maps to its stored item and back; items written by earlier versions still load
(a field they lack takes its default), also as DynamoDB returns them (an integral float as an int)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nacelle.local.adapters.state import SqliteStateStore
from shared.messages import EpisodeRow, validate
from shared.records import (
    Ack,
    CanaryAssignment,
    ConflictRecord,
    DeploymentRecord,
    DeviceOutage,
    DeviceRecord,
    EpisodeAlert,
    EpisodeSighting,
    ExecutionRecord,
    FleetAssignment,
    FleetProgress,
    HealthStreak,
    OfflineAlert,
    RateSlot,
    Record,
    RolloutRecord,
    SummaryAlert,
    alert_from_item,
)
from shared.usecases.alerts import AlertDeps, AlertPolicy, acknowledge, get_alert, on_anomaly
from tests.fakes import Clock, MemoryRegistry, MemoryStore, RecordingNotifier

T0 = 1_772_323_200.0

EXAMPLES: list[Record] = [
    EpisodeAlert(alert_id="episode:wt-01:e1", turbine_id="wt-01", episode_id="e1", status="closed",
                 severity="high", features=("rpm", "voltage"), first_seen_at=T0, ended_at=T0 + 90.5,
                 expires_at=int(T0) + 100, alert="sent", alert_message_id="m1", alert_at=T0 + 1.0,
                 resolution="claimed", acks=(Ack("bob", T0 + 5, "fault", "bearing"), Ack("carol", T0 + 9)),
                 label_key="labels/alerts/episode_wt-01_e1/labels.json", rev=4, score=3.25,
                 contributions={"rpm": 0.75, "voltage": 0.25}, missing=("voltage",), last_seq=7, started_at=T0 - 30,
                 opened_at=T0 - 20, last_flagged_at=T0 + 80, model_version=3, last_message_at=T0 + 91,
                 interrupted_at=None, ended_with=None, escalated="repeated", summary_id=None),
    SummaryAlert(alert_id="summary:wt-01:1772323200", turbine_id="wt-01", status="sent", severity="critical",
                 features=("rpm",), window_start=T0, due_at=T0 + 3600, episodes=("episode:wt-01:e6",), alert="sent"),
    OfflineAlert(alert_id="offline:wt-02:1772323000", turbine_id="wt-02", first_seen_at=T0, last_health_at=T0 - 200),
    EpisodeSighting("episode:wt-01:e1", T0, int(T0) + 100),
    RateSlot(("episode:wt-01:e1", "episode:wt-01:e2"), int(T0) + 100, rev=2),
    DeviceOutage("offline:wt-02:1772323000"),
    DeviceRecord("wt-01", last_health_at=T0, received_at_ms=int(T0 * 1000), model_version=3, inference_rate_hz=2.5,
                 health={"seq": 4, "model_version": 3}, unexpected_version=None),
    HealthStreak("wt-01", received_at_ms=int(T0 * 1000), model_version=3, inference_rate_hz=2.5, streak_version=3,
                 ready_since=T0 - 10, last_ready_at=T0),
    ExecutionRecord("d-1", "wt-01", "FAILED", "bad recipe", ("DEPLOYMENT_FAILURE",), T0, T0 - 1.5),
    RolloutRecord(3, "fleet", components={"nacelle.model": {"componentVersion": "3.0.0"}}, canary_deployment_id="d-1",
                  canary_started_at=T0, canary_things=("wt-01",), fleet_deployment_id="d-2", fleet_started_at=T0 + 60,
                  fleet_things=("wt-02", "wt-03"), readiness={"wt-01": 12.5}, stuck_reported_canary=True,
                  superseded_by="rollback to v2"),
    DeploymentRecord("d-2", 3, "fleet"),
    CanaryAssignment(3, "d-1"),
    FleetAssignment(3, {"nacelle.model": {"componentVersion": "3.0.0"}}, "d-2", "promotion", previous=2, since=T0,
                    generation=4),
    ConflictRecord(3, "other digests"),
    FleetProgress("d-2", 7),
]


@pytest.mark.parametrize("record", EXAMPLES, ids=lambda r: type(r).__name__)
def test_a_record_reads_back_what_it_stores(record: Record, tmp_path: Path) -> None:
    assert type(record).from_item(record.to_item()) == record
    store = SqliteStateStore(tmp_path / "state.db")  # stored and read back, with its key
    store.put("pk", "sk", record.to_item())
    assert type(record).from_item(store.get("pk", "sk") or {}) == record


def as_dynamodb_returns(value: Any) -> Any:
    """DynamoDB normalises numbers: an integral float comes back as an int."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: as_dynamodb_returns(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_dynamodb_returns(v) for v in value]
    return value


@pytest.mark.parametrize("record", EXAMPLES, ids=lambda r: type(r).__name__)
def test_numbers_are_read_by_value(record: Record) -> None:
    read = type(record).from_item(as_dynamodb_returns(record.to_item()))
    assert read == record and read.to_item() == record.to_item()


def test_alert_items_are_read_by_their_kind() -> None:
    for record in EXAMPLES[:3]:
        assert alert_from_item(record.to_item()) == record


def test_changes_name_fields_only() -> None:
    assert RolloutRecord.changes(fleet_deployment_id="", fleet_things=("a",)) == {"fleet_deployment_id": "",
                                                                                 "fleet_things": ["a"]}
    with pytest.raises(ValueError, match="RolloutRecord has no field fleet_deploymentid"):
        RolloutRecord.changes(fleet_deploymentid="d-2")


# -- items written by earlier versions ----------------------------------------------------------------------------
EPISODE_V1 = {  # an episode item from before schema v2, the acknowledgement history and the typed records
    "pk": "alerts", "sk": "episode:wt-01:wt-01-1", "kind": "episode", "alert_id": "episode:wt-01:wt-01-1",
    "turbine_id": "wt-01", "episode_id": "wt-01-1", "status": "open", "first_seen_at": T0, "missing": [],
    "features": ["rpm"], "last_seq": 1,
    "started_at": T0 - 30, "opened_at": T0 - 20, "last_flagged_at": None, "ended_at": None, "model_version": 3,
    "expires_at": int(T0) + 100, "severity": "critical", "alert": "sent", "rev": 2, "ratios": {"rpm": 2.0},
    "acked_by": "alice", "acked_at": T0 + 10, "note": "on it"}


def test_an_older_episode_item_loads_with_defaults() -> None:
    episode = alert_from_item(EPISODE_V1)
    assert isinstance(episode, EpisodeAlert)
    assert (episode.score, episode.contributions, episode.interrupted_at, episode.escalation) == (0.0, {}, None, None)
    assert episode.acks == (Ack("alice", T0 + 10, None, "on it"),)
    assert (episode.acked_at, episode.acked_by, episode.verdict, episode.over_threshold_s) == (T0 + 10, "alice", None,
                                                                                               10.0)


def test_older_state_items_load_with_defaults() -> None:
    rollout = RolloutRecord.from_item({"pk": "group#g", "sk": "rollout#2", "version": 2, "stage": "waiting",
                                       "waiting_since": T0})
    assert (rollout.canary_things, rollout.deployment_id("canary"), rollout.started_at("fleet")) == ((), "", 0.0)
    device = DeviceRecord.from_item({"pk": "devices", "sk": "wt-04", "last_health_at": T0})
    assert (device.thing_name, device.model_version, device.received_at_ms, device.health) == ("wt-04", None, None, {})
    offline = alert_from_item({"pk": "alerts", "sk": "offline:wt-04:0", "kind": "offline", "turbine_id": "wt-04",
                               "status": "open", "last_health_at": 0})
    assert isinstance(offline, OfflineAlert) and (offline.alert_id, offline.severity) == ("offline:wt-04:0", "high")


def test_an_older_episode_in_a_data_directory_goes_on(tmp_path: Path) -> None:
    """An alert-state table written before: the episode takes new messages and acknowledgements."""
    notifier = RecordingNotifier()
    deps = AlertDeps(alerts=SqliteStateStore(tmp_path / "alerts.db"), devices=SqliteStateStore(tmp_path / "s.db"),
                     registry=MemoryRegistry(), notifier=notifier, clock=Clock(), group="g", policy=AlertPolicy(),
                     store=MemoryStore())
    deps.alerts.put("alerts", "episode:wt-01:wt-01-1", EPISODE_V1)
    on_anomaly(validate(EpisodeRow, {
        "v": 2, "kind": "close", "episode_id": "wt-01-1", "turbine_id": "wt-01", "features": ["rpm"], "score": 2.0,
        "contributions": {"rpm": 1.0}, "missing": [], "started_at": T0 - 30, "opened_at": T0 - 20,
        "last_flagged_at": T0 + 10, "ended_at": T0 + 20, "model_version": 3, "seq": 2, "thing_name": "wt-01",
        "received_at": int(T0 * 1000), "client_id": "wt-01"}), deps)
    item = acknowledge("episode:wt-01:wt-01-1", "bob", deps, verdict="fault")
    assert (item["status"], item["score"], item["severity"], item["rev"]) == ("closed", 2.0, "medium", 4)
    assert [(a["by"], a["verdict"]) for a in item["acks"]] == [("alice", None), ("bob", "fault")]
    assert [m.attributes["kind"] for m in notifier.messages] == ["resolution"]  # its alert was sent before
    assert "ratios" not in get_alert("episode:wt-01:wt-01-1", deps)
