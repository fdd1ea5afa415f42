"""`make run`: the whole mission on one machine, on the local embedded stack.

Starts the stack with 5 simulated turbines (a Greengrass-like nucleus and a sensor simulator each), drops
generated training data in the raw area, lets validation, training, the quality gate and registration
happen, approves the pending version as an operator would, follows compilation, canary and fleet
rollout, injects labelled faults into several turbines, shows the alerts as they arrive, retrains on the
next day's data (dropped while version 1 rolls out, so that training runs meanwhile, niced below the
devices) and rolls version 2 out while the detectors keep running, and ends with a per-turbine
summary and PNG timelines (scores per model segment, swaps marked). While a job trains, its progress
(candidate, split, epoch k/n and loss) is printed as its log shows it. Exits non-zero naming the step
that failed; the data directory stays for inspection with the `nacelle` commands.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

import yaml

from nacelle.commands import upload_keys
from nacelle.console import iso, table
from nacelle.job_progress import LogFollower, Progress, job_log
from nacelle.local.edge.broker import INSTALL_HINT, find_mosquitto
from nacelle.local.runtime.stack import Stack
from nacelle.local.runtime.up import background_stack, wait_for
from nacelle.mission_report import (
    SUMMARY_HEADERS,
    AlertMark,
    EpisodeMark,
    ModelSwap,
    TurbineTimeline,
    plot_timeline,
    read_jsonl,
    score_segments,
    summary_rows,
)
from nacelle.simulator.device import SimPaths, request_fault
from nacelle.simulator.generate import DEFAULT_START, generate_dataset
from shared.errors import NacelleError
from shared.ml.metrics import Fault
from shared.ports import ModelVersion
from shared.usecases.approval import approve

DEVICES = 5
OPERATOR = "make-run"
# (turbine, fault, severity, duration s): injected after each rollout, into different turbines
FAULTS_V1 = [("turbine-02", "generator_fault", "high", 40.0), ("turbine-03", "overspeed", "high", 40.0),
             ("turbine-04", "yaw_misalignment", "high", 40.0)]
FAULTS_V2 = [("turbine-05", "generator_fault", "high", 40.0), ("turbine-01", "overspeed", "high", 40.0)]
ALERT_WAIT_S = 60.0  # after a fault ends, how long its alert may take (detection delay included)


class Step:
    """Names the running step (for the failure message) and records each step's duration."""

    def __init__(self) -> None:
        self.name = ""
        self.started = time.perf_counter()
        self.durations: dict[str, float] = {}

    def __call__(self, name: str) -> None:
        self.name, self.started = name, time.perf_counter()
        print(f"\n== {name}", flush=True)

    def done(self, what: str = "done") -> None:
        took = time.perf_counter() - self.started
        self.durations[self.name] = took
        print(f"   {what} ({took:.1f}s)", flush=True)


def run_demo(home: Path, step: Step | None = None) -> int:
    """The mission; `step` (optional) collects each step's duration for the caller (benchmarks)."""
    return run_steps(_run, home, step or Step(), "make_run_seconds")


def run_steps(body: Callable[[Path, Step], int], home: Path, step: Step, figure: str) -> int:
    """A demo's steps: a failure named by its step, the whole run's seconds printed as `figure`."""
    started = time.perf_counter()
    try:
        code = body(home, step)
    except (NacelleError, OSError) as exc:
        print(f"\nFAILED at step '{step.name}': {exc}", flush=True)
        return 1
    print(f"\n{figure}={time.perf_counter() - started:.1f}")
    return code


