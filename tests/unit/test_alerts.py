"""anomaly_alert's use case on the local SQLite stores: exactly-once alerts per episode, escalation,
rate-limit summaries, offline devices, acknowledgement and verdict labels."""

from __future__ import annotations

import json
import math
import random
import threading
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest

from nacelle.local.adapters.state import SqliteStateStore
from services.anomaly_alert.app import handle
from shared.aws.sns import sns_subject
from shared.errors import ConfigurationError, NotFound
from shared.messages import MAX_MESSAGE_BYTES, BadMessage, EpisodeMessage, EpisodeRow, decode, validate
from shared.ml.metrics import load_labels, parse_false_alarms
from shared.usecases.alerts import (
    STALE_CLAIM_S,
    AlertDeps,
    AlertPolicy,
    acknowledge,
    get_alert,
    list_alerts,
    on_anomaly,
    on_scheduled_check,
    severity_of,
    sweep,
)
from shared.usecases.intake import REJECTED
from tests.fakes import Clock, MemoryRegistry, MemoryStore, Published, RecordingNotifier

GROUP = "nacelle-turbine"
T0 = 1_772_323_200.0  # Clock()'s start, 2026-03-01T00:00:00Z
SHARES = {"gen_temp": 0.15, "rpm": 0.8, "voltage": 0.05}  # rpm alone explains the peak window


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_deps(tmp_path: Path, clock: Clock, **policy: Any) -> AlertDeps:
    registry = MemoryRegistry()
    registry.ensure_group(GROUP)
    registry.register(GROUP, "jobs/j1/output/model.tar.gz", "Approved", "", {
        "nacelle:dataset_hash": "d" * 64, "nacelle:job": "nacelle-dddd-1", "nacelle:code_version": "abc123"}, "j1")
    return AlertDeps(alerts=SqliteStateStore(tmp_path / "alerts.db"), devices=SqliteStateStore(tmp_path / "state.db"),
                     registry=registry, notifier=RecordingNotifier(), clock=clock, group=GROUP,
                     policy=AlertPolicy(**policy), store=MemoryStore())


@pytest.fixture
def deps(tmp_path: Path, clock: Clock) -> AlertDeps:
    return make_deps(tmp_path, clock)


def row(kind: str, episode: str = "wt-01-1000", seq: int = 1, turbine: str = "wt-01", **extra: Any) -> EpisodeRow:
    body: dict[str, Any] = {
        "v": 2, "kind": kind, "episode_id": episode, "turbine_id": turbine, "features": ["rpm"],
        "score": 2.0, "contributions": SHARES, "missing": [], "started_at": T0 - 120, "opened_at": T0 - 60,
        "last_flagged_at": T0 - 60 + 10 * seq, "ended_at": T0 + 300 if kind == "close" else None,
        "model_version": 1, "seq": seq,
        "thing_name": turbine, "received_at": int(T0 * 1000), "client_id": turbine}
    return validate(EpisodeRow, {**body, **extra})


def sent(deps: AlertDeps, kind: str | None = None) -> list[Published]:
    assert isinstance(deps.notifier, RecordingNotifier)
    return [m for m in deps.notifier.messages if kind is None or m.attributes["kind"] == kind]


# -- a detector that stops is no resolution ----------------------------------------------------------
def test_an_interrupted_episode_stays_open_and_becomes_unknown_after_the_offline_limit(tmp_path: Path,
                                                                                      clock: Clock) -> None:
    deps = make_deps(tmp_path, clock, offline_after_s=300.0)
    on_anomaly(row("open"), deps)
    on_anomaly(row("interrupt", seq=2), deps)  # the detector was redeployed while the fault went on
    on_anomaly(row("interrupt", seq=2), deps)  # duplicated
    assert sent(deps, "resolution") == [] and get_alert("episode:wt-01:wt-01-1000", deps)["status"] == "open"
    clock.advance(299)
    assert sweep(deps) == []
    clock.advance(2)
    assert sweep(deps) == ["resolution:episode:wt-01:wt-01-1000"] and sweep(deps) == []
    (unknown,) = sent(deps, "unknown")
    assert unknown.subject.startswith("[UNKNOWN] wt-01") and "RESOLVED" not in unknown.subject
    assert "unknown" in unknown.message and get_alert("episode:wt-01:wt-01-1000", deps)["status"] == "unknown"


def test_an_episode_that_carries_on_an_interrupted_one_shares_its_alert_and_ends_it(deps: AlertDeps,
                                                                                     clock: Clock) -> None:
    on_anomaly(row("open"), deps)
    on_anomaly(row("interrupt", seq=2), deps)
    clock.advance(30)  # the new model opens its own episode on the same condition, which then ends
    later: dict[str, Any] = {"started_at": T0 - 30, "opened_at": T0 - 20, "score": 5.0}
    on_anomaly(row("open", episode="wt-01-2000", **later), deps)
    on_anomaly(row("open", episode="wt-01-2000", **later), deps)  # redelivered
    assert [m.subject for m in sent(deps)] == [sent(deps, "alert")[0].subject]  # one alert for the condition
    carried = get_alert("episode:wt-01:wt-01-2000", deps)
    assert carried["continues"] == "episode:wt-01:wt-01-1000" and carried["alert"] == "continued"
    assert get_alert("episode:wt-01:wt-01-1000", deps)["continued_by"] == "wt-01-2000"
    on_anomaly(row("close", episode="wt-01-2000", seq=2, **later), deps)
    on_anomaly(row("close", episode="wt-01-2000", seq=2, **later), deps)  # redelivered
    (resolution,) = sent(deps, "resolution")
    assert "anomaly episode wt-01-1000 ended" in resolution.message
    assert "it ended with episode wt-01-2000" in resolution.message
    first = get_alert("episode:wt-01:wt-01-1000", deps)
    assert first["status"] == "closed" and first["ended_with"] == "wt-01-2000"
    assert len(sent(deps)) == 2


