"""Rollout: a compiled model version goes to the canary thing group, soaks, then goes to the fleet.

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

Notices go out at least once: a transition only records what happened (the stage, a flag, the text a notice needs),
and `_announce` sends every notice the record calls for that its `notified` list does not name yet, then notes it.
Every entry point announces for the rollout it touched, so a publish that failed is sent by the redelivery of the
event, or by the next watchdog check (one is scheduled while a rollout is active).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

from shared.components import component_version
from shared.errors import Conflict, ModelVersionNotFound, NotFound
from shared.events import NACELLE_SOURCE, ROLLOUT_CHECK
from shared.messages import HealthRow
from shared.observability import correlate, logger
from shared.ports import Envelope, EventPublisher, Greengrass, ModelRegistry, Notifier, ObjectStore, StateStore
from shared.records import (
    CanaryAssignment,
    ConflictRecord,
    DeploymentRecord,
    DeviceRecord,
    ExecutionRecord,
    FleetAssignment,
    FleetProgress,
    HealthStreak,
    RolloutRecord,
    load,
    records,
)
from shared.usecases import lifecycle
from shared.usecases import state_keys as sk
from shared.usecases.approval_scope import canary_only
from shared.usecases.lifecycle import (
    ABSENT,
    DEPLOY,
    FAIL,
    FAILED_STAGE,
    FLEET_COMPLETED,
    NEWER_VERSION,
    NO_DEVICES,
    RESTORED,
    SOAKED,
    SUPERSEDED,
)
from shared.usecases.outcome import Outcome
from shared.usecases.registration import metadata_value
from shared.usecases.rollout_components import (
    DEPLOYMENT_POLICIES,
    ROLLOUT_MAX_PER_MINUTE,
    client_token,
    deployment_components,
    ensure_detector_component,
    ensure_model_component,
    job_configuration,
    manifest_key,
    parse_manifest_key,
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


# ------------------------------------------------------------------ 1. a compiled bundle -> canary


def on_manifest_created(key: str, deps: RolloutDeps) -> Outcome:
    parsed = parse_manifest_key(key)
    if parsed is None or parsed[0] != deps.group:
        return Outcome("ignored", f"{key} is not a compiled manifest of group {deps.group}")
    version = parsed[1]
    correlate(model_version=version)
    outcome = _on_bundle(key, version, deps)
    _announce(_rollout(version, deps), deps)
    return outcome


def _on_bundle(key: str, version: int, deps: RolloutDeps) -> Outcome:
    try:
        model = deps.registry.get(deps.group, version)
    except ModelVersionNotFound:
        return Outcome("ignored", f"{key}: v{version} is not in the registry")
    if model.status != "Approved" or model.failed:
        return Outcome("ignored", f"v{version} is {model.status}{' and marked failed' if model.failed else ''}")
    try:  # identity first, on every delivery: other content under this version must never pass quietly
        ensure_model_component(deps.store, deps.greengrass, deps.group, version)
        ensure_detector_component(deps.store, deps.greengrass, deps.detector_version)
    except Conflict as exc:
        _alert_conflict(version, exc, deps)
        raise
    existing = _rollout(version, deps)
    if existing is not None and existing.stage == CANARY:  # redelivered, maybe after a crash past the claim
        return _settle_canary(existing, False, deps)
    if existing is not None and existing.stage != WAITING:  # a redelivered manifest event
        return Outcome("duplicate", f"v{version} is already rolling out ({existing.stage})")
    newer = _newer_rollout(version, deps)
    if newer is not None:  # a late bundle event: the fleet never goes back to an older version by itself
        if existing is None:
            advance_stage(version, ABSENT, NEWER_VERSION, SUPERSEDED, RolloutRecord.changes(
                version=version, superseded_by=newer.version), deps)
        else:
            advance_stage(version, WAITING, NEWER_VERSION, SUPERSEDED, RolloutRecord.changes(
                superseded_by=newer.version), deps)
        return Outcome("superseded", f"v{newer.version} is already {newer.stage}: v{version} is not rolled out",
                       {"version": version, "stage": SUPERSEDED})
    return _start_canary(version, deps)


def _newer_rollout(version: int, deps: RolloutDeps,
                   stages: tuple[str, ...] = (WAITING, *AHEAD)) -> RolloutRecord | None:
    """The newest rollout of a later version that is on its way or done (a failed, canceled or rolled-back one
    does not count: the older version may then still go out)."""
    newer = [r for r in records(RolloutRecord, deps.state.query(_pk(deps), ROLLOUT))
             if r.version > version and r.stage in stages]
    return max(newer, key=lambda r: r.version, default=None)


def _alert_conflict(version: int, exc: Conflict, deps: RolloutDeps) -> None:
    """Once per version: the state record claims the alert, retries of the event stay quiet."""
    if deps.state.put(_pk(deps), f"conflict#{version}", ConflictRecord(version, str(exc)).to_item(), if_absent=True):
        deps.notifier.publish(
            "approvals", f"Rollout of {deps.group} v{version} refused: component conflict",
            f"{exc}\n\nNothing was overwritten and nothing was deployed. A component version never changes: "
            f"publish the new content under a new version.", {"model_version": str(version), "status": "Conflict"})
    logger.error("component conflict", model_version=version, reason=str(exc))


def _deploy(group_name: str, name: str, components: Mapping[str, Any], token: str, deps: RolloutDeps) -> str:
    return deps.greengrass.create_deployment(deps.greengrass.thing_group_arn(group_name), name, components,
                                             DEPLOYMENT_POLICIES, job_configuration(deps.max_per_minute),
                                             client_token(token))


def _start_canary(version: int, deps: RolloutDeps) -> Outcome:
    g = deps.group
    components = deployment_components(version, deps.detector_version, deps.detector_configuration)
    try:
        things = deps.greengrass.things_in_group(deps.canary_group)
    except NotFound:  # the group is created with the first device
        things = []
    if not things:
        return _wait_for_devices(version, deps)
    deployment = _deploy(deps.canary_group, f"nacelle-{g}-v{version}-canary", components, f"{g}:{version}:canary",
                         deps)
    _own(deployment, version, CANARY, deps)
    scope = canary_only(deps.registry.get(g, version))  # the promotion then waits for a person's approval
    record = RolloutRecord.changes(version=version, components=components, canary_deployment_id=deployment,
                                   canary_started_at=_now(deps), canary_things=things, canary_only=scope or None)
    claimed = (advance_stage(version, ABSENT, DEPLOY, CANARY, record, deps)
               or advance_stage(version, WAITING, DEPLOY, CANARY, record, deps))
    current = _rollout(version, deps)
    if current is None or current.stage != CANARY or current.canary_deployment_id != deployment:
        return Outcome("duplicate", f"v{version} was started concurrently")
    return _settle_canary(current, claimed, deps)


def _settle_canary(record: RolloutRecord, claimed: bool, deps: RolloutDeps) -> Outcome:
    """What follows a canary claim, idempotent so that a redelivery finishes an interrupted start: a newer version
    that started meanwhile wins; else the older canaries are superseded, the canary assignment names this one and
    the watchdog is scheduled."""
    version, deployment = record.version, str(record.canary_deployment_id)
    newer = _newer_rollout(version, deps, AHEAD)
    if newer is not None:  # checked again after the claim: two starts may have passed the first check together
        advance_stage(version, CANARY, NEWER_VERSION, SUPERSEDED, RolloutRecord.changes(superseded_by=newer.version),
                      deps)
        if newer.stage == CANARY:  # this deployment may have gone out after the newer one's: deploy that again
            _deploy_canary_again(newer, deps)
        return Outcome("superseded", f"v{newer.version} is already {newer.stage}: v{version} is not rolled out",
                       {"version": version, "stage": SUPERSEDED})
    for older in records(RolloutRecord, deps.state.query(_pk(deps), ROLLOUT)):
        if older.version < version and older.stage == CANARY:
            advance_stage(older.version, CANARY, NEWER_VERSION, SUPERSEDED,
                          RolloutRecord.changes(superseded_by=version), deps)
    _assign_canary(version, deployment, deps)
    schedule_check(version, deps)
    if not claimed:
        return Outcome("duplicate", f"v{version} is already on the canary ({deployment})")
    logger.info("canary deployment created", model_version=version, deployment_id=deployment,
                things=list(record.canary_things))
    return Outcome("deployed", f"v{version} to {deps.canary_group} ({deployment})",
                   {"version": version, "deployment_id": deployment, "stage": CANARY})


def _assign_canary(version: int, deployment: str, deps: RolloutDeps, replaces: str = "") -> None:
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


def _keep_on_canary(version: int, deps: RolloutDeps) -> None:
    """Greengrass runs a group's last deployment: when a racing deployment of an older version (its start, a failure's
    restore) went out after this canary's and made it INACTIVE, the canary is deployed again."""
    record = _rollout(version, deps)
    if record is not None and record.stage == CANARY and record.canary_deployment_id \
            and deps.greengrass.get_deployment(record.canary_deployment_id).status == "INACTIVE":
        _deploy_canary_again(record, deps)