def _run(home: Path, step: Step) -> int:
    if find_mosquitto() is None:  # the turbines talk MQTT: without a broker there is no mission
        raise NacelleError(INSTALL_HINT)
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    # one torch thread for training (the fleet shares the two cores), a short quiet period before retraining,
    # simulators that keep their samples for the timelines, and one-minute detector statistics (the console's
    # turbine timeline shows them; too few windows for drift judging, so no drift alert)
    (home / "config.yaml").write_text(yaml.safe_dump(
        {"hyperparameters": {"threads": "1"}, "record_samples": True, "quiet_period_s": 5.0, "stats_period_s": 60}))
    generated = home / "generated"
    swaps: dict[str, list[ModelSwap]] = {}  # per turbine, when it began scoring with each version
    step(f"1. start the local stack with {DEVICES} simulated turbines (equivalent: nacelle up --devices {DEVICES})")
    with background_stack(home, devices=DEVICES) as stack:
        step.done(f"data dir {home}; turbine-01 is the canary")
        print(f"   operator console while the demo runs: the URL printed above (again: nacelle --data-dir {home} "
              "console)", flush=True)
        with AlertPrinter(stack.paths.notifications):
            v1 = train_version(stack, step, generated / "batch-1", "2", seed=7, turbines=3, hours=2.0)
            approve_version(stack, step, v1, "3", OPERATOR, "first model")
            # the next day's data arrives while v1 rolls out: v2 trains meanwhile (niced below the devices)
            known = drop_data(stack, step, generated / "batch-2", "4", seed=11, turbines=2, hours=1.0,
                              start=DEFAULT_START + timedelta(days=1))
            _roll_out(stack, step, v1, "5", swaps)
            faults = _inject(stack, step, "6", FAULTS_V1)
            step("7. alerts as they arrive (detectors publish episodes over MQTT; anomaly_alert de-duplicates)")
            _wait_alerts(stack, faults)
            step.done()
            step("8. v2, trained on both days' data since step 4: validation, training, gate, registration")
            v2 = registered_version(stack, step, known)
            approve_version(stack, step, v2, "8b", OPERATOR, "the next day's data")
            _roll_out(stack, step, v2, "8c", swaps)
            faults += _inject(stack, step, "8d", FAULTS_V2)
            _wait_alerts(stack, faults)
            step.done()
        step("9. summary and timelines")
        _report(stack, v2, swaps)
        step.done()
    print("\nstep durations: " + ", ".join(f"{name.split('.')[0]}={s:.0f}s" for name, s in step.durations.items()))
    print(f"inspect: .venv/bin/nacelle --data-dir {home} fleet status | alerts list | models list | jobs list")
    print(f"console: .venv/bin/nacelle --data-dir {home} up, then open the URL it prints (or `nacelle console --open`)")
    return 0


def train_version(stack: Stack, step: Step, folder: Path, label: str, *, seed: int, turbines: int,
                  hours: float, start: datetime = DEFAULT_START) -> ModelVersion:
    """Drops generated data and waits for the version trained on it."""
    known = drop_data(stack, step, folder, label, seed=seed, turbines=turbines, hours=hours, start=start,
                      then="; validation, training, gate, registration follow")
    return registered_version(stack, step, known)


@dataclass(frozen=True)
class Before:
    """The versions and jobs there were before something happened: what follows is new."""
    versions: frozenset[int]
    jobs: frozenset[str]

    @classmethod
    def now(cls, stack: Stack) -> Before:
        return cls(frozenset(v.version for v in stack.registry.list(stack.settings.group)),
                   frozenset(j.name for j in stack.jobs.list()))


def drop_data(stack: Stack, step: Step, folder: Path, label: str, *, seed: int, turbines: int, hours: float,
              start: datetime = DEFAULT_START, then: str = "") -> Before:
    """Generates labelled data and drops it in the raw area; returns what there was before it."""
    step(f"{label}. generate {turbines} turbines x {hours:g} h of labelled data (seed {seed}) and drop it in the "
         f"raw area (equivalent: nacelle data put {folder}){then}")
    generate_dataset(folder, turbines, hours, "default", seed, start)
    known = Before.now(stack)
    for path, key in upload_keys([folder]).files:
        stack.store.put_if_absent(key, path.read_bytes())
    if not then:
        step.done()
    return known


def registered_version(stack: Stack, step: Step, known: Before) -> ModelVersion:
    """Waits for the version trained after `known`; it must pass the gate."""
    version = follow_training(stack, known)
    step.done(f"v{version.version} is {version.status}: {_headline(version)}")
    if version.status != "PendingManualApproval":
        raise NacelleError(f"v{version.version} did not pass the quality gate: {version.description}")
    return version


class JobWatch:
    """Prints what a running job's log says of its progress (nacelle.job_progress), as it is written."""

    def __init__(self, kinds: tuple[str, ...] = ("training",)) -> None:
        self.kinds = kinds
        self._followed: dict[str, tuple[LogFollower, Progress]] = {}
        self._done: set[str] = set()

    def poll(self, jobs: list[Any]) -> None:
        for job in jobs:
            if job.kind not in self.kinds or job.name in self._done:
                continue
            if job.name not in self._followed:
                self._followed[job.name] = (LogFollower(job_log(job)), Progress())
            follower, progress = self._followed[job.name]
            ended = job.status != "InProgress"
            for line in follower.lines(final=ended):
                note = progress.note(line)
                if note is not None:
                    print(f"     {job.kind}: {note}", flush=True)
            if ended:
                self._done.add(job.name)


