"""The lifecycle tables (shared/usecases/lifecycle.py) against what the code does.

Every transition is driven through the real use cases (training_completed, the operator's approval,
model_approved, the rollout) on the usual fakes, with duplicated and reordered events. The state store and
the registry record every state change the code writes, whatever path it took; after each test, every
recorded move must be in a table and the transitions the test claims (`drives`) must have happened.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from nacelle.local.adapters.greengrass import LocalGreengrass
from services.deployment_status import app as status_app
from shared.errors import AdapterError, Conflict, InvalidTransition, ModelVersionNotFound
from shared.gate import GatePolicy
from shared.ports import ModelVersion
from shared.usecases import lifecycle as lc
from shared.usecases.approval import approval_state, approve
from shared.usecases.compilation import (
    COMPILE,
    CompileDeps,
    compile_job_name,
    on_compile_finished,
    on_model_package_change,
    retry_compile,
)
from shared.usecases.registration import RegistrationDeps, on_training_finished
from shared.usecases.rollout_components import manifest_key
from shared.usecases.rollout_ops import cancel, rollback_to
from shared.usecases.rollout_state import ROLLOUT
from tests.fakes import FakeCompile, MemoryRegistry, MemoryState
from tests.unit.test_registration import metrics, model_tar, running_job
from tests.unit.test_rollout import CANARY as CANARY_GROUP
from tests.unit.test_rollout import CANARY_TIMEOUT, GROUP, MODEL_COMPONENT, SOAK, Harness, aws_status_event
from tests.unit.test_rollout import FLEET as FLEET_GROUP

Move = tuple[str, str | None, str | None]  # (machine, from, to) as written; None: a record without the field
ALLOWED = {(m.name, t.source, t.target) for m in lc.MACHINES for t in m.transitions}
KEYED = {COMPILE: lc.COMPILE, ROLLOUT: lc.ROLLOUT}  # state-table records whose field is a machine's state
GOOD, WEAK = metrics(0.95, 1.0, 0.5), metrics(0.6, 0.7, 5.0)


def outside_tables(moves: list[Move]) -> list[Move]:
    return [m for m in moves if m not in ALLOWED]


class RecordingState(MemoryState):
    """Records every change of a compile status or rollout stage written, as (machine, from, to)."""

    def __init__(self) -> None:
        super().__init__()
        self.moves: list[Move] = []

    def put(self, pk: str, sk: str, item: Any, if_absent: bool = False) -> bool:
        before = self.get(pk, sk)
        written = super().put(pk, sk, item, if_absent)
        self._note(sk, before, self.get(pk, sk) if written else before)
        return written

    def update_if(self, pk: str, sk: str, changes: Any, expected: Any) -> bool:
        before = self.get(pk, sk)
        written = super().update_if(pk, sk, changes, expected)
        self._note(sk, before, self.get(pk, sk) if written else before)
        return written

    def _note(self, key: str, before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
        machine = next((m for prefix, m in KEYED.items() if key.startswith(prefix)), None)
        if machine is None or after is None:
            return
        old = lc.ABSENT if before is None else before.get(machine.field)
        if old != after.get(machine.field):
            self.moves.append((machine.name, old, after.get(machine.field)))


class RecordingRegistry(MemoryRegistry):
    """Records every registry state change (approval_state) as (machine, from, to); a status set again counts."""

    def __init__(self) -> None:
        super().__init__()
        self.moves: list[Move] = []
        self.crash_next_metadata_update = False

    def register(self, group: str, *args: Any, **kwargs: Any) -> ModelVersion:
        before = self._states(group)
        version = super().register(group, *args, **kwargs)
        self._note(before, self._states(group))
        return version

    def set_status(self, group: str, version: int, *args: Any) -> ModelVersion:
        before = self._states(group)
        result = super().set_status(group, version, *args)
        self._note(before, self._states(group), version)
        return result

    def update_metadata(self, group: str, version: int, metadata: Any) -> ModelVersion:
        if self.crash_next_metadata_update:
            self.crash_next_metadata_update = False
            raise AdapterError("SageMaker UpdateModelPackage failed: ThrottlingException")
        before = self._states(group)
        result = super().update_metadata(group, version, metadata)
        self._note(before, self._states(group))
        return result

    def delete(self, group: str, version: int) -> None:
        self.versions[group] = [v for v in self.versions[group] if v.version != version]

    def _states(self, group: str) -> dict[int, str]:
        return {v.version: approval_state(v) for v in self.versions.get(group, [])}

    def _note(self, before: dict[int, str], after: dict[int, str], status_set: int | None = None) -> None:
        for version, state in after.items():
            if before.get(version, lc.ABSENT) != state or version == status_set:
                self.moves.append((lc.REGISTRY.name, before.get(version, lc.ABSENT), state))


class World:
    """training_completed, the operator, model_approved and the rollout, on one set of recording fakes."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.h = h = Harness(tmp_path)
        self.state, self.registry = RecordingState(), RecordingRegistry()
        self.registry.ensure_group(GROUP)
        h.deps = replace(h.deps, state=self.state, registry=self.registry)
        self.training = RegistrationDeps(h.deps.store, self.state, self.registry, h.notifier, h.events, GatePolicy(),
                                         GROUP, h.clock)
        self.compiler = FakeCompile()
        self.compiling = CompileDeps(h.deps.store, self.state, self.registry, h.notifier, self.compiler, GROUP,
                                     h.clock)
        self.announced: list[str] = []  # the rollout's answers to bundles announced again

    def moves(self) -> list[Move]:
        return self.registry.moves + self.state.moves

    def without_devices(self) -> None:
        """A stack started without devices: no thing group at all."""
        h = self.h
        h.db = self.tmp_path / "empty.db"
        h.gg = LocalGreengrass(h.db, on_status_event=h.status_events.append, clock=h.clock)
        h.deps = replace(h.deps, greengrass=h.gg)

    def two_waiting_versions(self) -> Harness:
        """Without devices, v1 and then v2 compiled: v1 superseded by v2, which waits for a canary device."""
        self.without_devices()
        h = self.h
        h.deliver_manifest(h.compile(1))
        h.deliver_manifest(h.compile(2))
        assert (self.stage(1), self.stage(2)) == (lc.SUPERSEDED, lc.WAITING)
        return h

    def train(self, good: bool = True) -> int:
        """A training job completes (its event delivered twice); the version it registered."""
        job = f"nacelle-job-{len(self.registry.list(GROUP)) + 1}"
        running_job(self.state, job)
        key = f"jobs/{job}/output/model.tar.gz"
        self.h.deps.store.put(key, model_tar(GOOD if good else WEAK))
        first = on_training_finished(job, "Completed", None, key, self.training)
        assert on_training_finished(job, "Completed", None, key, self.training).action == "duplicate"
        return int(first.data["version"])

    def approve(self, version: int, override: bool = False, reason: str = "looks right") -> ModelVersion:
        return approve(self.registry, GROUP, version, "alice", reason, self.h.clock(), override_gate=override)

    def console(self, version: int, status: Any) -> None:
        """A status set straight in the registry: the SageMaker console, or `nacelle models reject`."""
        self.registry.set_status(GROUP, version, status, "console", "carol")

    def approval_event(self, version: int, status: str = "Approved") -> str:
        """Model Package State Change -> model_approved; a bundle announced again -> its Object Created."""
        action = on_model_package_change(GROUP, version, status, self.compiling).action
        if action == "announced":
            self.announced.append(self.h.deliver_manifest(manifest_key(GROUP, version))["action"])
        return action

    def bundle_written(self, version: int) -> str:
        """The compile job writes the bundle: its Object Created reaches the rollout."""
        return str(self.h.deliver_manifest(self.h.compile(version))["action"])

    def compile_ended(self, version: int, status: str = "Completed", attempt: int = 1) -> str:
        reason = None if status == "Completed" else "equivalence check failed"
        return on_compile_finished(compile_job_name(GROUP, version, attempt), status, reason, self.compiling).action

    def stage(self, version: int) -> str:
        return str(self.h.rollout(version)["stage"])

    def compile_status(self, version: int) -> str:
        return str((self.state.get(f"group#{GROUP}", COMPILE + str(version)) or {}).get("status", lc.ABSENT))


