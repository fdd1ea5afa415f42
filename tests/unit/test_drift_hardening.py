"""The field-data loop against what devices and crashes do to it: clocks ahead, functions killed mid-way, huge
values, turbines that fall silent, model swaps split over two rows, file names that lie and episode ids that are
another turbine's."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from nacelle.simulator.generate import csv_bytes
from nacelle.simulator.physics import TurbineModel
from services.anomaly_alert.app import handle as handle_anomaly
from services.drift_monitor.app import handle
from shared.capture import NORMAL, CaptureName, capture_key, capture_label_key
from shared.messages import MAX_CLOCK_AHEAD_S, BadMessage, EpisodeRow, StatsRow, validate
from shared.ml.drift import MAX_DISTANCE, sketch_distance
from shared.ml.spec import default_spec
from shared.ports import Topic
from shared.records import DriftAlert, load
from shared.usecases import state_keys as sk
from shared.usecases.alerts import ALERTS, STALE_CLAIM_S, acknowledge, label_key, on_anomaly
from shared.usecases.drift import DRIFT, DRIFTING, RECENT_S, RETRAIN, DriftDeps, captured_normal_hours, on_stats
from shared.usecases.turbine_periods import history
from tests.fakes import Clock, RecordingEvents, RecordingNotifier
from tests.unit.test_capture_labels import EPISODE_ID, START, THING, Chain, alert, captured
from tests.unit.test_drift_monitor import GROUP, PERIOD, T0, capture, feed, make_deps, notified, state_of, stats_row


@pytest.fixture
def deps() -> DriftDeps:
    return make_deps()


class Killed(BaseException):
    """The function killed mid-way (a timeout): no exception handler runs."""


class FailingOnce(RecordingNotifier):
    """Raises `error` at the first publish whose subject contains `subject`."""

    def __init__(self, error: BaseException, subject: str = "") -> None:
        super().__init__()
        self.error: BaseException | None = error
        self.subject = subject

    def publish(self, topic: Topic, subject: str, message: str, attributes: Mapping[str, str]) -> str:
        if self.error is not None and self.subject in subject:
            error, self.error = self.error, None
            raise error
        return super().publish(topic, subject, message, attributes)


def fail_publishing(deps: DriftDeps, error: BaseException, subject: str = "") -> None:
    """From now on, the first publish of a subject containing `subject` raises `error` (what was sent is kept)."""
    before = deps.alerts.notifier
    assert isinstance(before, RecordingNotifier)
    deps.alerts.notifier = notifier = FailingOnce(error, subject)
    notifier.messages = before.messages


def clock_of(deps: DriftDeps) -> Clock:
    clock = deps.alerts.clock
    assert isinstance(clock, Clock)
    return clock


def ahead(row: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The row of a device whose clock runs `seconds` ahead of the broker's."""
    return {**row, "received_at": int((row["period_start"] + row["period_s"] - seconds) * 1000)}


def retraining(deps: DriftDeps) -> None:
    deps.policy = replace(deps.policy, retrain_turbines=2, retrain_after_s=3600.0, retrain_min_captured_hours=0.5)


def marker(deps: DriftDeps, version: int = 1) -> dict[str, Any]:
    return deps.state.get(sk.group_pk(GROUP), f"{RETRAIN}{version}") or {}


# -- a device clock ahead ----------------------------------------------------------------------------------------
def test_a_period_ending_after_the_broker_received_it_is_refused_and_counted(deps: DriftDeps) -> None:
    feed(deps, [stats_row("t1", p) for p in range(4)])
    future = {**stats_row("t1", 0), "period_start": 4_000_000_000.0}  # a device clock in 2096
    with pytest.raises(BadMessage, match=r"field 'period_start' ends the period .* after the row was received"):
        validate(StatsRow, future)
    assert handle(future, deps)["action"] == "rejected"
    [refused] = deps.state.query("rejected")
    assert refused["sk"] == "t1#stats" and refused["by_reason"] == {"schema": 1}
    assert len(state_of(deps, "t1").periods) == 4  # neither judged nor on the timeline
    assert [p.start for p in history(deps.state, "t1")] == [T0 + p * PERIOD for p in range(4)]
    # the turbine's drift is still seen; a clock a little ahead is allowed
    out = feed(deps, [ahead(stats_row("t1", p, shift=3.0), MAX_CLOCK_AHEAD_S - 5) for p in (4, 5)])
    assert [o["action"] for o in out] == ["drifting", "drifting"] and len(notified(deps)) == 1


