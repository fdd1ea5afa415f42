"""drift_monitor on the in-memory doubles: stats rows against the training baseline and the turbine's own start, one
alert per drift however rows repeat or reorder, refusals, and the retraining policy."""

from __future__ import annotations

import json
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.drift_monitor.app import handle
from shared.capture import CaptureName
from shared.errors import ConfigurationError
from shared.events import RETRAIN_CHECK
from shared.iot_sql import parse
from shared.messages import BadMessage, StatsMessage, decode
from shared.ml import drift
from shared.ml.table import iso_utc
from shared.records import DriftAlert, DriftState, load
from shared.usecases import state_keys as sk
from shared.usecases.alerts import ALERTS, AlertDeps, AlertPolicy
from shared.usecases.drift import DRIFT, DRIFTING, HISTORY, RETRAIN, DriftDeps, DriftPolicy
from tests.fakes import Clock, MemoryRegistry, MemoryState, MemoryStore, RecordingEvents, RecordingNotifier
from tests.unit.test_template import ref_target, resources

GROUP = "nacelle-turbine"
PERIOD = 1800.0
T0 = 1_772_323_200.0  # 2026-03-01, a multiple of the period
FEATURES = {"rps": (2.25, 0.6), "voltage": (75.0, 26.0)}  # mean, sd


def values(rng: np.random.Generator, n: int, shift: float, score_shift: float | None = None) -> dict[str, np.ndarray]:
    """Feature values shifted by `shift` sds, and scores (by `score_shift` sds when given, else by `shift`)."""
    out = {name: rng.normal(mean + shift * sd, sd, n) for name, (mean, sd) in FEATURES.items()}
    out["score"] = rng.normal(0.6 + 0.1 * (shift if score_shift is None else score_shift), 0.1, n)
    return out


@cache
def baseline() -> drift.Baseline:
    """Three training turbines 0.3 sd apart: tolerances about 0.3, so 'far from training' needs about 1.5 sd."""
    rng, pieces = np.random.default_rng(1), []
    for k, offset in enumerate((-0.3, 0.0, 0.3)):
        v = values(rng, 3600, offset)
        pieces.append(drift.Piece(f"wt-{k}", T0 + 0.5 * np.arange(3600), np.column_stack([v[n] for n in FEATURES]),
                                  v["score"], np.ones(3600, dtype=bool)))
    return drift.calibrate(pieces, list(FEATURES), PERIOD, 600)


def stats_row(thing: str, period: int, *, shift: float = 0.0, n: int = 3600, version: int | None = 1,
              turbine: str | None = None, seed: int | None = None, score_shift: float | None = None) -> dict[str, Any]:
    """The DriftRule's row of a period's StatsMessage (what the detector sends, plus topic, time, client id)."""
    v = values(np.random.default_rng(seed if seed is not None else hash((thing, period)) % 2**32), n, shift,
               score_shift)
    feats = {name: drift.summarise(v[name]) for name in FEATURES}
    score = drift.summarise(v["score"])
    assert score is not None and all(feats.values())
    message = StatsMessage(
        v=1, turbine_id=turbine or thing, seq=period + 1, model_version=version, period_start=T0 + period * PERIOD,
        period_s=PERIOD, windows=n, operating_windows=n, levels=list(drift.LEVELS),
        count={k: s.count for k, s in feats.items() if s}, mean={k: s.mean for k, s in feats.items() if s},
        std={k: s.std for k, s in feats.items() if s}, quantiles={k: list(s.quantiles) for k, s in feats.items() if s},
        score_count=score.count, score_mean=score.mean, score_std=score.std, score_quantiles=list(score.quantiles))
    received = int((T0 + (period + 1) * PERIOD) * 1000) + 5_000  # the broker's clock: just after the period ended
    return {**json.loads(message.to_json()), "thing_name": thing, "received_at": received, "client_id": thing}


@pytest.fixture
def deps() -> DriftDeps:
    return make_deps()


