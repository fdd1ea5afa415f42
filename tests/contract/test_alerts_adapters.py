"""The alert use case on both sets of adapters: DynamoDB + SNS (moto) and SQLite + the local notifier.

SNS delivers through an SQS subscription, so subjects and message attributes are checked as a subscriber
(and a subscription filter policy) sees them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Literal

from shared.messages import EpisodeRow
from shared.ports import StateStore
from shared.usecases.alerts import AlertDeps, AlertPolicy, on_anomaly, on_scheduled_check
from tests.contract.conftest import NotifierHarness
from tests.fakes import MemoryRegistry

T0 = datetime(2026, 3, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def row(kind: Literal["open", "update", "close"], seq: int) -> EpisodeRow:
    t = T0.timestamp()
    return EpisodeRow(v=2, kind=kind, episode_id="wt-07-5", turbine_id="wt-07", features=["rpm", "voltage"],
                      score=3.2 + 0.1 * seq, contributions={"rpm": 0.62, "voltage": 0.38}, started_at=t - 90,
                      opened_at=t - 30, last_flagged_at=t - 30 + seq, ended_at=t + 60 if kind == "close" else None,
                      model_version=4, seq=seq,
                      thing_name="wt-07", received_at=int(t * 1000), client_id="wt-07")


def test_one_alert_and_one_resolution_then_offline(state_store: StateStore,
                                                   notifier_harness: NotifierHarness) -> None:
    clock = Clock()
    deps = AlertDeps(alerts=state_store, devices=state_store, registry=MemoryRegistry(),
                     notifier=notifier_harness.notifier, clock=clock, group="nacelle-turbine",
                     policy=AlertPolicy(offline_after_s=120))
    for message in (row("update", 2), row("open", 1), row("open", 1), row("close", 3), row("close", 3)):
        on_anomaly(message, deps)
    state_store.put("devices", "wt-07", {"thing_name": "wt-07", "last_health_at": T0.timestamp()})
    clock.now = T0 + timedelta(seconds=300)
    on_scheduled_check(deps)
    on_scheduled_check(deps)

    # SNS timestamps have millisecond resolution: order by kind, not by arrival
    messages = notifier_harness.delivered()
    assert sorted((d.topic, d.attributes["kind"]) for d in messages) == [
        ("alerts", "alert"), ("alerts", "offline"), ("alerts", "resolution")]
    delivered = {d.attributes["kind"]: d for d in messages}
    alert = delivered["alert"]
    assert alert.subject == "[HIGH] wt-07: score 3.4x threshold, mostly rpm (62 %), voltage (38 %)"
    assert alert.attributes == {"turbine_id": "wt-07", "severity": "high", "kind": "alert",
                                "features": json.dumps(["rpm", "voltage"])}
    assert "rpm: 62 % of the score" in alert.message and "voltage: 38 % of the score" in alert.message
    assert "nacelle-turbine v4 (not in the registry)" in alert.message
    assert delivered["offline"].subject == "[HIGH] wt-07: turbine offline"
    assert delivered["resolution"].subject.startswith("[RESOLVED] wt-07: score 3.5x threshold")
    item = state_store.get("alerts", "episode:wt-07:wt-07-5")
    assert item is not None and (item["score"], item["contributions"]) == (3.5, {"rpm": 0.62, "voltage": 0.38})
