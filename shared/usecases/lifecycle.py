"""A model version's lifecycles as data: the states, and which event moves which state where.

Every machine starts in `absent` (no record yet). Code that changes a state names its transition
(`Machine.target`, or `advance` for records in the state table); one that is not in the table raises
InvalidTransition (a bug) and writes nothing.

REGISTRY: the version in the model registry, its approval status plus the quality gate's verdict
(`approval.approval_state`). Events about a version not in the registry (never registered, or deleted)
change nothing.

| from                  | event         | to                    | by                                             |
|-----------------------|---------------|-----------------------|------------------------------------------------|
| absent                | register      | PendingManualApproval | training_completed, the gate passed            |
| absent                | gate-reject   | GateRejected          | training_completed, the gate failed (Rejected) |
| PendingManualApproval | approve       | Approved              | `nacelle models approve`, the console          |
| Rejected              | approve       | Approved              | also after a rejection during the compile      |
| Approved              | approve       | Approved              | approved again: no change                      |
| PendingManualApproval | reject        | Rejected              | `nacelle models reject`, the console           |
| Approved              | reject        | Rejected              | also while it compiles                         |
| GateRejected          | approve       | ApprovedAgainstGate   | the console (the CLI refuses): never compiled  |
| GateRejected          | override-gate | Rejected              | `approve --override-gate`: recorded, then the  |
|                       |               |                       | Rejected -> Approved row                       |
| ApprovedAgainstGate   | reject        | GateRejected          | the console; `approve --override-gate` first   |
|                       |               |                       | takes it back so that an approval event follows|

COMPILE: `compile#<v>` status. Only the approval event of an Approved version starts it; when the bundle
exists already, the approval announces it again (same bytes) and its Object Created starts the rollout.

| from       | event     | to         | by                                                  |
|------------|-----------|------------|-----------------------------------------------------|
| absent     | approved  | InProgress | model_approved                                      |
| InProgress | completed | Completed  | the compile job (bundle under compiled/<g>/<v>/)    |
| InProgress | failed    | Failed     | the job Failed or Stopped: reported once            |
| Failed     | retry     | InProgress | `nacelle jobs retry`                                |

ROLLOUT: `rollout#<v>` stage. Starts from the bundle of an Approved, not failed version; done, failed,
superseded and canceled are final. A move only records what happened; the notice it calls for is sent after it,
and noted on the record (rollout_notices.announce), so that a failed publish is sent again.

| from    | event           | to         | by                                                         |
|---------|-----------------|------------|------------------------------------------------------------|
| absent  | no-devices      | waiting    | compilation_completed: the canary group has no device      |
| absent  | deploy          | canary     | compilation_completed: the canary deployment               |
| absent  | newer-version   | superseded | a late bundle event: a newer version is on its way or done |
| waiting | deploy          | canary     | a watchdog check finds a device                            |
| waiting | newer-version   | superseded | a newer version waits too, or is further on                |
| canary  | newer-version   | superseded | a newer version's canary (its start, a redelivery or the   |
|         |                 |            | older version's watchdog finishing it); an older start that|
|         |                 |            | finds a newer canary after its own claim gives way         |
| canary  | soaked          | fleet      | every canary device soaked: the fleet deployment           |
| fleet   | fleet-completed | done       | every fleet device completed                               |
| canary  | fail            | failing    | a device failed, or no readiness in the canary timeout     |
| fleet   | fail            | failing    | a device failed                                            |
| failing | restored        | failed     | marked failed, the groups still on it restored (watchdog   |
|         |                 |            | resumes); its notice then due                              |
| waiting | rollback        | superseded | `nacelle fleet rollback --to` an earlier version, before   |
|         |                 |            | it deploys                                                 |
| canary  | rollback        | superseded |                                                            |
| fleet   | rollback        | superseded |                                                            |
| canary  | cancel          | canceled   | `nacelle fleet cancel` of the stage's deployment           |
| fleet   | cancel          | canceled   |                                                            |
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.errors import InvalidTransition

if TYPE_CHECKING:
    from shared.ports import ApprovalStatus, StateStore

ABSENT = "absent"

# registry states and events
PENDING, APPROVED, REJECTED = "PendingManualApproval", "Approved", "Rejected"
GATE_REJECTED, APPROVED_AGAINST_GATE = "GateRejected", "ApprovedAgainstGate"
REGISTER, GATE_REJECT, APPROVE, REJECT, OVERRIDE_GATE = "register", "gate-reject", "approve", "reject", "override-gate"

# compile states and events
IN_PROGRESS, COMPLETED, FAILED = "InProgress", "Completed", "Failed"
APPROVED_EVENT, COMPLETED_EVENT, FAILED_EVENT, RETRY = "approved", "completed", "failed", "retry"

# rollout stages and events
WAITING, CANARY, FLEET, DONE = "waiting", "canary", "fleet", "done"
FAILING, FAILED_STAGE, SUPERSEDED, CANCELED = "failing", "failed", "superseded", "canceled"
NO_DEVICES, DEPLOY, NEWER_VERSION, SOAKED = "no-devices", "deploy", "newer-version", "soaked"
FLEET_COMPLETED, FAIL, RESTORED, ROLLBACK, CANCEL = "fleet-completed", "fail", "restored", "rollback", "cancel"


@dataclass(frozen=True)
class Transition:
    source: str
    event: str
    target: str


@dataclass(frozen=True)
class Machine:
    name: str
    field: str  # the state-table attribute holding the state; "" when the state lives elsewhere
    states: tuple[str, ...]
    transitions: tuple[Transition, ...]

    def target(self, source: str, event: str) -> str:
        """Where `event` moves `source`; InvalidTransition when the table has no such move."""
        for t in self.transitions:
            if (t.source, t.event) == (source, event):
                return t.target
        raise InvalidTransition(f"{self.name}: no transition from {source} on {event}")

    def check(self, source: str, event: str, target: str) -> None:
        if self.target(source, event) != target:
            raise InvalidTransition(f"{self.name}: {event} moves {source} to {self.target(source, event)}, "
                                    f"not {target}")


def _table(*rows: tuple[str, str, str]) -> tuple[Transition, ...]:
    return tuple(Transition(*row) for row in rows)


REGISTRY = Machine("registry", "", (ABSENT, PENDING, APPROVED, REJECTED, GATE_REJECTED, APPROVED_AGAINST_GATE), _table(
    (ABSENT, REGISTER, PENDING),
    (ABSENT, GATE_REJECT, GATE_REJECTED),
    (PENDING, APPROVE, APPROVED),
    (REJECTED, APPROVE, APPROVED),
    (APPROVED, APPROVE, APPROVED),
    (PENDING, REJECT, REJECTED),
    (APPROVED, REJECT, REJECTED),
    (GATE_REJECTED, APPROVE, APPROVED_AGAINST_GATE),
    (GATE_REJECTED, OVERRIDE_GATE, REJECTED),
    (APPROVED_AGAINST_GATE, REJECT, GATE_REJECTED),
))

# the registry status each registry state is stored as
REGISTRY_STATUS: dict[str, ApprovalStatus] = {
    PENDING: "PendingManualApproval", APPROVED: "Approved", REJECTED: "Rejected",
    GATE_REJECTED: "Rejected", APPROVED_AGAINST_GATE: "Approved"}

COMPILE = Machine("compile", "status", (ABSENT, IN_PROGRESS, COMPLETED, FAILED), _table(
    (ABSENT, APPROVED_EVENT, IN_PROGRESS),
    (IN_PROGRESS, COMPLETED_EVENT, COMPLETED),
    (IN_PROGRESS, FAILED_EVENT, FAILED),
    (FAILED, RETRY, IN_PROGRESS),
))

ROLLOUT = Machine("rollout", "stage",
                  (ABSENT, WAITING, CANARY, FLEET, DONE, FAILING, FAILED_STAGE, SUPERSEDED, CANCELED), _table(
    (ABSENT, NO_DEVICES, WAITING),
    (ABSENT, DEPLOY, CANARY),
    (ABSENT, NEWER_VERSION, SUPERSEDED),
    (WAITING, DEPLOY, CANARY),
    (WAITING, NEWER_VERSION, SUPERSEDED),
    (CANARY, NEWER_VERSION, SUPERSEDED),
    (CANARY, SOAKED, FLEET),
    (FLEET, FLEET_COMPLETED, DONE),
    (CANARY, FAIL, FAILING),
    (FLEET, FAIL, FAILING),
    (FAILING, RESTORED, FAILED_STAGE),
    (WAITING, ROLLBACK, SUPERSEDED),
    (CANARY, ROLLBACK, SUPERSEDED),
    (FLEET, ROLLBACK, SUPERSEDED),
    (CANARY, CANCEL, CANCELED),
    (FLEET, CANCEL, CANCELED),
))

MACHINES = (REGISTRY, COMPILE, ROLLOUT)


def advance(state: StateStore, machine: Machine, pk: str, key: str, source: str, event: str, target: str,
            changes: Mapping[str, Any] | None = None, expected: Mapping[str, Any] | None = None) -> bool:
    """Move the record (pk, key) from `source` to `target`, writing `changes` too, only while it is still in
    `source` (and matches `expected`): a conditional write, so duplicated or reordered events move it once.
    True when this call moved it. From `absent` the record is created if it does not exist yet."""
    machine.check(source, event, target)
    if not machine.field:
        raise InvalidTransition(f"{machine.name} states are not kept in the state table")
    item = {**(changes or {}), machine.field: target}
    if source == ABSENT:
        if expected:
            raise InvalidTransition(f"{machine.name}: a record created from {ABSENT} has nothing to expect")
        return state.put(pk, key, item, if_absent=True)
    return state.update_if(pk, key, item, {**(expected or {}), machine.field: source})
