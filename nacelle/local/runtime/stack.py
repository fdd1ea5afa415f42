"""The local composition root: local adapters -> the same use cases the Lambdas run.

Routing comes from template.yaml (each function's EventBridge patterns), events flow through the
durable SQLite bus, and every state lives under one data directory.
"""

from __future__ import annotations

import fcntl
import importlib
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, field_validator, model_validator

from nacelle.components import read_version
from nacelle.local.adapters.greengrass import LocalGreengrass
from nacelle.local.adapters.jobs import STANDALONE, JobTable, alive, kill_group
from nacelle.local.adapters.notifier import LocalNotifier
from nacelle.local.adapters.objectstore import FsObjectStore
from nacelle.local.adapters.paths import ACCOUNT, BUCKET, REGION, StackPaths
from nacelle.local.adapters.registry import SqliteRegistry
from nacelle.local.adapters.state import SqliteStateStore
from nacelle.local.adapters.training import LocalCompile, LocalTraining
from nacelle.local.edge.component_user import check_base
from nacelle.local.runtime.bus import EventBus, Rule
from nacelle.local.runtime.s3events import EventingObjectStore, NotifiedKeys
from nacelle.local.runtime.template import (
    IOT_SOURCE,
    function_modules,
    load_template,
    routes,
    schedule_routes,
    topic_rules,
)
from shared import settings as defaults
from shared.errors import ConfigurationError, NacelleError
from shared.gate import GatePolicy
from shared.settings import Settings
from shared.unique_keys import load_yaml
from shared.usecases.alerts import AlertDeps, AlertPolicy
from shared.usecases.compilation import CompileDeps
from shared.usecases.drift import BaselineCache, DriftDeps, DriftPolicy
from shared.usecases.registration import RegistrationDeps
from shared.usecases.retraining import ArrivalDeps, RetrainPolicy
from shared.usecases.rollout_state import RolloutDeps

DEFAULT_HOME = Path(".nacelle")


RETIRED_SETTINGS = {"component_user": "no longer used: each device's components run as their own uid "
                                     "(component_id_base); remove the line"}