def test_retraining_is_timed_by_no_clock_ahead_of_the_brokers(deps: DriftDeps) -> None:
    retraining(deps)
    pk = sk.group_pk(GROUP)
    deps.state.put(pk, f"{RETRAIN}1", {"checked_at": 4_000_000_000.0})  # left by a row from a clock in 2096
    for p in range(3, 9):
        capture(deps, "a", T0 + p * PERIOD, 30)
        capture(deps, "b", T0 + p * PERIOD, 30)
    rows = [ahead(stats_row(t, p, shift=3.0 if p >= 3 else 0.0), 200.0) for p in range(9) for t in ("a", "b")]
    feed(deps, rows)
    assert marker(deps)["status"] == "requested"
    assert marker(deps)["checked_at"] <= rows[-1]["received_at"] / 1000  # never later than the broker's clock
    events = deps.events
    assert isinstance(events, RecordingEvents) and len(events.published) == 1


# -- claims a dead function left ---------------------------------------------------------------------------------
def test_a_drift_alert_claimed_by_a_function_that_died_is_sent_once_its_claim_is_stale(deps: DriftDeps) -> None:
    feed(deps, [stats_row("t", p) for p in range(3)] + [stats_row("t", 3, shift=3.0)])
    fail_publishing(deps, Killed())
    with pytest.raises(Killed):
        handle(stats_row("t", 4, shift=3.0), deps)
    assert handle(stats_row("t", 4, shift=3.0), deps)["sent"] == []  # claimed a moment ago: may still be sent
    clock_of(deps).advance(STALE_CLAIM_S)
    again = handle(stats_row("t", 4, shift=3.0), deps)
    assert [s.split(":")[0] for s in again["sent"]] == ["alert"] and len(notified(deps)) == 1
    assert handle(stats_row("t", 5, shift=3.0), deps)["sent"] == []


def test_a_resolution_claimed_by_a_function_that_died_is_sent_and_then_forgotten(deps: DriftDeps) -> None:
    feed(deps, [stats_row("t", p, shift=3.0 if p >= 3 else 0.0) for p in range(5)])
    alert_id = state_of(deps, "t").alert_id
    assert alert_id is not None
    handle(stats_row("t", 5), deps)
    fail_publishing(deps, Killed(), "RESOLVED")
    with pytest.raises(Killed):
        handle(stats_row("t", 6), deps)
    clock_of(deps).advance(STALE_CLAIM_S)
    later = handle(stats_row("t", 7), deps)  # the turbine's next row
    assert later["sent"] == [f"resolution:{alert_id}"] and notified(deps)[-1] == "[RESOLVED] t: data drift"
    assert state_of(deps, "t").alert_id is None


def test_a_drift_over_before_its_alert_was_sent_is_still_told_then_resolved(deps: DriftDeps) -> None:
    feed(deps, [stats_row("t", p) for p in range(3)] + [stats_row("t", 3, shift=3.0)])
    fail_publishing(deps, Killed())
    with pytest.raises(Killed):
        handle(stats_row("t", 4, shift=3.0), deps)
    feed(deps, [stats_row("t", p) for p in (5, 6)])  # calm again while the claim is fresh: nothing sent yet
    assert notified(deps) == [] and state_of(deps, "t").alert_id is not None
    clock_of(deps).advance(STALE_CLAIM_S)
    handle(stats_row("t", 7), deps)
    assert [s.split(":")[0] for s in notified(deps)] == ["[MEDIUM] t", "[RESOLVED] t"]
    notifier = deps.alerts.notifier
    assert isinstance(notifier, RecordingNotifier) and "The drift ended with the period" in notifier.messages[0].message
    assert state_of(deps, "t").alert_id is None


# -- the retraining notice -------------------------------------------------------------------------------------
@pytest.mark.parametrize("error, wait", [(ConnectionError("SNS unreachable"), 0.0), (Killed(), STALE_CLAIM_S)])
def test_the_retraining_notice_is_sent_though_its_first_publish_fails(deps: DriftDeps, error: BaseException,
                                                                      wait: float) -> None:
    retraining(deps)
    for p in range(3, 9):
        capture(deps, "a", T0 + p * PERIOD, 30)
        capture(deps, "b", T0 + p * PERIOD, 30)
    fail_publishing(deps, error, "retraining requested")
    failed = []
    for p in range(12):
        for thing in ("a", "b"):
            row = stats_row(thing, p, shift=3.0 if p >= 3 else 0.0)
            try:
                handle(row, deps)
            except (ConnectionError, Killed):
                failed.append(row)
                clock_of(deps).advance(wait)
                handle(row, deps)  # redelivered
    assert len(failed) == 1 and marker(deps)["status"] == "requested"
    assert sum("retraining requested" in s for s in notified(deps)) == 1
    assert marker(deps)["notified_at"] is not None and marker(deps)["notice_message_id"]
    events = deps.events
    assert isinstance(events, RecordingEvents) and len(events.published) == 1


