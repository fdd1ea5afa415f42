"""Rollout state: the records a rollout keeps, their keys and the writes every part of the rollout shares.

State (docs/fleet.md), each item read and written as a record of shared.records: `group#<g>` / `rollout#<v>`
(RolloutRecord: its stage, lifecycle.ROLLOUT), `group#<g>` / `deployment#<id>` (DeploymentRecord: which rollout and
stage a deployment belongs to), `group#<g>` / `canary` and `fleet` (CanaryAssignment, FleetAssignment: what each
thing group was last given), `device#<thing>` / `deployment#<id>` (ExecutionRecord: that device's execution),
`device#<thing>` / `health` (HealthStreak: its readiness streak), `devices` / `<thing>` (DeviceRecord) and
`group#<g>` / `succeeded#<deployment id>` (FleetProgress: how many of a fleet deployment's devices have succeeded,
so a status event costs the same however large the fleet and however far the rollout). Every
stage change goes through `advance_stage`: checked against the table, and a conditional update on the stage, so
duplicated or reordered events act once; Greengrass calls are idempotent through client tokens derived from group,
version and purpose.

Here too: the deployments (`_deploy`, `_own`), the canary and fleet assignments (`assign_canary`, `set_fleet`, and
`keep_on_canary` against a racing older deployment) and the watchdog's schedule (`schedule_check`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared.errors import Conflict
from shared.events import NACELLE_SOURCE, ROLLOUT_CHECK
from shared.observability import logger
from shared.ports import Envelope, EventPublisher, Greengrass, ModelRegistry, Notifier, ObjectStore, StateStore
from shared.records import CanaryAssignment, DeploymentRecord, FleetAssignment, RolloutRecord, load
from shared.usecases import lifecycle
from shared.usecases import state_keys as sk
from shared.usecases.lifecycle import ABSENT
from shared.usecases.rollout_components import (
    DEPLOYMENT_POLICIES,
    ROLLOUT_MAX_PER_MINUTE,
    client_token,
    job_configuration,
)

ROLLOUT = "rollout#"
DEPLOYMENT = "deployment#"
CANARY = "canary"
FLEET = "fleet"
SUCCEEDED = "succeeded#"
HEALTH = "health"
DEVICES_PK = "devices"  # pk="devices", sk=<thing>: the record anomaly_alert's offline check reads
FAILED_EXECUTION = frozenset({"FAILED", "REJECTED", "TIMED_OUT"})
SUCCEEDED_EXECUTION = frozenset({"COMPLETED", "SUCCEEDED"})
TERMINAL_EXECUTION = FAILED_EXECUTION | SUCCEEDED_EXECUTION | {"CANCELED"}
WAITING = lifecycle.WAITING  # approved and compiled; no device in the canary group yet
ACTIVE_STAGES = (CANARY, FLEET)
FAILING = lifecycle.FAILING  # claimed by a failure whose restore is under way
AHEAD = (CANARY, FLEET, lifecycle.DONE)  # a rollout in these stages holds the canary group against older versions


@dataclass
class RolloutDeps:
    store: ObjectStore
    state: StateStore
    registry: ModelRegistry
    notifier: Notifier
    greengrass: Greengrass
    events: EventPublisher
    group: str
    detector_version: str
    canary_group: str
    fleet_group: str
    soak_s: float
    canary_timeout_s: float
    stuck_timeout_s: float
    clock: Callable[[], datetime]
    poll_s: float = 60.0  # the watchdog's period (RolloutCheck events)
    detector_configuration: Mapping[str, Any] = field(default_factory=dict)  # merged into every deployment
    max_per_minute: int = ROLLOUT_MAX_PER_MINUTE  # devices that may receive a deployment per minute (IoT Jobs rate)


def device_pk(thing: str) -> str:
    return f"device#{thing}"


def _now(deps: RolloutDeps) -> float:
    return deps.clock().timestamp()


def _pk(deps: RolloutDeps) -> str:
    return sk.group_pk(deps.group)


def _rollout(version: int, deps: RolloutDeps) -> RolloutRecord | None:
    return load(RolloutRecord, deps.state.get(_pk(deps), ROLLOUT + str(version)))


def _owner(deployment_id: str, deps: RolloutDeps) -> DeploymentRecord | None:
    return load(DeploymentRecord, deps.state.get(_pk(deps), DEPLOYMENT + deployment_id))


def _fleet(deps: RolloutDeps) -> FleetAssignment | None:
    return load(FleetAssignment, deps.state.get(_pk(deps), FLEET))


def _canary(deps: RolloutDeps) -> CanaryAssignment | None:
    return load(CanaryAssignment, deps.state.get(_pk(deps), CANARY))


def _own(deployment: str, version: int, stage: str, deps: RolloutDeps) -> None:
    """Record which version and stage a deployment belongs to (if absent: a redelivery keeps a recorded failure)."""
    deps.state.put(_pk(deps), DEPLOYMENT + deployment, DeploymentRecord(deployment, version, stage).to_item(),
                   if_absent=True)


def advance_stage(version: int, source: str, event: str, target: str, changes: Mapping[str, Any],
                  deps: RolloutDeps) -> bool:
    """The one way a rollout's stage changes (lifecycle.advance on lifecycle.ROLLOUT); True when this call moved it.
    A record it creates starts with no notice sent."""
    if source == ABSENT:
        changes = {**changes, **RolloutRecord.changes(notified=())}
    return lifecycle.advance(deps.state, lifecycle.ROLLOUT, _pk(deps), ROLLOUT + str(version), source, event, target,
                             changes)


def _deploy(group_name: str, name: str, components: Mapping[str, Any], token: str, deps: RolloutDeps) -> str:
    return deps.greengrass.create_deployment(deps.greengrass.thing_group_arn(group_name), name, components,
                                             DEPLOYMENT_POLICIES, job_configuration(deps.max_per_minute),
                                             client_token(token))


def assign_canary(version: int, deployment: str, deps: RolloutDeps, replaces: str = "") -> None:
    """Name a canary deployment in the canary assignment: never in place of a newer version still ahead, and within a
    version only in place of the deployment it `replaces` (a restore or a rollback sets it back, elsewhere)."""
    pk = _pk(deps)
    for _ in range(5):  # optimistic, on the assignment read
        current = _canary(deps)
        if current is not None and _holds_canary(current, version, replaces, deps):
            return
        item = CanaryAssignment(version, deployment).to_item()
        if current is None:
            if deps.state.put(pk, CANARY, item, if_absent=True):
                return
        elif deps.state.update_if(pk, CANARY, item, CanaryAssignment.changes(
                version=current.version, deployment_id=current.deployment_id)):
            return
    raise Conflict(f"the canary assignment kept changing while v{version} was being assigned")


def _holds_canary(current: CanaryAssignment, version: int, replaces: str, deps: RolloutDeps) -> bool:
    if current.version == version:
        return current.deployment_id != replaces
    if current.version < version:
        return False
    holder = _rollout(current.version, deps)
    return holder is not None and holder.stage in AHEAD


def keep_on_canary(version: int, deps: RolloutDeps) -> None:
    """Greengrass runs a group's last deployment: when a racing deployment of an older version (its start, a failure's
    restore) went out after this canary's and made it INACTIVE, the canary is deployed again."""
    record = _rollout(version, deps)
    if record is not None and record.stage == CANARY and record.canary_deployment_id \
            and deps.greengrass.get_deployment(record.canary_deployment_id).status == "INACTIVE":
        deploy_canary_again(record, deps)


