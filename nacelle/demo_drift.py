"""`nacelle demo drift` (`make demo-drift`): the field loop on the local embedded stack, in minutes.

Four simulated turbines run a first model trained on generated history. Then two of them drift (a new hub bearing
and rotor: no fault, the turbine works): the first model's false alarms rise; drift monitoring raises a drift alert
per turbine; the detectors' captured normal data arrives in raw/capture/; once the drift has lasted and enough data
is captured, the drift policy asks for a retraining (history plus captured data; the operator has called the
drifted turbines' alarms false, which labels the data captured around them); the new version passes the gate
and, with the canary-only auto-approval this demo turns on, goes to the canary and holds there; the demo then
approves it for the fleet as an operator would (the CLI's use case, shared.usecases.approval.approve); it rolls out
and the drifted turbines' false alarms fall back. A before/after table and a PNG (nacelle/drift_report.py) end it.

Only the demo's data directory is configured for speed (<home>/config.yaml, never the product defaults): simulators at
SPEED x real time, one-minute stats periods, every normal minute captured, drift thresholds for one-minute periods.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from nacelle.console import table
from nacelle.demo import (
    AlertPrinter,
    Background,
    Before,
    Step,
    approve_version,
    follow_training,
    roll_out,
    run_steps,
    train_version,
)
from nacelle.drift_report import HEADERS, FalseAlarm, Period, back_to_baseline, plot, rows, summarise
from nacelle.local.edge.broker import INSTALL_HINT, find_mosquitto
from nacelle.local.runtime.stack import Stack
from nacelle.local.runtime.up import background_stack, wait_for
from nacelle.mission_report import read_jsonl
from nacelle.simulator.device import SimPaths, request_drift
from shared.capture import CAPTURE_PREFIX, NORMAL, CaptureName
from shared.errors import NacelleError
from shared.ports import ModelVersion
from shared.records import DriftState, load
from shared.usecases import state_keys as sk
from shared.usecases.alerts import acknowledge
from shared.usecases.approval import approve
from shared.usecases.approval_scope import AUTO_APPROVER, canary_only
from shared.usecases.drift import DRIFT, RETRAIN

DEVICES = 4  # turbine-01 is the canary
DRIFTED = ("turbine-02", "turbine-03")
DRIFT_KIND, MAGNITUDE = "component_replacement", 0.9  # a new hub bearing and rotor: more vibration, wobble, tilt
SPEED = 6.0  # simulator seconds per wall-clock second
PERIOD_S = 60  # the detectors' stats period (the recipe's default is 1800 s)
BASELINE_PERIODS = 5  # judged periods of every turbine on the first model before the drift
AFTER_PERIODS = 8  # judged periods of each drifted turbine on the retrained model before the report
OPERATOR = "demo-operator"


def demo_config() -> dict[str, Any]:
    """The demo stack's config.yaml: short timescales for this data directory only."""
    return {
        "hyperparameters": {"threads": "1", "families": "pca"},  # the family the jobs choose here, in seconds
        "quiet_period_s": 2.0,  # captured files arrive every few seconds: a short debounce lets checks decide
        "min_new_turbine_hours": 3.0,  # the history (4.5 h) trains v1; captures alone never retrain in the demo
        "simulator_speed": SPEED,
        "stats_period_s": PERIOD_S,
        "drift_min_windows": 60,  # of at most 120 windows in a one-minute period
        "drift_reference_periods": 3,
        "drift_alert_periods": 2,
        # wind moves one-minute sketches of the wind-driven features by up to about 1.4 sd (30-minute ones: 0.26);
        # the drift moves the anomaly score 5-7 sd
        "drift_min_distance": 2.0,
        "drift_change_threshold": 2.5,
        "drift_retrain_turbines": 2,
        "drift_retrain_after_s": 8 * PERIOD_S,
        "drift_retrain_min_captured_hours": 0.1,  # six minutes of normal data on each drifted turbine
        "drift_auto_approve_canary": True,
        "detector_configuration": {
            "healthIntervalSeconds": 1,
            # every normal half-minute captured (1440 minutes per day), handed over every two periods; a short context
            # around episodes leaves more of a drifting turbine's normal operation to the reservoir
            "capture": {"normalMinutesPerDay": 1440, "normalSegmentSeconds": 30, "reservoirPeriodSeconds": 2 * PERIOD_S,
                        "episodeBeforeSeconds": 10, "episodeAfterSeconds": 10},
        },
    }