def _deploy_canary_again(record: RolloutRecord, deps: RolloutDeps) -> None:
    """The canary's components to the canary group again (a token per replaced deployment); the rollout and the
    canary assignment follow the new deployment."""
    version, old, g = record.version, str(record.canary_deployment_id), deps.group
    again = _deploy(deps.canary_group, f"nacelle-{g}-v{version}-canary", record.components,
                    f"{g}:{version}:canary-again:{old}", deps)
    _own(again, version, CANARY, deps)
    if deps.state.update_if(_pk(deps), ROLLOUT + str(version), RolloutRecord.changes(canary_deployment_id=again),
                            RolloutRecord.changes(stage=CANARY, canary_deployment_id=old)):
        _assign_canary(version, again, deps, replaces=old)
    logger.warning("canary deployed again over a racing older deployment", model_version=version,
                   deployment_id=again, replaced=old)


def _wait_for_devices(version: int, deps: RolloutDeps) -> Outcome:
    """No device to deploy to: record that the version waits (operators hear it once) and look again
    at every watchdog check; a newer version that also waits supersedes it."""
    pk = _pk(deps)
    advance_stage(version, ABSENT, NO_DEVICES, WAITING, RolloutRecord.changes(version=version,
                                                                            waiting_since=_now(deps)), deps)
    for other in records(RolloutRecord, deps.state.query(pk, ROLLOUT)):
        if other.stage == WAITING and other.version < version:
            advance_stage(other.version, WAITING, NEWER_VERSION, SUPERSEDED,
                          RolloutRecord.changes(superseded_by=version), deps)
    schedule_check(version, deps)
    return Outcome("waiting", f"v{version}: no device in {deps.canary_group}; the rollout starts when one joins",
                   {"version": version, "stage": WAITING})


