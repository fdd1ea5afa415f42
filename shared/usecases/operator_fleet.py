"""The fleet as operators read it: per device its component versions, health, inference rate, last report,
state (OFFLINE when its health is stale) and signal source (shared.source_status); the rollout's deployments with
their stage and failures; and the fleet actions, rollback and cancelling a deployment (shared.usecases.rollout_ops)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.components import MODEL_COMPONENT
from shared.errors import NotFound
from shared.records import DeviceRecord, ExecutionRecord, RolloutRecord, records
from shared.source_status import source_status
from shared.usecases.operator import DeviceInventory, OperatorDeps
from shared.usecases.operator_alerts import alert_items
from shared.usecases.operator_models import recent_deployments, roles
from shared.usecases.rollout_ops import cancel, rollback_to
from shared.usecases.rollout_state import (
    ACTIVE_STAGES,
    DEPLOYMENT,
    DEVICES_PK,
    FAILED_EXECUTION,
    FAILING,
    ROLLOUT,
    SUCCEEDED_EXECUTION,
    WAITING,
    device_pk,
)
from shared.usecases.state_keys import group_pk

ONLINE, STOPPED, OFFLINE = "ONLINE", "STOPPED", "OFFLINE"
DETECTOR_COMPONENT = "nacelle.detector"
HEALTH_FIGURES = ("latency_p50_ms", "latency_p99_ms", "spool_depth", "spool_dropped", "bad_messages",
                  "stale_samples", "errors", "uptime_s", "windows_scored", "model_error", "capture")


def device_state(last_health_at: float | None, offline_after_s: float, now: float, running: bool = True) -> str:
    """OFFLINE when its last health is older than the offline limit (or it never sent one), STOPPED when its
    nucleus is known not to run, else ONLINE."""
    if not last_health_at or now - last_health_at > offline_after_s:
        return OFFLINE
    return ONLINE if running else STOPPED


def _group_members(deps: OperatorDeps) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for group in roles(deps.rollout):
        try:
            members = deps.rollout.greengrass.things_in_group(group)
        except NotFound:  # created with its first device
            members = []
        for thing in members:
            out.setdefault(thing, []).append(group)
    return out


def episode_counts(deps: OperatorDeps) -> dict[str, dict[str, int]]:
    """Per turbine, its anomaly episodes' alerts and how many are still open."""
    counts: dict[str, dict[str, int]] = {}
    for item in alert_items(deps):
        if item.get("kind") not in ("episode", None, ""):  # an item of no kind is an episode's
            continue
        c = counts.setdefault(str(item.get("turbine_id") or ""), {"total": 0, "open": 0})
        c["total"] += 1
        c["open"] += item.get("status", "open") == "open"
    return counts


def _latest_execution(deps: OperatorDeps, thing: str) -> dict[str, Any] | None:
    executions = records(ExecutionRecord, deps.rollout.state.query(device_pk(thing), DEPLOYMENT))
    if not executions:
        return None
    e = max(executions, key=lambda r: (r.event_time or r.at, r.at))
    return {"deployment_id": e.deployment_id, "status": e.status, "reason": e.reason, "at": e.event_time or e.at}


def devices(deps: OperatorDeps) -> list[dict[str, Any]]:
    """One row per device the cloud knows of (thing groups, health records, the device registry)."""
    return deps.reuse("devices", lambda: _devices(deps))


