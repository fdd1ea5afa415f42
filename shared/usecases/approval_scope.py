"""How far an approval reaches. A person's approval reaches the fleet; the automatic approval of a version trained for
drift (training_completed with `DriftAutoApproveCanary` on) reaches the canary group only, until a person approves it
again (shared.usecases.approval.approve), which widens it to the fleet. Kept in the registry's metadata."""

from __future__ import annotations

from shared.ports import ModelVersion

APPROVAL_SCOPE = "nacelle:approval_scope"  # "canary": approved for the canary group only; "fleet": a person widened it
AUTO_APPROVED = "nacelle:auto_approved"  # when and why the automatic approval was made
FLEET_APPROVAL = "nacelle:fleet_approval"  # who widened a canary-only approval to the fleet, when and why
SCOPE_CANARY, SCOPE_FLEET = "canary", "fleet"
AUTO_APPROVER = "nacelle-auto-approve"  # the actor the registry's approval history records for an automatic approval


def canary_only(version: ModelVersion) -> bool:
    """Approved for the canary group only (automatically): its promotion to the fleet waits for a person."""
    return version.status == "Approved" and version.metadata.get(APPROVAL_SCOPE) == SCOPE_CANARY


def fleet_approved(version: ModelVersion) -> bool:
    """Approved, and for the fleet (a person's approval, or one a person widened)."""
    return version.status == "Approved" and version.metadata.get(APPROVAL_SCOPE) != SCOPE_CANARY