def drives(*moves: tuple[lc.Machine, str, str, str]) -> Callable[[Any], Any]:
    """The transitions (machine, from, event, to) a test drives; the `world` fixture checks they happened."""
    def mark(test: Any) -> Any:
        test.transitions = tuple((m.name, lc.Transition(s, e, t)) for m, s, e, t in moves)
        return test
    return mark


@pytest.fixture
def world(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    assert outside_tables(w.moves()) == [], "the code made a move that is not in lifecycle's tables"
    claimed = getattr(request.function, "transitions", ())
    missing = [(name, t) for name, t in claimed if (name, t.source, t.target) not in w.moves()]
    assert missing == [], f"claimed but never made: {missing}"


# ------------------------------------------------------------------ the tables themselves


def unreachable(machine: lc.Machine) -> set[str]:
    reached, frontier = {lc.ABSENT}, [lc.ABSENT]
    while frontier:
        source = frontier.pop()
        for t in machine.transitions:
            if t.source == source and t.target not in reached:
                reached.add(t.target)
                frontier.append(t.target)
    return set(machine.states) - reached


@pytest.mark.parametrize("machine", lc.MACHINES, ids=lambda m: m.name)
def test_no_state_is_unreachable_and_every_move_is_between_declared_states(machine):
    assert unreachable(machine) == set()
    assert {s for t in machine.transitions for s in (t.source, t.target)} <= set(machine.states)
    pairs = [(t.source, t.event) for t in machine.transitions]
    assert len(pairs) == len(set(pairs))  # an event leads one way from each state


def test_the_reachability_check_finds_an_orphan_state():
    orphan = lc.Machine("x", "stage", (lc.ABSENT, "a", "b"), (lc.Transition(lc.ABSENT, "go", "a"),
                                                            lc.Transition("b", "go", "a")))
    assert unreachable(orphan) == {"b"}


def test_every_registry_state_maps_to_a_registry_status():
    assert set(lc.REGISTRY_STATUS) == set(lc.REGISTRY.states) - {lc.ABSENT}
    assert set(lc.REGISTRY_STATUS.values()) == {"PendingManualApproval", "Approved", "Rejected"}


def test_every_transition_is_driven_by_a_test():
    driven = {move for test in globals().values() for move in getattr(test, "transitions", ())}
    table = {(m.name, t) for m in lc.MACHINES for t in m.transitions}
    assert table - driven == set()
    assert driven - table == set()


def test_a_transition_outside_the_table_raises_and_writes_nothing():
    state = MemoryState()
    state.put("group#g", "rollout#1", {"version": 1, "stage": lc.DONE})
    with pytest.raises(InvalidTransition):
        lc.advance(state, lc.ROLLOUT, "group#g", "rollout#1", lc.DONE, lc.DEPLOY, lc.CANARY)
    with pytest.raises(InvalidTransition):  # a known event, another target
        lc.advance(state, lc.ROLLOUT, "group#g", "rollout#1", lc.CANARY, lc.SOAKED, lc.DONE)
    assert state.get("group#g", "rollout#1") == {"pk": "group#g", "sk": "rollout#1", "version": 1, "stage": lc.DONE}
    with pytest.raises(InvalidTransition):
        lc.REGISTRY.target(lc.GATE_REJECTED, lc.REJECT)


def test_the_recording_sees_a_stage_written_around_the_table():
    state = RecordingState()
    state.put("group#g", "rollout#1", {"version": 1, "stage": lc.DONE})
    state.update_if("group#g", "rollout#1", {"stage": lc.CANARY}, {"stage": lc.DONE})
    assert outside_tables(state.moves) == [("rollout", lc.ABSENT, lc.DONE), ("rollout", lc.DONE, lc.CANARY)]


# ------------------------------------------------------------------ registry and compile


@drives((lc.REGISTRY, lc.ABSENT, lc.REGISTER, lc.PENDING))
def test_a_model_that_passes_the_gate_waits_for_approval(world):
    v = world.train()
    assert world.registry.get(GROUP, v).status == "PendingManualApproval"
    assert world.approval_event(v, "PendingManualApproval") == "ignored"
    assert world.compiler.started == [] and len(world.registry.list(GROUP)) == 1


@drives((lc.REGISTRY, lc.ABSENT, lc.GATE_REJECT, lc.GATE_REJECTED))
def test_a_model_the_gate_rejects_is_registered_rejected_and_the_cli_refuses_to_approve_it(world):
    v = world.train(good=False)
    assert world.registry.get(GROUP, v).status == "Rejected"
    with pytest.raises(Conflict, match="--override-gate"):
        world.approve(v)
    assert approval_state(world.registry.get(GROUP, v)) == lc.GATE_REJECTED and world.compiler.started == []


@drives((lc.REGISTRY, lc.PENDING, lc.APPROVE, lc.APPROVED), (lc.REGISTRY, lc.APPROVED, lc.APPROVE, lc.APPROVED),
        (lc.COMPILE, lc.ABSENT, lc.APPROVED_EVENT, lc.IN_PROGRESS),
        (lc.COMPILE, lc.IN_PROGRESS, lc.COMPLETED_EVENT, lc.COMPLETED), (lc.ROLLOUT, lc.ABSENT, lc.DEPLOY, lc.CANARY))
def test_an_approval_compiles_once_and_deploys_once_however_often_its_events_come(world):
    v = world.train()
    world.approve(v)
    assert [world.approval_event(v) for _ in range(2)] == ["started", "duplicate"]
    world.approve(v)  # approved again: no change
    assert world.approval_event(v) == "duplicate" and len(world.compiler.started) == 1
    assert [world.bundle_written(v) for _ in range(2)] == ["deployed", "duplicate"]
    assert [world.compile_ended(v) for _ in range(2)] == ["completed", "duplicate"]
    assert world.compile_status(v) == lc.COMPLETED and world.stage(v) == lc.CANARY
    assert len(world.h.deployments(CANARY_GROUP)) == 1


@drives((lc.REGISTRY, lc.PENDING, lc.REJECT, lc.REJECTED))
def test_a_version_rejected_before_approval_is_never_compiled(world):
    v = world.train()
    world.console(v, "Rejected")
    assert world.approval_event(v, "Rejected") == "ignored" and world.compile_status(v) == lc.ABSENT


@drives((lc.REGISTRY, lc.PENDING, lc.APPROVE, lc.APPROVED), (lc.REGISTRY, lc.APPROVED, lc.REJECT, lc.REJECTED))
def test_an_approval_event_arriving_after_the_rejection_it_preceded_is_ignored(world):
    v = world.train()
    world.approve(v)
    world.console(v, "Rejected")
    # the Rejected event comes first, the older Approved one after it: the registry's current status decides
    assert [world.approval_event(v, "Rejected"), world.approval_event(v)] == ["ignored", "ignored"]
    assert world.compiler.started == [] and world.compile_status(v) == lc.ABSENT


@pytest.mark.parametrize("again", ["before the bundle exists", "after the bundle exists"])
@drives((lc.REGISTRY, lc.APPROVED, lc.REJECT, lc.REJECTED), (lc.REGISTRY, lc.REJECTED, lc.APPROVE, lc.APPROVED),
        (lc.COMPILE, lc.IN_PROGRESS, lc.COMPLETED_EVENT, lc.COMPLETED), (lc.ROLLOUT, lc.ABSENT, lc.DEPLOY, lc.CANARY))
def test_approve_reject_approve_during_the_compile_ends_deployed_once(world, again):
    v = world.train()
    world.approve(v)
    assert world.approval_event(v) == "started"
    world.console(v, "Rejected")  # while the compile runs
    assert world.approval_event(v, "Rejected") == "ignored"
    if again == "before the bundle exists":
        world.approve(v)
        assert world.approval_event(v) == "duplicate"  # the running compile will announce it
        assert world.bundle_written(v) == "deployed"
    else:
        assert world.bundle_written(v) == "ignored"  # found v Rejected
        world.approve(v)
        assert world.approval_event(v) == "announced" and world.announced == ["deployed"]
    assert world.compile_ended(v) == "completed"
    assert world.approval_event(v) == "announced" and world.announced[-1] == "duplicate"  # a redelivery
    assert len(world.compiler.started) == 1 and len(world.h.deployments(CANARY_GROUP)) == 1
    assert world.stage(v) == lc.CANARY


@drives((lc.REGISTRY, lc.GATE_REJECTED, lc.APPROVE, lc.APPROVED_AGAINST_GATE))
def test_a_gate_rejected_version_approved_without_the_override_is_refused_once(world):
    v = world.train(good=False)
    world.console(v, "Approved")
    assert [world.approval_event(v) for _ in range(2)] == ["refused", "refused"]
    assert [m.subject for m in world.h.notifier.messages].count(
        f"{GROUP} v{v} approved against the quality gate: not deployed") == 1
    assert world.compiler.started == [] and world.compile_status(v) == lc.ABSENT
    with pytest.raises(Conflict, match="--override-gate"):
        world.approve(v)


@drives((lc.REGISTRY, lc.GATE_REJECTED, lc.OVERRIDE_GATE, lc.REJECTED),
        (lc.REGISTRY, lc.REJECTED, lc.APPROVE, lc.APPROVED), (lc.COMPILE, lc.ABSENT, lc.APPROVED_EVENT, lc.IN_PROGRESS))
def test_the_override_of_the_gate_is_recorded_then_the_version_approved_and_compiled(world):
    v = world.train(good=False)
    with pytest.raises(Conflict, match="needs a reason"):
        world.approve(v, override=True, reason=" ")
    approved = world.approve(v, override=True, reason="faults were mislabelled")
    assert approved.status == "Approved" and "faults were mislabelled" in approved.metadata["nacelle:gate_override"]
    assert world.approval_event(v) == "started" and world.compile_status(v) == lc.IN_PROGRESS


@drives((lc.REGISTRY, lc.GATE_REJECTED, lc.APPROVE, lc.APPROVED_AGAINST_GATE),
        (lc.REGISTRY, lc.APPROVED_AGAINST_GATE, lc.REJECT, lc.GATE_REJECTED),
        (lc.REGISTRY, lc.GATE_REJECTED, lc.OVERRIDE_GATE, lc.REJECTED),
        (lc.REGISTRY, lc.REJECTED, lc.APPROVE, lc.APPROVED))
def test_an_override_after_a_console_approval_takes_it_back_so_that_an_approval_event_follows(world):
    v = world.train(good=False)
    world.console(v, "Approved")
    assert world.approval_event(v) == "refused"
    approved = world.approve(v, override=True, reason="checked by hand")  # Approved -> Rejected -> Approved
    assert approved.status == "Approved" and "checked by hand" in approved.metadata["nacelle:gate_override"]
    assert world.approval_event(v) == "started"


@drives((lc.REGISTRY, lc.GATE_REJECTED, lc.APPROVE, lc.APPROVED_AGAINST_GATE),
        (lc.REGISTRY, lc.APPROVED_AGAINST_GATE, lc.REJECT, lc.GATE_REJECTED))
def test_rejecting_a_console_approval_keeps_the_gates_verdict(world):
    v = world.train(good=False)
    world.console(v, "Approved")
    world.console(v, "Rejected")
    assert approval_state(world.registry.get(GROUP, v)) == lc.GATE_REJECTED
    with pytest.raises(Conflict, match="--override-gate"):
        world.approve(v)


def test_unknown_and_deleted_versions_change_nothing(world):
    assert world.approval_event(7) == "ignored"
    assert world.h.deliver_manifest(manifest_key(GROUP, 7))["action"] == "ignored"
    with pytest.raises(ModelVersionNotFound):
        world.approve(7)
    v = world.train()
    world.approve(v)
    assert world.approval_event(v) == "started"
    before = list(world.moves())
    world.registry.delete(GROUP, v)  # deleted while it compiles
    assert world.approval_event(v) == "ignored"  # a redelivery
    world.h.deps.store.put(manifest_key(GROUP, v), b"{}")
    assert world.h.deliver_manifest(manifest_key(GROUP, v))["action"] == "ignored"
    assert world.moves() == before and world.h.deployments(CANARY_GROUP) == []


@drives((lc.COMPILE, lc.IN_PROGRESS, lc.FAILED_EVENT, lc.FAILED), (lc.COMPILE, lc.FAILED, lc.RETRY, lc.IN_PROGRESS),
        (lc.COMPILE, lc.IN_PROGRESS, lc.COMPLETED_EVENT, lc.COMPLETED))
def test_a_stopped_compile_is_retried_and_a_late_event_of_the_first_attempt_changes_nothing(world):
    v = world.train()
    world.approve(v)
    world.approval_event(v)
    assert [world.compile_ended(v, "Stopped") for _ in range(2)] == ["failed", "duplicate"]
    assert world.compile_status(v) == lc.FAILED
    assert retry_compile(v, world.compiling).detail == compile_job_name(GROUP, v, 2)
    assert world.compile_ended(v, "Failed", attempt=1) == "ignored"  # attempt 1's event, redelivered late
    assert world.compile_status(v) == lc.IN_PROGRESS
    assert world.bundle_written(v) == "deployed"
    assert world.compile_ended(v, attempt=2) == "completed"


# ------------------------------------------------------------------ rollout


@drives((lc.ROLLOUT, lc.ABSENT, lc.NO_DEVICES, lc.WAITING), (lc.ROLLOUT, lc.WAITING, lc.DEPLOY, lc.CANARY))
def test_without_devices_the_version_waits_and_deploys_once_a_device_joins(world):
    world.without_devices()
    h = world.h
    assert [h.deliver_manifest(h.compile(1))["action"] for _ in range(2)] == ["waiting", "waiting"]
    assert h.alerts() == [f"{GROUP} v1 waits for devices"]
    h.gg.ensure_thing_group(CANARY_GROUP)
    h.gg.add_thing("turbine-01", CANARY_GROUP)
    assert [h.check(1).action for _ in range(2)] == ["deployed", "waiting"]
    assert world.stage(1) == lc.CANARY and len(h.deployments(CANARY_GROUP)) == 1


@drives((lc.ROLLOUT, lc.ABSENT, lc.NO_DEVICES, lc.WAITING), (lc.ROLLOUT, lc.WAITING, lc.NEWER_VERSION, lc.SUPERSEDED))
def test_a_newer_waiting_version_supersedes_a_waiting_one(world):
    h = world.two_waiting_versions()
    assert h.check(1).action == "ignored"


@drives((lc.ROLLOUT, lc.WAITING, lc.NEWER_VERSION, lc.SUPERSEDED), (lc.ROLLOUT, lc.ABSENT, lc.DEPLOY, lc.CANARY))
def test_a_waiting_version_overtaken_by_a_newer_rollout_is_superseded_at_its_next_check(world):
    world.without_devices()
    h = world.h
    h.deliver_manifest(h.compile(1))
    h.gg.ensure_thing_group(CANARY_GROUP)
    h.gg.add_thing("turbine-01", CANARY_GROUP)
    assert h.deliver_manifest(h.compile(2))["action"] == "deployed"
    assert h.check(1).action == "ignored" and world.stage(1) == lc.SUPERSEDED
    assert [d["deploymentName"] for d in h.deployments(CANARY_GROUP)] == [f"nacelle-{GROUP}-v2-canary"]


@drives((lc.ROLLOUT, lc.CANARY, lc.NEWER_VERSION, lc.SUPERSEDED))
def test_a_newer_canary_supersedes_one_still_soaking(world):
    h = world.h
    h.deliver_manifest(h.compile(1))
    h.deliver_manifest(h.compile(2))
    assert (world.stage(1), world.stage(2)) == (lc.SUPERSEDED, lc.CANARY)
    h.clock.advance(CANARY_TIMEOUT + 1)
    assert h.check(1).action == "ignored" and not world.registry.get(GROUP, 1).failed


@drives((lc.ROLLOUT, lc.ABSENT, lc.NEWER_VERSION, lc.SUPERSEDED))
def test_a_late_bundle_of_an_older_version_is_superseded_by_the_newer_rollout(world):
    h = world.h
    first = h.compile(1)  # its bundle event comes late
    h.deliver_manifest(h.compile(2))
    assert [h.deliver_manifest(first)["action"] for _ in range(2)] == ["superseded", "duplicate"]
    assert (world.stage(1), world.stage(2)) == (lc.SUPERSEDED, lc.CANARY)


@drives((lc.ROLLOUT, lc.CANARY, lc.SOAKED, lc.FLEET))
def test_the_soak_promotes_once_with_duplicated_and_reordered_health_rows(world):
    h = world.h
    h.deliver_manifest(h.compile(1))
    t0 = h.clock.now.timestamp() + 1
    first, mid, last = (h.health("turbine-01", 1, 4.0, t0 + dt) for dt in (0.0, SOAK / 2, SOAK + 1))
    actions = [status_app.handle(dict(row), h.deps)["action"] for row in (first, last, first, mid, last)]
    assert actions == ["recorded", "promoted", "recorded", "recorded", "recorded"]
    assert world.stage(1) == lc.FLEET and len(h.deployments("nacelle-fleet")) == 1


@drives((lc.ROLLOUT, lc.FLEET, lc.FLEET_COMPLETED, lc.DONE))
def test_the_fleet_is_done_once_and_an_older_status_arriving_late_changes_nothing(world):
    h = world.h
    h.deliver_manifest(h.compile(1))
    h.report("turbine-01", h.rollout(1)["canary_deployment_id"], "SUCCEEDED")
    h.soak(1)
    fleet_id = h.rollout(1)["fleet_deployment_id"]
    assert [r["action"] for r in h.report("turbine-02", fleet_id, "SUCCEEDED")] == ["recorded"]
    assert [r["action"] for r in h.report("turbine-03", fleet_id, "SUCCEEDED")] == ["done"]
    late = aws_status_event("greengrass_deployment_failed.json", fleet_id, "turbine-03")
    late["time"] = "2026-02-28T23:00:00Z"  # before the success the stand-in reported
    assert status_app.handle(late, h.deps)["action"] == "recorded"
    assert world.stage(1) == lc.DONE and h.alerts().count(f"{GROUP} v1 is on the whole fleet") == 1


@drives((lc.ROLLOUT, lc.CANARY, lc.FAIL, lc.FAILING), (lc.ROLLOUT, lc.FAILING, lc.RESTORED, lc.FAILED_STAGE))
def test_a_canary_failure_acts_once_on_the_latest_status_by_event_time(world):
    h = world.h
    h.deliver_manifest(h.compile(1))
    canary_id = h.rollout(1)["canary_deployment_id"]
    succeeded = aws_status_event("greengrass_deployment_succeeded_older_spelling.json", canary_id)  # 10:04
    older = aws_status_event("greengrass_deployment_failed.json", canary_id)
    older["time"] = "2026-03-01T10:03:00Z"
    events = [succeeded, older] + [aws_status_event("greengrass_deployment_failed.json", canary_id)  # 10:05
                                   for _ in range(2)]
    assert [status_app.handle(e, h.deps)["action"] for e in events] == ["recorded", "recorded", "failed", "recorded"]
    assert world.stage(1) == lc.FAILED_STAGE and world.registry.get(GROUP, 1).failed
    assert h.alerts().count(f"Rollout of {GROUP} v1 failed in the canary") == 1
    assert [m for m in world.moves() if m[0] == "rollout"].count(("rollout", lc.CANARY, lc.FAILING)) == 1


@drives((lc.ROLLOUT, lc.FLEET, lc.FAIL, lc.FAILING), (lc.ROLLOUT, lc.FAILING, lc.RESTORED, lc.FAILED_STAGE))
def test_a_fleet_failure_restores_the_previous_version_once(world):
    h = world.h
    h.to_fleet_done(1)
    h.deliver_manifest(h.compile(2))
    h.report("turbine-01", h.rollout(2)["canary_deployment_id"], "SUCCEEDED")
    h.soak(2)
    fleet_id = h.rollout(2)["fleet_deployment_id"]
    assert [r["action"] for r in h.report("turbine-02", fleet_id, "FAILED", "boom")] == ["failed"]
    again = aws_status_event("greengrass_deployment_failed.json", fleet_id, "turbine-02")
    assert status_app.handle(again, h.deps)["action"] == "recorded"
    assert world.stage(2) == lc.FAILED_STAGE and world.stage(1) == lc.DONE
    assert h.deployments("nacelle-fleet")[-1]["components"]["nacelle.model"] == {"componentVersion": "1.0.0"}


@drives((lc.ROLLOUT, lc.CANARY, lc.FAIL, lc.FAILING), (lc.ROLLOUT, lc.FAILING, lc.RESTORED, lc.FAILED_STAGE))
def test_the_watchdog_finishes_a_canary_timeout_interrupted_after_its_claim(world):
    h = world.h
    h.deliver_manifest(h.compile(1))
    h.clock.advance(CANARY_TIMEOUT + 1)
    world.registry.crash_next_metadata_update = True  # the failed mark does not get written
    with pytest.raises(AdapterError):
        h.check(1)
    assert world.stage(1) == lc.FAILING and h.alerts() == []
    assert h.check(1).action == "failed"
    assert world.stage(1) == lc.FAILED_STAGE and world.registry.get(GROUP, 1).failed
    assert h.check(1).action == "ignored"


@drives((lc.ROLLOUT, lc.CANARY, lc.ROLLBACK, lc.SUPERSEDED), (lc.ROLLOUT, lc.FLEET, lc.ROLLBACK, lc.SUPERSEDED))
def test_a_rollback_supersedes_the_newer_versions_in_the_canary_and_the_fleet(world):
    h = world.h
    h.to_fleet_done(1)
    h.deliver_manifest(h.compile(2))
    h.report("turbine-01", h.rollout(2)["canary_deployment_id"], "SUCCEEDED")
    h.soak(2)
    h.deliver_manifest(h.compile(3))
    assert (world.stage(2), world.stage(3)) == (lc.FLEET, lc.CANARY)
    assert [rollback_to(1, h.deps).action for _ in range(2)] == ["rolled-back", "duplicate"]
    assert (world.stage(1), world.stage(2), world.stage(3)) == (lc.DONE, lc.SUPERSEDED, lc.SUPERSEDED)


@drives((lc.ROLLOUT, lc.WAITING, lc.ROLLBACK, lc.SUPERSEDED))
def test_a_rollback_supersedes_a_newer_version_still_waiting_for_a_canary_device(world):
    h = world.two_waiting_versions()
    h.gg.ensure_thing_group(FLEET_GROUP)
    h.gg.ensure_thing_group(CANARY_GROUP)
    h.gg.add_thing("turbine-01", CANARY_GROUP)
    assert rollback_to(1, h.deps).action == "rolled-back"
    assert world.stage(2) == lc.SUPERSEDED
    assert h.check(2).action == "ignored"  # a device joined: v2 must not deploy over the rollback
    assert [d["components"][MODEL_COMPONENT]["componentVersion"] for d in h.deployments(CANARY_GROUP)] == ["1.0.0"]


@drives((lc.ROLLOUT, lc.CANARY, lc.CANCEL, lc.CANCELED), (lc.ROLLOUT, lc.FLEET, lc.CANCEL, lc.CANCELED))
def test_cancel_stops_a_canary_or_a_fleet_stage_and_a_late_failure_changes_nothing(world):
    h = world.h
    h.deliver_manifest(h.compile(1))
    canary_id = h.rollout(1)["canary_deployment_id"]
    assert cancel(canary_id, h.deps).action == "canceled" and world.stage(1) == lc.CANCELED
    late = aws_status_event("greengrass_deployment_failed.json", canary_id)
    assert status_app.handle(late, h.deps)["action"] == "recorded"
    assert world.stage(1) == lc.CANCELED and not world.registry.get(GROUP, 1).failed
    h.deliver_manifest(h.compile(2))
    h.report("turbine-01", h.rollout(2)["canary_deployment_id"], "SUCCEEDED")
    h.soak(2)
    cancel(h.rollout(2)["fleet_deployment_id"], h.deps)
    assert world.stage(2) == lc.CANCELED and not world.registry.get(GROUP, 2).failed