@dataclass
class FieldWatch(Background):
    """What the demo follows, polled from the stack's own tables: each turbine's judged periods (drift_monitor's
    state, with the model version that scored them), the episodes (every one a false alarm: no fault is injected),
    drift alerts and the captured files."""

    stack: Stack
    things: tuple[str, ...]
    periods: dict[tuple[str, float], Period] = field(default_factory=dict)
    printed: set[str] = field(default_factory=set)
    acked: set[str] = field(default_factory=set)

    def tick(self) -> None:
        """Every second: drift_monitor keeps a turbine's latest periods only, and forgets them when the turbine
        changes model version."""
        try:
            self.poll()
        except Exception as exc:  # a busy database now and then: the next poll reads it again
            print(f"   (field watch: {exc})", flush=True)

    def poll(self) -> None:
        for thing in self.things:
            state = load(DriftState, self.stack.state.get(DRIFT, thing))
            if state is None or state.model_version is None:
                continue
            for key in state.periods:
                start = float(key)
                self.periods.setdefault((thing, start), Period(thing, start, float(PERIOD_S), state.model_version))

    def judged(self, thing: str, version: int) -> int:
        return sum(1 for p in self.periods.values() if p.turbine == thing and p.model_version == version)

    def alarms(self) -> list[FalseAlarm]:
        return [FalseAlarm(str(i["turbine_id"]), float(i["started_at"]),
                           None if i.get("model_version") is None else int(i["model_version"]))
                for i in self._episodes()]

    def _episodes(self) -> list[dict[str, Any]]:
        return [i for i in self.stack.alert_deps().alerts.query("alerts") if i.get("kind") == "episode"]

    def call_false_alarms(self, onsets: dict[str, float]) -> int:
        """The operator's verdict on the drifted turbines' episodes since the drift (the CLI's use case): false
        alarms. The verdicts label the data captured around them, which the retraining then reads as normal
        operation (and as hard examples the new version must not fire on more than the old one). Returns how many
        were acknowledged now."""
        done = 0
        for item in self._episodes():
            thing, alert_id = str(item["turbine_id"]), str(item["alert_id"])
            if thing in onsets and float(item["started_at"]) >= onsets[thing] and alert_id not in self.acked \
                    and not item.get("acks"):
                acknowledge(alert_id, OPERATOR, self.stack.alert_deps(), verdict="false-alarm",
                            note=f"{DRIFT_KIND} on {thing}: the turbine works")
                self.acked.add(alert_id)
                done += 1
        return done

    def drift_alerts(self) -> dict[str, float]:
        """Turbine -> sample time its drift alert was raised (the end of the periods that raised it)."""
        items = self.stack.alert_deps().alerts.query("alerts", "drift:")
        out: dict[str, float] = {}
        for i in items:
            raised = float(i.get("since") or 0.0) + 2 * PERIOD_S
            out[str(i["turbine_id"])] = min(raised, out.get(str(i["turbine_id"]), raised))
        return out

    def captured(self, thing: str) -> tuple[int, float]:
        """(files, minutes of normal operation) under raw/capture/<thing>/."""
        files, seconds = 0, 0.0
        for obj in self.stack.store.list(f"{CAPTURE_PREFIX}{thing}/"):
            name = CaptureName.parse(obj.key.rsplit("/", 1)[-1])
            if name is not None:
                files += 1
                seconds += (name.end - name.start) if name.kind == NORMAL else 0.0
        return files, seconds / 60

    def say(self, line: str) -> None:
        if line not in self.printed:
            self.printed.add(line)
            print(f"   {line}", flush=True)


def run_drift_demo(home: Path) -> int:
    return run_steps(_run, home, Step(), "demo_drift_seconds")