def make_deps(policy: DriftPolicy | None = None) -> DriftDeps:
    clock = Clock()
    state = MemoryState()
    alerts = AlertDeps(MemoryState(), state, MemoryRegistry(), RecordingNotifier(), clock, GROUP, AlertPolicy())
    store = MemoryStore()
    store.put(f"compiled/{GROUP}/1/manifest.json", json.dumps({"drift_baseline": baseline().to_dict()}).encode())
    return DriftDeps(alerts, state, store, RecordingEvents(clock), policy or DriftPolicy())


def notified(deps: DriftDeps) -> list[str]:
    notifier = deps.alerts.notifier
    assert isinstance(notifier, RecordingNotifier)
    return [m.subject for m in notifier.messages]


def feed(deps: DriftDeps, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [handle(r, deps) for r in rows]


def state_of(deps: DriftDeps, thing: str) -> DriftState:
    record = load(DriftState, deps.state.get(DRIFT, thing))
    assert record is not None
    return record


def test_calm_periods_raise_nothing_and_a_lasting_drift_one_alert_then_one_resolution(deps: DriftDeps) -> None:
    calm = feed(deps, [stats_row("t1", p) for p in range(4)])
    assert [o["action"] for o in calm] == ["calm"] * 4 and notified(deps) == []
    first = handle(stats_row("t1", 4, shift=3.0), deps)  # one drifting period: not yet
    assert first["action"] == "drifting" and first["sent"] == [] and notified(deps) == []
    second = handle(stats_row("t1", 5, shift=3.0), deps)
    assert len(second["sent"]) == 1 and second["sent"][0].startswith("alert:drift:t1:1:")
    [subject] = notified(deps)
    assert subject.startswith("[MEDIUM] t1: data drift in ") and "rps" in subject and "voltage" in subject
    # redelivered: nothing changes; more drifting periods: the same alert, not another one
    assert handle(stats_row("t1", 5, shift=3.0), deps)["action"] == "duplicate"
    assert handle(stats_row("t1", 6, shift=3.0), deps)["sent"] == [] and len(notified(deps)) == 1
    alert = load(DriftAlert, deps.alerts.alerts.get(ALERTS, second["sent"][0].removeprefix("alert:")))
    assert alert is not None and alert.features == ("rps", "voltage") and alert.distances["rps"] > 2.5
    assert alert.since == T0 + 4 * PERIOD and deps.state.get(DRIFTING, "t1") is not None
    # two calm periods resolve it, once
    feed(deps, [stats_row("t1", 7), stats_row("t1", 8), stats_row("t1", 9)])
    assert notified(deps)[1:] == ["[RESOLVED] t1: data drift"] and deps.state.get(DRIFTING, "t1") is None
    assert state_of(deps, "t1").status == "ok"


def test_reordered_and_repeated_periods_give_the_same_single_alert(deps: DriftDeps) -> None:
    rows = [stats_row("t2", p, shift=3.0 if p >= 3 else 0.0) for p in range(6)]
    for r in [rows[0], rows[2], rows[1], rows[5], rows[3], rows[3], rows[4], rows[5]]:
        handle(r, deps)
    assert len(notified(deps)) == 1 and state_of(deps, "t2").status == "drifting"
    assert len(state_of(deps, "t2").periods) == 6


def test_a_change_from_the_turbines_own_start_is_drift_within_the_fleets_tolerance(deps: DriftDeps) -> None:
    # 0.8 sd from the training data is within its tolerance (about 1.5 sd): from the start, it is this turbine's normal
    steady = feed(deps, [stats_row("steady", p, shift=0.8) for p in range(8)])
    assert {o["action"] for o in steady} == {"calm"} and notified(deps) == []
    # the same 0.8 sd arriving after the turbine's first periods is a change of this turbine
    changed = feed(deps, [stats_row("moved", p, shift=0.8 if p >= 3 else 0.0) for p in range(6)])
    assert [o["action"] for o in changed] == ["calm"] * 3 + ["drifting"] * 3
    assert changed[3]["changes"]["rps"] >= 0.5 and changed[3]["distances"]["rps"] < 1.5
    assert len(notified(deps)) == 1 and "moved" in notified(deps)[0]


def test_a_turbines_own_score_level_is_no_drift_from_training_but_a_far_one_is() -> None:
    """Turbines differ in their anomaly score by up to about 1 sd without drift, more than a few training turbines
    show: the score is far from training at score_min_distance (1.5) however small the fleet factor makes it."""
    loose = DriftPolicy(fleet_factor=2.0)  # features far at 0.6 sd here; the score still at 1.5
    askew = feed(deps := make_deps(loose), [stats_row("askew", p, score_shift=1.2) for p in range(6)])
    assert {o["action"] for o in askew} == {"calm"} and notified(deps) == []
    far = feed(deps, [stats_row("far", p, score_shift=2.5) for p in range(3)])
    assert far[0]["action"] == "drifting" and far[0]["distances"]["anomaly score"] > 1.5 and len(notified(deps)) == 1
    unguarded = feed(deps := make_deps(replace(loose, score_min_distance=0.0)),
                     [stats_row("askew", p, score_shift=1.2) for p in range(2)])
    assert [o["action"] for o in unguarded] == ["drifting"] * 2 and len(notified(deps)) == 1


def test_a_malformed_or_negative_score_minimum_distance_is_refused_naming_it() -> None:
    from services.drift_monitor.app import DriftMonitorSettings
    required = {variable: "x" for variable, needed in DriftMonitorSettings.env_vars().items() if needed}
    with pytest.raises(ConfigurationError, match="NACELLE_DRIFT_SCORE_MIN_DISTANCE"):
        DriftMonitorSettings.from_env({**required, "NACELLE_DRIFT_SCORE_MIN_DISTANCE": "far"})
    negative = DriftMonitorSettings.from_env({**required, "NACELLE_DRIFT_SCORE_MIN_DISTANCE": "-1"})
    with pytest.raises(ConfigurationError, match=r"score_min_distance=-1\.0"):
        negative.policy()


def test_tiny_periods_and_stats_without_a_usable_baseline_are_left_alone(deps: DriftDeps) -> None:
    tiny = handle(stats_row("t3", 0, n=100), deps)
    assert tiny["action"] == "ignored" and "fewer than 600 windows" in tiny["detail"]
    unknown = handle(stats_row("t3", 1, version=7), deps)
    assert unknown["action"] == "ignored" and "v7" in unknown["detail"] and "never compiled" in unknown["detail"]
    handle(stats_row("t3", 2, version=7), deps)
    assert deps.baselines.reads == 2  # version 1 once, version 7 once: the missing one is remembered a while
    deps.store.put(f"compiled/{GROUP}/8/manifest.json", json.dumps({"format_version": 2}).encode())
    assert "no drift_baseline" in handle(stats_row("t3", 3, version=8), deps)["detail"]
    assert handle(stats_row("t3", 4, version=None), deps)["action"] == "ignored"
    assert deps.state.get(DRIFT, "t3") is None and notified(deps) == []


def test_stats_of_an_older_version_after_a_newer_one_are_stale(deps: DriftDeps) -> None:
    deps.store.put(f"compiled/{GROUP}/2/manifest.json", deps.store.get(f"compiled/{GROUP}/1/manifest.json"))
    feed(deps, [stats_row("t4", p, version=2) for p in (5, 6)])
    assert handle(stats_row("t4", 4, version=1), deps)["action"] == "ignored"
    assert handle(stats_row("t4", 7, version=1), deps)["action"] == "calm"  # a rollback: newer periods on v1
    assert state_of(deps, "t4").model_version == 1


def test_a_device_cannot_send_stats_for_another_turbine(deps: DriftDeps) -> None:
    payload_of_rule = resources("AWS::IoT::TopicRule")["DriftRule"]["Properties"]["TopicRulePayload"]
    assert [ref_target(a["Lambda"]["FunctionArn"]) for a in payload_of_rule["Actions"]] == ["DriftMonitorFunction"]
    parsed = parse(payload_of_rule["Sql"])
    assert parsed.topic_filter == "turbines/+/stats"
    body = stats_row("turbine-01", 0)
    payload = json.dumps({k: v for k, v in body.items() if k not in ("thing_name", "received_at", "client_id")})
    # turbine-02's certificate may publish only under turbines/turbine-02/: the rule takes the thing from the topic
    row = parsed.evaluate("turbines/turbine-02/stats", payload.encode(), "turbine-02", 1_000)
    assert row is not None and row["thing_name"] == "turbine-02" and row["turbine_id"] == "turbine-01"
    assert handle(row, deps)["action"] == "rejected"
    assert deps.state.get(DRIFT, "turbine-01") is None and deps.state.get(DRIFT, "turbine-02") is None
    [refused] = deps.state.query("rejected")
    assert refused["sk"] == "turbine-02#stats" and refused["by_reason"] == {"schema": 1}


@pytest.mark.parametrize("change, reason", [
    (lambda d: d["quantiles"]["rps"].reverse(), "quantiles.rps"),
    (lambda d: d["mean"].pop("voltage"), "'mean' must name the same features"),
    (lambda d: d.update(operating_windows=d["windows"] + 1), "operating_windows"),
    (lambda d: d["count"].update(rps=10**6), "count.rps"),
    (lambda d: d.update(levels=[0.5] * 19), "levels"),
    (lambda d: d.update(score_count=0), "score_quantiles"),
    (lambda d: d.update(extra=1), "unknown field"),
])
def test_malformed_stats_are_refused_naming_the_field(change: Any, reason: str) -> None:
    doc = {k: v for k, v in stats_row("t5", 0).items() if k not in ("thing_name", "received_at", "client_id")}
    change(doc)
    with pytest.raises(BadMessage, match=reason.replace("(", r"\(")):
        decode(StatsMessage, json.dumps(doc).encode())
    with pytest.raises(BadMessage, match="not a JSON number"):
        decode(StatsMessage, json.dumps(doc).replace('"score_mean": ', '"score_mean": NaN, "x": ').encode())


def test_a_turbines_state_stays_the_same_size_however_long_it_runs(deps: DriftDeps) -> None:
    for p in range(3 * HISTORY):
        handle(stats_row("t6", p, seed=p), deps)
    record = state_of(deps, "t6")
    assert len(record.periods) == HISTORY and len(record.reference_starts) == deps.policy.reference_periods


def capture(deps: DriftDeps, thing: str, start: float, minutes: float, status: str = "accepted") -> None:
    name = CaptureName(start, start + 60 * minutes, "normal", 1).file_name
    key = f"raw/capture/{thing}/{name}"
    deps.store.put(key, b"csv")
    span = {"start": iso_utc(start), "end": iso_utc(start + 60 * minutes)}  # its rows' (data_arrival's record)
    deps.state.put(sk.group_pk(GROUP), sk.FILE + key, {"status": status, **span})


def test_retraining_is_asked_once_when_drift_lasts_on_enough_turbines_with_captured_data(deps: DriftDeps) -> None:
    deps.policy = replace(deps.policy, retrain_turbines=2, retrain_after_s=3600.0, retrain_min_captured_hours=0.5)
    events = deps.events
    assert isinstance(events, RecordingEvents)

    def period(p: int) -> None:
        for thing in ("a", "b", "c"):
            handle(stats_row(thing, p, shift=3.0 if p >= 3 and thing != "c" else 0.0), deps)

    for p in range(7):  # a and b drift from period 3; 2 h later, no captured data yet
        period(p)
    assert events.published == [] and state_of(deps, "a").status == "drifting"
    capture(deps, "a", T0 + 2 * PERIOD, 60)  # before the drift began: not counted
    capture(deps, "a", T0 + 4 * PERIOD, 20)
    capture(deps, "b", T0 + 5 * PERIOD, 20, status="quarantined")  # not accepted: not counted
    period(7)
    assert events.published == []
    capture(deps, "b", T0 + 5 * PERIOD + 1200, 15)
    period(8)
    [asked] = events.published
    assert asked.deliver_at is None and asked.body["detail-type"] == RETRAIN_CHECK
    detail = asked.body["detail"]
    assert detail["group"] == GROUP and "drift on a, b" in detail["reason"]
    assert "0.6 h of normal data" in detail["reason"]
    period(9)
    handle(stats_row("a", 8, shift=3.0), deps)  # redelivered
    assert len(events.published) == 1
    assert any("retraining requested" in s for s in notified(deps))


@pytest.mark.parametrize("trained_by_the_request", [True, False])
def test_a_version_trained_on_the_drift_does_not_ask_again_for_it(deps: DriftDeps,
                                                                  trained_by_the_request: bool) -> None:
    deps.policy = replace(deps.policy, retrain_turbines=2, retrain_after_s=3600.0, retrain_min_captured_hours=0.5)
    events = deps.events
    assert isinstance(events, RecordingEvents)
    for p in range(3, 9):
        capture(deps, "a", T0 + p * PERIOD, 30)
        capture(deps, "b", T0 + p * PERIOD, 30)
    for p in range(8):  # a and b drift on v1 from period 3: one retraining asked
        for thing in ("a", "b"):
            handle(stats_row(thing, p, shift=3.0 if p >= 3 else 0.0), deps)
    assert len(events.published) == 1
    pk = sk.group_pk(GROUP)
    [request] = deps.state.query(pk, RETRAIN)
    assert deps.state.update_if(pk, str(request["sk"]), {"job_name": "job-2"}, {"job_name": None})  # the job took it
    manifest = {"drift_baseline": baseline().to_dict(),
                "lineage": {"job_name": "job-2" if trained_by_the_request else "job-routine"}}
    deps.store.put(f"compiled/{GROUP}/2/manifest.json", json.dumps(manifest).encode())
    for p in range(8, 16):  # v2 runs; a and b still differ from the pooled training data, with fresh captures
        capture(deps, "a", T0 + p * PERIOD, 30)
        capture(deps, "b", T0 + p * PERIOD, 30)
        for thing in ("a", "b"):
            handle(stats_row(thing, p, shift=3.0, version=2), deps)
    assert state_of(deps, "a").status == "drifting" and state_of(deps, "a").model_version == 2
    # trained on their drift: not asked again; a version from another job (e.g. before the captures): asked
    assert len(events.published) == (1 if trained_by_the_request else 2)


def test_the_local_stack_routes_the_drift_rule_to_drift_monitor(tmp_path: Path) -> None:
    from nacelle.local.runtime.stack import Stack, iot_target

    stack = Stack(tmp_path / "home")
    target = stack.targets()[iot_target("DriftMonitorFunction")]
    result = target({"detail": stats_row("turbine-01", 0)})  # no compiled version 1 on this stack yet
    assert isinstance(result, dict) and result["action"] == "ignored" and "never compiled" in result["detail"]
    assert stack.drift_deps().baselines is stack.drift_deps().baselines  # one cache per stack


class FailingOnce(RecordingNotifier):
    """Fails the first publish, as a crash between the state write and the notification would."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def publish(self, topic: Any, subject: str, message: str, attributes: Any) -> str:
        if not self.failed:
            self.failed = True
            raise ConnectionError("SNS unreachable")
        return super().publish(topic, subject, message, attributes)


def test_a_failure_after_the_state_is_written_is_finished_by_the_redelivery(deps: DriftDeps) -> None:
    deps.alerts.notifier = FailingOnce()
    feed(deps, [stats_row("t7", p) for p in range(3)] + [stats_row("t7", 3, shift=3.0)])
    with pytest.raises(ConnectionError):
        handle(stats_row("t7", 4, shift=3.0), deps)  # the period is recorded, the alert not sent
    again = handle(stats_row("t7", 4, shift=3.0), deps)  # the retry
    assert again["action"] == "duplicate" and len(again["sent"]) == 1 and len(notified(deps)) == 1
    assert handle(stats_row("t7", 4, shift=3.0), deps)["sent"] == []