def test_a_carried_on_episode_is_not_unknown_while_its_continuation_is_open(tmp_path: Path, clock: Clock) -> None:
    deps = make_deps(tmp_path, clock, offline_after_s=300.0)
    on_anomaly(row("open"), deps)
    on_anomaly(row("interrupt", seq=2), deps)
    later: dict[str, Any] = {"started_at": T0, "opened_at": T0 + 10}
    on_anomaly(row("open", episode="wt-01-2000", **later), deps)
    clock.advance(600)  # the condition goes on under the new model, past the offline limit
    sweep(deps)
    assert sent(deps, "unknown") == [] and get_alert("episode:wt-01:wt-01-1000", deps)["status"] == "open"
    on_anomaly(row("interrupt", episode="wt-01-2000", seq=2, **later), deps)  # stopped again, and never back
    clock.advance(301)
    sweep(deps)
    sweep(deps)
    assert [get_alert(f"episode:wt-01:wt-01-{e}", deps)["status"] for e in (1000, 2000)] == ["unknown", "unknown"]
    (unknown,) = sent(deps, "unknown")  # one notice, on the alert that went out
    assert "wt-01-1000" in unknown.message and sent(deps, "resolution") == []


def test_an_episode_long_after_an_interrupted_one_is_an_alert_of_its_own(tmp_path: Path, clock: Clock) -> None:
    deps = make_deps(tmp_path, clock, offline_after_s=300.0)
    on_anomaly(row("open"), deps)
    on_anomaly(row("interrupt", seq=2), deps)  # last flagged at T0 - 40
    later: dict[str, Any] = {"started_at": T0 + 261, "opened_at": T0 + 270}  # 301 s after its last flagged window
    on_anomaly(row("open", episode="wt-01-2000", **later), deps)
    assert len(sent(deps, "alert")) == 2 and get_alert("episode:wt-01:wt-01-2000", deps)["continues"] is None


def test_a_continuation_relinks_after_a_crash_and_its_close_before_its_open_still_ends_both(deps: AlertDeps) -> None:
    on_anomaly(row("open"), deps)
    on_anomaly(row("interrupt", seq=2), deps)
    later: dict[str, Any] = {"started_at": T0 - 30, "opened_at": T0 - 20}
    on_anomaly(row("close", episode="wt-01-2000", seq=2, **later), deps)  # its close overtook its open
    assert deps.alerts.update_if("alerts", "episode:wt-01:wt-01-1000", {"continued_by": None}, {})  # a lost link
    on_anomaly(row("open", episode="wt-01-2000", **later), deps)
    first = get_alert("episode:wt-01:wt-01-1000", deps)
    assert first["status"] == "closed" and first["continued_by"] == "wt-01-2000"
    assert [m.attributes["kind"] for m in sent(deps)] == ["alert", "resolution"]


def test_an_episode_of_another_turbine_ends_nothing_here(deps: AlertDeps) -> None:
    on_anomaly(row("open"), deps)
    on_anomaly(row("interrupt", seq=2), deps)
    later: dict[str, Any] = {"started_at": T0, "opened_at": T0}
    on_anomaly(row("open", episode="wt-02-2000", turbine="wt-02", **later), deps)
    on_anomaly(row("close", episode="wt-02-2000", turbine="wt-02", seq=2, **later), deps)
    assert get_alert("episode:wt-01:wt-01-1000", deps)["status"] == "open"
    other = get_alert("episode:wt-02:wt-02-2000", deps)  # carries nothing of wt-01 on: its own alert
    assert other["continues"] is None and other["alert"] == "sent"
    assert get_alert("episode:wt-01:wt-01-1000", deps)["continued_by"] is None


# -- exactly once ---------------------------------------------------------------------------------
UPDATES = {2: {"gen_temp": 0.4, "rpm": 0.6}, 3: {"gen_temp": 0.55, "rpm": 0.45}}


def update(seq: int) -> EpisodeRow:
    """An update whose peak (2 + seq) is explained by both rpm and gen_temp."""
    return row("update", seq=seq, score=2.0 + seq, contributions=UPDATES[seq], features=["gen_temp", "rpm"])