def deploy_canary_again(record: RolloutRecord, deps: RolloutDeps) -> None:
    """The canary's components to the canary group again (a token per replaced deployment); the rollout and the
    canary assignment follow the new deployment."""
    version, old, g = record.version, str(record.canary_deployment_id), deps.group
    again = _deploy(deps.canary_group, f"nacelle-{g}-v{version}-canary", record.components,
                    f"{g}:{version}:canary-again:{old}", deps)
    _own(again, version, CANARY, deps)
    if deps.state.update_if(_pk(deps), ROLLOUT + str(version), RolloutRecord.changes(canary_deployment_id=again),
                            RolloutRecord.changes(stage=CANARY, canary_deployment_id=old)):
        assign_canary(version, again, deps, replaces=old)
    logger.warning("canary deployed again over a racing older deployment", model_version=version,
                   deployment_id=again, replaced=old)


def set_fleet(version: int, components: Mapping[str, Any], deployment: str, kind: str, deps: RolloutDeps,
              notice: bool = False) -> None:
    """`notice`: the assignment owes a notice (a rollback's, sent by rollout_ops)."""
    current = _fleet(deps)
    if current is not None and current.deployment_id == deployment:
        return
    deps.state.put(_pk(deps), FLEET, FleetAssignment(
        version, dict(components), deployment, kind, previous=current.version if current is not None else None,
        since=_now(deps), generation=(current.generation if current is not None else 0) + 1,
        notified=False if notice else None).to_item())


def schedule_check(version: int, deps: RolloutDeps) -> None:
    """The watchdog's next RolloutCheck, on a grid of poll_s so concurrent schedulers share one schedule."""
    now = deps.clock()
    slot = math.ceil((now.timestamp() + deps.poll_s) / deps.poll_s)
    deps.events.publish(
        Envelope(NACELLE_SOURCE, ROLLOUT_CHECK, {"group": deps.group, "version": version,
                                                 "requested_at": now.isoformat()}),
        deliver_at=datetime.fromtimestamp(slot * deps.poll_s, UTC), dedup_key=f"rollout-{deps.group}-{version}-{slot}")
