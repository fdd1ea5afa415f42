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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
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


def advance_stage(version: int, source: str, event: str, target: str, changes: Mapping[str, Any],
                  deps: RolloutDeps) -> bool:
    """The one way a rollout's stage changes (lifecycle.advance on lifecycle.ROLLOUT); True when this call moved it."""
    return lifecycle.advance(deps.state, lifecycle.ROLLOUT, _pk(deps), ROLLOUT + str(version), source, event, target,
                             changes)


# ------------------------------------------------------------------ 1. a compiled bundle -> canary


def on_manifest_created(key: str, deps: RolloutDeps) -> Outcome:
    parsed = parse_manifest_key(key)
    if parsed is None or parsed[0] != deps.group:
        return Outcome("ignored", f"{key} is not a compiled manifest of group {deps.group}")
    version = parsed[1]
    correlate(model_version=version)
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


def _newer_rollout(version: int, deps: RolloutDeps) -> RolloutRecord | None:
    """The newest rollout of a later version that is on its way or done (a failed, canceled or rolled-back one
    does not count: the older version may then still go out)."""
    newer = [r for r in records(RolloutRecord, deps.state.query(_pk(deps), ROLLOUT))
             if r.version > version and r.stage in (WAITING, CANARY, FLEET, lifecycle.DONE)]
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
    pk, g = _pk(deps), deps.group
    components = deployment_components(version, deps.detector_version, deps.detector_configuration)
    try:
        things = deps.greengrass.things_in_group(deps.canary_group)
    except NotFound:  # the group is created with the first device
        things = []
    if not things:
        return _wait_for_devices(version, deps)
    deployment = _deploy(deps.canary_group, f"nacelle-{g}-v{version}-canary", components, f"{g}:{version}:canary",
                         deps)
    deps.state.put(pk, DEPLOYMENT + deployment, DeploymentRecord(deployment, version, CANARY).to_item())
    scope = canary_only(deps.registry.get(g, version))  # the promotion then waits for a person's approval
    record = RolloutRecord.changes(version=version, components=components, canary_deployment_id=deployment,
                                   canary_started_at=_now(deps), canary_things=things, canary_only=scope or None)
    if not (advance_stage(version, ABSENT, DEPLOY, CANARY, record, deps)
            or advance_stage(version, WAITING, DEPLOY, CANARY, record, deps)):
        return Outcome("duplicate", f"v{version} was started concurrently")
    previous = load(CanaryAssignment, deps.state.get(pk, CANARY))
    if previous is not None and previous.version != version:  # the new canary deployment superseded it
        advance_stage(previous.version, CANARY, NEWER_VERSION, SUPERSEDED, RolloutRecord.changes(superseded_by=version),
                      deps)
    deps.state.put(pk, CANARY, CanaryAssignment(version, deployment).to_item())
    schedule_check(version, deps)
    logger.info("canary deployment created", model_version=version, deployment_id=deployment, things=things)
    return Outcome("deployed", f"v{version} to {deps.canary_group} ({deployment})",
                   {"version": version, "deployment_id": deployment, "stage": CANARY})


def _wait_for_devices(version: int, deps: RolloutDeps) -> Outcome:
    """No device to deploy to: record that the version waits (operators hear it once) and look again
    at every watchdog check; a newer version that also waits supersedes it."""
    pk = _pk(deps)
    if advance_stage(version, ABSENT, NO_DEVICES, WAITING,
                     RolloutRecord.changes(version=version, waiting_since=_now(deps)), deps):
        deps.notifier.publish(
            "approvals", f"{deps.group} v{version} waits for devices",
            f"v{version} is approved and compiled, but thing group {deps.canary_group} has no device. The "
            f"rollout starts by itself when a device joins it.", {"model_version": str(version), "status": WAITING})
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
    """`newly_succeeded`: this delivery turned the device's recorded status into a success (_record_execution)."""
    record = _rollout(version, deps)
    if record is None or record.stage != stage or record.deployment_id(stage) != deployment_id:
        return Outcome("recorded", f"{thing}: {deployment_id} {status} (v{version} is "
                                   f"{record.stage if record is not None else None})")
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
        deps.notifier.publish("approvals", f"{deps.group} v{version} is on the whole fleet",
                              f"Every device of {deps.fleet_group} completed deployment {deployment}.",
                              {"model_version": str(version), "status": "done"})
    return Outcome("done", f"v{version} is on {deps.fleet_group}", {"version": version})