def schedule_check(version: int, deps: RolloutDeps) -> None:
    """The watchdog's next RolloutCheck, on a grid of poll_s so concurrent schedulers share one schedule."""
    now = deps.clock()
    slot = math.ceil((now.timestamp() + deps.poll_s) / deps.poll_s)
    deps.events.publish(
        Envelope(NACELLE_SOURCE, ROLLOUT_CHECK, {"group": deps.group, "version": version,
                                                 "requested_at": now.isoformat()}),
        deliver_at=datetime.fromtimestamp(slot * deps.poll_s, UTC), dedup_key=f"rollout-{deps.group}-{version}-{slot}")


# ------------------------------------------------------------------ 2. deployment status (events and polling)


def on_deployment_status(deployment_id: str, thing: str, status: str, reason: str, error_stack: list[str],
                         deps: RolloutDeps, event_time: datetime | None = None) -> Outcome:
    """One device's execution of a deployment. Events come duplicated and out of order: the rollout
    is judged on the execution status recorded for the device (the latest by event time)."""
    recorded, newly_succeeded = _record_execution(deployment_id, thing, status, reason, error_stack, deps, event_time)
    owner = _owner(deployment_id, deps)
    if owner is None:
        return Outcome("recorded", f"{thing}: {deployment_id} {recorded} (not a rollout deployment)")
    correlate(model_version=owner.version, deployment_id=deployment_id)
    if owner.stage not in ACTIVE_STAGES:  # a restore's or a rollback's deployment
        outcome = _evaluate_put_back(owner, thing, recorded, reason if recorded == status else "", deps)
        _announce_put_back(_owner(deployment_id, deps), deps)
        return outcome
    if recorded != status:
        return Outcome("recorded", f"{thing}: {deployment_id} {status} is older than the {recorded} recorded")
    return _evaluate_execution(owner.version, owner.stage, deployment_id, thing, status, reason, deps,
                               newly_succeeded)


def _record_execution(deployment_id: str, thing: str, status: str, reason: str, error_stack: list[str],
                      deps: RolloutDeps, event_time: datetime | None) -> tuple[str, bool]:
    """Record the status unless the device's record is newer (by event time) or final (a terminal
    status is never replaced by a non-terminal one, nor by any status without a later event time);
    returns the status recorded, and whether this call turned the device's status into a success."""
    at = event_time.timestamp() if event_time is not None else None
    for _ in range(5):  # optimistic: retried when another delivery wrote in between
        current = load(ExecutionRecord, deps.state.get(device_pk(thing), DEPLOYMENT + deployment_id))
        if current is not None:
            final = current.status in TERMINAL_EXECUTION
            newer = at is not None and current.event_time is not None and at > current.event_time
            if current.status == status or (final and (status not in TERMINAL_EXECUTION or not newer)):
                return current.status, False
        item = ExecutionRecord(deployment_id, thing, status, reason, tuple(error_stack), _now(deps), at).to_item()
        newly_succeeded = status in SUCCEEDED_EXECUTION and (current is None
                                                              or current.status not in SUCCEEDED_EXECUTION)
        if current is None:
            if deps.state.put(device_pk(thing), DEPLOYMENT + deployment_id, item, if_absent=True):
                return status, newly_succeeded
        elif deps.state.update_if(device_pk(thing), DEPLOYMENT + deployment_id, item,
                                  ExecutionRecord.changes(status=current.status)):
            return status, newly_succeeded
    raise Conflict(f"{thing}: deployment {deployment_id} status kept changing while being recorded")


def _execution(thing: str, deployment_id: str, deps: RolloutDeps) -> str:
    """The device's recorded status of the deployment ("" when none)."""
    execution = load(ExecutionRecord, deps.state.get(device_pk(thing), DEPLOYMENT + deployment_id))
    return "" if execution is None else execution.status


def _evaluate_execution(version: int, stage: str, deployment_id: str, thing: str, status: str, reason: str,
                        deps: RolloutDeps, newly_succeeded: bool = False) -> Outcome:
    """`newly_succeeded`: this delivery turned the device's recorded status into a success (_record_execution).
    Then the notices due: on the record read when nothing moved (it is the largest item a status event reads)."""
    record = _rollout(version, deps)
    outcome = _judge_execution(record, version, stage, deployment_id, thing, status, reason, deps, newly_succeeded)
    _announce(record if outcome.action == "recorded" else _rollout(version, deps), deps)
    return outcome


