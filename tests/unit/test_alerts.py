"""anomaly_alert's use case on the local SQLite stores: exactly-once alerts per episode, escalation,
rate-limit summaries, offline devices, acknowledgement and verdict labels."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from nacelle.local.state import SqliteStateStore
from services.anomaly_alert.app import handle
from shared.errors import ConfigurationError, DataError, NotFound
from shared.ml.metrics import load_labels
from shared.usecases.alerts import (
    AlertDeps,
    AlertPolicy,
    AnomalyRow,
    acknowledge,
    get_alert,
    list_alerts,
    on_anomaly,
    on_scheduled_check,
    severity_of,
    sweep,
)
from tests.fakes import Clock, MemoryRegistry, MemoryStore, Published, RecordingNotifier

GROUP = "nacelle-turbine"
T0 = 1_772_323_200.0  # Clock()'s start, 2026-03-01T00:00:00Z


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_deps(tmp_path: Path, clock: Clock, **policy: Any) -> AlertDeps:
    registry = MemoryRegistry()
    registry.register(GROUP, "jobs/j1/output/model.tar.gz", "Approved", "", {
        "nacelle:dataset_hash": "d" * 64, "nacelle:job": "nacelle-dddd-1", "nacelle:code_version": "abc123"}, "j1")
    return AlertDeps(alerts=SqliteStateStore(tmp_path / "alerts.db"), devices=SqliteStateStore(tmp_path / "state.db"),
                     registry=registry, notifier=RecordingNotifier(), clock=clock, group=GROUP,
                     policy=AlertPolicy(**policy), store=MemoryStore())


@pytest.fixture
def deps(tmp_path: Path, clock: Clock) -> AlertDeps:
    return make_deps(tmp_path, clock)


def row(kind: str, episode: str = "wt-01-1000", seq: int = 1, turbine: str = "wt-01", **extra: Any) -> AnomalyRow:
    body: dict[str, Any] = {
        "v": 1, "kind": kind, "episode_id": episode, "turbine_id": turbine, "features": ["rpm"],
        "ratios": {"rpm": 2.0}, "missing": [], "started_at": T0 - 120, "opened_at": T0 - 60,
        "ended_at": T0 + 300 if kind == "close" else None, "model_version": 1, "seq": seq,
        "thing_name": turbine, "received_at": int(T0 * 1000), "client_id": turbine}
    return AnomalyRow.model_validate({**body, **extra})


def sent(deps: AlertDeps, kind: str | None = None) -> list[Published]:
    assert isinstance(deps.notifier, RecordingNotifier)
    return [m for m in deps.notifier.messages if kind is None or m.attributes["kind"] == kind]


# -- exactly once ---------------------------------------------------------------------------------
def test_duplicates_and_updates_give_one_alert_and_one_resolution(deps: AlertDeps) -> None:
    on_anomaly(row("open"), deps)
    on_anomaly(row("open"), deps)  # redelivered
    for seq in (2, 3, 2):
        on_anomaly(row("update", seq=seq, ratios={"rpm": 2.0 + seq, "gen_temp": 1.6}), deps)
    on_anomaly(row("close", seq=5), deps)
    on_anomaly(row("close", seq=5), deps)
    on_anomaly(row("update", seq=4), deps)  # late: never reopens

    assert [m.attributes["kind"] for m in sent(deps)] == ["alert", "resolution"]
    alert, resolution = sent(deps)
    assert alert.topic == "alerts"
    assert alert.attributes == {"turbine_id": "wt-01", "severity": "medium", "features": '["rpm"]', "kind": "alert"}
    assert alert.subject == "[MEDIUM] wt-01: rpm 2.0x threshold"
    for text in ("Turbine wt-01", "rpm: 2.00 x its threshold", "2026-02-28T23:58:00+00:00",
                 f"{GROUP} v1", "d" * 64, "nacelle-dddd-1", "nacelle alerts ack episode:wt-01-1000"):
        assert text in alert.message
    assert resolution.subject.startswith("[RESOLVED] wt-01: rpm 5.0x threshold (+1 more)")
    item = get_alert("episode:wt-01-1000", deps)
    assert item["status"] == "closed" and item["ratios"] == {"rpm": 5.0, "gen_temp": 1.6}
    assert item["severity"] == "critical" and item["last_seq"] == 5  # peak 5.0 >= high, two features: +1


def test_close_before_open_gives_the_alert_then_the_resolution_once(deps: AlertDeps) -> None:
    on_anomaly(row("close", seq=3), deps)
    on_anomaly(row("open", seq=1), deps)
    on_anomaly(row("update", seq=2), deps)
    assert [m.attributes["kind"] for m in sent(deps)] == ["alert", "resolution"]
    assert "already ended at" in sent(deps)[0].message
    assert get_alert("episode:wt-01-1000", deps)["status"] == "closed"


def test_concurrent_deliveries_still_alert_once(deps: AlertDeps) -> None:
    messages = [row("open"), row("update", seq=2), row("close", seq=3)] * 4
    errors: list[BaseException] = []

    def deliver(message: AnomalyRow) -> None:
        try:
            on_anomaly(message, deps)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=deliver, args=(m,)) for m in messages]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(m.attributes["kind"] for m in sent(deps)) == ["alert", "resolution"]


def test_a_failed_publish_releases_the_claim_so_the_retry_sends_it(deps: AlertDeps) -> None:
    notifier = deps.notifier
    assert isinstance(notifier, RecordingNotifier)
    real = notifier.publish
    calls = {"n": 0}

    def flaky(*args: Any) -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("SNS down")
        return real(*args)

    notifier.publish = flaky  # type: ignore[method-assign,assignment]
    with pytest.raises(ConnectionError):
        on_anomaly(row("open"), deps)
    on_anomaly(row("open"), deps)  # the retry
    on_anomaly(row("open"), deps)
    assert [m.attributes["kind"] for m in sent(deps)] == ["alert"]


def test_the_topic_decides_the_turbine(deps: AlertDeps) -> None:
    with pytest.raises(DataError, match="claims turbine 'wt-02'"):
        on_anomaly(row("open", turbine_id="wt-02"), deps)
    with pytest.raises(DataError, match="schema version"):
        on_anomaly(row("open", v=2), deps)
    assert sent(deps) == []


@pytest.mark.parametrize(("ratios", "missing", "expected"), [
    ({"rpm": 1.1}, [], "low"),
    ({"rpm": 1.6}, [], "medium"),
    ({"rpm": 3.5}, [], "high"),
    ({"rpm": 7.0}, [], "critical"),
    ({}, ["voltage"], "medium"),
    ({"rpm": 1.1, "voltage": 1.2}, [], "medium"),
    ({"rpm": 1.1, "voltage": 1.2, "gen_temp": 1.0}, [], "high"),
    ({"rpm": 3.1, "voltage": 1.2, "gen_temp": 1.0}, ["qw"], "critical"),
])
def test_severity_from_ratios_and_features(ratios: dict[str, float], missing: list[str], expected: str) -> None:
    assert severity_of(ratios, missing, AlertPolicy()) == expected


# -- escalation -------------------------------------------------------------------------------------
def test_an_episode_open_too_long_escalates_once(tmp_path: Path, clock: Clock) -> None:
    deps = make_deps(tmp_path, clock, escalate_after_s=600)
    on_anomaly(row("open"), deps)
    clock.advance(599)
    assert sweep(deps) == []
    clock.advance(2)
    on_anomaly(row("update", seq=2), deps)  # any invocation evaluates pending escalations
    on_scheduled_check(deps)
    clock.advance(3600)
    sweep(deps)
    escalations = sent(deps, "escalation")
    assert len(escalations) == 1
    assert escalations[0].subject == "[ESCALATED HIGH] wt-01: open 10 min, rpm 2.0x threshold"
    assert escalations[0].attributes["severity"] == "high"  # one level above the alert's


def test_a_closed_episode_never_escalates(tmp_path: Path, clock: Clock) -> None:
    deps = make_deps(tmp_path, clock, escalate_after_s=600)
    on_anomaly(row("open"), deps)
    on_anomaly(row("close", seq=2), deps)
    clock.advance(3600)
    assert sweep(deps) == []


def test_acknowledgement_stops_escalation_and_records_who_and_when(tmp_path: Path, clock: Clock) -> None:
    deps = make_deps(tmp_path, clock, escalate_after_s=600)
    on_anomaly(row("open"), deps)
    clock.advance(60)
    item = acknowledge("episode:wt-01-1000", "alice", deps, note="crew on site")
    assert (item["acked_by"], item["acked_at"], item["note"]) == ("alice", T0 + 60, "crew on site")
    clock.advance(3600)
    on_anomaly(row("update", seq=2), deps)
    assert sent(deps, "escalation") == []


def test_repeated_episodes_escalate_the_alert(tmp_path: Path, clock: Clock) -> None:
    deps = make_deps(tmp_path, clock, repeat_episodes=3, repeat_window_s=3 * 3600, rate_window_s=60)
    for i in range(4):
        on_anomaly(row("open", episode=f"wt-01-{i}"), deps)
        clock.advance(3600)
    subjects = [m.subject for m in sent(deps, "alert")]
    assert subjects[:2] == ["[MEDIUM] wt-01: rpm 2.0x threshold"] * 2
    assert subjects[2:] == ["[HIGH] REPEATED wt-01: rpm 2.0x threshold"] * 2
    assert "Escalated: episode 3 of this turbine within 3 h." in sent(deps, "alert")[2].message
    assert get_alert("episode:wt-01-2", deps)["severity"] == "high"
    on_anomaly(row("open", episode="wt-02-0", turbine="wt-02"), deps)  # another turbine: its own count
    assert sent(deps, "alert")[-1].subject == "[MEDIUM] wt-02: rpm 2.0x threshold"


# -- rate limit -------------------------------------------------------------------------------------
def test_the_rate_limit_folds_extra_episodes_into_one_summary(tmp_path: Path, clock: Clock) -> None:
    deps = make_deps(tmp_path, clock, rate_limit=2, rate_window_s=3600, repeat_episodes=100)
    for i in range(5):
        on_anomaly(row("open", episode=f"wt-01-{i}", ratios={"rpm": 2.0 + i}), deps)
        clock.advance(10)
    on_anomaly(row("open", episode="wt-02-0", turbine="wt-02"), deps)  # another turbine is not limited
    on_anomaly(row("close", episode="wt-01-4", seq=2, ratios={"rpm": 6.0}), deps)
    assert [m.attributes["turbine_id"] for m in sent(deps, "alert")] == ["wt-01", "wt-01", "wt-02"]
    assert sent(deps, "summary") == []  # sent when the window ends
    clock.advance(3600)
    on_scheduled_check(deps)
    on_scheduled_check(deps)
    summaries = sent(deps, "summary")
    assert len(summaries) == 1
    summary = summaries[0]
    assert summary.subject == "[CRITICAL] wt-01: 3 more anomaly episodes (summary)"
    assert summary.attributes == {"turbine_id": "wt-01", "severity": "critical", "features": '["rpm"]',
                                  "kind": "summary"}
    every = "\n".join(m.message for m in sent(deps))
    for i in range(5):  # no distinct episode is dropped
        assert f"wt-01-{i}" in every
    assert "episode:wt-01-4  critical" in summary.message and "closed" in summary.message
    assert [m.attributes["kind"] for m in sent(deps, "resolution")] == []  # folded: reported in the summary


# -- offline devices --------------------------------------------------------------------------------
def health(deps: AlertDeps, thing: str, at: float) -> None:
    deps.devices.put("devices", thing, {"thing_name": thing, "last_health_at": at, "model_version": 1,
                                        "inference_rate_hz": 1.0, "health": {}})


def test_offline_once_per_outage_and_back_online(tmp_path: Path, clock: Clock) -> None:
    deps = make_deps(tmp_path, clock, offline_after_s=300)
    health(deps, "wt-01", T0)
    health(deps, "wt-02", T0)
    on_scheduled_check(deps)
    assert sent(deps) == []
    clock.advance(200)
    health(deps, "wt-02", T0 + 200)
    clock.advance(200)  # wt-01 silent for 400 s, wt-02 for 200 s
    on_scheduled_check(deps)
    on_scheduled_check(deps)
    assert [(m.subject, m.attributes["kind"]) for m in sent(deps)] == [("[HIGH] wt-01: turbine offline", "offline")]
    assert "no health report for 6.7 min" in sent(deps)[0].message
    health(deps, "wt-01", T0 + 450)
    clock.advance(60)
    on_scheduled_check(deps)
    on_scheduled_check(deps)
    assert [m.subject for m in sent(deps)][1:] == ["[RESOLVED] wt-01: back online"]
    clock.advance(1000)  # silent again (both): a new outage each
    on_scheduled_check(deps)
    assert sorted(m.subject for m in sent(deps)[2:]) == ["[HIGH] wt-01: turbine offline",
                                                         "[HIGH] wt-02: turbine offline"]
    assert len({a["alert_id"] for a in list_alerts(deps) if a["kind"] == "offline"}) == 3


def test_an_outage_that_recovered_between_checks_is_resolved_before_the_next_one(tmp_path: Path,
                                                                                clock: Clock) -> None:
    deps = make_deps(tmp_path, clock, offline_after_s=300)
    health(deps, "wt-01", T0)
    clock.advance(400)
    on_scheduled_check(deps)
    health(deps, "wt-01", T0 + 500)  # back briefly, then silent again before any check saw it
    clock.advance(1000)
    on_scheduled_check(deps)
    assert [m.attributes["kind"] for m in sent(deps)] == ["offline", "online", "offline"]


# -- acknowledgement verdicts -> labels ------------------------------------------------------------
def test_a_fault_verdict_becomes_a_training_label(deps: AlertDeps, tmp_path: Path) -> None:
    on_anomaly(row("open"), deps)
    on_anomaly(row("close", seq=2), deps)
    item = acknowledge("episode:wt-01-1000", "bob", deps, verdict="fault", note="bearing")
    assert item["verdict"] == "fault" and item["label_key"] == "labels/alerts/episode_wt-01-1000/labels.json"
    assert isinstance(deps.store, MemoryStore)
    path = tmp_path / "labels.json"
    path.write_bytes(deps.store.get(item["label_key"]))
    [fault] = load_labels(path)
    assert (fault.turbine_id, fault.start, fault.end, fault.severity) == ("wt-01", T0 - 120, T0 + 300, "medium")
    doc = json.loads(path.read_text())
    assert doc["source"] == {"alert_id": "episode:wt-01-1000", "episode_id": "wt-01-1000", "verdict": "fault",
                             "by": "bob", "note": "bearing", "model_version": 1}


def test_a_false_alarm_verdict_keeps_the_span_normal(deps: AlertDeps, tmp_path: Path) -> None:
    on_anomaly(row("open"), deps)
    item = acknowledge("episode:wt-01-1000", "bob", deps, verdict="false-alarm")
    assert isinstance(deps.store, MemoryStore)
    path = tmp_path / "labels.json"
    path.write_bytes(deps.store.get(item["label_key"]))
    assert load_labels(path) == []
    assert json.loads(path.read_text())["false_alarms"] == [{"turbine_id": "wt-01", "start": T0 - 120,
                                                             "end": T0}]


def test_acknowledge_errors(deps: AlertDeps, clock: Clock) -> None:
    with pytest.raises(NotFound, match="no alert 'episode:nope'"):
        acknowledge("episode:nope", "bob", deps)
    health(deps, "wt-01", T0 - 1000)
    on_scheduled_check(deps)
    [offline] = [a["alert_id"] for a in list_alerts(deps)]
    with pytest.raises(ConfigurationError, match="verdicts apply to anomaly episodes"):
        acknowledge(offline, "bob", deps, verdict="fault")
    assert acknowledge(offline, "bob", deps)["acked_by"] == "bob"


# -- the handler --------------------------------------------------------------------------------------
def test_handler_takes_the_rule_row_and_the_schedule(deps: AlertDeps, clock: Clock) -> None:
    events = Path(__file__).resolve().parents[1] / "events"
    event = json.loads((events / "iot_anomaly_row.json").read_text())
    assert handle(event, deps)["action"] == "new"
    assert handle(event, deps)["sent"] == []
    [alert] = sent(deps)
    assert alert.subject == "[CRITICAL] turbine-03: gen_temp 3.4x threshold (+1 more)"  # high, two features
    health(deps, "wt-01", T0 - 1000)
    result = handle(json.loads((events / "scheduled_event.json").read_text()), deps)
    assert result["action"] == "checked" and result["sent"] == ["alert:offline:wt-01:1772322200"]
    with pytest.raises(DataError, match="anomaly row from turbine-03"):
        handle({**event, "kind": "reopen"}, deps)


# -- the CLI on a local data directory ----------------------------------------------------------------
def test_cli_list_show_and_ack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nacelle.cli import main
    from nacelle.local.stack import Stack

    home = tmp_path / "home"
    stack = Stack(home)
    on_anomaly(row("open"), stack.alert_deps())
    data_dir = ["--data-dir", str(home)]
    assert main(["alerts", "list", *data_dir]) == 0
    listing = capsys.readouterr().out
    assert "episode:wt-01-1000" in listing and "medium" in listing and "open" in listing
    assert main(["alerts", "ack", "episode:wt-01-1000", "--verdict", "fault", "--note", "pitch bearing",
                 "--by", "carol", *data_dir]) == 0
    assert "acknowledged by carol" in capsys.readouterr().out
    assert main(["alerts", "show", "episode:wt-01-1000", *data_dir]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["acked_by"], shown["verdict"], shown["note"]) == ("carol", "fault", "pitch bearing")
    label = json.loads(stack.store.get(shown["label_key"]))
    assert label["episodes"][0]["turbine_id"] == "wt-01"
    assert main(["alerts", "ack", "episode:nope", *data_dir]) == 2
    assert "no alert 'episode:nope'" in capsys.readouterr().err
