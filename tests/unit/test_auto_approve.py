"""DriftAutoApproveCanary: a drift retraining's version that passes the gate is approved for the canary group only
(recorded as automatic, with the reason), its rollout holds after the canary soak, and only a person's approval
takes it to the fleet. Off by default."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path

import pytest

from nacelle.local.adapters.registry import SqliteRegistry
from shared.gate import GatePolicy
from shared.ports import ModelVersion
from shared.usecases import state_keys as sk
from shared.usecases.approval import approve, reject
from shared.usecases.approval_scope import APPROVAL_SCOPE, AUTO_APPROVER, canary_only
from shared.usecases.registration import RegistrationDeps, approve_for_canary, on_training_finished
from shared.usecases.retraining import ArrivalDeps, RetrainPolicy, champion, launch, retry_training
from tests.fakes import (
    Clock,
    FakeTraining,
    MemoryRegistry,
    MemoryState,
    MemoryStore,
    RecordingEvents,
    RecordingNotifier,
)
from tests.unit.test_registration import GROUP, JOB, metrics, model_tar, running_job
from tests.unit.test_rollout import CANARY_TIMEOUT, FLEET, Harness

PK = sk.group_pk(GROUP)
REQUEST = sk.DRIFT_RETRAIN + "1"  # drift_monitor's request while the fleet ran v1


def registration(tmp_path: Path, auto: bool, drift: bool = True) -> RegistrationDeps:
    clock = Clock()
    deps = RegistrationDeps(store=MemoryStore(), state=MemoryState(),
                            registry=SqliteRegistry(tmp_path / "registry.db", "nacelle-data", clock=clock),
                            notifier=RecordingNotifier(), events=RecordingEvents(clock), gate=GatePolicy(),
                            group=GROUP, clock=clock, auto_approve_canary=auto)
    deps.registry.ensure_group(GROUP)
    running_job(deps.state)
    if drift:  # the drift request, taken by the job when it started (retraining.launch)
        deps.state.put(PK, REQUEST, {"status": "requested", "turbines": ["turbine-02", "turbine-04"],
                                     "job_name": JOB})
    return deps


def history(deps: RegistrationDeps, version: int = 1) -> list[dict]:
    assert isinstance(deps.registry, SqliteRegistry)
    return deps.registry.history(GROUP, version)


def notices(deps: RegistrationDeps) -> list:
    assert isinstance(deps.notifier, RecordingNotifier)
    return deps.notifier.messages


def item(state, pk: str, key: str) -> dict:
    found = state.get(pk, key)
    assert found is not None, f"no item {pk}/{key}"
    return found


def finish(deps: RegistrationDeps, f1: float = 0.95) -> dict:
    deps.store.put(f"jobs/{JOB}/output/model.tar.gz", model_tar(metrics(f1, 1.0, 0.5)))
    return on_training_finished(JOB, "Completed", None, f"jobs/{JOB}/output/model.tar.gz", deps).data


def test_on_a_drift_retraining_passing_the_gate_is_approved_for_the_canary_only_and_recorded(tmp_path):
    deps = registration(tmp_path, auto=True)
    assert finish(deps)["status"] == "Approved"
    version = deps.registry.get(GROUP, 1)
    assert canary_only(version) and version.metadata[APPROVAL_SCOPE] == "canary"
    (entry,) = [h for h in history(deps) if h["status"] == "Approved"]
    assert entry["actor"] == AUTO_APPROVER
    assert "canary group only" in entry["reason"] and "turbine-02, turbine-04" in entry["reason"] and JOB in \
        entry["reason"]
    (notice,) = [m for m in notices(deps) if m.topic == "approvals"]
    assert notice.subject == f"Model {GROUP} v1 passed the gate: approved automatically for the canary only"
    assert "nacelle models approve 1" in notice.message and "event_f1" in notice.message
    assert champion(deps.registry, GROUP) is None  # a canary-only version is nobody's baseline yet


def test_off_by_default_and_without_a_drift_request_a_person_approves(tmp_path):
    assert RegistrationDeps.__dataclass_fields__["auto_approve_canary"].default is False
    for deps in (registration(tmp_path / "off", auto=False), registration(tmp_path / "plain", auto=True, drift=False)):
        assert finish(deps)["status"] == "PendingManualApproval"
        assert [h["actor"] for h in history(deps)] == ["registry"]  # registered only


def test_a_version_the_gate_rejects_is_never_approved(tmp_path):
    deps = registration(tmp_path, auto=True)
    assert finish(deps, f1=0.2)["status"] == "Rejected"
    assert all(h["actor"] != AUTO_APPROVER for h in history(deps))


def test_redelivery_approves_once_finishes_an_interrupted_approval_and_never_overrides_a_person(tmp_path):
    deps = registration(tmp_path, auto=True)
    finish(deps)
    assert on_training_finished(JOB, "Completed", None, None, deps).action == "duplicate"
    assert [h["actor"] for h in history(deps)].count(AUTO_APPROVER) == 1
    # a crash after the registration, before the approval: the redelivery approves
    crashed = registration(tmp_path / "crash", auto=False)
    finish(crashed)
    crashed.auto_approve_canary = True
    on_training_finished(JOB, "Completed", None, None, crashed)
    assert canary_only(crashed.registry.get(GROUP, 1))
    # a person rejected it before the redelivery: it stays rejected
    person = registration(tmp_path / "person", auto=False)
    finish(person)
    reject(person.registry, GROUP, 1, "alice", "not now")
    person.auto_approve_canary = True
    on_training_finished(JOB, "Completed", None, None, person)
    assert person.registry.get(GROUP, 1).status == "Rejected"


def arrival() -> ArrivalDeps:
    clock = Clock()
    return ArrivalDeps(store=MemoryStore(), state=MemoryState(), notifier=RecordingNotifier(),
                       events=RecordingEvents(clock), training=FakeTraining(), registry=MemoryRegistry(),
                       policy=RetrainPolicy(GROUP), clock=clock)


def test_the_next_job_takes_an_open_drift_request_once_and_its_retry_keeps_it():
    deps = arrival()
    deps.state.put(PK, REQUEST, {"status": "requested", "turbines": ["turbine-02"]})
    deps.state.put(PK, sk.DRIFT_RETRAIN + "2", {"checked_at": 10.0})  # checked, never requested
    first = launch(deps, "a" * 64, "datasets/a.json", attempt=1, reason="r", new_hours=1, files=1, max_accepted_at=1)
    job = first.data["job_name"]
    assert item(deps.state, PK, sk.JOB + job)["drift_requests"] == [REQUEST]
    assert item(deps.state, PK, REQUEST)["job_name"] == job
    assert "job_name" not in item(deps.state, PK, sk.DRIFT_RETRAIN + "2")
    # the job fails; its retry serves the same request, a job of other data takes nothing
    deps.state.put(PK, sk.ACTIVE_JOB, {"job_name": ""})
    deps.state.put(PK, sk.DATASET + "a" * 64, {"status": "failed", "last_job": job, "attempts": 1,
                                               "manifest_key": "datasets/a.json"})
    retried = retry_training(deps, job).data["job_name"]
    assert item(deps.state, PK, sk.JOB + retried)["drift_requests"] == [REQUEST]
    deps.state.put(PK, sk.ACTIVE_JOB, {"job_name": ""})
    other = launch(deps, "b" * 64, "datasets/b.json", attempt=1, reason="r", new_hours=1, files=1, max_accepted_at=1)
    assert item(deps.state, PK, sk.JOB + other.data["job_name"])["drift_requests"] == []


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def canary_only_version(h: Harness) -> None:
    h.deps.registry.register(GROUP, "jobs/j1/output/model.tar.gz", "PendingManualApproval", "", {}, "j1")
    h.deps.registry.update_metadata(GROUP, 1, {APPROVAL_SCOPE: "canary"})
    h.deps.registry.set_status(GROUP, 1, "Approved", "automatic", AUTO_APPROVER)


def test_a_canary_only_version_holds_after_the_soak_until_a_person_approves_it(h):
    canary_only_version(h)
    h.deliver_manifest(h.compile(1))
    h.report("turbine-01", h.rollout(1)["canary_deployment_id"], "SUCCEEDED")
    h.soak(1)
    h.soak(1)  # more healthy rows: still held, announced once
    assert h.rollout(1)["stage"] == "canary" and h.rollout(1)["canary_passed_at"] is not None
    assert h.deployments(FLEET) == []
    held = [s for s in h.alerts() if "passed the canary" in s]
    assert held == [f"{GROUP} v1 passed the canary: approve it to roll it out to the fleet"]
    # the watchdog neither promotes nor fails it, however long the person takes
    h.clock.advance(CANARY_TIMEOUT * 3)
    assert h.check(1).action == "waiting" and h.rollout(1)["stage"] == "canary"
    assert not h.deps.registry.get(GROUP, 1).failed
    # a person approves it for the fleet: the next watchdog check promotes it (once)
    approve(h.deps.registry, GROUP, 1, "alice", "canary looks right", h.clock())
    assert not canary_only(h.deps.registry.get(GROUP, 1))
    h.soak(1)
    assert h.check(1).action == "promoted"
    assert h.rollout(1)["stage"] == "fleet" and len(h.deployments(FLEET)) == 1
    h.check(1)
    assert len(h.deployments(FLEET)) == 1


def test_a_canary_only_version_a_person_rejected_is_never_promoted(h):
    canary_only_version(h)
    h.deliver_manifest(h.compile(1))
    h.soak(1)
    reject(h.deps.registry, GROUP, 1, "alice", "drifted data looks wrong")
    h.soak(1)
    h.check(1)
    assert h.rollout(1)["stage"] == "canary" and h.deployments(FLEET) == []


def test_an_open_drift_request_waives_the_minimum_of_new_data_once():
    from shared.usecases.retraining import retrain_status

    deps = arrival()
    deps.state.put(PK, sk.FILE + "raw/capture/turbine-02/x.csv", {
        "key": "raw/capture/turbine-02/x.csv", "sha256": "c" * 64, "status": "accepted", "accepted_at": 5.0,
        "duration_s": 600.0, "rows": 12000, "turbines": ["turbine-02"], "start": "a", "end": "b"})
    assert "new turbine-hours" in str(retrain_status(deps).blocker)  # 0.17 h < 1 h
    deps.state.put(PK, REQUEST, {"status": "requested"})
    assert retrain_status(deps).blocker is None
    deps.state.update_if(PK, REQUEST, {"job_name": "nacelle-x-1"}, {"status": "requested"})  # a job took it
    assert "new turbine-hours" in str(retrain_status(deps).blocker)


def test_a_new_model_version_times_a_drift_still_on_afresh_before_asking_again():
    """The retrained version reaches turbines still drifting from the old one's point of view: its own retraining
    request waits for its own drifting time and captured data, never the old version's."""
    import json
    from dataclasses import replace

    from services.drift_monitor.app import handle
    from tests.unit.test_drift_monitor import GROUP as DRIFT_GROUP
    from tests.unit.test_drift_monitor import PERIOD, T0, baseline, capture, make_deps, state_of, stats_row

    deps = make_deps()
    events = deps.events
    assert isinstance(events, RecordingEvents)
    deps.policy = replace(deps.policy, retrain_turbines=2, retrain_after_s=3600.0, retrain_min_captured_hours=0.5)
    deps.store.put(f"compiled/{DRIFT_GROUP}/2/manifest.json",
                   json.dumps({"drift_baseline": baseline().to_dict()}).encode())
    for p in range(9):
        for thing in ("a", "b"):
            handle(stats_row(thing, p, shift=3.0 if p >= 3 else 0.0), deps)
        if p == 3:
            capture(deps, "a", T0 + 4 * PERIOD, 20)
            capture(deps, "b", T0 + 4 * PERIOD, 20)
    assert len(events.published) == 1  # v1's request
    for p in range(9, 12):  # v2 arrives; the turbines still drift
        for thing in ("a", "b"):
            handle(stats_row(thing, p, shift=3.0, version=2), deps)
    assert state_of(deps, "a").since == T0 + 9 * PERIOD and len(events.published) == 1
    capture(deps, "a", T0 + 10 * PERIOD, 20)
    capture(deps, "b", T0 + 10 * PERIOD, 20)
    for thing in ("a", "b"):
        handle(stats_row(thing, 12, shift=3.0, version=2), deps)
    assert len(events.published) == 2  # v2's own, an hour of its drift later with data captured since