def _judge_execution(record: RolloutRecord | None, version: int, stage: str, deployment_id: str, thing: str,
                     status: str, reason: str, deps: RolloutDeps, newly_succeeded: bool) -> Outcome:
    if record is None or record.stage != stage or record.deployment_id(stage) != deployment_id:
        return Outcome("recorded", f"{thing}: {deployment_id} {status} (v{version} is "
                                   f"{record.stage if record is not None else None})")
    if status in FAILED_EXECUTION and thing not in record.things(stage):  # e.g. it joined the group later
        return Outcome("recorded", f"{thing} is not one of the {stage} deployment's devices: its {status} is "
                                   f"recorded, the rollout is not judged on it")
    if status in FAILED_EXECUTION:
        detail = f": {reason}" if reason else ""
        return _fail(record, f"{thing} reported {status} for the {stage} deployment{detail}", deps)
    if status in SUCCEEDED_EXECUTION and stage == FLEET:
        counted = _count_success(deployment_id, deps, add=newly_succeeded and thing in record.fleet_things)
        if counted < len(record.fleet_things):  # some device has not succeeded yet: no need to look at each
            return Outcome("recorded", f"{thing}: {status} ({counted}/{len(record.fleet_things)})")
        return _maybe_done(record, deps) or Outcome("recorded", f"{thing}: {status}")
    return Outcome("recorded", f"{thing}: {deployment_id} {status}")


def _count_success(deployment_id: str, deps: RolloutDeps, add: bool) -> int:
    """The deployment's FleetProgress count, after adding one device when `add` (optimistic, on the count)."""
    pk, key = _pk(deps), SUCCEEDED + deployment_id
    for _ in range(20):
        progress = load(FleetProgress, deps.state.get(pk, key))
        count = progress.succeeded if progress is not None else 0
        if not add:
            return count
        if deps.state.update_if(pk, key, FleetProgress(deployment_id, count + 1).to_item(),
                                FleetProgress.changes(succeeded=count if progress is not None else None)):
            return count + 1
    raise Conflict(f"deployment {deployment_id}: its success count kept changing while being counted")


def _maybe_done(record: RolloutRecord, deps: RolloutDeps) -> Outcome | None:
    """Done when every device of the fleet deployment has a successful execution recorded (one read per device:
    status events call it only once FleetProgress counts them all; the watchdog at every check)."""
    version, deployment = record.version, record.deployment_id(FLEET)
    if any(_execution(t, deployment, deps) not in SUCCEEDED_EXECUTION for t in record.fleet_things):
        return None
    if advance_stage(version, FLEET, FLEET_COMPLETED, lifecycle.DONE, RolloutRecord.changes(done_at=_now(deps)),
                     deps):
        logger.info("rollout done", model_version=version)
    return Outcome("done", f"v{version} is on {deps.fleet_group}", {"version": version})


# ------------------------------------------------------------------ 3. health rows: soak and promotion


def on_health(row: HealthRow, deps: RolloutDeps) -> Outcome:
    unexpected = _unexpected_version(row, deps)
    _record_device(row, deps, unexpected)
    _update_streak(row, deps, serving_known_version=unexpected is None)
    if unexpected is not None:
        return Outcome("flagged", unexpected)
    canary = _canary(deps)
    record = _rollout(canary.version, deps) if canary is not None else None
    _announce(record, deps)  # a redelivered row after a notice failed to go out
    if record is None or record.stage != CANARY or row.thing_name not in record.canary_things:
        return Outcome("recorded", f"health of {row.thing_name}")
    outcome = _try_promote(record, deps)
    if outcome is None:
        return Outcome("recorded", f"health of {row.thing_name}; canary soaking")
    _announce(_rollout(record.version, deps), deps)
    return outcome


def _conditional_write(pk: str, key: str, record: DeviceRecord | HealthStreak, deps: RolloutDeps) -> bool:
    """Newer rows only (duplicates and late rows are dropped): a condition on the stored received_at_ms."""
    item = deps.state.get(pk, key)
    if item is None:
        if deps.state.put(pk, key, record.to_item(), if_absent=True):
            return True
        item = deps.state.get(pk, key) or {}
    stored = type(record).from_item(item).received_at_ms
    if (stored or 0) >= (record.received_at_ms or 0):
        return False
    return deps.state.update_if(pk, key, record.to_item(), type(record).changes(received_at_ms=stored))


def _unexpected_version(row: HealthRow, deps: RolloutDeps) -> str | None:
    """Why the model version the device says it serves was never deployed to it (None when it was): a
    rollout of that version reached this device (as a canary, with the fleet, or through a deployment it
    reported on). Such a device never counts towards a soak."""
    version = row.model_version
    if version is None:
        return None
    record = _rollout(version, deps)
    if record is not None and (row.thing_name in record.canary_things
                               or record.fleet_deployment_id or record.fleet_started_at):
        return None
    for execution in records(ExecutionRecord, deps.state.query(device_pk(row.thing_name), DEPLOYMENT)):
        owner = _owner(execution.deployment_id, deps)  # e.g. it joined its group later
        if owner is not None and owner.version == version:
            return None
    reason = f"{row.thing_name} reports model v{version}, which was never deployed to it"
    logger.warning("health names a version never deployed", thing_name=row.thing_name, model_version=version)
    return reason


def _record_device(row: HealthRow, deps: RolloutDeps, unexpected: str | None) -> None:
    record = DeviceRecord(row.thing_name, last_health_at=row.received_at_s, received_at_ms=row.received_at,
                          model_version=row.model_version, inference_rate_hz=row.inference_rate_hz,
                          health=asdict(row), unexpected_version=unexpected)
    _conditional_write(DEVICES_PK, row.thing_name, record, deps)


