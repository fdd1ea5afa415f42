"""Rollout failure: a failed rollout is marked failed and its thing groups are put back on an earlier version.

Also the operator's rollback deployment (`deploy_both`), and what a device reports on a restore's or a rollback's
deployment (`evaluate_put_back`, `announce_put_back`).
"""

from __future__ import annotations

from shared.errors import Conflict, NotFound
from shared.observability import logger
from shared.records import CanaryAssignment, DeploymentRecord, RolloutRecord
from shared.usecases.lifecycle import FAIL, FAILED_STAGE, RESTORED
from shared.usecases.outcome import Outcome
from shared.usecases.registration import metadata_value
from shared.usecases.rollout_components import (
    deployment_components,
    ensure_detector_component,
    ensure_model_component,
    manifest_key,
)
from shared.usecases.rollout_state import (
    CANARY,
    DEPLOYMENT,
    FAILED_EXECUTION,
    FAILING,
    FLEET,
    RolloutDeps,
    _canary,
    _deploy,
    _fleet,
    _now,
    _own,
    _owner,
    _pk,
    advance_stage,
    keep_on_canary,
    set_fleet,
)


def fail(record: RolloutRecord, reason: str, deps: RolloutDeps) -> Outcome:
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
        set_fleet(good, components, ids[FLEET], tag, deps)
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
        keep_on_canary(taken.version, deps)
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
    set_fleet(version, components, ids[FLEET], tag, deps, notice=True)
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


def evaluate_put_back(owner: DeploymentRecord, thing: str, status: str, reason: str, deps: RolloutDeps) -> Outcome:
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


def announce_put_back(owner: DeploymentRecord | None, deps: RolloutDeps) -> None:
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
