"""The model registry as operators read it (`nacelle models`, the console's Models page): each version with its
figures as numbers, the quality gate's verdict, the candidate families, its lineage, where it is deployed and
whether it is the champion; and the approve / reject decisions (shared.usecases.approval)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from shared.components import MODEL_COMPONENT
from shared.errors import NotFound
from shared.jsonview import as_datetime, number
from shared.ports import ModelVersion
from shared.records import DeploymentRecord, records
from shared.usecases import state_keys as sk
from shared.usecases.approval import GATE, GATE_OVERRIDE, GATE_REASONS, approve, gate_refused, reject
from shared.usecases.approval_scope import canary_only
from shared.usecases.operator import InvalidRequest, OperatorDeps
from shared.usecases.retraining import champion
from shared.usecases.rollout_state import DEPLOYMENT, RolloutDeps

Decision = Literal["approve", "reject"]
LINEAGE = ("nacelle:job", "nacelle:dataset_hash", "nacelle:code_version", "nacelle:spec_digest")


def model_version_of(components: Mapping[str, Any]) -> int | None:
    """The model version a deployment's components carry (the model component's "7.0.0" -> 7)."""
    head = str((components.get(MODEL_COMPONENT) or {}).get("componentVersion") or "").split(".")[0]
    return int(head) if head.isdigit() else None


def roles(deps: RolloutDeps) -> dict[str, str]:
    """Thing group -> its part in a rollout."""
    return {deps.canary_group: "canary", deps.fleet_group: "fleet"}


def deployments(deps: RolloutDeps) -> list[dict[str, Any]]:
    """Every deployment the rollout made (its DeploymentRecords), newest first, with what Greengrass says of it."""
    out = []
    for record in records(DeploymentRecord, deps.state.query(sk.group_pk(deps.group), DEPLOYMENT)):
        try:
            d = deps.greengrass.get_deployment(record.deployment_id)
        except NotFound:
            continue
        group = d.target_arn.rsplit("/", 1)[-1]
        out.append({"deployment_id": d.deployment_id, "name": d.name, "model_version": record.version,
                    "stage": record.stage, "target_group": group, "role": roles(deps).get(group),
                    "status": d.status, "created_at": d.created_at, "revision": d.revision,
                    "components": {name: spec.get("componentVersion") for name, spec in d.components.items()}})
    epoch = datetime.min.replace(tzinfo=UTC)
    return sorted(out, key=lambda doc: as_datetime(doc["created_at"]) or epoch, reverse=True)


def deployed_versions(deps: RolloutDeps, known: list[dict[str, Any]] | None = None) -> dict[int, list[str]]:
    """Model version -> the thing groups ("canary", "fleet") whose deployment in force carries it: each group's
    newest deployment that was not canceled (a canceled one leaves the devices on what they had)."""
    out: dict[int, list[str]] = {}
    seen: set[str] = set()
    for doc in known if known is not None else deployments(deps):
        role = doc["role"]
        if role is None or role in seen or doc["status"] == "CANCELED":
            continue
        seen.add(role)
        out.setdefault(int(doc["model_version"]), []).append(role)
    return out


def metrics(metadata: Mapping[str, str], prefix: str) -> dict[str, float | int | None]:
    return {key.removeprefix(prefix): number(value) for key, value in sorted(metadata.items())
            if key.startswith(prefix)}


def version_doc(v: ModelVersion, champion_version: int | None, deployed: Mapping[int, list[str]],
                history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A registry version for JSON: figures as numbers, lineage and the rest of the metadata as given."""
    metadata = dict(v.metadata)
    out: dict[str, Any] = {
        "version": v.version, "status": v.status, "champion": v.version == champion_version,
        "deployed": deployed.get(v.version, []), "failed": v.failed, "group": v.group, "arn": v.arn,
        "created_at": v.created_at, "description": v.description, "job": metadata.get("nacelle:job"),
        "model_data_key": v.model_data_key, "metrics": metrics(metadata, "metric:"),
        "champion_metrics": metrics(metadata, "champion:"),
        "metadata": {k: val for k, val in sorted(metadata.items()) if not k.startswith(("metric:", "champion:"))}}
    if history is not None:
        out["history"] = history
    return out