def follow_training(stack: Stack, known: Before) -> ModelVersion:
    """Prints the progress of the jobs started since `known` until a new version is registered."""
    seen: set[str] = set()
    watch = JobWatch()

    def registered() -> ModelVersion | None:
        jobs = [j for j in stack.jobs.list() if j.name not in known.jobs]
        watch.poll(jobs)
        for job in jobs:
            line = f"job {job.name}: {job.status}"
            if line not in seen:
                seen.add(line)
                print(f"   {line}", flush=True)
            if job.status == "Failed" and job.kind == "training":
                raise NacelleError(f"training job {job.name} failed: {job.failure_reason}")
        new = [v for v in stack.registry.list(stack.settings.group) if v.version not in known.versions]
        return new[-1] if new else None

    return wait_for(registered, 300, "a newly registered model version", interval_s=0.5)


def _headline(v: ModelVersion) -> str:
    keys = ("metric:event_f1", "metric:recall_medium_high", "metric:false_alarms_per_turbine_day")
    return ", ".join(f"{k.removeprefix('metric:')} {v.metadata[k]}" for k in keys if k in v.metadata)


def approve_version(stack: Stack, step: Step, v: ModelVersion, label: str, actor: str, reason: str) -> None:
    step(f"{label}. approve v{v.version} as an operator would "
         f"(equivalent: nacelle --data-dir {stack.paths.home} models approve {v.version} --reason '{reason}')")
    approve(stack.registry, v.group, v.version, actor, reason, datetime.now(UTC))
    step.done()


def roll_out(stack: Stack, step: Step, version: int, label: str, devices: int = DEVICES) -> dict[str, float]:
    """Follows the automatic rollout (step `label`); when each turbine began scoring with `version`."""
    step(f"{label}. compile v{version} for the edge, deploy to the canary, soak, then the fleet (automatic; "
         "watch: nacelle fleet status)")
    started = follow_rollout(stack, version, devices)
    step.done(f"all {devices} turbines score with v{version}")
    return started


def _roll_out(stack: Stack, step: Step, v: ModelVersion, label: str, swaps: dict[str, list[ModelSwap]]) -> None:
    for thing, at in roll_out(stack, step, v.version, label).items():
        swaps.setdefault(thing, []).append(ModelSwap(at, v.version))


def follow_rollout(stack: Stack, version: int, devices: int = DEVICES) -> dict[str, float]:
    """Follows the rollout until every one of the `devices` turbines scores with `version`; returns when each
    began to (the device's health report first naming it, as polled: at most a health interval late)."""
    seen: set[str] = set()
    group = stack.settings.group
    started: dict[str, float] = {}

    def progress() -> bool:
        lines = []
        if stack.store.exists(f"compiled/{group}/{version}/manifest.json"):
            lines.append(f"edge bundle compiled/{group}/{version}/ verified")
        for job in stack.jobs.list():
            if job.kind == "compile" and job.status == "Failed":
                raise NacelleError(f"compile job {job.name} failed: {job.failure_reason}")
        rollout = stack.state.get(f"group#{group}", f"rollout#{version}")
        if rollout is not None:
            lines.append(f"rollout stage: {rollout['stage']}")
            if rollout["stage"] in ("failed", "failing"):
                raise NacelleError(f"the rollout of v{version} failed: {rollout.get('failure_reason')}")
        serving = [r for r in stack.state.query("devices")
                   if str(r.get("model_version")) in (str(version), f"{version}.0.0")
                   and float(r.get("inference_rate_hz") or 0) > 0]
        for r in serving:
            started.setdefault(str(r.get("thing_name")), float(r.get("last_health_at") or time.time()))
        running = sorted(str(r.get("thing_name")) for r in serving)
        lines.append(f"scoring with v{version}: {', '.join(running) or 'none yet'}")
        for line in lines:
            if line not in seen:
                seen.add(line)
                print(f"   {line}", flush=True)
        return len(running) == devices

    wait_for(progress, 180, f"every turbine to run v{version}", interval_s=0.5)
    return started