def _update_streak(row: HealthRow, deps: RolloutDeps, serving_known_version: bool) -> None:
    """How long the device has continuously served one deployed model version at a non-zero inference rate."""
    current = load(HealthStreak, deps.state.get(device_pk(row.thing_name), HEALTH))
    ready = (row.model_version is not None and serving_known_version and row.inference_rate_hz > 0
             and not row.model_error)
    t = row.received_at_s
    if ready and current is not None and current.streak_version == row.model_version \
            and current.ready_since is not None:
        ready_since, last_ready_at = current.ready_since, t
    elif ready:
        ready_since, last_ready_at = t, t
    else:
        ready_since, last_ready_at = None, None
    streak = HealthStreak(row.thing_name, received_at_ms=row.received_at, model_version=row.model_version,
                          inference_rate_hz=row.inference_rate_hz, streak_version=row.model_version if ready else None,
                          ready_since=ready_since, last_ready_at=last_ready_at)
    _conditional_write(device_pk(row.thing_name), HEALTH, streak, deps)


def readiness(record: RolloutRecord, deps: RolloutDeps) -> dict[str, float]:
    """Canary device -> seconds it has soaked on this rollout's version (0 when not serving it)."""
    wanted = {component_version(record.version), str(record.version)}
    out = {}
    for thing in record.canary_things:
        streak = load(HealthStreak, deps.state.get(device_pk(thing), HEALTH))
        soaked = streak is not None and str(streak.streak_version) in wanted and streak.ready_since is not None
        out[thing] = streak.soaked_s if streak is not None and soaked else 0.0
    return out


def _try_promote(record: RolloutRecord, deps: RolloutDeps) -> Outcome | None:
    """Every canary device soaked: claim the promotion (stage canary -> fleet), then deploy to the fleet."""
    soaked = readiness(record, deps)
    if not soaked or min(soaked.values()) < deps.soak_s:
        return None
    if record.canary_only:
        return _hold(record, soaked, deps)
    refused = _no_longer_approved(record, deps)
    if refused is not None:
        return refused
    version = record.version
    record = replace(record, stage=FLEET, fleet_deployment_id="", fleet_started_at=_now(deps), readiness=soaked)
    changes = RolloutRecord.changes(stage=record.stage, fleet_deployment_id=record.fleet_deployment_id,
                                    fleet_started_at=record.fleet_started_at, readiness=soaked)
    if not advance_stage(version, CANARY, SOAKED, FLEET, changes, deps):
        return Outcome("duplicate", f"v{version} had already left the canary")
    deployment = start_fleet(record, deps)
    logger.info("canary passed; fleet deployment created", model_version=version, deployment_id=deployment)
    schedule_check(version, deps)
    return _maybe_done(_rollout(version, deps) or record, deps) or Outcome(
        "promoted", f"v{version} to {deps.fleet_group} ({deployment})",
        {"version": version, "deployment_id": deployment, "stage": FLEET})


def _no_longer_approved(record: RolloutRecord, deps: RolloutDeps) -> Outcome | None:
    """A version rejected (or marked failed) while its canary soaked is never promoted: it stays on the canary,
    announced once, until a person rolls the canary back or approves it again."""
    version = record.version
    try:
        model = deps.registry.get(deps.group, version)
    except ModelVersionNotFound:
        model = None
    if model is not None and model.status == "Approved" and not model.failed:
        return None
    now = model.status if model is not None else "gone from the registry"
    failed = model is not None and model.failed
    if record.promotion_refused_at is None and _first_on_canary(version, "promotion_refused_at", deps,
                                                                refused_status=now, refused_failed=failed):
        logger.warning("canary soaked but the version is no longer approved: not promoted", model_version=version)
    return Outcome("held", f"v{version} is {now}: not promoted", {"version": version, "stage": CANARY})


def _first_on_canary(version: int, flag: str, deps: RolloutDeps, **changes: Any) -> bool:
    """Set the rollout's time `flag` (and `changes`) while it is on the canary and the flag unset: True the
    first time only (the flag makes its notice due: _announce)."""
    return deps.state.update_if(_pk(deps), ROLLOUT + str(version),
                                RolloutRecord.changes(**{flag: _now(deps)}, **changes),
                                RolloutRecord.changes(stage=CANARY, **{flag: None}))


def _hold(record: RolloutRecord, soaked: Mapping[str, float], deps: RolloutDeps) -> Outcome:
    """A canary-only rollout whose canary soaked stays there: recorded (its notice then due); the watchdog promotes it
    when a person has approved the version for the fleet (rollout_ops.on_rollout_check)."""
    version = record.version
    if record.canary_passed_at is None and _first_on_canary(version, "canary_passed_at", deps, readiness=soaked):
        logger.info("canary passed; held for a person's approval", model_version=version)
    return Outcome("held", f"v{version} passed the canary; the fleet waits for a person's approval",
                   {"version": version, "stage": CANARY})


def start_fleet(record: RolloutRecord, deps: RolloutDeps) -> str:
    """The fleet deployment of a promoted rollout (idempotent: a crash after the claim is resumed by the watchdog)."""
    version, pk, g = record.version, _pk(deps), deps.group
    things = deps.greengrass.things_in_group(deps.fleet_group)
    deployment = _deploy(deps.fleet_group, f"nacelle-{g}-v{version}-fleet", record.components,
                         f"{g}:{version}:fleet", deps)
    _own(deployment, version, FLEET, deps)
    _set_fleet(version, record.components, deployment, "promotion", deps)
    deps.state.update_if(pk, ROLLOUT + str(version),
                         RolloutRecord.changes(fleet_deployment_id=deployment, fleet_things=things),
                         RolloutRecord.changes(stage=FLEET, fleet_deployment_id=""))
    return deployment