def registry_view(deps: RolloutDeps,
                  known: list[dict[str, Any]] | None = None) -> tuple[int | None, dict[int, list[str]]]:
    """The champion's version and where each version is deployed."""
    best = champion(deps.registry, deps.group)
    return (best.version if best is not None else None), deployed_versions(deps, known)


def recent_deployments(deps: OperatorDeps) -> list[dict[str, Any]]:
    """`deployments`, reused for a moment (one Greengrass read per deployment: pages poll it)."""
    return deps.reuse("deployments", lambda: deployments(deps.rollout))


def _console_doc(v: ModelVersion, champion_version: int | None, deployed: Mapping[int, list[str]],
                 history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    doc = version_doc(v, champion_version, deployed, history)
    meta = v.metadata
    doc["where"] = "+".join(doc["deployed"]) or "nowhere"
    doc["gate"] = {"verdict": meta.get(GATE) or None, "reasons": [r for r in (meta.get(GATE_REASONS) or "").split(" / ")
                                                                   if r],
                   "override": meta.get(GATE_OVERRIDE) or None, "refused": gate_refused(v)}
    candidates = (meta.get("nacelle:candidates") or "").split(" / ")
    doc["family"] = {"chosen": meta.get("nacelle:family") or None, "candidates": [c.strip() for c in candidates
                                                                                   if c.strip()]}
    doc["lineage"] = {key.removeprefix("nacelle:"): meta.get(key) or None for key in LINEAGE}
    return doc


def list_models(deps: OperatorDeps, status: str | None = None) -> list[dict[str, Any]]:
    """Every version, newest first (with `status`: only those)."""
    best, deployed = registry_view(deps.rollout, recent_deployments(deps))
    versions = deps.rollout.registry.list(deps.group)
    return [_console_doc(v, best, deployed) for v in reversed(versions) if status is None or v.status == status]


def show_model(deps: OperatorDeps, version: int) -> dict[str, Any]:
    v = deps.rollout.registry.get(deps.group, version)
    best, deployed = registry_view(deps.rollout, recent_deployments(deps))
    history = deps.history(deps.group, version) if deps.history is not None else None
    return _console_doc(v, best, deployed, history if history is not None else [])


def compare(deps: OperatorDeps, a: int, b: int) -> dict[str, Any]:
    """Two versions side by side, with b - a for every figure both have."""
    first, second = show_model(deps, a), show_model(deps, b)
    names = sorted(set(first["metrics"]) | set(second["metrics"]))
    rows = []
    for name in names:
        x, y = first["metrics"].get(name), second["metrics"].get(name)
        rows.append({"metric": name, "a": x, "b": y,
                     "delta": (y - x) if isinstance(x, int | float) and isinstance(y, int | float) else None})
    return {"a": first, "b": second, "metrics": rows}


def decide(deps: OperatorDeps, version: int, decision: Decision, actor: str, reason: str,
           override_gate: bool = False) -> dict[str, Any]:
    """Approve or reject; doing what is already done changes nothing ("changed": false). Approving a version approved
    for the canary only widens it to the fleet (approval.approve)."""
    if override_gate and not reason:
        raise InvalidRequest("reason", "overriding the quality gate needs a reason (it is recorded)")
    registry, group = deps.rollout.registry, deps.group
    current = registry.get(group, version)
    if decision == "approve":
        done = current.status == "Approved" and not gate_refused(current) and not canary_only(current)
        if not done:
            approve(registry, group, version, actor, reason, deps.rollout.clock(), override_gate=override_gate)
    else:
        done = current.status == "Rejected"
        if not done:
            reject(registry, group, version, actor, reason)
    if not done:
        deps.changed()
    return {"changed": not done, "model": show_model(deps, version)}
