"""The rollout watchdog (RolloutCheck events) and the operator's actions (rollback, cancel).

Status-change events are best effort, so the watchdog polls each device's effective deployments, fails a
canary that shows no readiness within the canary timeout, reports a deployment stuck in progress once, and
schedules itself again while the rollout is active. Each check first sends the rollout's notices still due (a
publish that failed), and again after what it changed.
"""

from __future__ import annotations

from dataclasses import replace

from shared.errors import Conflict, ModelVersionNotFound, NotFound, ObjectNotFound
from shared.observability import correlate, logger
from shared.records import FleetAssignment, RolloutRecord, records
from shared.usecases.approval_scope import fleet_approved
from shared.usecases.lifecycle import CANCEL, CANCELED, NEWER_VERSION, ROLLBACK, SUPERSEDED
from shared.usecases.outcome import Outcome
from shared.usecases.rollout import (
    _evaluate_execution,
    _execution,
    _maybe_done,
    _newer_rollout,
    _record_execution,
    _settle_canary,
    _start_canary,
    _try_promote,
    readiness,
    start_fleet,
)
from shared.usecases.rollout_components import ensure_detector_component, ensure_model_component, manifest_key
from shared.usecases.rollout_failure import deploy_both, fail
from shared.usecases.rollout_notices import announce, due
from shared.usecases.rollout_state import (
    ACTIVE_STAGES,
    AHEAD,
    CANARY,
    FAILING,
    FLEET,
    ROLLOUT,
    TERMINAL_EXECUTION,
    WAITING,
    RolloutDeps,
    _canary,
    _fleet,
    _now,
    _owner,
    _pk,
    _rollout,
    advance_stage,
    keep_on_canary,
    schedule_check,
)


def on_rollout_check(group: str, version: int, deps: RolloutDeps) -> Outcome:
    if group != deps.group:
        return Outcome("ignored", f"group {group} is not {deps.group}")
    correlate(model_version=version)
    record = _noting(_rollout(version, deps), deps)
    announce(record, deps)
    outcome = _check(version, record, deps)
    announce(_rollout(version, deps), deps)
    return outcome


def _noting(record: RolloutRecord | None, deps: RolloutDeps) -> RolloutRecord | None:
    """A record stored before notices were noted starts noting them here, as having sent all those due now."""
    if record is None or record.notified is not None:
        return record
    deps.state.update_if(_pk(deps), ROLLOUT + str(record.version), RolloutRecord.changes(notified=due(record)),
                         RolloutRecord.changes(notified=None))
    return _rollout(record.version, deps)


def _check(version: int, record: RolloutRecord | None, deps: RolloutDeps) -> Outcome:
    if record is not None and record.stage == WAITING:  # no device yet: look again, unless overtaken
        newer = [r.version for r in records(RolloutRecord, deps.state.query(_pk(deps), ROLLOUT)) if r.version > version]
        if newer:
            advance_stage(version, WAITING, NEWER_VERSION, SUPERSEDED, RolloutRecord.changes(superseded_by=max(newer)),
                          deps)
            return Outcome("ignored", f"v{version} no longer waits: v{max(newer)} came after it")
        return _start_canary(version, deps)
    if record is not None and record.stage == FAILING:  # a failure interrupted mid-way
        return fail(record, str(record.failure_reason), deps)
    if record is not None and record.stage == FLEET and not record.fleet_deployment_id:
        start_fleet(record, deps)  # a promotion interrupted mid-way
        record = _rollout(version, deps)
    if record is None or record.stage not in ACTIVE_STAGES:
        return Outcome("ignored", f"v{version} is not rolling out ({record.stage if record else 'unknown'})")
    if record.stage == CANARY and (ahead := _newer_rollout(version, deps, AHEAD)) is not None:
        return _overtaken(version, ahead, deps)
    stage = record.stage
    deployment, things = record.deployment_id(stage), list(record.things(stage))
    for thing in things:  # poll: the status events may have been lost
        try:
            effective = deps.greengrass.list_effective_deployments(thing)
        except NotFound:
            continue
        for e in effective:
            if e.deployment_id == deployment:
                status, newly_succeeded = _record_execution(deployment, thing, e.execution_status, e.reason, [],
                                                            deps, e.modified_at)
                reason = e.reason if status == e.execution_status else ""
                outcome = _evaluate_execution(version, stage, deployment, thing, status, reason, deps,
                                              newly_succeeded)
                if outcome.action in ("failed", "done"):
                    return outcome
    record = _rollout(version, deps) or record
    if stage == CANARY:
        keep_on_canary(version, deps)  # an older start or restore racing it may have deployed over it
        record = _widened(_rollout(version, deps) or record, deps)
        promoted = _try_promote(record, deps)
        if promoted is not None and promoted.action != "held":
            return promoted
        if promoted is None and record.canary_passed_at is None \
                and _now(deps) > record.started_at(CANARY) + deps.canary_timeout_s:
            soaked = readiness(record, deps)
            return fail(record, f"the canary showed no readiness within {deps.canary_timeout_s:.0f} s "
                                f"(seconds soaked on v{version} per device: {soaked}; {deps.soak_s:.0f} s needed)",
                        deps)
    elif (done := _maybe_done(record, deps)) is not None:
        return done
    _report_stuck(record, stage, deployment, things, deps)
    schedule_check(version, deps)
    return Outcome("waiting", f"v{version} in the {stage}", {"version": version, "stage": stage})


