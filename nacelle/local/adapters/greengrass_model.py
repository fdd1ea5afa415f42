"""Tables, values and events of the local Greengrass (nacelle/local/adapters/greengrass.py)."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nacelle.local.adapters.paths import ACCOUNT, REGION
from shared.aws.greengrass import STATUS_CHANGE, STATUS_SOURCE, JobConfig, core_device_arn
from shared.errors import Conflict
from shared.ports import TERMINAL_EXECUTION, ExecutionStatus

SUCCESS = ("SUCCEEDED", "COMPLETED")
FAILURES = {"FAILED": {"FAILED"}, "REJECTED": {"REJECTED"}, "TIMED_OUT": {"TIMED_OUT"},
            "ALL": {"FAILED", "REJECTED", "TIMED_OUT"}}  # an abort criterion's failureType -> execution statuses
# deployments.grp is the target: a thing group's name, or THING_TARGET + a thing's name (a group name has no "/")
THING_TARGET = "thing/"

SCHEMA = """
CREATE TABLE IF NOT EXISTS components (name TEXT, version TEXT, recipe TEXT NOT NULL, created_at REAL NOT NULL,
    PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS thing_groups (name TEXT PRIMARY KEY, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS members (grp TEXT REFERENCES thing_groups(name), thing TEXT, PRIMARY KEY (grp, thing));
CREATE TABLE IF NOT EXISTS deployments (id TEXT PRIMARY KEY, name TEXT NOT NULL, grp TEXT NOT NULL,
    client_token TEXT NOT NULL UNIQUE, request TEXT NOT NULL, status TEXT NOT NULL, revision INTEGER NOT NULL,
    created_at REAL NOT NULL, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS deployments_grp ON deployments (grp, status);
CREATE TABLE IF NOT EXISTS executions (deployment_id TEXT REFERENCES deployments(id), thing TEXT,
    status TEXT NOT NULL, reason TEXT NOT NULL, error_stack TEXT NOT NULL, error_types TEXT NOT NULL,
    created_at REAL NOT NULL, in_progress_at REAL, modified_at REAL NOT NULL, PRIMARY KEY (deployment_id, thing));
CREATE INDEX IF NOT EXISTS executions_thing ON executions (thing);
CREATE TABLE IF NOT EXISTS devices (thing TEXT PRIMARY KEY, components TEXT NOT NULL, last_seen REAL);
CREATE TABLE IF NOT EXISTS emitted (thing TEXT, deployment_id TEXT, status TEXT,
    PRIMARY KEY (thing, deployment_id, status));
"""


@dataclass(frozen=True)
class DeviceTarget:
    """The deployment a core device is to apply next (to the thing itself or to one of its thing groups), and what
    its other targets last deployed to it: Greengrass v2 runs the union (`effective_components`)."""

    deployment_id: str
    name: str
    target_arn: str
    components: Mapping[str, Mapping[str, Any]]  # this deployment's, as created
    deployment_policies: Mapping[str, Any]
    iot_job_configuration: Mapping[str, Any]
    created_at: datetime
    # each other target of the device (ARN) -> the components of its newest deployment the device applied
    others: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)

    def effective_components(self) -> dict[str, Mapping[str, Any]]:
        """The device's components once this deployment is applied: its own plus those of the other targets (a
        group rollout leaves a thing deployment's components running, and the reverse). A component two targets
        name with different versions cannot be resolved: Conflict naming both (the device fails the deployment)."""
        merged: dict[str, Mapping[str, Any]] = {}
        origin: dict[str, str] = {}
        for target, components in sorted(self.others.items()):
            for name, spec in components.items():
                if name in merged and merged[name].get("componentVersion") != spec.get("componentVersion"):
                    raise Conflict(_clash(name, origin[name], merged[name], target, spec))
                merged.setdefault(name, spec)
                origin.setdefault(name, target)
        for name, spec in self.components.items():
            if name in merged and merged[name].get("componentVersion") != spec.get("componentVersion"):
                raise Conflict(_clash(name, origin[name], merged[name], self.target_arn, spec))
            merged[name] = spec  # the same version: this deployment's configuration update
        return merged


def _clash(name: str, first: str, a: Mapping[str, Any], second: str, b: Mapping[str, Any]) -> str:
    return (f"component {name}: {first} deploys version {a.get('componentVersion')} and {second} version "
            f"{b.get('componentVersion')}; a core device runs one version of a component")


@dataclass(frozen=True)
class DeviceExecution:
    thing: str
    deployment_id: str
    deployment_name: str
    status: ExecutionStatus
    reason: str
    error_stack: tuple[str, ...]
    error_types: tuple[str, ...]
    created_at: datetime
    modified_at: datetime


@dataclass(frozen=True)
class CoreDeviceInfo:
    thing: str
    groups: tuple[str, ...]
    components: Mapping[str, str]  # what the device reported it runs: name -> version
    executions: tuple[DeviceExecution, ...]  # one per deployment it received, newest deployment first
    last_seen: datetime | None = None


@dataclass
class Tx:
    """One write transaction and the status-change events it produces."""

    db: sqlite3.Connection
    now: float
    events: list[dict[str, Any]] = field(default_factory=list)


def dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def execution(row: sqlite3.Row) -> DeviceExecution:
    """An `executions` row joined with its deployment's name."""
    return DeviceExecution(row["thing"], row["deployment_id"], row["name"], row["status"], row["reason"],
                           tuple(json.loads(row["error_stack"])), tuple(json.loads(row["error_types"])),
                           dt(row["created_at"]), dt(row["modified_at"]))


def abort_reason(config: JobConfig, counts: Mapping[str, int]) -> str | None:
    """Why the job's abortConfig cancels it, given the count of executions per status; None while it does not.
    Executed things are those whose execution ended (CANCELED ones excepted)."""
    executed = sum(n for s, n in counts.items() if s in TERMINAL_EXECUTION and s != "CANCELED")
    for c in config.abort:
        failed = sum(counts.get(s, 0) for s in FAILURES[c.failure_type])
        if executed >= c.min_executed_things and 100 * failed >= c.threshold_percentage * executed:
            return (f"abort criteria met: {failed} of {executed} things {c.failure_type} "
                    f"(threshold {c.threshold_percentage:g}%)")
    return None


def status_change_event(thing: str, deployment_id: str, status: str, reason: str, error_stack: Sequence[str],
                        error_types: Sequence[str], at: float) -> dict[str, Any]:
    """EventBridge's "Greengrass V2 Effective Deployment Status Change" as AWS sends it."""
    return {"version": "0", "id": str(uuid.uuid4()), "detail-type": STATUS_CHANGE, "source": STATUS_SOURCE,
            "account": ACCOUNT, "time": dt(at).strftime("%Y-%m-%dT%H:%M:%SZ"), "region": REGION,
            "resources": [core_device_arn(REGION, ACCOUNT, thing)],
            "detail": {"deploymentId": deployment_id, "coreDeviceExecutionStatus": status,
                       "statusDetails": {"errorStack": list(error_stack), "errorTypes": list(error_types)},
                       "reason": reason}}