def _run(home: Path, step: Step) -> int:
    if find_mosquitto() is None:
        raise NacelleError(INSTALL_HINT)
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    (home / "config.yaml").write_text(yaml.safe_dump(demo_config()))
    step(f"1. start the local stack with {DEVICES} simulated turbines at {SPEED:g}x real time "
         f"(equivalent: nacelle up --devices {DEVICES}; settings in {home / 'config.yaml'})")
    with background_stack(home, devices=DEVICES) as stack:
        step.done(f"data dir {home}; turbine-01 is the canary")
        watch = FieldWatch(stack, tuple(f"turbine-{k:02d}" for k in range(1, DEVICES + 1)))
        with AlertPrinter(stack.paths.notifications), watch:
            v1 = train_version(stack, step, home / "generated" / "history", "2", seed=7, turbines=3, hours=1.5)
            approve_version(stack, step, v1, "3", OPERATOR, "demo: first model")
            roll_out(stack, step, v1.version, "3b", DEVICES)
            before_drift = Before.now(stack)
            onsets = _baseline_then_drift(stack, step, watch, v1.version)
            _until_retraining(stack, step, watch, v1.version, onsets)
            v2 = follow_training(stack, before_drift)
            step.done(f"v{v2.version} is {v2.status}")
            _approve_retrained(stack, step, v2)
            _after(stack, step, watch, v2.version)
        step("9. before / after")
        ok = _report(stack, watch, onsets, v2.version)
        step.done()
    print(f"inspect: .venv/bin/nacelle --data-dir {home} alerts list | models show {v2.version} | data status")
    return 0 if ok else 1


def _baseline_then_drift(stack: Stack, step: Step, watch: FieldWatch, version: int) -> dict[str, float]:
    step(f"4. baseline: {BASELINE_PERIODS} judged one-minute stats periods of every turbine on v{version}")

    def baseline() -> bool:
        watch.poll()
        counts = {t: watch.judged(t, version) for t in watch.things}
        watch.say("judged periods: " + ", ".join(f"{t} {n}" for t, n in counts.items()))
        return min(counts.values()) >= BASELINE_PERIODS

    wait_for(baseline, 40 * BASELINE_PERIODS * PERIOD_S / SPEED, "the baseline periods", interval_s=1.0)
    step.done(f"{len(watch.alarms())} false alarm(s) so far")
    step(f"5. drift: {DRIFT_KIND} (magnitude {MAGNITUDE:g}) on {' and '.join(DRIFTED)}")
    for thing in DRIFTED:
        request_drift(stack.paths.home, thing, DRIFT_KIND, MAGNITUDE)
        print(f"   nacelle fleet drift {thing} {DRIFT_KIND} --magnitude {MAGNITUDE:g}", flush=True)

    def onsets() -> dict[str, float] | None:
        found = {t: float(r["start"]) for t in DRIFTED for r in read_jsonl(SimPaths.of(stack.paths.home, t).drifts)}
        return found if len(found) == len(DRIFTED) else None

    started = wait_for(onsets, 30, "the simulators to start drifting")
    step.done()
    return started


def _until_retraining(stack: Stack, step: Step, watch: FieldWatch, version: int, onsets: dict[str, float]) -> None:
    step("6. false alarms rise, drift alerts, captured data arrives, the drift policy asks for a retraining")
    group_pk, marker = sk.group_pk(stack.settings.group), f"{RETRAIN}{version}"

    def requested() -> bool:
        watch.poll()
        under = [a for a in watch.alarms() if a.turbine in onsets and a.started_at >= onsets[a.turbine]]
        watch.say(f"false alarms of v{version} on the drifted turbines since the drift: {len(under)}")
        if watch.call_false_alarms(onsets) and len(watch.acked) == 1:
            watch.say("the operator acknowledges each of them as a false alarm (equivalent: nacelle alerts ack <id> "
                      "--verdict false-alarm); the verdicts label the data captured around them")
        for thing, at in sorted(watch.drift_alerts().items()):
            watch.say(f"drift alert on {thing} ({(at - onsets.get(thing, at)) / 60:.0f} min of sample time after "
                      "the onset)" if thing in onsets else f"drift alert on {thing} (not drifted by the demo)")
        for thing in DRIFTED:
            files, minutes = watch.captured(thing)
            watch.say(f"raw/capture/{thing}/: {files} files, {int(minutes)} min of normal operation")
        request = stack.state.get(group_pk, marker) or {}
        if request.get("status") == "requested":
            watch.say(f"retraining requested: drift on {', '.join(request.get('turbines') or [])}, "
                      f"{float(request.get('captured_hours') or 0) * 60:.0f} min of normal data captured since")
        if request.get("job_name"):
            watch.say(f"training job {request['job_name']} took the request")
        return bool(request.get("job_name"))

    wait_for(requested, 600, "the drift policy's retraining", interval_s=1.0)
    step.done()
    step("7. retraining on the history plus the captured data (the drift policy's check; gate; registration)")