def test_duplicates_and_updates_give_one_alert_and_one_resolution(deps: AlertDeps) -> None:
    on_anomaly(row("open"), deps)
    on_anomaly(row("open"), deps)  # redelivered
    for seq in (2, 3, 2):  # the late seq 2 (score 4.0) keeps seq 3's peak and contributions
        on_anomaly(update(seq), deps)
    on_anomaly(row("close", seq=5), deps)
    on_anomaly(row("close", seq=5), deps)
    on_anomaly(row("update", seq=4), deps)  # late: never reopens

    assert [m.attributes["kind"] for m in sent(deps)] == ["alert", "resolution"]
    alert, resolution = sent(deps)
    assert alert.topic == "alerts"
    assert alert.attributes == {"turbine_id": "wt-01", "severity": "medium", "features": '["rpm"]', "kind": "alert"}
    assert alert.subject == "[MEDIUM] wt-01: score 2.0x threshold, mostly rpm (80 %), gen_temp (15 %)"
    for text in ("Turbine wt-01", "anomaly score: 2.00x its threshold", "rpm: 80 % of the score",
                 "gen_temp: 15 % of the score", "voltage: 5 % of the score", "2026-02-28T23:58:00+00:00",
                 f"{GROUP} v1", "d" * 64, "nacelle-dddd-1", "nacelle alerts ack episode:wt-01:wt-01-1000"):
        assert text in alert.message
    assert resolution.subject == "[RESOLVED] wt-01: score 5.0x threshold, mostly gen_temp (55 %), rpm (45 %)"
    assert "gen_temp: 55 % of the score" in resolution.message
    item = get_alert("episode:wt-01:wt-01-1000", deps)
    assert item["status"] == "closed" and item["score"] == 5.0 and item["contributions"] == UPDATES[3]
    assert item["features"] == ["gen_temp", "rpm"] and "ratios" not in item
    assert item["last_flagged_at"] == T0 - 60 + 10 * 5  # the latest, whatever the arrival order
    assert item["severity"] == "high" and item["last_seq"] == 5  # peak 5.0 over 3x for 110 s (critical needs 6x)


def test_close_before_open_gives_the_alert_then_the_resolution_once(deps: AlertDeps) -> None:
    on_anomaly(row("close", seq=3), deps)
    on_anomaly(row("open", seq=1), deps)
    on_anomaly(row("update", seq=2), deps)
    assert [m.attributes["kind"] for m in sent(deps)] == ["alert", "resolution"]
    assert "already ended at" in sent(deps)[0].message
    assert get_alert("episode:wt-01:wt-01-1000", deps)["status"] == "closed"


def test_concurrent_deliveries_still_alert_once(deps: AlertDeps) -> None:
    messages = [row("open"), row("update", seq=2), row("close", seq=3)] * 4
    errors: list[BaseException] = []

    def deliver(message: EpisodeRow) -> None:
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
    assert isinstance(deps.notifier, RecordingNotifier)
    deps.notifier.refusals = 1  # SNS throttles the first publish
    with pytest.raises(ConnectionError):
        on_anomaly(row("open"), deps)
    on_anomaly(row("open"), deps)  # the retry
    on_anomaly(row("open"), deps)
    assert [m.attributes["kind"] for m in sent(deps)] == ["alert"]


def test_a_failure_building_the_alert_releases_the_claim_so_the_retry_sends_it(deps: AlertDeps) -> None:
    registry = deps.registry
    real = registry.get
    calls = {"n": 0}

    def throttled_once(*args: Any) -> Any:  # the lineage line reads the registry
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("ThrottlingException: Rate exceeded")
        return real(*args)

    registry.get = throttled_once  # type: ignore[method-assign,assignment]
    with pytest.raises(RuntimeError):
        on_anomaly(row("open"), deps)
    on_anomaly(row("open"), deps)  # the retry
    on_anomaly(row("close", seq=2), deps)
    assert [m.attributes["kind"] for m in sent(deps)] == ["alert", "resolution"]


def test_an_alert_claimed_by_a_function_that_died_is_sent_by_the_sweep(deps: AlertDeps, clock: Clock) -> None:
    notifier = deps.notifier
    assert isinstance(notifier, RecordingNotifier)
    real = notifier.publish

    def killed(*args: Any) -> str:
        raise SystemExit("kill -9")  # nothing after the claim runs, not even the release

    notifier.publish = killed  # type: ignore[method-assign,assignment]
    alerts = deps.alerts
    release = alerts.update_if
    alerts.update_if = lambda pk, sk, changes, expected: (  # type: ignore[method-assign]
        False if changes.get("alert", "x") is None else release(pk, sk, changes, expected))
    with pytest.raises(SystemExit):
        on_anomaly(row("open"), deps)
    notifier.publish, alerts.update_if = real, release  # type: ignore[method-assign]
    on_anomaly(row("open"), deps)  # a redelivery: the claim is held, nothing is sent yet
    assert sent(deps) == [] and sweep(deps) == []
    clock.advance(STALE_CLAIM_S)
    assert len(sweep(deps)) == 1 and [m.attributes["kind"] for m in sent(deps)] == ["alert"]
    assert sweep(deps) == []


def refused(deps: AlertDeps, thing: str = "wt-01") -> dict[str, Any]:
    return deps.devices.get(REJECTED, f"{thing}#anomalies") or {}


