"""Rollout: a compiled model version goes to the canary thing group, soaks, then goes to the fleet.

The entry points (a compiled bundle, a deployment's status, a health row) and what they decide. The state a rollout
keeps and the writes shared by every part are in rollout_state (its docstring: the state layout), a failure and its
restore in rollout_failure, the operators' notices in rollout_notices, the watchdog and the operator's actions in
rollout_ops.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, replace
from datetime import datetime
from typing import Any

from shared.components import component_version
from shared.errors import Conflict, ModelVersionNotFound, NotFound
from shared.messages import HealthRow
from shared.observability import correlate, logger
from shared.records import (
    ConflictRecord,
    DeviceRecord,
    ExecutionRecord,
    FleetProgress,
    HealthStreak,
    RolloutRecord,
    load,
    records,
)
from shared.usecases import lifecycle
from shared.usecases.approval_scope import canary_only
from shared.usecases.lifecycle import (
    ABSENT,
    DEPLOY,
    FLEET_COMPLETED,
    NEWER_VERSION,
    NO_DEVICES,
    SOAKED,
    SUPERSEDED,
)
from shared.usecases.outcome import Outcome
from shared.usecases.rollout_components import (
    deployment_components,
    ensure_detector_component,
    ensure_model_component,
    parse_manifest_key,
)
from shared.usecases.rollout_failure import announce_put_back, evaluate_put_back, fail
from shared.usecases.rollout_notices import announce
from shared.usecases.rollout_state import (
    ACTIVE_STAGES,
    AHEAD,
    CANARY,
    DEPLOYMENT,
    DEVICES_PK,
    FAILED_EXECUTION,
    FLEET,
    HEALTH,
    ROLLOUT,
    SUCCEEDED,
    SUCCEEDED_EXECUTION,
    TERMINAL_EXECUTION,
    WAITING,
    RolloutDeps,
    _canary,
    _deploy,
    _now,
    _own,
    _owner,
    _pk,
    _rollout,
    advance_stage,
    assign_canary,
    deploy_canary_again,
    device_pk,
    schedule_check,
    set_fleet,
)

# ------------------------------------------------------------------ 1. a compiled bundle -> canary


def on_manifest_created(key: str, deps: RolloutDeps) -> Outcome:
    parsed = parse_manifest_key(key)
    if parsed is None or parsed[0] != deps.group:
        return Outcome("ignored", f"{key} is not a compiled manifest of group {deps.group}")
    version = parsed[1]
    correlate(model_version=version)
    outcome = _on_bundle(key, version, deps)
    announce(_rollout(version, deps), deps)
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
            deploy_canary_again(newer, deps)
        return Outcome("superseded", f"v{newer.version} is already {newer.stage}: v{version} is not rolled out",
                       {"version": version, "stage": SUPERSEDED})
    for older in records(RolloutRecord, deps.state.query(_pk(deps), ROLLOUT)):
        if older.version < version and older.stage == CANARY:
            advance_stage(older.version, CANARY, NEWER_VERSION, SUPERSEDED,
                          RolloutRecord.changes(superseded_by=version), deps)
    assign_canary(version, deployment, deps)
    schedule_check(version, deps)
    if not claimed:
        return Outcome("duplicate", f"v{version} is already on the canary ({deployment})")
    logger.info("canary deployment created", model_version=version, deployment_id=deployment,
                things=list(record.canary_things))
    return Outcome("deployed", f"v{version} to {deps.canary_group} ({deployment})",
                   {"version": version, "deployment_id": deployment, "stage": CANARY})


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
        outcome = evaluate_put_back(owner, thing, recorded, reason if recorded == status else "", deps)
        announce_put_back(_owner(deployment_id, deps), deps)
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
    announce(record if outcome.action == "recorded" else _rollout(version, deps), deps)
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
        return fail(record, f"{thing} reported {status} for the {stage} deployment{detail}", deps)
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
    announce(record, deps)  # a redelivered row after a notice failed to go out
    if record is None or record.stage != CANARY or row.thing_name not in record.canary_things:
        return Outcome("recorded", f"health of {row.thing_name}")
    outcome = _try_promote(record, deps)
    if outcome is None:
        return Outcome("recorded", f"health of {row.thing_name}; canary soaking")
    announce(_rollout(record.version, deps), deps)
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
    first time only (the flag makes its notice due: rollout_notices.announce)."""
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
    set_fleet(version, record.components, deployment, "promotion", deps)
    deps.state.update_if(pk, ROLLOUT + str(version),
                         RolloutRecord.changes(fleet_deployment_id=deployment, fleet_things=things),
                         RolloutRecord.changes(stage=FLEET, fleet_deployment_id=""))
    return deployment
