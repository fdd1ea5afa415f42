"""An operator's approval: a version the quality gate rejected is approved only with an explicit,
recorded override; `compilation.on_model_package_change` refuses an approval made without one (e.g.
in the SageMaker console)."""

from __future__ import annotations

from datetime import datetime

from shared.errors import Conflict
from shared.ports import ModelRegistry, ModelVersion
from shared.usecases.registration import metadata_value

GATE = "nacelle:gate"
GATE_REASONS = "nacelle:gate_reasons"
GATE_OVERRIDE = "nacelle:gate_override"


def gate_refused(version: ModelVersion) -> bool:
    """Rejected by the quality gate and never overridden."""
    return version.metadata.get(GATE) == "rejected" and not version.metadata.get(GATE_OVERRIDE)


def approve(registry: ModelRegistry, group: str, version: int, actor: str, reason: str, now: datetime,
            override_gate: bool = False) -> ModelVersion:
    current = registry.get(group, version)
    if gate_refused(current):
        if not override_gate:
            raise Conflict(f"{group} v{version} failed the quality gate "
                           f"({current.metadata.get(GATE_REASONS) or 'no reason recorded'}); approve it with "
                           f"--override-gate and a --reason to roll it out anyway")
        if not reason.strip():
            raise Conflict(f"overriding the quality gate of {group} v{version} needs a --reason")
        # written before the status: the approval event that follows must find it
        registry.update_metadata(group, version, {GATE_OVERRIDE: metadata_value(
            f"{actor} at {now.isoformat(timespec='seconds')}: {reason}")})
    return registry.set_status(group, version, "Approved", reason, actor)