def _set_fleet(version: int, components: Mapping[str, Any], deployment: str, kind: str, deps: RolloutDeps,
               notice: bool = False) -> None:
    """`notice`: the assignment owes a notice (a rollback's, sent by rollout_ops)."""
    current = _fleet(deps)
    if current is not None and current.deployment_id == deployment:
        return
    deps.state.put(_pk(deps), FLEET, FleetAssignment(
        version, dict(components), deployment, kind, previous=current.version if current is not None else None,
        since=_now(deps), generation=(current.generation if current is not None else 0) + 1,
        notified=False if notice else None).to_item())


# ------------------------------------------------------------------ 4. failure


def _fail(record: RolloutRecord, reason: str, deps: RolloutDeps) -> Outcome:
    """Claim the failure (stage -> failing), mark the version failed, put the thing groups still on it back on an
    earlier version, then stage -> failed (its notice then due). A crash in between is resumed by the watchdog."""
    version, g = record.version, deps.group
    stage = record.stage
    if stage == FAILING:
        stage, reason = str(record.failed_stage), str(record.failure_reason)
    elif not advance_stage(version, stage, FAIL, FAILING,
                           RolloutRecord.changes(failed_stage=stage, failure_reason=reason), deps):
        return Outcome("duplicate", f"v{version} had already left the {stage} stage")
    deps.registry.update_metadata(g, version, {"nacelle:failed": "true",
                                               "nacelle:failed_reason": metadata_value(reason)})
    after = _restore(record, stage, deps)
    if not advance_stage(version, FAILING, RESTORED, FAILED_STAGE,
                         RolloutRecord.changes(failed_at=_now(deps), restore_note=after), deps):
        return Outcome("duplicate", f"v{version} was already failed")
    logger.error("rollout failed", model_version=version, stage=stage, reason=reason)
    return Outcome("failed", reason, {"version": version, "stage": stage})


def _restore(record: RolloutRecord, stage: str, deps: RolloutDeps) -> str:
    """Put the thing groups that still run the failing version on the newest earlier version that may run; the
    sentence the failure's notice says about it."""
    version = record.version
    groups = _groups_to_restore(version, stage, deps)
    if not groups:
        return "A newer rollout or a rollback has since taken over the thing groups: nothing was restored."
    good = _restorable(version, deps)
    if good is None:
        outcome = _cancel_quietly(record.deployment_id(stage), deps)
        return (f"No earlier version is approved, compiled and not failed, so nothing was restored; the {stage} "
                f"deployment was {outcome}.")
    ids = _put_back(good, version, groups, deps)
    if not ids:
        return "A newer canary took the canary group over meanwhile: it keeps it, nothing was restored."
    which = "Both thing groups are" if len(ids) == 2 else f"The {next(iter(ids))} group is"
    return f"{which} going back to v{good} (deployments {ids})."


def _restore_tag(version: int) -> str:
    return f"restore-after-{version}"


def _groups_to_restore(version: int, stage: str, deps: RolloutDeps) -> list[str]:
    """The fleet group after a fleet failure, while its assignment names the version (or this failure's restore, when
    resumed); the canary group while it runs the version (_on_failing). A group a newer canary or a rollback has
    taken over keeps what it was given."""
    groups = []
    fleet = _fleet(deps)
    if stage == FLEET and fleet is not None and (fleet.version == version or fleet.kind == _restore_tag(version)):
        groups.append(FLEET)
    canary = _canary(deps)
    if canary is None:  # the first start was interrupted before naming itself
        groups += [CANARY] if stage == CANARY else []
    elif _on_failing(canary, version, deps):
        groups.append(CANARY)
    return groups


def _on_failing(canary: CanaryAssignment, version: int, deps: RolloutDeps) -> bool:
    """The canary assignment still stands for the failing version: it names it, or an older version's canary (the
    failing start was interrupted before naming itself), or this failure's restore (a resumed failure)."""
    if canary.version == version:
        return True
    owner = _owner(canary.deployment_id, deps)
    stage = owner.stage if owner is not None else ""
    return stage == _restore_tag(version) or (canary.version < version and stage == CANARY)


def _restorable(version: int, deps: RolloutDeps) -> int | None:
    """The newest earlier version that may run again: approved, not marked failed, compiled (as rollback_to asks)."""
    for model in sorted(deps.registry.list(deps.group), key=lambda m: m.version, reverse=True):
        if (model.version < version and model.status == "Approved" and not model.failed
                and deps.store.exists(manifest_key(deps.group, model.version))):
            return model.version
    return None


