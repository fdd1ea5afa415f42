"""An operator's approval: a version the quality gate rejected is approved only with an explicit,
recorded override; `compilation.on_model_package_change` refuses an approval made without one (e.g.
in the SageMaker console). The states and moves are lifecycle.REGISTRY.

With `DriftAutoApproveCanary` on, training_completed approves a version trained for a drift retraining request that
passed the gate for the canary group only (registration.approve_for_canary; shared.usecases.approval_scope). Its
rollout holds after the canary soak; a person's `approve` of it widens the approval to the fleet (recorded) and the
rollout watchdog promotes it.
"""

from __future__ import annotations

from datetime import datetime

from shared.errors import Conflict
from shared.ports import ModelRegistry, ModelVersion
from shared.usecases import lifecycle
from shared.usecases.approval_scope import APPROVAL_SCOPE, FLEET_APPROVAL, SCOPE_FLEET, canary_only
from shared.usecases.lifecycle import APPROVE, OVERRIDE_GATE, REGISTRY, REGISTRY_STATUS
from shared.usecases.registration import metadata_value

GATE = "nacelle:gate"
GATE_REASONS = "nacelle:gate_reasons"
GATE_OVERRIDE = "nacelle:gate_override"


def gate_refused(version: ModelVersion) -> bool:
    """Rejected by the quality gate and never overridden."""
    return version.metadata.get(GATE) == "rejected" and not version.metadata.get(GATE_OVERRIDE)


def approval_state(version: ModelVersion) -> str:
    """The version's lifecycle.REGISTRY state: its status, told apart by the quality gate's verdict."""
    if gate_refused(version):
        return lifecycle.APPROVED_AGAINST_GATE if version.status == "Approved" else lifecycle.GATE_REJECTED
    return version.status


def approve(registry: ModelRegistry, group: str, version: int, actor: str, reason: str, now: datetime,
            override_gate: bool = False) -> ModelVersion:
    """A person's approval. Of a version approved for the canary only, it is the promotion to the fleet."""
    current = registry.get(group, version)
    if canary_only(current):
        return _widen_to_fleet(registry, group, version, actor, reason, now)
    state, override, retract = approval_state(current), gate_refused(current), False
    if override:
        if not override_gate:
            raise Conflict(f"{group} v{version} failed the quality gate "
                           f"({current.metadata.get(GATE_REASONS) or 'no reason recorded'}); to roll it out anyway, "
                           f"approve it with a recorded gate override and a reason (CLI: --override-gate --reason; "
                           f"console: 'override the quality gate')")
        if not reason.strip():
            raise Conflict(f"overriding the quality gate of {group} v{version} needs a reason (CLI: --reason)")
        retract = state == lifecycle.APPROVED_AGAINST_GATE  # already Approved: an unchanged status sends no event
        if retract:
            state = REGISTRY.target(state, lifecycle.REJECT)
        state = REGISTRY.target(state, OVERRIDE_GATE)
    status = REGISTRY_STATUS[REGISTRY.target(state, APPROVE)]  # every move checked before anything is written
    if override and retract:
        registry.set_status(group, version, "Rejected", "taken back to approve it with a gate override", actor)
    if override:
        # written before the status: the approval event that follows must find it
        registry.update_metadata(group, version, {GATE_OVERRIDE: metadata_value(
            f"{actor} at {now.isoformat(timespec='seconds')}: {reason}")})
    approved = registry.set_status(group, version, status, reason, actor)
    if canary_only(registry.get(group, version)):
        # an automatic canary-only approval landed between this one's read and its write: a person's is for the fleet
        return _widen_to_fleet(registry, group, version, actor, reason, now)
    return approved


def _widen_to_fleet(registry: ModelRegistry, group: str, version: int, actor: str, reason: str,
                    now: datetime) -> ModelVersion:
    registry.update_metadata(group, version, {APPROVAL_SCOPE: SCOPE_FLEET, FLEET_APPROVAL: metadata_value(
        f"{actor} at {now.isoformat(timespec='seconds')}: {reason or 'approved for the fleet'}")})
    return registry.set_status(group, version, "Approved", reason or "approved for the fleet", actor)


def reject(registry: ModelRegistry, group: str, version: int, actor: str, reason: str) -> ModelVersion:
    """An operator's rejection (who, why recorded); a version already Rejected stays as it is."""
    current = registry.get(group, version)
    if current.status == "Rejected":
        return current
    status = REGISTRY_STATUS[REGISTRY.target(approval_state(current), lifecycle.REJECT)]
    return registry.set_status(group, version, status, reason or "rejected", actor)