# ------------------------------------------------------------------ 3. health rows: soak and promotion


def on_health(row: HealthRow, deps: RolloutDeps) -> Outcome:
    unexpected = _unexpected_version(row, deps)
    _record_device(row, deps, unexpected)
    _update_streak(row, deps, serving_known_version=unexpected is None)
    if unexpected is not None:
        return Outcome("flagged", unexpected)
    canary = load(CanaryAssignment, deps.state.get(_pk(deps), CANARY))
    record = _rollout(canary.version, deps) if canary is not None else None
    if record is None or record.stage != CANARY or row.thing_name not in record.canary_things:
        return Outcome("recorded", f"health of {row.thing_name}")
    return _try_promote(record, deps) or Outcome("recorded", f"health of {row.thing_name}; canary soaking")


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
    deps.notifier.publish("approvals", f"{deps.group} v{version} passed the canary: deploying to the fleet",
                          f"Every canary device served v{version} for at least {deps.soak_s:.0f} s "
                          f"({soaked}). Fleet deployment: {deployment}.",
                          {"model_version": str(version), "status": "fleet"})
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
    if record.promotion_refused_at is None and _first_on_canary(version, "promotion_refused_at", deps):
        logger.warning("canary soaked but the version is no longer approved: not promoted", model_version=version)
        deps.notifier.publish(
            "approvals", f"{deps.group} v{version} soaked on the canary but is {now}: not promoted",
            f"v{version} is {now}{' and marked failed' if model is not None and model.failed else ''}, so it is not "
            f"deployed to {deps.fleet_group}. The canary group still runs it: roll it back with nacelle fleet "
            f"rollback --to <version>, or approve v{version} again to promote it.",
            {"model_version": str(version), "status": "not-promoted"})
    return Outcome("held", f"v{version} is {now}: not promoted", {"version": version, "stage": CANARY})


def _first_on_canary(version: int, flag: str, deps: RolloutDeps, **changes: Any) -> bool:
    """Set the rollout's time `flag` (and `changes`) while it is on the canary and the flag unset: True the
    first time only, so what follows is announced once whatever the deliveries."""
    return deps.state.update_if(_pk(deps), ROLLOUT + str(version),
                                RolloutRecord.changes(**{flag: _now(deps)}, **changes),
                                RolloutRecord.changes(stage=CANARY, **{flag: None}))


def _hold(record: RolloutRecord, soaked: Mapping[str, float], deps: RolloutDeps) -> Outcome:
    """A canary-only rollout whose canary soaked stays there: recorded and announced once; the watchdog promotes it
    when a person has approved the version for the fleet (rollout_ops.on_rollout_check)."""
    version = record.version
    if record.canary_passed_at is None and _first_on_canary(version, "canary_passed_at", deps, readiness=soaked):
        logger.info("canary passed; held for a person's approval", model_version=version)
        deps.notifier.publish(
            "approvals", f"{deps.group} v{version} passed the canary: approve it to roll it out to the fleet",
            f"Every canary device served v{version} for at least {deps.soak_s:.0f} s ({dict(soaked)}). v{version} was "
            f"approved automatically for the canary group only, so it stays there: promote it to {deps.fleet_group} "
            f"with nacelle models approve {version} --reason \"...\" (or Approve in the console); roll the canary "
            f"back with nacelle fleet rollback.", {"model_version": str(version), "status": "held"})
    return Outcome("held", f"v{version} passed the canary; the fleet waits for a person's approval",
                   {"version": version, "stage": CANARY})


def start_fleet(record: RolloutRecord, deps: RolloutDeps) -> str:
    """The fleet deployment of a promoted rollout (idempotent: a crash after the claim is resumed by the watchdog)."""
    version, pk, g = record.version, _pk(deps), deps.group
    things = deps.greengrass.things_in_group(deps.fleet_group)
    deployment = _deploy(deps.fleet_group, f"nacelle-{g}-v{version}-fleet", record.components,
                         f"{g}:{version}:fleet", deps)
    deps.state.put(pk, DEPLOYMENT + deployment, DeploymentRecord(deployment, version, FLEET).to_item())
    _set_fleet(version, record.components, deployment, "promotion", deps)
    deps.state.update_if(pk, ROLLOUT + str(version),
                         RolloutRecord.changes(fleet_deployment_id=deployment, fleet_things=things),
                         RolloutRecord.changes(stage=FLEET, fleet_deployment_id=""))
    return deployment