def test_the_topic_decides_the_turbine(deps: AlertDeps) -> None:
    claim = {**asdict(row("open")), "turbine_id": "wt-02"}  # sent on turbines/wt-01/anomalies
    with pytest.raises(BadMessage, match="turbine_id 'wt-02' is not the sending thing 'wt-01'"):
        validate(EpisodeRow, claim)
    assert handle(claim, deps)["action"] == "rejected"
    assert refused(deps)["by_reason"] == {"schema": 1}
    with pytest.raises(BadMessage, match="claims turbine 'wt-02'"):  # a row built in code, unchecked
        on_anomaly(replace(row("open"), turbine_id="wt-02"), deps)
    assert sent(deps) == [] and list_alerts(deps) == []


def test_a_device_reaches_only_its_own_alerts(deps: AlertDeps) -> None:
    on_anomaly(row("open"), deps)
    # wt-02 replays wt-01's episode id on its own topic (a close, and an id wt-01 will use later): refused
    with pytest.raises(BadMessage, match="episode_id"):
        row("close", turbine="wt-02", seq=2)
    with pytest.raises(BadMessage, match="episode_id"):
        row("open", episode="wt-01-2000", turbine="wt-02")
    assert get_alert("episode:wt-01:wt-01-1000", deps)["status"] == "open"
    on_anomaly(row("open", episode="wt-01-2000", seq=3), deps)
    mine = get_alert("episode:wt-01:wt-01-2000", deps)
    assert (mine["turbine_id"], mine["status"]) == ("wt-01", "open")
    assert sorted(a["alert_id"] for a in list_alerts(deps)) == ["episode:wt-01:wt-01-1000", "episode:wt-01:wt-01-2000"]
    assert [m.attributes["turbine_id"] for m in sent(deps, "alert")] == ["wt-01", "wt-01"]


V1 = {"v": 1, "kind": "open", "episode_id": "wt-01-1000", "turbine_id": "wt-01", "features": ["rpm"],
      "ratios": {"rpm": 2.0}, "missing": [], "started_at": T0 - 120, "opened_at": T0 - 60, "ended_at": None,
      "model_version": 1, "seq": 1, "thing_name": "wt-01", "received_at": int(T0 * 1000), "client_id": "wt-01"}


def test_a_v1_message_from_a_detector_not_yet_updated_is_upgraded(deps: AlertDeps) -> None:
    message = {**V1, "ratios": {"rpm": 3.0, "gen_temp": 1.0, "voltage": 0.0}, "features": ["rpm", "gen_temp"]}
    row_v2 = validate(EpisodeRow, message)
    assert (row_v2.v, row_v2.score, row_v2.contributions) == (2, 3.0, {"rpm": 0.75, "gen_temp": 0.25, "voltage": 0.0})
    assert handle(message, deps)["action"] == "new"
    (alert,) = sent(deps, "alert")
    assert alert.subject == "[HIGH] wt-01: score 3.0x threshold, mostly rpm (75 %), gen_temp (25 %)"
    with pytest.raises(BadMessage, match="field 'score'"):  # a bad v1 ratio is named like a bad v2 score
        validate(EpisodeRow, {**V1, "ratios": {"rpm": math.nan}})


@pytest.mark.parametrize("version", [0, 3, None, "2"])
def test_other_schema_versions_are_refused_by_name(deps: AlertDeps, version: Any) -> None:
    message = {**V1, "v": version}
    with pytest.raises(BadMessage, match=f"unsupported schema version v={version!r} on anomalies; this reads v=2"):
        validate(EpisodeRow, message)
    assert handle(message, deps)["action"] == "rejected"  # counted, not retried
    assert refused(deps)["last_detail"].startswith(f"unsupported schema version v={version!r}")
    assert sent(deps) == [] and list_alerts(deps) == []


@pytest.mark.parametrize("change", [
    {"score": math.nan}, {"score": math.inf}, {"score": -0.5}, {"score": "NaN"}, {"score": None}, {"score": True},
    {"contributions": {"rpm": math.nan}}, {"contributions": {"rpm": -math.inf}},
    {"contributions": {"rpm": 1.2, "voltage": -0.2}}, {"contributions": {"rpm": "lots"}},
    {"episode_id": ""}, {"episode_id": "x" * 201}, {"features": ["rpm"] * 300}, {"kind": "reopen"},
    {"seq": -1}, {"model_version": "7.0.0"}, {"extra_field": 1},
])
def test_a_message_off_its_definition_is_refused_and_counted(deps: AlertDeps, change: dict[str, Any]) -> None:
    message = {**asdict(row("open")), **change}
    with pytest.raises(BadMessage, match=f"'{next(iter(change))}[.']"):
        validate(EpisodeRow, message)
    assert handle(message, deps)["action"] == "rejected"
    assert handle(message, deps)["action"] == "rejected"
    assert refused(deps)["count"] == 2
    assert sent(deps) == [] and list_alerts(deps) == []


def test_nan_infinity_oversize_and_non_json_payloads_are_refused() -> None:
    good = EpisodeMessage(v=2, kind="open", episode_id="e", turbine_id="wt-01", score=1.0, started_at=1.0,
                          opened_at=1.0, seq=1).to_json()
    assert decode(EpisodeMessage, good).episode_id == "e"
    for payload, reason in [(good.replace(b'"score":1.0', b'"score":NaN'), "NaN is not a JSON number"),
                            (good.replace(b'"score":1.0', b'"score":Infinity'), "Infinity is not a JSON number"),
                            (good[:-1] + b' ' * MAX_MESSAGE_BYTES + b'}', "message limit"),
                            (b"\xff\xfe", "not UTF-8 JSON"), (b"{", "not UTF-8 JSON"), (b"[]", "is a JSON object")]:
        with pytest.raises(BadMessage, match=reason):
            decode(EpisodeMessage, payload)