class Interleaving(SqliteRegistry):
    """A registry where another actor acts at a chosen moment: `between` runs once, right after the first write of
    the scope metadata; `stale` is what the next `get` returns (a read made before the other actor wrote)."""

    def __init__(self, path: Path, clock: Callable[[], datetime]) -> None:
        super().__init__(path, "nacelle-data", clock=clock)
        self.between: Callable[[], object] | None = None
        self.stale: ModelVersion | None = None

    def update_metadata(self, group: str, version: int, metadata: Mapping[str, str]) -> ModelVersion:
        out = super().update_metadata(group, version, metadata)
        if APPROVAL_SCOPE in metadata and self.between is not None:
            act, self.between = self.between, None
            act()
        return out

    def get(self, group: str, version: int) -> ModelVersion:
        stale, self.stale = self.stale, None
        return stale if stale is not None else super().get(group, version)


def racing(tmp_path: Path) -> tuple[RegistrationDeps, Interleaving]:
    deps = registration(tmp_path, auto=True)
    registry = Interleaving(tmp_path / "race.db", deps.clock)
    registry.ensure_group(GROUP)
    deps.registry = registry
    return deps, registry


def fleet_approved_by_a_person(registry: Interleaving) -> bool:
    version = registry.get(GROUP, 1)
    return (version.status == "Approved" and version.metadata.get(APPROVAL_SCOPE) == "fleet"
            and "alice" in [h["actor"] for h in registry.history(GROUP, 1)])


def test_a_person_approving_between_the_automatic_scope_and_status_keeps_the_fleet(tmp_path):
    deps, registry = racing(tmp_path)
    registry.between = lambda: approve(registry, GROUP, 1, "alice", "looks right", deps.clock())
    finish(deps)  # training_completed: registered, then the automatic approval, which the person interrupts
    assert fleet_approved_by_a_person(registry)


def test_a_person_whose_read_predates_the_automatic_approval_keeps_the_fleet(tmp_path):
    deps, registry = racing(tmp_path)
    deps.auto_approve_canary = False
    finish(deps)
    seen_by_the_person = registry.get(GROUP, 1)  # Pending, no scope
    approve_for_canary(registry, GROUP, 1, "drift on turbine-02", deps.clock())
    assert canary_only(registry.get(GROUP, 1))
    registry.stale = seen_by_the_person
    approve(registry, GROUP, 1, "alice", "looks right", deps.clock())
    assert fleet_approved_by_a_person(registry)