def _set_fleet(version: int, components: Mapping[str, Any], deployment: str, kind: str, deps: RolloutDeps) -> None:
    current = _fleet(deps)
    if current is not None and current.deployment_id == deployment:
        return
    deps.state.put(_pk(deps), FLEET, FleetAssignment(
        version, dict(components), deployment, kind, previous=current.version if current is not None else None,
        since=_now(deps), generation=(current.generation if current is not None else 0) + 1).to_item())


# ------------------------------------------------------------------ 4. failure


def _fail(record: RolloutRecord, reason: str, deps: RolloutDeps) -> Outcome:
    """Claim the failure (stage -> failing), mark the version failed, put the affected groups back on the previous
    good version, then stage -> failed and alert once. A crash in between is resumed by the watchdog."""
    version, pk, g = record.version, _pk(deps), deps.group
    stage = record.stage
    if stage == FAILING:
        stage, reason = str(record.failed_stage), str(record.failure_reason)
    elif not advance_stage(version, stage, FAIL, FAILING,
                           RolloutRecord.changes(failed_stage=stage, failure_reason=reason), deps):
        return Outcome("duplicate", f"v{version} had already left the {stage} stage")
    deps.registry.update_metadata(g, version, {"nacelle:failed": "true",
                                               "nacelle:failed_reason": metadata_value(reason)})
    fleet = _fleet(deps)
    if stage == CANARY and fleet is not None and fleet.version != version:
        good = fleet.version
        restore = _deploy(deps.canary_group, f"nacelle-{g}-v{good}-canary-restore", fleet.components,
                          f"{g}:{good}:restore-after:{version}", deps)
        deps.state.put(pk, DEPLOYMENT + restore, DeploymentRecord(restore, good, "restore").to_item())
        deps.state.put(pk, CANARY, CanaryAssignment(good, restore).to_item())
        after = f"The canary group is going back to v{good} (deployment {restore})."
    elif stage == FLEET and fleet is not None and fleet.version == version and fleet.previous is not None:
        good = fleet.previous
        ids = deploy_both(good, f"restore-after-{version}", deps)
        after = f"Both thing groups are going back to v{good} (deployments {ids})."
    else:
        with_cancel = _cancel_quietly(record.deployment_id(stage), deps)
        after = f"No earlier version was deployed to restore; the deployment was {with_cancel}."
    if not advance_stage(version, FAILING, RESTORED, FAILED_STAGE, RolloutRecord.changes(failed_at=_now(deps)), deps):
        return Outcome("duplicate", f"v{version} was already failed")
    logger.error("rollout failed", model_version=version, stage=stage, reason=reason)
    deps.notifier.publish(
        "approvals", f"Rollout of {g} v{version} failed in the {stage}",
        f"{reason}\n\nv{version} is marked failed in the registry (nacelle:failed=true) and will never be the "
        f"champion. {after}", {"model_version": str(version), "status": "failed", "stage": stage})
    return Outcome("failed", reason, {"version": version, "stage": stage})


def deploy_both(version: int, tag: str, deps: RolloutDeps) -> dict[str, str]:
    """The same components to both thing groups at once (restore and operator rollback); tokens carry the tag."""
    pk, g = _pk(deps), deps.group
    components = deployment_components(version, deps.detector_version, deps.detector_configuration)
    ids = {}
    for stage, group_name in ((CANARY, deps.canary_group), (FLEET, deps.fleet_group)):
        ids[stage] = _deploy(group_name, f"nacelle-{g}-v{version}-{tag}-{stage}", components,
                             f"{g}:{version}:{tag}:{stage}", deps)
        deps.state.put(pk, DEPLOYMENT + ids[stage], DeploymentRecord(ids[stage], version, tag).to_item())
    _set_fleet(version, components, ids[FLEET], tag, deps)
    deps.state.put(pk, CANARY, CanaryAssignment(version, ids[CANARY]).to_item())
    return ids


def _cancel_quietly(deployment_id: str, deps: RolloutDeps) -> str:
    if not deployment_id:
        return "not created yet"
    try:
        deps.greengrass.cancel_deployment(deployment_id)
    except (Conflict, NotFound):
        return "already finished"
    return "canceled"