# -- severity: how far AND how long the score exceeds its threshold ------------------------------------
@pytest.mark.parametrize(("score", "over_s", "missing", "expected"), [
    pytest.param(1.4, 3600.0, [], "low", id="low: under 1.5x, however long"),
    pytest.param(1.5, 0.0, [], "medium", id="medium: 1.5x"),
    pytest.param(5.9, 4.9, [], "medium", id="medium: 3x or more, but only a blip"),
    pytest.param(0.0, 0.0, ["voltage"], "medium", id="medium: missing samples alone"),
    pytest.param(3.0, 5.0, [], "high", id="high: 3x for 5 s"),
    pytest.param(40.0, 59.0, [], "high", id="high: far over, but under a minute"),
    pytest.param(5.9, 3600.0, ["voltage"], "high", id="high: long, but under 6x"),
    pytest.param(6.0, 60.0, [], "critical", id="critical: 6x for a minute"),
])
def test_severity_from_how_far_and_how_long_the_score_exceeds_its_threshold(
        score: float, over_s: float, missing: list[str], expected: str) -> None:
    assert severity_of(score, over_s, missing, AlertPolicy()) == expected


def test_more_features_involved_raise_no_severity(deps: AlertDeps) -> None:
    features = ["gen_temp", "qw", "rpm", "voltage"]
    on_anomaly(row("open", score=1.2, features=features, contributions=dict.fromkeys(features, 0.25)), deps)
    assert get_alert("episode:wt-01:wt-01-1000", deps)["severity"] == "low"


def test_severity_ladders_are_policy_and_must_rise() -> None:
    policy = AlertPolicy(severity_ratios=(1.2, 2.0, 4.0), severity_durations_s=(0.0, 0.0, 600.0))
    assert [severity_of(2.5, 10.0, [], policy), severity_of(4.0, 599.0, [], policy),
            severity_of(4.0, 600.0, [], policy)] == ["high", "high", "critical"]
    with pytest.raises(ConfigurationError, match="severity_durations_s"):
        AlertPolicy(severity_durations_s=(0.0, 60.0, 30.0))


def test_severity_of_an_episode_rises_with_its_duration_over_threshold(deps: AlertDeps) -> None:
    opened: dict[str, Any] = {"started_at": T0 - 10, "opened_at": T0 - 2, "last_flagged_at": T0 - 2}  # 8 s over
    on_anomaly(row("open", score=7.0, contributions={"rpm": 1.0}, **opened), deps)
    assert get_alert("episode:wt-01:wt-01-1000", deps)["severity"] == "high"
    on_anomaly(row("update", seq=2, score=6.5, contributions={"rpm": 1.0}, **{**opened, "last_flagged_at": T0 + 50}),
               deps)
    assert get_alert("episode:wt-01:wt-01-1000", deps)["severity"] == "critical"  # 7x, 60 s over threshold
    [alert] = sent(deps)
    assert alert.subject == "[HIGH] wt-01: score 7.0x threshold, rpm (100 %)"  # sent with what was known then


def test_severity_of_an_episode_follows_its_peak_score(deps: AlertDeps) -> None:
    on_anomaly(row("open", score=1.2, contributions={"rpm": 1.0}), deps)
    assert get_alert("episode:wt-01:wt-01-1000", deps)["severity"] == "low"
    on_anomaly(row("update", seq=2, score=6.5, contributions={"rpm": 1.0}), deps)
    assert get_alert("episode:wt-01:wt-01-1000", deps)["severity"] == "critical"
    on_anomaly(row("update", seq=3, score=1.1, contributions={"rpm": 1.0}), deps)  # a lower score: the peak stays
    assert get_alert("episode:wt-01:wt-01-1000", deps)["severity"] == "critical"
    [alert] = sent(deps)
    assert alert.subject == "[LOW] wt-01: score 1.2x threshold, rpm (100 %)"  # sent with what was known then


def test_missing_samples_alone_read_as_missing_sensors(deps: AlertDeps) -> None:
    on_anomaly(row("open", score=0.0, contributions={}, features=["voltage"], missing=["voltage"]), deps)
    [alert] = sent(deps)
    assert alert.subject == "[MEDIUM] wt-01: voltage missing or frozen"
    assert "  voltage: samples missing or frozen" in alert.message and "anomaly score:" not in alert.message


def test_a_higher_score_replaces_the_contributions(deps: AlertDeps) -> None:
    first, peak, lower = {"rpm": 0.9, "voltage": 0.1}, {"rpm": 0.3, "voltage": 0.7}, {"gen_temp": 1.0}
    on_anomaly(row("open", score=2.0, contributions=first), deps)
    on_anomaly(row("update", seq=2, score=3.4, contributions=peak, features=["rpm", "voltage"]), deps)
    on_anomaly(row("update", seq=3, score=2.5, contributions=lower, features=["gen_temp"]), deps)
    on_anomaly(row("update", seq=4, score=3.4, contributions=lower, features=["gen_temp"]), deps)  # a tie: kept
    item = get_alert("episode:wt-01:wt-01-1000", deps)
    assert (item["score"], item["contributions"]) == (3.4, peak)
    assert item["features"] == ["gen_temp", "rpm", "voltage"]  # every explaining feature seen
    on_anomaly(row("close", seq=5, score=2.0, contributions=first), deps)
    resolution = sent(deps, "resolution")[0]
    assert resolution.subject == "[RESOLVED] wt-01: score 3.4x threshold, mostly voltage (70 %), rpm (30 %)"
    assert "  anomaly score: 3.40x its threshold\n  voltage: 70 % of the score\n  rpm: 30 % of the score" \
        in resolution.message