def _devices(deps: OperatorDeps) -> list[dict[str, Any]]:
    now = deps.now()
    health = {r.thing_name: r for r in records(DeviceRecord, deps.rollout.state.query(DEVICES_PK))}
    inventory: Mapping[str, DeviceInventory] = deps.inventory() if deps.inventory is not None else {}
    members = _group_members(deps) if deps.inventory is None else {t: list(i.groups) for t, i in inventory.items()}
    episodes = episode_counts(deps)
    role_of = roles(deps.rollout)
    rows = []
    for thing in sorted(set(health) | set(members) | set(inventory)):
        record, info = health.get(thing), inventory.get(thing)
        last = record.last_health_at if record is not None else None
        state = device_state(last, deps.offline_after_s, now)
        row_health = dict(record.health) if record is not None else {}
        components = dict(info.components) if info is not None and info.components else {
            name: value for name, value in ((MODEL_COMPONENT, _model_component(record)),
                                            (DETECTOR_COMPONENT, row_health.get("detector_version"))) if value}
        groups = members.get(thing, [])
        rows.append({
            "thing": thing, "groups": groups, "role": next((role_of[g] for g in groups if g in role_of), None),
            "components": components,
            "model_version": record.model_version if record is not None else None,
            "detector_version": row_health.get("detector_version"),
            "inference_rate_hz": record.inference_rate_hz if record is not None and state == ONLINE else None,
            "last_health_at": last or None,
            "last_seen": max(filter(None, [last, info.last_seen if info is not None else None]), default=None),
            "state": state,
            "health": {k: row_health.get(k) for k in HEALTH_FIGURES if k in row_health},
            "unexpected_version": record.unexpected_version if record is not None else None,
            "source": source_status(record.sensors, last) if record is not None else None,
            "episodes": episodes.get(thing, {"total": 0, "open": 0}),
            "deployment": _latest_execution(deps, thing)})
    return rows


def _model_component(record: DeviceRecord | None) -> str | None:
    return f"{record.model_version}.0.0" if record is not None and record.model_version is not None else None


def rollouts(deps: OperatorDeps) -> list[dict[str, Any]]:
    """Every rollout, newest version first: its stage, deployments, times and failure."""
    out = []
    for r in records(RolloutRecord, deps.rollout.state.query(group_pk(deps.group), ROLLOUT)):
        out.append({"version": r.version, "stage": r.stage, "active": r.stage in (*ACTIVE_STAGES, WAITING, FAILING),
                    "canary_deployment_id": r.canary_deployment_id, "canary_started_at": r.canary_started_at,
                    "canary_things": list(r.canary_things), "fleet_deployment_id": r.fleet_deployment_id or None,
                    "fleet_started_at": r.fleet_started_at, "fleet_things": list(r.fleet_things),
                    "done_at": r.done_at, "failed_stage": r.failed_stage, "failure_reason": r.failure_reason,
                    "failed_at": r.failed_at, "canceled_at": r.canceled_at, "superseded_by": r.superseded_by})
    return sorted(out, key=lambda doc: doc["version"], reverse=True)


def deployments_view(deps: OperatorDeps) -> dict[str, Any]:
    """The rollouts and every deployment with each device's execution of it."""
    docs = [dict(d) for d in recent_deployments(deps)]
    by_thing: dict[str, list[ExecutionRecord]] = {}
    for doc in docs:
        try:
            things = deps.rollout.greengrass.things_in_group(doc["target_group"])
        except NotFound:
            things = []
        executions = []
        for thing in things:
            if thing not in by_thing:
                by_thing[thing] = records(ExecutionRecord, deps.rollout.state.query(device_pk(thing), DEPLOYMENT))
            executions += [{"thing": e.thing_name, "status": e.status, "reason": e.reason, "at": e.event_time or e.at}
                           for e in by_thing[thing] if e.deployment_id == doc["deployment_id"]]
        doc["executions"] = executions
        doc["succeeded"] = sum(e["status"] in SUCCEEDED_EXECUTION for e in executions)
        doc["failed"] = sum(e["status"] in FAILED_EXECUTION for e in executions)
    found = rollouts(deps)
    return {"rollouts": found, "deployments": docs, "rollout_active": any(r["active"] for r in found)}


def rollback(deps: OperatorDeps, version: int) -> dict[str, Any]:
    outcome = rollback_to(version, deps.rollout)
    deps.changed()
    return {"action": outcome.action, "detail": outcome.detail, **outcome.data}


def cancel_deployment(deps: OperatorDeps, deployment_id: str) -> dict[str, Any]:
    """Cancels a deployment; the rollout waiting on it stops (rollout_ops.cancel)."""
    outcome = cancel(deployment_id, deps.rollout)
    deps.changed()
    return {"action": outcome.action, "detail": outcome.detail, **outcome.data}