# -- captured hours ------------------------------------------------------------------------------------------------
def test_captured_hours_are_the_rows_span_each_instant_once(deps: DriftDeps) -> None:
    capture(deps, "a", T0, 30)
    capture(deps, "a", T0 + 600, 30)  # overlaps the first by 20 min
    lying = CaptureName(T0 + 7200, T0 + 7200 + 48 * 3600, NORMAL, 1).file_name  # 48 h claimed, 10 min of rows
    deps.store.put(f"raw/capture/a/{lying}", b"csv")
    deps.state.put(sk.group_pk(GROUP), sk.FILE + f"raw/capture/a/{lying}",
                   {"status": "accepted", "start": "2026-03-01T02:00:00+00:00", "end": "2026-03-01T02:10:00+00:00"})
    assert captured_normal_hours(deps, {"a": T0}, 100.0) == pytest.approx(50 / 60)


@pytest.mark.parametrize("named_as, reason", [
    (lambda ts: CaptureName(ts[0], ts[0] + 48 * 3600, NORMAL, 3), "cover 14"),
    (lambda ts: CaptureName(ts[0] + 60, ts[-1], NORMAL, 3), "fall outside"),
    (lambda ts: CaptureName(ts[0], ts[-1] - 60, NORMAL, 3), "fall outside"),
])
def test_a_capture_whose_rows_are_not_its_names_span_is_quarantined(tmp_path: Path, named_as: Any,
                                                                   reason: str) -> None:
    chain = Chain(tmp_path)
    columns = TurbineModel(THING, 5, START).step(150.0)
    key = capture_key(THING, named_as([float(t) for t in columns["ts"]]))
    assert chain.arrive(key, csv_bytes(columns)) == "quarantined"
    [problem] = json.loads(chain.store.get(f"quarantine/{key}.report.json"))["errors"]
    assert problem["code"] == "capture_span" and problem["column"] == default_spec().time_column
    assert problem["message"].startswith(key) and reason in problem["message"] and "<start>_<end>" in problem["message"]


def test_a_capture_named_by_its_rows_is_accepted(tmp_path: Path) -> None:
    chain = Chain(tmp_path)
    key, data, _ = captured(NORMAL)
    assert chain.arrive(key, data) == "accepted"


# -- turbines that stop sending ----------------------------------------------------------------------------------
def test_a_drifting_turbine_that_stopped_reporting_does_not_count_towards_retraining(deps: DriftDeps) -> None:
    retraining(deps)
    deps.policy = replace(deps.policy, retrain_after_s=7200.0, retrain_min_captured_hours=1.0)
    feed(deps, [stats_row("gone", p, shift=3.0 if p >= 3 else 0.0) for p in range(6)])  # its last stats ever
    capture(deps, "gone", T0 + 3 * PERIOD, 60)
    later = 14 * 48  # two weeks on, "b" drifts: alone
    capture(deps, "b", T0 + (later + 3) * PERIOD, 60)
    feed(deps, [stats_row("b", p, shift=3.0 if p >= later + 3 else 0.0) for p in range(later, later + 9)])
    events = deps.events
    assert isinstance(events, RecordingEvents) and events.published == []
    assert deps.state.get(DRIFTING, "gone") is not None  # still drifting as far as anyone knows...
    assert (T0 + (later + 8) * PERIOD) - (deps.state.get(DRIFTING, "gone") or {})["last_period"] > RECENT_S  # ...lately
    # with "c" drifting alongside "b", they retrain without "gone"
    capture(deps, "c", T0 + (later + 3) * PERIOD, 60)
    feed(deps, [stats_row("c", p, shift=3.0 if p >= later + 3 else 0.0) for p in range(later, later + 9)])
    handle(stats_row("b", later + 9, shift=3.0), deps)
    [asked] = events.published
    assert "drift on b, c " in asked.body["detail"]["reason"]


# -- episode ids -------------------------------------------------------------------------------------------------
def episode_row(thing: str, episode_id: str, kind: str, seq: int) -> dict[str, Any]:
    t0 = START.timestamp()
    return {"v": 2, "kind": kind, "episode_id": episode_id, "turbine_id": thing, "features": ["rps"], "score": 2.0,
            "contributions": {"rps": 1.0}, "missing": [], "started_at": t0 + 90, "opened_at": t0 + 98,
            "last_flagged_at": t0 + 110, "ended_at": t0 + 125 if kind == "close" else None, "model_version": 3,
            "seq": seq, "thing_name": thing, "received_at": int((t0 + 130) * 1000), "client_id": thing}