def test_a_body_lists_every_share_and_folds_the_tiny_ones(deps: AlertDeps) -> None:
    shares = {"gen_temp": 0.003, "qw": 0.001, "rpm": 0.64, "voltage": 0.21, "wind": 0.146}
    on_anomaly(row("open", score=3.4, contributions=shares, missing=["pitch"]), deps)
    [alert] = sent(deps)
    # cut to SNS's subject limit when longer
    assert alert.subject == sns_subject("[HIGH] wt-01: score 3.4x threshold, mostly rpm (64 %), voltage (21 %), "
                                        "wind (15 %); pitch missing or frozen")
    assert ("  rpm: 64 % of the score\n  voltage: 21 % of the score\n  wind: 15 % of the score\n"
            "  2 other feature(s): <1 % of the score together\n  pitch: samples missing or frozen") in alert.message


MESSAGES = [row("open"), update(2), update(3), row("close", seq=4)]


@pytest.mark.parametrize("seed", range(6))
def test_duplicated_and_reordered_messages_give_one_alert_and_one_resolution(tmp_path: Path, clock: Clock,
                                                                             seed: int) -> None:
    deps = make_deps(tmp_path, clock)
    messages = MESSAGES * 3
    random.Random(seed).shuffle(messages)
    for message in messages:
        on_anomaly(message, deps)
        clock.advance(1)
    assert [m.attributes["kind"] for m in sent(deps)] == ["alert", "resolution"]
    item = get_alert("episode:wt-01:wt-01-1000", deps)
    assert (item["status"], item["score"], item["contributions"]) == ("closed", 5.0, UPDATES[3])
    assert (item["severity"], item["features"], item["last_seq"]) == ("high", ["gen_temp", "rpm"], 4)


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
    assert escalations[0].subject == \
        "[ESCALATED HIGH] wt-01: open 10 min, score 2.0x threshold, mostly rpm (80 %), gen_temp (15 %)"
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
    item = acknowledge("episode:wt-01:wt-01-1000", "alice", deps, note="crew on site")
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
    top = "score 2.0x threshold, mostly rpm (80 %), gen_temp (15 %)"
    assert subjects[:2] == [f"[MEDIUM] wt-01: {top}"] * 2
    assert subjects[2:] == [f"[HIGH] REPEATED wt-01: {top}"] * 2
    assert "Escalated: episode 3 of this turbine within 3 h." in sent(deps, "alert")[2].message
    assert get_alert("episode:wt-01:wt-01-2", deps)["severity"] == "high"
    on_anomaly(row("open", episode="wt-02-0", turbine="wt-02"), deps)  # another turbine: its own count
    assert sent(deps, "alert")[-1].subject == f"[MEDIUM] wt-02: {top}"


# -- rate limit -------------------------------------------------------------------------------------
def test_the_rate_limit_folds_extra_episodes_into_one_summary(tmp_path: Path, clock: Clock) -> None:
    deps = make_deps(tmp_path, clock, rate_limit=2, rate_window_s=3600, repeat_episodes=100)
    for i in range(5):
        on_anomaly(row("open", episode=f"wt-01-{i}", score=2.0 + i), deps)
        clock.advance(10)
    on_anomaly(row("open", episode="wt-02-0", turbine="wt-02"), deps)  # another turbine is not limited
    on_anomaly(row("close", episode="wt-01-4", seq=2, score=6.0), deps)
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
    assert "episode:wt-01:wt-01-4  critical" in summary.message and "closed" in summary.message
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
    item = acknowledge("episode:wt-01:wt-01-1000", "bob", deps, verdict="fault", note="bearing")
    assert item["verdict"] == "fault" and item["label_key"] == "labels/alerts/episode_wt-01_wt-01-1000/labels.json"
    assert isinstance(deps.store, MemoryStore)
    path = tmp_path / "labels.json"
    path.write_bytes(deps.store.get(item["label_key"]))
    [fault] = load_labels(path)
    assert (fault.turbine_id, fault.start, fault.end, fault.severity) == ("wt-01", T0 - 120, T0 + 300, "medium")
    doc = json.loads(path.read_text())
    assert doc["source"] == {"alert_id": "episode:wt-01:wt-01-1000", "episode_id": "wt-01-1000", "verdict": "fault",
                             "by": "bob", "note": "bearing", "model_version": 1,
                             "acks": [{"by": "bob", "at": T0, "verdict": "fault", "note": "bearing"}]}