def _inject(stack: Stack, step: Step, label: str, plan: list[tuple[str, str, str, float]]) -> list[Fault]:
    step(f"{label}. inject labelled faults")
    for thing, fault, severity, duration in plan:
        request_fault(stack.paths.home, thing, fault, severity, duration)
        print(f"   {thing}: {fault} ({severity}, {duration:.0f} s)  "
              f"[nacelle fleet inject {thing} {fault} --severity {severity} --duration {duration:.0f}]", flush=True)
    wanted = {thing for thing, *_ in plan}

    def labelled() -> list[Fault] | None:
        faults = [f for f in _faults(stack.paths.home) if f.turbine_id in wanted]
        return faults if len(faults) >= len(plan) else None

    faults = wait_for(labelled, 30, "the simulators to start the faults")
    step.done()
    return faults


def _wait_alerts(stack: Stack, faults: list[Fault]) -> None:
    """Until every injected fault has an alert for its turbine, or ALERT_WAIT_S after the last one ends."""
    deadline = max(f.end for f in faults) + ALERT_WAIT_S

    def covered() -> bool:
        alerted = {a["attributes"].get("turbine_id") for a in _alerts(stack) if a["at"] >= min(f.start for f in faults)}
        return all(f.turbine_id in alerted for f in faults) or time.time() > deadline

    wait_for(covered, deadline - time.time() + 10, "alerts for the injected faults", interval_s=1.0)


def _faults(home: Path) -> list[Fault]:
    out = []
    for thing_dir in sorted((home / "devices").glob("*")):
        for row in read_jsonl(SimPaths.of(home, thing_dir.name).labels):
            out.append(Fault(row["turbine"], row["fault"], row["severity"], float(row["start"]), float(row["end"])))
    return out


def _alerts(stack: Stack) -> list[dict[str, Any]]:
    rows = [r for r in read_jsonl(stack.paths.notifications) if r.get("topic") == "alerts"]
    for r in rows:
        r["at"] = datetime.fromisoformat(str(r["time"]).replace("Z", "+00:00")).timestamp()
    return rows


def _report(stack: Stack, final: ModelVersion, swaps: dict[str, list[ModelSwap]]) -> None:
    home = stack.paths.home
    faults = _faults(home)
    alerts = _alerts(stack)
    episodes = [i for i in stack.alert_deps().alerts.query("alerts") if i.get("kind") == "episode"]
    health = {str(r.get("thing_name")): r for r in stack.state.query("devices")}

    def bundle(version: int) -> Path:
        return stack.store.path(f"compiled/{final.group}/{version}/manifest.json").parent

    timelines = []
    for thing in sorted(p.name for p in (home / "devices").iterdir() if p.is_dir()):
        version = health.get(thing, {}).get("model_version")
        tl = TurbineTimeline(
            thing, read_jsonl(SimPaths.of(home, thing).samples), [f for f in faults if f.turbine_id == thing],
            [EpisodeMark(str(e["episode_id"]), float(e["opened_at"]), float(e["started_at"]),
                         None if e.get("ended_at") is None else float(e["ended_at"]), list(e.get("features", [])),
                         e.get("model_version")) for e in episodes if e.get("turbine_id") == thing],
            [AlertMark(a["at"], a["attributes"].get("severity", ""), a["subject"]) for a in alerts
             if a["attributes"].get("turbine_id") == thing and a["attributes"].get("kind") != "resolution"],
            None if version is None else int(str(version).split(".")[0]), swaps.get(thing, []))
        timelines.append(tl)
    print(table(SUMMARY_HEADERS, summary_rows(timelines)))
    for tl in timelines:
        path = plot_timeline(tl, score_segments(tl.samples, tl.swaps, bundle), home / "report" / f"{tl.turbine_id}.png")
        print(f"   timeline: {path}")
    (home / "report" / "summary.json").write_text(json.dumps(
        {tl.turbine_id: {"model_version": tl.model_version, "faults": len(tl.faults), "alerts": len(tl.alerts),
                         "model_swaps": [{"version": s.version, "at": iso(s.at, precise=True)} for s in tl.swaps]}
         for tl in timelines}, indent=2))


class Background(ABC):
    """A context manager calling `tick` every `interval_s` on a daemon thread while its block runs, and once more
    as it ends (what landed since the last tick is not missed)."""

    interval_s = 1.0

    @abstractmethod
    def tick(self) -> None: ...

    def __enter__(self) -> Self:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        if not self._thread.is_alive():
            self.tick()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.tick()


class AlertPrinter(Background):
    """Prints each alert-topic notification as it lands in the notifier's JSON-lines log."""

    interval_s = 0.5

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def tick(self) -> None:
        if not self.path.is_file():
            return
        with self.path.open("rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read()
        complete = chunk[:chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if row.get("topic") == "alerts":
                print(f"   ALERT {row['time'][11:19]} {row['subject']}", flush=True)