def _approve_retrained(stack: Stack, step: Step, v: ModelVersion) -> None:
    group = stack.settings.group
    if v.status == "Rejected":
        raise NacelleError(f"v{v.version} did not pass the quality gate: {v.description}")
    # training_completed registers the version, then approves it for the canary (drift_auto_approve_canary)
    try:
        wait_for(lambda: stack.registry.get(group, v.version).status != "PendingManualApproval", 60,
                 f"the automatic canary-only approval of v{v.version}", interval_s=0.5)
    except NacelleError as exc:
        print(f"   not approved automatically ({exc}): the operator approves it for the fleet", flush=True)
    v = stack.registry.get(group, v.version)
    if canary_only(v):
        auto = [h for h in stack.registry.history(group, v.version) if h["actor"] == AUTO_APPROVER]
        print(f"   registry: v{v.version} approved by {AUTO_APPROVER}: {auto[-1]['reason'] if auto else '?'}")
        step(f"7b. canary only: turbine-01 gets v{v.version} and soaks; the fleet waits for a person")

        def held() -> bool:
            rollout = stack.state.get(f"group#{group}", f"rollout#{v.version}") or {}
            if rollout.get("stage") in ("failed", "failing"):
                raise NacelleError(f"the canary of v{v.version} failed: {rollout.get('failure_reason')}")
            return rollout.get("canary_passed_at") is not None

        wait_for(held, 240, f"the canary of v{v.version} to pass its soak", interval_s=0.5)
        step.done("the canary passed; v2 holds there")
    step(f"8. approve v{v.version} for the fleet as an operator would (equivalent: nacelle --data-dir "
         f"{stack.paths.home} models approve {v.version} --reason ...)")
    approve(stack.registry, group, v.version, OPERATOR, "demo: the canary looks right", datetime.now(UTC))
    step.done()
    roll_out(stack, step, v.version, "8b", DEVICES)


def _after(stack: Stack, step: Step, watch: FieldWatch, version: int) -> None:
    step(f"8c. after: {AFTER_PERIODS} judged periods of each drifted turbine on v{version}")

    def enough() -> bool:
        watch.poll()
        counts = {t: watch.judged(t, version) for t in DRIFTED}
        watch.say("judged periods on the retrained model: " + ", ".join(f"{t} {n}" for t, n in counts.items()))
        return min(counts.values()) >= AFTER_PERIODS

    wait_for(enough, 40 * AFTER_PERIODS * PERIOD_S / SPEED, "periods on the retrained model", interval_s=1.0)
    step.done()


def _report(stack: Stack, watch: FieldWatch, onsets: dict[str, float], retrained: int) -> bool:
    watch.poll()
    periods, alarms = list(watch.periods.values()), watch.alarms()
    cells = summarise(periods, alarms, onsets, retrained)
    print(table(HEADERS, rows(cells)))
    report = stack.paths.home / "report"
    path = plot(periods, alarms, onsets, retrained, cells, report / "drift.png", watch.drift_alerts())
    (report / "drift.json").write_text(json.dumps(
        {"onsets": onsets, "retrained_version": retrained,
         "cells": [{"turbines": g, "phase": p, "turbine_hours": c.hours, "false_alarms": c.alarms}
                   for (g, p), c in cells.items()]}, indent=2))
    ok = back_to_baseline(cells)
    print(f"   figure: {path}")
    print(f"   the drifted turbines' false alarms {'are back to' if ok else 'did NOT come back to'} their rate "
          "before the drift")
    return ok