def test_a_false_alarm_verdict_keeps_the_span_normal(deps: AlertDeps, tmp_path: Path) -> None:
    on_anomaly(row("open"), deps)
    item = acknowledge("episode:wt-01:wt-01-1000", "bob", deps, verdict="false-alarm")
    assert isinstance(deps.store, MemoryStore)
    path = tmp_path / "labels.json"
    path.write_bytes(deps.store.get(item["label_key"]))
    assert load_labels(path) == []
    assert json.loads(path.read_text())["false_alarms"] == [{"turbine_id": "wt-01", "start": T0 - 120,
                                                             "end": T0 - 50}]  # its last flagged window


def test_a_verdict_on_a_turbine_whose_clock_runs_ahead_still_labels_its_samples(deps: AlertDeps,
                                                                                tmp_path: Path) -> None:
    """The span is in the turbine's clock (its samples'), not the cloud's: ten minutes of skew must not give a
    span that ends before it starts (training would quarantine it and the operator's verdict would be lost)."""
    ahead = 600.0
    on_anomaly(row("open", started_at=T0 + ahead - 120, opened_at=T0 + ahead - 60, last_flagged_at=T0 + ahead - 50),
               deps)
    item = acknowledge("episode:wt-01:wt-01-1000", "bob", deps, verdict="false-alarm")
    doc, faults = label(deps, tmp_path, item["label_key"])
    assert faults == [] and doc["false_alarms"] == [{"turbine_id": "wt-01", "start": T0 + ahead - 120,
                                                     "end": T0 + ahead - 50}]
    assert parse_false_alarms(json.dumps(doc), item["label_key"])  # what training reads: no error


def label(deps: AlertDeps, tmp_path: Path, key: str) -> tuple[dict[str, Any], list[Any]]:
    assert isinstance(deps.store, MemoryStore)
    path = tmp_path / "labels.json"
    path.write_bytes(deps.store.get(key))
    return json.loads(path.read_text()), load_labels(path)


def test_a_second_acknowledgement_keeps_the_first_verdict_and_note(deps: AlertDeps, clock: Clock,
                                                                   tmp_path: Path) -> None:
    alert_id = "episode:wt-01:wt-01-1000"
    on_anomaly(row("open"), deps)
    on_anomaly(row("close", seq=2), deps)
    acknowledge(alert_id, "bob", deps, verdict="fault", note="bearing noise")
    clock.advance(600)
    item = acknowledge(alert_id, "carol", deps, verdict="false-alarm", note="a sensor was recalibrated")
    assert item["acks"] == [
        {"by": "bob", "at": T0, "verdict": "fault", "note": "bearing noise"},
        {"by": "carol", "at": T0 + 600, "verdict": "false-alarm", "note": "a sensor was recalibrated"}]
    # the current verdict is the latest; the first acknowledgement (no escalation after it) stays the first
    assert (item["verdict"], item["acked_by"], item["acked_at"]) == ("false-alarm", "carol", T0)
    doc, faults = label(deps, tmp_path, item["label_key"])  # the label follows the latest verdict
    assert faults == [] and doc["false_alarms"] == [{"turbine_id": "wt-01", "start": T0 - 120, "end": T0 + 300}]
    assert (doc["source"]["verdict"], doc["source"]["by"]) == ("false-alarm", "carol")
    assert [a["note"] for a in doc["source"]["acks"]] == ["bearing noise", "a sensor was recalibrated"]

    clock.advance(60)
    item = acknowledge(alert_id, "dave", deps, note="crew informed")  # no verdict: the verdict stays
    assert [a["by"] for a in item["acks"]] == ["bob", "carol", "dave"]
    assert (item["verdict"], item["note"]) == ("false-alarm", "crew informed")
    assert label(deps, tmp_path, item["label_key"])[0]["source"]["by"] == "carol"  # not rewritten
    clock.advance(60)
    assert acknowledge(alert_id, "dave", deps, note="crew informed")["acks"] == item["acks"]  # the same again
    item = acknowledge(alert_id, "bob", deps, verdict="fault", note="confirmed on site")
    assert item["verdict"] == "fault"
    assert [f.turbine_id for f in label(deps, tmp_path, item["label_key"])[1]] == ["wt-01"]


def test_an_acknowledgement_stored_before_the_history_is_its_first_entry(deps: AlertDeps, clock: Clock) -> None:
    alert_id = "episode:wt-01:wt-01-1000"
    on_anomaly(row("open"), deps)
    legacy = {k: v for k, v in (deps.alerts.get("alerts", alert_id) or {}).items()
              if k not in ("acks", "acked_by", "acked_at", "note", "verdict", "verdict_at", "label_key")}
    deps.alerts.put("alerts", alert_id, {**legacy, "acked_by": "alice", "acked_at": T0 - 10, "note": "seen",
                                         "verdict": "fault", "verdict_at": T0 - 10,
                                         "label_key": "labels/alerts/x/labels.json"})
    assert get_alert(alert_id, deps)["acks"] == [{"by": "alice", "at": T0 - 10, "verdict": "fault", "note": "seen"}]
    item = acknowledge(alert_id, "bob", deps, note="still on")
    assert [(a["by"], a["verdict"]) for a in item["acks"]] == [("alice", "fault"), ("bob", None)]
    assert (item["verdict"], item["acked_at"]) == ("fault", T0 - 10)


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
    # 3.4x its threshold for 30 s: high; voltage (2 %) is too small to name
    assert alert.subject == "[HIGH] turbine-03: score 3.4x threshold, mostly gen_temp (64 %), rps (34 %)"
    health(deps, "wt-01", T0 - 1000)
    result = handle(json.loads((events / "scheduled_event.json").read_text()), deps)
    assert result["action"] == "checked" and result["sent"] == ["alert:offline:wt-01:1772322200"]
    assert handle({**event, "kind": "reopen"}, deps)["action"] == "rejected"