def _overtaken(version: int, newer: RolloutRecord, deps: RolloutDeps) -> Outcome:
    """A newer version's canary started while this one was on the canary, and its start was interrupted before it
    superseded this one: finish that start (which supersedes this one) rather than judge this canary."""
    if newer.stage == CANARY:
        _settle_canary(newer, False, deps)
    advance_stage(version, CANARY, NEWER_VERSION, SUPERSEDED, RolloutRecord.changes(superseded_by=newer.version), deps)
    return Outcome("ignored", f"v{version} was overtaken by v{newer.version} ({newer.stage})")


def _widened(record: RolloutRecord, deps: RolloutDeps) -> RolloutRecord:
    """A canary-only rollout whose version a person has since approved for the fleet may be promoted (one registry
    read per watchdog check while it is canary-only)."""
    if not record.canary_only:
        return record
    try:
        model = deps.registry.get(deps.group, record.version)
    except ModelVersionNotFound:
        return record
    if not fleet_approved(model):
        return record
    deps.state.update_if(_pk(deps), ROLLOUT + str(record.version), RolloutRecord.changes(canary_only=False),
                         RolloutRecord.changes(stage=CANARY, canary_only=True))
    logger.info("canary-only approval widened to the fleet", model_version=record.version)
    return replace(record, canary_only=False)


def _report_stuck(record: RolloutRecord, stage: str, deployment: str, things: list[str],
                  deps: RolloutDeps) -> None:
    """Once per stage: the stage's deployment still in progress on some device after stuck_timeout_s."""
    version = record.version
    waited = _now(deps) - record.started_at(stage)
    pending = [t for t in things if _execution(t, deployment, deps) not in TERMINAL_EXECUTION]
    if not pending or waited <= deps.stuck_timeout_s:
        return
    flag = f"stuck_reported_{stage}"
    note = f"has been in progress for {waited:.0f} s (limit {deps.stuck_timeout_s:.0f} s) on {', '.join(pending)}"
    if deps.state.update_if(_pk(deps), ROLLOUT + str(version),
                            RolloutRecord.changes(**{flag: True, f"stuck_note_{stage}": note}),
                            RolloutRecord.changes(**{flag: None, "stage": stage})):
        logger.warning("deployment stuck", model_version=version, deployment_id=deployment, pending=pending)


def rollback_to(version: int, deps: RolloutDeps) -> Outcome:
    """Operator action: an earlier, approved, not failed, compiled version to both thing groups at once. The newer
    rollouts on their way are superseded first, so that none of them deploys after the rollback; a retry deploys
    again unless the last rollback to this version still stands."""
    _check_rollback_target(version, deps)
    _supersede_newer(version, deps)
    fleet = _fleet(deps)
    if fleet is not None and fleet.version == version and fleet.kind.startswith("rollback-") \
            and _stands(fleet, deps):
        _announce_rollback(deps)
        return Outcome("duplicate", f"both groups were already rolled back to v{version}",
                       {"version": version, "deployment_id": fleet.deployment_id})
    ensure_model_component(deps.store, deps.greengrass, deps.group, version)
    ensure_detector_component(deps.store, deps.greengrass, deps.detector_version)
    ids = deploy_both(version, f"rollback-{(fleet.generation if fleet is not None else 0) + 1}", deps)
    logger.warning("rolled back", model_version=version, deployments=ids)
    _announce_rollback(deps)
    return Outcome("rolled-back", f"v{version} to both groups", {"version": version, "deployments": ids})