def _put_back(good: int, version: int, groups: list[str], deps: RolloutDeps) -> dict[str, str]:
    """Deploy `good` to each group; the tokens name the failure and the group, so a resumed failure makes the same
    deployments. The groups' deployments that stand (not the canary's when a newer canary took it meanwhile)."""
    g, tag = deps.group, _restore_tag(version)
    ensure_model_component(deps.store, deps.greengrass, g, good)  # it may never have been deployed
    ensure_detector_component(deps.store, deps.greengrass, deps.detector_version)
    components = deployment_components(good, deps.detector_version, deps.detector_configuration)
    ids = {}
    for which in groups:
        group_name = deps.canary_group if which == CANARY else deps.fleet_group
        ids[which] = _deploy(group_name, f"nacelle-{g}-v{good}-{tag}-{which}", components,
                             f"{g}:{good}:{tag}:{which}", deps)
        _own(ids[which], good, tag, deps)
    if FLEET in ids:
        _set_fleet(good, components, ids[FLEET], tag, deps)
    if CANARY in ids and not _canary_back(good, ids[CANARY], version, deps):
        del ids[CANARY]
    return ids


def _canary_back(good: int, deployment: str, version: int, deps: RolloutDeps) -> bool:
    """Name the restore in the canary assignment, conditionally on the one read (True when it does): a newer canary
    that took the group meanwhile keeps it, and since the restore went out over it, that canary is deployed again."""
    current = _canary(deps)
    if current is None or current.deployment_id == deployment:
        return True
    if _on_failing(current, version, deps) and deps.state.update_if(
            _pk(deps), CANARY, CanaryAssignment(good, deployment).to_item(),
            CanaryAssignment.changes(version=current.version, deployment_id=current.deployment_id)):
        return True
    taken = _canary(deps)
    if taken is not None:
        _keep_on_canary(taken.version, deps)
    return False


def deploy_both(version: int, tag: str, deps: RolloutDeps) -> dict[str, str]:
    """An operator's rollback: the same components to both thing groups at once; tokens carry the tag. The fleet
    assignment then owes its notice (rollout_ops)."""
    g = deps.group
    components = deployment_components(version, deps.detector_version, deps.detector_configuration)
    ids = {}
    for stage, group_name in ((CANARY, deps.canary_group), (FLEET, deps.fleet_group)):
        ids[stage] = _deploy(group_name, f"nacelle-{g}-v{version}-{tag}-{stage}", components,
                             f"{g}:{version}:{tag}:{stage}", deps)
        _own(ids[stage], version, tag, deps)
    _set_fleet(version, components, ids[FLEET], tag, deps, notice=True)
    deps.state.put(_pk(deps), CANARY, CanaryAssignment(version, ids[CANARY]).to_item())
    return ids


def _cancel_quietly(deployment_id: str, deps: RolloutDeps) -> str:
    if not deployment_id:
        return "not created yet"
    try:
        deps.greengrass.cancel_deployment(deployment_id)
    except (Conflict, NotFound):
        return "already finished"
    return "canceled"


def _evaluate_put_back(owner: DeploymentRecord, thing: str, status: str, reason: str, deps: RolloutDeps) -> Outcome:
    """A restore's or a rollback's deployment has no stage to advance, but a device that fails it may stay on a version
    nobody chose: the first failure is kept on the deployment's record (its notice then due)."""
    if status not in FAILED_EXECUTION:
        return Outcome("recorded", f"{thing}: {owner.deployment_id} {status} ({owner.stage}, v{owner.version})")
    failure = f"{thing} reported {status}{f': {reason}' if reason else ''}"
    if not deps.state.update_if(_pk(deps), DEPLOYMENT + owner.deployment_id, DeploymentRecord.changes(failure=failure),
                                DeploymentRecord.changes(failure=None)):
        return Outcome("recorded", f"{thing}: {owner.deployment_id} {status} (a failure was recorded before)")
    logger.error("restore or rollback deployment failed", deployment_id=owner.deployment_id, stage=owner.stage,
                 failure=failure)
    return Outcome("alerted", f"the {owner.stage} deployment {owner.deployment_id} of v{owner.version}: {failure}",
                   {"version": owner.version, "deployment_id": owner.deployment_id})


def _announce_put_back(owner: DeploymentRecord | None, deps: RolloutDeps) -> None:
    """The notice of a failed restore or rollback deployment, at least once: noted after the publish."""
    if owner is None or not owner.failure or owner.notified:
        return
    what = "rollback" if owner.stage.startswith("rollback-") else "restore"
    deps.notifier.publish(
        "approvals", f"{deps.group}: the {what} to v{owner.version} failed on a device",
        f"{owner.failure} for deployment {owner.deployment_id} ({owner.stage}), which puts v{owner.version} back on "
        f"its thing group. That device may still run the version it had before (Greengrass rolls a failed deployment "
        f"back). Check it, then roll back again with nacelle fleet rollback --to <version>.",
        {"model_version": str(owner.version), "status": f"{what}-failed", "deployment_id": owner.deployment_id})
    deps.state.update_if(_pk(deps), DEPLOYMENT + owner.deployment_id, DeploymentRecord.changes(notified=True),
                         DeploymentRecord.changes(notified=None))


# ------------------------------------------------------------------ 5. notices

Notice = tuple[str, str, dict[str, str]]  # subject, message, attributes


def _due(record: RolloutRecord) -> list[str]:
    """The notices the record calls for, in the order they happen; one that no longer applies (the hold of a canary
    that has moved on since, say) is not due."""
    stage = record.stage
    due = {"waiting": stage == WAITING,
           "held": stage == CANARY and record.canary_passed_at is not None,
           "not-promoted": stage == CANARY and record.promotion_refused_at is not None,
           "fleet": bool(record.fleet_deployment_id) and stage not in (SUPERSEDED, lifecycle.CANCELED),
           "stuck-canary": stage == CANARY and bool(record.stuck_reported_canary),
           "stuck-fleet": stage == FLEET and bool(record.stuck_reported_fleet),
           "done": stage == lifecycle.DONE,
           "failed": stage == FAILED_STAGE}
    return [kind for kind, is_due in due.items() if is_due]