# -- the CLI on a local data directory ----------------------------------------------------------------
def test_cli_list_show_and_ack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nacelle.cli import main
    from nacelle.local.runtime.stack import Stack

    home = tmp_path / "home"
    stack = Stack(home)
    on_anomaly(row("open"), stack.alert_deps())
    data_dir = ["--data-dir", str(home)]
    assert main(["alerts", "list", *data_dir]) == 0
    listing = capsys.readouterr().out
    assert "episode:wt-01:wt-01-1000" in listing and "medium" in listing and "open" in listing
    assert main(["alerts", "ack", "episode:wt-01:wt-01-1000", "--verdict", "fault", "--note", "pitch bearing",
                 "--by", "carol", *data_dir]) == 0
    assert "acknowledged by carol" in capsys.readouterr().out
    assert main(["alerts", "show", "episode:wt-01:wt-01-1000", "--json", *data_dir]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["acked_by"], shown["verdict"], shown["note"]) == ("carol", "fault", "pitch bearing")
    label = json.loads(stack.store.get(shown["label_key"]))
    assert label["episodes"][0]["turbine_id"] == "wt-01"
    assert main(["alerts", "ack", "episode:nope", *data_dir]) == 2
    assert "no alert 'episode:nope'" in capsys.readouterr().err


# -- the cost of a message does not grow with the history ------------------------------------------
class CountingState(SqliteStateStore):
    """Counts the items each call reads."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.read = 0

    def get(self, pk: str, sk: str) -> dict[str, Any] | None:
        self.read += 1
        return super().get(pk, sk)

    def query(self, pk: str, sk_prefix: str = "") -> list[dict[str, Any]]:
        items = super().query(pk, sk_prefix)
        self.read += len(items)
        return items


def _items_read_by_one_episode(tmp_path: Path, clock: Clock, history: int) -> tuple[int, int]:
    deps = make_deps(tmp_path, clock, rate_limit=10_000)
    counting = CountingState(tmp_path / "counted.db")
    deps.alerts = counting
    for k in range(history):  # closed episodes of many turbines, the new episode's one too: the fleet's past
        turbine = f"wt-{k % 50 + 50:02d}"
        on_anomaly(row("open", f"{turbine}-{k}", turbine=turbine), deps)
        on_anomaly(row("close", f"{turbine}-{k}", seq=2, turbine=turbine), deps)
    clock.advance(deps.policy.repeat_window_s + 86_400)  # the repeat rule's window holds none of them
    counting.read = 0
    on_anomaly(row("open", "wt-99-new", turbine="wt-99"), deps)
    on_anomaly(row("close", "wt-99-new", seq=2, turbine="wt-99"), deps)
    per_message = counting.read
    counting.read = 0
    on_scheduled_check(deps)
    return per_message, counting.read


def test_a_message_and_the_scheduled_check_read_the_same_items_whatever_the_history(tmp_path: Path,
                                                                                     clock: Clock) -> None:
    small = _items_read_by_one_episode(tmp_path / "small", clock, 5)
    large = _items_read_by_one_episode(tmp_path / "large", clock, 200)
    assert small == large


def test_open_episodes_and_pending_summaries_are_indexed_until_they_are_settled(deps: AlertDeps,
                                                                                 clock: Clock) -> None:
    on_anomaly(row("open", "wt-01-1"), deps)
    assert [i["sk"] for i in deps.alerts.query("open")] == ["episode:wt-01:wt-01-1"]
    on_anomaly(row("close", "wt-01-1", seq=2), deps)
    assert deps.alerts.query("open") == []
    deps.alerts.put("open", "episode:wt-01:gone", {})  # a crash left an entry whose alert expired
    on_anomaly(row("open", "wt-01-2"), deps)
    clock.advance(deps.policy.escalate_after_s + 1)
    on_scheduled_check(deps)  # escalates from the index and drops the stale entry
    assert [m.attributes["kind"] for m in sent(deps)] == ["alert", "resolution", "alert", "escalation"]
    assert [i["sk"] for i in deps.alerts.query("open")] == ["episode:wt-01:wt-01-2"]


def test_a_crash_before_the_index_entry_is_repaired_by_the_redelivered_message(deps: AlertDeps, clock: Clock) -> None:
    on_anomaly(row("open", "wt-01-1"), deps)
    deps.alerts.delete("open", "episode:wt-01:wt-01-1")  # killed after the alert item, before its entry
    on_anomaly(row("open", "wt-01-1"), deps)  # the bus delivers it again
    assert [i["sk"] for i in deps.alerts.query("open")] == ["episode:wt-01:wt-01-1"]
    clock.advance(deps.policy.escalate_after_s + 1)
    on_scheduled_check(deps)
    assert [m.attributes["kind"] for m in sent(deps)] == ["alert", "escalation"]