def _check_rollback_target(version: int, deps: RolloutDeps) -> None:
    try:
        model = deps.registry.get(deps.group, version)
    except ModelVersionNotFound as exc:
        raise NotFound(f"{deps.group} v{version} is not in the registry") from exc
    if model.failed or model.status != "Approved":
        raise Conflict(f"{deps.group} v{version} is {model.status}{', marked failed' if model.failed else ''}: "
                       "only an approved, not failed version can be rolled back to")
    if not deps.store.exists(manifest_key(deps.group, version)):
        raise ObjectNotFound(f"{deps.store.uri(manifest_key(deps.group, version))} does not exist: "
                             f"v{version} was never compiled")
    started = [r.version for r in records(RolloutRecord, deps.state.query(_pk(deps), ROLLOUT))]
    if not started or version >= max(started):
        raise Conflict(f"v{version} is not earlier than the newest rollout ({max(started) if started else 'none'})")


def _supersede_newer(version: int, deps: RolloutDeps) -> None:
    """Every newer rollout waiting for a canary device, on the canary or on the fleet -> superseded (conditional on
    the stage read; read again while a concurrent start or promotion moves one)."""
    for _ in range(5):
        active = [r for r in records(RolloutRecord, deps.state.query(_pk(deps), ROLLOUT))
                  if r.version > version and r.stage in (WAITING, *ACTIVE_STAGES)]
        if not active:
            return
        for record in active:
            advance_stage(record.version, record.stage, ROLLBACK, SUPERSEDED,
                          RolloutRecord.changes(superseded_by=f"rollback to v{version}"), deps)
    raise Conflict(f"newer rollouts kept changing stage while the rollback to v{version} superseded them: try again")


def _stands(fleet: FleetAssignment, deps: RolloutDeps) -> bool:
    """The rollback's deployments are still the groups' own and none failed, was canceled or replaced."""
    canary = _canary(deps)
    if canary is None or canary.version != fleet.version:
        return False
    for deployment_id in (canary.deployment_id, fleet.deployment_id):
        owner = _owner(deployment_id, deps)
        if owner is None or owner.failure or _status(deployment_id, deps) in ("CANCELED", "FAILED", "INACTIVE"):
            return False
    return True


def _status(deployment_id: str, deps: RolloutDeps) -> str:
    try:
        return deps.greengrass.get_deployment(deployment_id).status
    except NotFound:
        return "FAILED"


def _announce_rollback(deps: RolloutDeps) -> None:
    """The rollback's notice, at least once: the fleet assignment owes it until noted after the publish."""
    fleet, canary = _fleet(deps), _canary(deps)
    if fleet is None or fleet.notified is not False:
        return
    ids = {CANARY: canary.deployment_id if canary is not None and canary.version == fleet.version else None,
           FLEET: fleet.deployment_id}
    deps.notifier.publish("approvals", f"{deps.group} rolled back to v{fleet.version}",
                          f"Both thing groups ({deps.canary_group}, {deps.fleet_group}) are being deployed "
                          f"v{fleet.version}: deployments {ids}.",
                          {"model_version": str(fleet.version), "status": "rollback"})
    deps.state.update_if(_pk(deps), FLEET, FleetAssignment.changes(notified=True),
                         FleetAssignment.changes(deployment_id=fleet.deployment_id, notified=False))


def cancel(deployment_id: str, deps: RolloutDeps) -> Outcome:
    """Operator action: cancel a deployment; a rollout waiting on it stops (stage canceled, version not failed)."""
    deps.greengrass.cancel_deployment(deployment_id)
    owner = _owner(deployment_id, deps)
    if owner is not None and owner.stage in ACTIVE_STAGES:
        record = _rollout(owner.version, deps)
        if record is not None and record.deployment_id(owner.stage) == deployment_id:
            advance_stage(owner.version, owner.stage, CANCEL, CANCELED, RolloutRecord.changes(canceled_at=_now(deps)),
                          deps)
    logger.warning("deployment canceled", deployment_id=deployment_id)
    return Outcome("canceled", deployment_id, {"deployment_id": deployment_id})

