"""Rollout notices: what each stage of a rollout tells the operators, sent at least once.

Notices go out at least once: a transition only records what happened (the stage, a flag, the text a notice needs),
and `announce` sends every notice the record calls for that its `notified` list does not name yet, then notes it.
Every entry point announces for the rollout it touched, so a publish that failed is sent by the redelivery of the
event, or by the next watchdog check (one is scheduled while a rollout is active).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial

from shared.errors import Conflict
from shared.observability import logger
from shared.records import RolloutRecord
from shared.usecases import lifecycle
from shared.usecases.lifecycle import FAILED_STAGE, SUPERSEDED
from shared.usecases.rollout_state import CANARY, FLEET, ROLLOUT, WAITING, RolloutDeps, _pk, _rollout

Notice = tuple[str, str, dict[str, str]]  # subject, message, attributes


def due(record: RolloutRecord) -> list[str]:
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


def announce(record: RolloutRecord | None, deps: RolloutDeps) -> None:
    """Send each notice the record calls for that `notified` does not name, then name it there: a publish that fails
    leaves it due for the next delivery or watchdog check (at least once; a concurrent delivery may repeat one)."""
    if record is None or record.notified is None:  # stored before notices were noted: it sent all it would
        return
    for kind in due(record):
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