def test_an_episode_row_naming_another_turbines_episode_is_refused_and_counted(tmp_path: Path) -> None:
    chain = Chain(tmp_path)
    foreign = episode_row("turbine-02", EPISODE_ID, "open", 1)  # turbine-01's episode id
    with pytest.raises(BadMessage, match=r"field 'episode_id' must start with .*'turbine-02-'"):
        validate(EpisodeRow, foreign)
    assert handle_anomaly(foreign, chain.alerts)["action"] == "rejected"
    [refused] = chain.alerts.devices.query("rejected")
    assert refused["sk"] == "turbine-02#anomalies" and refused["by_reason"] == {"schema": 1}
    own = episode_row("turbine-02", "turbine-02-1772323290000", "open", 2)
    assert handle_anomaly(own, chain.alerts)["action"] == "new"


def test_a_verdict_labels_only_captures_of_its_own_turbine(tmp_path: Path) -> None:
    chain = Chain(tmp_path)
    mine = alert(chain)
    key, data, _ = captured()
    assert chain.arrive(key, data) == "accepted"
    acknowledge(mine, "alice", chain.alerts, verdict="fault", note="bearing")
    chain.arrive(label_key(mine))
    before = chain.store.get(capture_label_key(key))
    # turbine-02's alert under turbine-01's episode id (a row built past the message check)
    for kind, seq in (("open", 1), ("close", 2)):
        on_anomaly(EpisodeRow(**episode_row("turbine-02", EPISODE_ID, kind, seq)), chain.alerts)
    theirs = f"episode:turbine-02:{EPISODE_ID}"
    acknowledge(theirs, "bob", chain.alerts, verdict="false-alarm")
    assert chain.arrive(label_key(theirs)) == "accepted"
    assert chain.store.get(capture_label_key(key)) == before  # still alice's verdict on turbine-01's episode


# -- huge values -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, field", [
    (lambda r: r["quantiles"].update(rps=[1e308] * 19), "quantiles.rps[0]"),
    (lambda r: r["mean"].update(voltage=-1e300), "mean.voltage"),
    (lambda r: r.update(score_quantiles=[1.7e308] * 19), "score_quantiles[0]"),
    (lambda r: r.update(score_std=1e39), "score_std"),
])
def test_stats_values_beyond_float32_are_refused_naming_the_field(deps: DriftDeps, change: Any, field: str) -> None:
    row = stats_row("h", 0)
    change(row)
    with pytest.raises(BadMessage, match=rf"field '{re.escape(field)}' must be [<>]= "):
        validate(StatsRow, row)
    assert handle(row, deps)["action"] == "rejected"


def test_the_distance_of_huge_sketches_stays_finite(deps: DriftDeps) -> None:
    assert sketch_distance([-1e308] * 19, [1e308] * 19, 1e-9) == MAX_DISTANCE
    assert sketch_distance([1.0] * 19, [2.0] * 19, 0.5) == 2.0
    feed(deps, [stats_row("h", p) for p in range(4)])

    def huge(p: int) -> StatsRow:  # built past the message checks
        row = validate(StatsRow, stats_row("h", p))
        return replace(row, quantiles={**row.quantiles, "rps": [1e308] * 19})

    for p in (4, 5):
        assert on_stats(huge(p), deps).action == "drifting"
    item = load(DriftAlert, deps.alerts.alerts.get(ALERTS, str(state_of(deps, "h").alert_id)))
    assert item is not None and item.alert == "sent" and math.isfinite(item.distances["rps"])


# -- a model swap's two rows of one period -----------------------------------------------------------------------
@pytest.mark.parametrize("order", [(1, 2), (2, 1)])
def test_a_model_swaps_two_rows_of_one_period_leave_the_newer_version_in_either_order(
        deps: DriftDeps, order: tuple[int, int]) -> None:
    deps.store.put(f"compiled/{GROUP}/2/manifest.json", deps.store.get(f"compiled/{GROUP}/1/manifest.json"))
    feed(deps, [stats_row("t", p, shift=3.0 if p >= 3 else 0.0) for p in range(8)])
    since = state_of(deps, "t").since
    feed(deps, [stats_row("t", 8, version=v, shift=3.0) for v in order])
    state = state_of(deps, "t")
    assert state.model_version == 2 and state.since == T0 + 8 * PERIOD  # timed from v2's first period, once
    assert since is not None and since < state.since
    assert handle(stats_row("t", 9, version=2, shift=3.0), deps)["action"] == "drifting"
    assert state_of(deps, "t").model_version == 2 and deps.state.get(DRIFT, "t") is not None