class LocalSettings(Settings):
    """The local stack's one settings object: defaults, then <home>/config.yaml (same field names)."""

    # every default comes from shared/settings.py (the Lambdas' and template.yaml's), the LOCAL_ ones being a
    # laptop's shorter timescales
    group: str = defaults.MODEL_PACKAGE_GROUP
    quiet_period_s: float = defaults.LOCAL_QUIET_PERIOD_S
    min_new_turbine_hours: float = defaults.MIN_NEW_TURBINE_HOURS
    hyperparameters: dict[str, str] = Field(default_factory=dict)
    gate_min_event_f1: float = defaults.GATE_MIN_EVENT_F1
    gate_min_recall_medium_high: float = defaults.GATE_MIN_RECALL_MEDIUM_HIGH
    gate_max_false_alarms_per_day: float = defaults.GATE_MAX_FALSE_ALARMS_PER_DAY
    gate_regression_tolerance: float = defaults.GATE_REGRESSION_TOLERANCE
    gate_min_faults: int = defaults.GATE_MIN_FAULTS
    # anomaly alerts (shared.usecases.alerts.AlertPolicy) and the periodic offline check
    alert_escalate_after_s: float = defaults.ALERT_ESCALATE_AFTER_S
    alert_repeat_episodes: int = defaults.ALERT_REPEAT_EPISODES
    alert_repeat_window_s: float = defaults.ALERT_REPEAT_WINDOW_S
    alert_rate_limit: int = defaults.ALERT_RATE_LIMIT
    alert_rate_window_s: float = defaults.ALERT_RATE_WINDOW_S
    offline_after_s: float = defaults.OFFLINE_AFTER_S
    offline_check_interval_s: float = defaults.OFFLINE_CHECK_INTERVAL_S
    # drift monitoring (shared.usecases.drift.DriftPolicy)
    drift_min_windows: int = defaults.DRIFT_MIN_WINDOWS
    drift_fleet_factor: float = defaults.DRIFT_FLEET_FACTOR
    drift_min_distance: float = defaults.DRIFT_MIN_DISTANCE
    drift_score_min_distance: float = defaults.DRIFT_SCORE_MIN_DISTANCE
    drift_change_threshold: float = defaults.DRIFT_CHANGE_THRESHOLD
    drift_reference_periods: int = defaults.DRIFT_REFERENCE_PERIODS
    drift_alert_periods: int = defaults.DRIFT_ALERT_PERIODS
    drift_retrain_turbines: int = defaults.DRIFT_RETRAIN_TURBINES
    drift_retrain_after_s: float = defaults.DRIFT_RETRAIN_AFTER_S
    drift_retrain_min_captured_hours: float = defaults.DRIFT_RETRAIN_MIN_CAPTURED_HOURS
    drift_auto_approve_canary: bool = defaults.DRIFT_AUTO_APPROVE_CANARY  # training_completed, canary only
    # rollout (shared.usecases.rollout): thing groups, soak, timeouts; detector_version "" = the VERSION file
    detector_version: str = ""
    canary_group: str = defaults.CANARY_GROUP
    fleet_group: str = defaults.FLEET_GROUP
    canary_soak_s: float = defaults.LOCAL_CANARY_SOAK_S
    canary_timeout_s: float = defaults.LOCAL_CANARY_TIMEOUT_S
    stuck_timeout_s: float = defaults.LOCAL_STUCK_TIMEOUT_S
    rollout_poll_s: float = defaults.LOCAL_ROLLOUT_POLL_S
    rollout_max_per_minute: int = Field(default=50, ge=1, le=1000)  # devices receiving a deployment per minute
    # when the stack runs as root, device k's components run as uid = gid = base + k and the shared venvs belong to
    # base (nacelle/local/edge/component_user.py); 0: components run as root
    component_id_base: int = 400_000
    simulator_speed: float = Field(default=1.0, gt=0)  # stream seconds per wall-clock second of each turbine simulator
    record_samples: bool = False  # simulators also keep every published sample (devices/<t>/sim/samples.jsonl)
    # merged into every deployment's detector configuration (recipe defaults suit AWS: health every 60 s)
    detector_configuration: dict[str, Any] = Field(default_factory=lambda: {"healthIntervalSeconds": 1})
    # the detectors' statistics period (statsPeriodSeconds; None: the recipe's 30 min). A demo stack sets 60 so that
    # periods reach drift_monitor and the console's timeline within minutes (too few windows to be judged for drift
    # unless drift_min_windows is lowered too)
    stats_period_s: float | None = Field(default=None, ge=60, le=86400)

    @field_validator("component_id_base")
    @classmethod
    def _component_ids(cls, base: int) -> int:
        if base:
            try:
                check_base(base)
            except ConfigurationError as exc:
                raise ValueError(str(exc)) from exc
        return base

    @model_validator(mode="after")
    def _one_stats_period(self) -> LocalSettings:
        other = self.detector_configuration.get("statsPeriodSeconds")
        if self.stats_period_s is not None and other is not None and other != self.stats_period_s:
            raise ValueError(f"stats_period_s ({self.stats_period_s:g}) and detector_configuration.statsPeriodSeconds "
                             f"({other!r}) differ: set one of them")
        return self

    def detector_config(self) -> dict[str, Any]:
        """What every deployment merges into the detector's configuration."""
        if self.stats_period_s is None:
            return dict(self.detector_configuration)
        return {**self.detector_configuration, "statsPeriodSeconds": self.stats_period_s}

    def retrain_policy(self) -> RetrainPolicy:
        return RetrainPolicy(self.group, self.min_new_turbine_hours, self.quiet_period_s, self.hyperparameters)

    def gate(self) -> GatePolicy:
        return GatePolicy(self.gate_min_event_f1, self.gate_min_recall_medium_high, self.gate_max_false_alarms_per_day,
                          self.gate_regression_tolerance, self.gate_min_faults)

    def alert_policy(self) -> AlertPolicy:
        return AlertPolicy(escalate_after_s=self.alert_escalate_after_s, repeat_episodes=self.alert_repeat_episodes,
                           repeat_window_s=self.alert_repeat_window_s, rate_limit=self.alert_rate_limit,
                           rate_window_s=self.alert_rate_window_s, offline_after_s=self.offline_after_s)

    def drift_policy(self) -> DriftPolicy:
        return DriftPolicy(min_windows=self.drift_min_windows, fleet_factor=self.drift_fleet_factor,
                           min_distance=self.drift_min_distance, score_min_distance=self.drift_score_min_distance,
                           change_threshold=self.drift_change_threshold,
                           reference_periods=self.drift_reference_periods, alert_periods=self.drift_alert_periods,
                           retrain_turbines=self.drift_retrain_turbines, retrain_after_s=self.drift_retrain_after_s,
                           retrain_min_captured_hours=self.drift_retrain_min_captured_hours)

    @classmethod
    def load(cls, path: Path) -> LocalSettings:
        raw: dict[str, Any] = {}
        if path.is_file():
            try:
                loaded = load_yaml(path.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as exc:
                raise ConfigurationError(f"{path}: not valid YAML: {exc}") from exc
            if not isinstance(loaded, dict):
                raise ConfigurationError(f"{path}: expected a mapping of settings")
            retired = sorted(set(loaded) & set(RETIRED_SETTINGS))
            if retired:
                raise ConfigurationError(f"{path}: " + "; ".join(f"{k}: {RETIRED_SETTINGS[k]}" for k in retired))
            unknown = sorted(set(loaded) - set(cls.model_fields))
            if unknown:
                raise ConfigurationError(f"{path}: unknown setting(s) {unknown}; known: {sorted(cls.model_fields)}")
            raw = loaded
        try:
            return cls.model_validate(raw)
        except ValueError as exc:
            raise ConfigurationError(f"{path}: {exc}") from exc


def home_from(value: str | None) -> Path:
    return Path(value or os.environ.get("NACELLE_HOME") or DEFAULT_HOME).resolve()


def build_bus(paths: StackPaths) -> EventBus:
    paths.home.mkdir(parents=True, exist_ok=True)
    template = load_template()
    rules = [Rule(f"{r.function}.{r.rule}", r.function, r.pattern)
             for r in [*routes(template, refs(paths)), *schedule_routes(template, REGION, ACCOUNT)]]
    # IoT topic rules: the local rule engine puts {"source": "nacelle.iot", "detail-type": <rule>, "detail": row}
    rules += [Rule(f"{t.function}.{t.rule}", iot_target(t.function),
                   {"source": [IOT_SOURCE], "detail-type": [t.rule]}) for t in topic_rules(template)]
    return EventBus(paths.bus_db, rules, region=REGION, account=ACCOUNT)


def iot_target(function: str) -> str:
    """The bus target that hands an IoT rule's row (the envelope's detail) to the function."""
    return f"{function}#iot"


def refs(paths: StackPaths) -> dict[str, str]:
    """Values of the template's !Ref targets on the local stack."""
    return {"DataBucket": BUCKET, "ModelPackageGroupName": LocalSettings.load(paths.config).group}


def build_store(paths: StackPaths, bus: EventBus) -> EventingObjectStore:
    return EventingObjectStore(FsObjectStore(paths.objects, BUCKET), bus.put, NotifiedKeys(paths.home / "s3events.db"))


def now() -> datetime:
    return datetime.now(UTC)


class Stack:
    """Every local adapter, built once; `deps_for` gives each service what its Lambda would get."""

    def __init__(self, home: Path) -> None:
        self.paths = StackPaths(home)
        self.settings = LocalSettings.load(self.paths.config)
        self.bus = build_bus(self.paths)
        self.store = build_store(self.paths, self.bus)
        self.state = SqliteStateStore(self.paths.state_db)
        self.registry = SqliteRegistry(self.paths.registry_db, BUCKET, on_change=self._registry_event)
        self.notifier = LocalNotifier(self.paths.subscribers if self.paths.subscribers.is_file() else None,
                                      self.paths.notifications)
        self.jobs = JobTable(self.paths.jobs_db)
        self.greengrass = LocalGreengrass(self.paths.greengrass_db, on_status_event=self.bus.put)
        self.training = LocalTraining(self.paths, self.jobs)
        self.compiler = LocalCompile(self.paths, self.jobs)
        self.registry.ensure_group(self.settings.group, "Nacelle turbine anomaly detectors")
        self.console_url: str | None = None  # set by `nacelle up` once the operator console serves
        self._baselines = BaselineCache()

    def _registry_event(self, event: dict[str, Any]) -> None:
        self.bus.put(event)

    def arrival_deps(self) -> ArrivalDeps:
        return ArrivalDeps(self.store, self.state, self.notifier, self.bus, self.training, self.registry,
                           self.settings.retrain_policy(), now)

    def registration_deps(self) -> RegistrationDeps:
        s = self.settings
        return RegistrationDeps(self.store, self.state, self.registry, self.notifier, self.bus, s.gate(), s.group, now,
                                auto_approve_canary=s.drift_auto_approve_canary)

    def compile_deps(self) -> CompileDeps:
        return CompileDeps(self.store, self.state, self.registry, self.notifier, self.compiler, self.settings.group,
                           now)

    def alert_deps(self) -> AlertDeps:
        s = self.settings
        return AlertDeps(SqliteStateStore(self.paths.alerts_db), self.state, self.registry, self.notifier, now,
                         s.group, s.alert_policy(), store=self.store)

    def drift_deps(self) -> DriftDeps:
        """One baseline cache per stack, like a warm Lambda container's."""
        return DriftDeps(self.alert_deps(), self.state, self.store, self.bus, self.settings.drift_policy(),
                         self._baselines)

    def rollout_deps(self) -> RolloutDeps:
        s = self.settings
        return RolloutDeps(self.store, self.state, self.registry, self.notifier, self.greengrass, self.bus, s.group,
                           s.detector_version or read_version(), s.canary_group, s.fleet_group, s.canary_soak_s,
                           s.canary_timeout_s, s.stuck_timeout_s, now, poll_s=s.rollout_poll_s,
                           detector_configuration=s.detector_config(), max_per_minute=s.rollout_max_per_minute)

    def operator_deps(self) -> Any:
        """The operator console's dependencies (shared.usecases.operator.OperatorDeps)."""
        from nacelle.local.runtime.operator_sources import operator_deps

        return operator_deps(self)

    def deps_for(self, module: str) -> Any:
        builders: dict[str, Callable[[], Any]] = {
            "services.compilation_completed.app": self.rollout_deps,
            "services.deployment_status.app": self.rollout_deps,
            "services.data_arrival.app": self.arrival_deps,
            "services.training_completed.app": self.registration_deps,
            "services.model_approved.app": self.compile_deps,
            "services.anomaly_alert.app": self.alert_deps,
            "services.drift_monitor.app": self.drift_deps,
            "services.console.app": self.operator_deps,
        }
        if module not in builders:
            raise ConfigurationError(f"the local stack has no adapters for {module}")
        return builders[module]()

    def targets(self) -> dict[str, Callable[[dict[str, Any]], object]]:
        """Bus target name (the function's logical id) -> that service's handle() with local deps."""
        out: dict[str, Callable[[dict[str, Any]], object]] = {}
        template = load_template()
        for route in [*routes(template, refs(self.paths)), *schedule_routes(template, REGION, ACCOUNT)]:
            if route.function not in out:
                out[route.function] = _bind(importlib.import_module(route.module).handle, self.deps_for(route.module))
        modules = function_modules(template)
        for rule in topic_rules(template):
            module = modules[rule.function]
            out[iot_target(rule.function)] = _bind_row(importlib.import_module(module).handle, self.deps_for(module))
        return out

    def recover_orphans(self, adopt_standalone: bool = False) -> list[str]:
        """Jobs left InProgress by a stack that died (or, at shutdown, by this one): kill what still
        runs, report them Failed. With `adopt_standalone` (at start-up), a job a command started while
        no stack ran is left running and adopted; it reports its own end. At start-up, also the end events
        of the last day's ended jobs their runners did not get to put."""
        reported = []
        for job in self.jobs.list():
            if job.status != "InProgress":
                continue
            if adopt_standalone and job.owner == STANDALONE and alive(job.pid) and self.jobs.adopt(job.name):
                continue
            if alive(job.pid):
                kill_group(job.pid or 0)
            if self._report_failed(job.name, "the local stack stopped while the job ran"):
                reported.append(job.name)
        if adopt_standalone:
            self._announce_ended(ANNOUNCE_AT_START_S)
        return reported

    def reap_jobs(self) -> list[str]:
        """While the stack runs (every JOB_CHECK_S): a job whose runner died is reported Failed, and a job that
        ended lately gets its end event if its runner died before putting it (the put is deduplicated)."""
        reported = []
        for job in self.jobs.list():
            if job.status == "InProgress" and job.pid is not None and not alive(job.pid):
                kill_group(job.pid)  # what the runner started (its process group) would run on unheard
                if self._report_failed(job.name, "its job runner died"):
                    reported.append(job.name)
        self._announce_ended(ANNOUNCE_WHILE_UP_S)
        return reported

    def _report_failed(self, name: str, why: str) -> bool:
        from nacelle.local.runtime.awsevents import JOB_END, job_end_event

        if not self.jobs.finish(name, "Failed", f"{why}; retry it with `nacelle jobs retry`"):
            return False  # it ended meanwhile
        self.bus.put(job_end_event(self.jobs.get(name)), dedup_key=JOB_END + name)
        return True

    def _announce_ended(self, within_s: float) -> None:
        from nacelle.local.runtime.awsevents import JOB_END, job_end_event

        now = datetime.now(UTC)
        for job in self.jobs.list():
            if job.status != "InProgress" and job.ended_at \
                    and (now - datetime.fromisoformat(job.ended_at)).total_seconds() <= within_s:
                self.bus.put(job_end_event(job), dedup_key=JOB_END + job.name)


JOB_CHECK_S = 10.0  # how often a running stack looks for jobs whose runner died
ANNOUNCE_WHILE_UP_S = 120.0  # ended jobs whose end event is put again (deduplicated) at each check
ANNOUNCE_AT_START_S = 86400.0  # ... and at start-up


def _bind(handle: Callable[[dict[str, Any], Any], object], deps: Any) -> Callable[[dict[str, Any]], object]:
    def target(event: dict[str, Any]) -> object:
        return handle(event, deps)

    return target


def _bind_row(handle: Callable[[dict[str, Any], Any], object], deps: Any) -> Callable[[dict[str, Any]], object]:
    """An IoT rule's Lambda action delivers the row itself, not an EventBridge envelope."""
    def target(event: dict[str, Any]) -> object:
        return handle(dict(event["detail"]), deps)

    return target


class StackLock:
    """One `nacelle up` per data directory; the OS releases the lock even after SIGKILL."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: Any = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a+")
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._fh.seek(0)
            holder = self._fh.read().strip() or "another process"
            self._fh.close()
            raise NacelleError(f"the local stack is already running on {self.path.parent} ({holder})") from exc
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(json.dumps({"pid": os.getpid(), "since": now().isoformat()}))
        self._fh.flush()

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