def _announce(record: RolloutRecord | None, deps: RolloutDeps) -> None:
    """Send each notice the record calls for that `notified` does not name, then name it there: a publish that fails
    leaves it due for the next delivery or watchdog check (at least once; a concurrent delivery may repeat one)."""
    if record is None or record.notified is None:  # stored before notices were noted: it sent all it would
        return
    for kind in _due(record):
        if kind not in (record.notified or ()):
            subject, message, attributes = NOTICES[kind](record, deps)
            deps.notifier.publish("approvals", subject, message, attributes)
            logger.info("rollout notice sent", model_version=record.version, notice=kind)
            record = _noted(record, kind, deps)


def _noted(record: RolloutRecord, kind: str, deps: RolloutDeps) -> RolloutRecord:
    """Add `kind` to the record's `notified`, conditionally on the list read (read again when it changed)."""
    for _ in range(5):
        sent = record.notified or ()
        if kind in sent:
            return record
        if deps.state.update_if(_pk(deps), ROLLOUT + str(record.version), RolloutRecord.changes(notified=(*sent, kind)),
                                RolloutRecord.changes(notified=sent)):
            return replace(record, notified=(*sent, kind))
        record = _rollout(record.version, deps) or record
    raise Conflict(f"v{record.version}: its notices kept changing while {kind} was noted")


def _waiting_notice(r: RolloutRecord, deps: RolloutDeps) -> Notice:
    return (f"{deps.group} v{r.version} waits for devices",
            f"v{r.version} is approved and compiled, but thing group {deps.canary_group} has no device. The rollout "
            f"starts by itself when a device joins it.", {"model_version": str(r.version), "status": WAITING})


def _held_notice(r: RolloutRecord, deps: RolloutDeps) -> Notice:
    v = r.version
    return (f"{deps.group} v{v} passed the canary: approve it to roll it out to the fleet",
            f"Every canary device served v{v} for at least {deps.soak_s:.0f} s ({dict(r.readiness)}). v{v} was "
            f"approved automatically for the canary group only, so it stays there: promote it to {deps.fleet_group} "
            f"with nacelle models approve {v} --reason \"...\" (or Approve in the console); roll the canary back with "
            f"nacelle fleet rollback.", {"model_version": str(v), "status": "held"})


def _not_promoted_notice(r: RolloutRecord, deps: RolloutDeps) -> Notice:
    v, now = r.version, r.refused_status or "no longer approved"
    return (f"{deps.group} v{v} soaked on the canary but is {now}: not promoted",
            f"v{v} is {now}{' and marked failed' if r.refused_failed else ''}, so it is not deployed to "
            f"{deps.fleet_group}. The canary group still runs it: roll it back with nacelle fleet rollback --to "
            f"<version>, or approve v{v} again to promote it.", {"model_version": str(v), "status": "not-promoted"})


def _fleet_notice(r: RolloutRecord, deps: RolloutDeps) -> Notice:
    v = r.version
    return (f"{deps.group} v{v} passed the canary: deploying to the fleet",
            f"Every canary device served v{v} for at least {deps.soak_s:.0f} s ({dict(r.readiness)}). Fleet "
            f"deployment: {r.fleet_deployment_id}.", {"model_version": str(v), "status": "fleet"})


def _stuck_notice(stage: str, r: RolloutRecord, deps: RolloutDeps) -> Notice:
    v, deployment = r.version, r.deployment_id(stage)
    note = {CANARY: r.stuck_note_canary, FLEET: r.stuck_note_fleet}[stage] or "is still in progress"
    return (f"{deps.group} v{v}: {stage} deployment stuck in progress",
            f"Deployment {deployment} {note}. Check the devices' connectivity and Greengrass logs; cancel it if "
            f"needed.", {"model_version": str(v), "status": "stuck", "stage": stage, "deployment_id": deployment})


def _done_notice(r: RolloutRecord, deps: RolloutDeps) -> Notice:
    return (f"{deps.group} v{r.version} is on the whole fleet",
            f"Every device of {deps.fleet_group} completed deployment {r.fleet_deployment_id}.",
            {"model_version": str(r.version), "status": "done"})


def _failed_notice(r: RolloutRecord, deps: RolloutDeps) -> Notice:
    v, stage = r.version, str(r.failed_stage)
    return (f"Rollout of {deps.group} v{v} failed in the {stage}",
            f"{r.failure_reason}\n\nv{v} is marked failed in the registry (nacelle:failed=true) and will never be the "
            f"champion. {r.restore_note or ''}".rstrip(), {"model_version": str(v), "status": "failed", "stage": stage})


NOTICES: dict[str, Callable[[RolloutRecord, RolloutDeps], Notice]] = {
    "waiting": _waiting_notice, "held": _held_notice, "not-promoted": _not_promoted_notice, "fleet": _fleet_notice,
    "stuck-canary": partial(_stuck_notice, CANARY), "stuck-fleet": partial(_stuck_notice, FLEET),
    "done": _done_notice, "failed": _failed_notice}
