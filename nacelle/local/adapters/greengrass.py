"""Greengrass v2 in SQLite: the local stand-in for components, thing groups and deployments, plus the
device-side API the simulated core devices (nacelle/local/edge/nucleus.py) poll and report to.

IoT Jobs semantics applied lazily on every read and report, and by `sweep()`: an IN_PROGRESS execution older than
timeoutConfig.inProgressTimeoutInMinutes becomes TIMED_OUT; when an abortConfig criterion holds (at least
minNumberOfExecutedThings executions terminal, and failures of failureType >= thresholdPercentage of them) the
deployment becomes CANCELED with its unfinished executions; jobExecutionsRolloutConfig.maximumPerMinute limits how
many things receive the deployment per 60 s. A deployment stays ACTIVE until every current member of its group
SUCCEEDED (then COMPLETED); failures alone leave it ACTIVE, as on AWS (aws/aws-cli#6185). Terminal executions are
final (IoT Jobs refuses later updates); a device's later report on them is ignored.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast, get_args

import shared.aws.greengrass as rules
from nacelle.local.adapters.greengrass_model import (
    SCHEMA,
    SUCCESS,
    CoreDeviceInfo,
    DeviceExecution,
    DeviceTarget,
    Tx,
    abort_reason,
    dt,
    execution,
    status_change_event,
)
from nacelle.local.adapters.paths import ACCOUNT, REGION
from nacelle.local.adapters.sqlite import connect, immediate
from shared.errors import ConfigurationError, Conflict, NotFound
from shared.ports import (
    TERMINAL_EXECUTION,
    ComponentVersion,
    Deployment,
    DeploymentStatus,
    EffectiveDeployment,
    ExecutionStatus,
)

__all__ = ["CoreDeviceInfo", "DeviceExecution", "DeviceTarget", "LocalGreengrass"]
_GROUP_ARN_PREFIX = rules.thing_group_arn(REGION, ACCOUNT, "")


def _now() -> datetime:
    return datetime.now(UTC)


class LocalGreengrass:
    def __init__(self, db_path: Path, on_status_event: Callable[[dict[str, Any]], object] | None = None,
                 *, clock: Callable[[], datetime] = _now) -> None:
        self.db_path = Path(db_path)
        self.on_status_event = on_status_event
        self._clock = clock
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with connect(self.db_path) as db:
            yield db

    @contextmanager
    def _tx(self) -> Iterator[Tx]:
        """Write lock up front; the events are handed on before COMMIT, so a failing consumer rolls the change
        back and the caller's retry emits them again (at least once; `emitted` keeps them to one per status)."""
        with self._connect() as db, immediate(db):
            tx = Tx(db, self._clock().timestamp())
            yield tx
            for event in tx.events:
                if self.on_status_event is not None:
                    self.on_status_event(event)

    # -- components ---------------------------------------------------------------------------------------------

    def get_component(self, name: str, version: str) -> ComponentVersion | None:
        with self._connect() as db:
            row = db.execute("SELECT recipe FROM components WHERE name = ? AND version = ?", (name, version)).fetchone()
        if row is None:
            return None
        return ComponentVersion(name, version, rules.component_arn(REGION, ACCOUNT, name, version), json.loads(row[0]))

    def create_component_version(self, recipe: Mapping[str, Any]) -> ComponentVersion:
        name, version = rules.recipe_identity(recipe)
        stored = rules.plain(recipe)
        with self._tx() as tx:
            try:
                tx.db.execute("INSERT INTO components VALUES (?, ?, ?, ?)",
                              (name, version, json.dumps(stored, sort_keys=True), tx.now))
            except sqlite3.IntegrityError as e:
                raise Conflict(f"component {name}@{version} already exists (versions are immutable)") from e
        return ComponentVersion(name, version, rules.component_arn(REGION, ACCOUNT, name, version), stored)

    # -- thing groups -------------------------------------------------------------------------------------------

    def ensure_thing_group(self, name: str) -> str:
        with self._tx() as tx:
            tx.db.execute("INSERT OR IGNORE INTO thing_groups VALUES (?, ?)", (name, tx.now))
        return rules.thing_group_arn(REGION, ACCOUNT, name)

    def add_thing(self, thing: str, group: str) -> None:
        with self._tx() as tx:
            self._group(tx.db, group)
            tx.db.execute("INSERT OR IGNORE INTO members VALUES (?, ?)", (group, thing))

    def thing_group_arn(self, group_name: str) -> str:
        with self._connect() as db:
            self._group(db, group_name)
        return rules.thing_group_arn(REGION, ACCOUNT, group_name)

    def things_in_group(self, group_name: str) -> list[str]:
        with self._connect() as db:
            self._group(db, group_name)
            return self._members(db, group_name)

    def groups_of(self, thing: str) -> list[str]:
        with self._connect() as db:
            return [r[0] for r in db.execute("SELECT grp FROM members WHERE thing = ? ORDER BY grp", (thing,))]

    @staticmethod
    def _group(db: sqlite3.Connection, name: str) -> None:
        if db.execute("SELECT 1 FROM thing_groups WHERE name = ?", (name,)).fetchone() is None:
            raise NotFound(f"no thing group {name} in the local Greengrass")

    @staticmethod
    def _members(db: sqlite3.Connection, group: str) -> list[str]:
        return [r[0] for r in db.execute("SELECT thing FROM members WHERE grp = ? ORDER BY thing", (group,))]

    # -- deployments (cloud side) -------------------------------------------------------------------------------

    def create_deployment(self, target_arn: str, name: str, components: Mapping[str, Mapping[str, Any]],
                          deployment_policies: Mapping[str, Any], iot_job_configuration: Mapping[str, Any],
                          client_token: str) -> str:
        rules.check_deployment_request(name, client_token)
        rules.job_config(iot_job_configuration)
        if not target_arn.startswith(_GROUP_ARN_PREFIX) or target_arn == _GROUP_ARN_PREFIX:
            raise ConfigurationError(f"deployment target {target_arn!r}: the local Greengrass deploys to thing "
                                     f"groups only ({_GROUP_ARN_PREFIX}<name>)")
        group = target_arn[len(_GROUP_ARN_PREFIX):]
        request = json.dumps({"targetArn": target_arn, "deploymentName": name, "components": rules.plain(components),
                              "deploymentPolicies": rules.plain(deployment_policies),
                              "iotJobConfiguration": rules.plain(iot_job_configuration)}, sort_keys=True)
        with self._tx() as tx:
            same = tx.db.execute("SELECT id, request FROM deployments WHERE client_token = ?",
                                 (client_token,)).fetchone()
            if same is not None:
                if same["request"] != request:
                    raise Conflict(f"clientToken {client_token} was used for another deployment request")
                return str(same["id"])
            self._group(tx.db, group)
            for comp, spec in components.items():
                if not isinstance(spec, Mapping) or not isinstance(spec.get("componentVersion"), str):
                    raise ConfigurationError(f"deployment {name}: components.{comp}.componentVersion is required")
                if tx.db.execute("SELECT 1 FROM components WHERE name = ? AND version = ?",
                                 (comp, spec["componentVersion"])).fetchone() is None:
                    raise NotFound(f"deployment {name}: component {comp}@{spec['componentVersion']} does not exist")
            for (old,) in tx.db.execute("SELECT id FROM deployments WHERE grp = ? AND status = 'ACTIVE'",
                                        (group,)).fetchall():
                self._finish(tx, old, "INACTIVE", "superseded by a new deployment to the target")
            seq, revision = tx.db.execute(
                "SELECT (SELECT COALESCE(MAX(seq), 0) + 1 FROM deployments),"
                " (SELECT COUNT(*) + 1 FROM deployments WHERE grp = ?)", (group,)).fetchone()
            deployment_id = str(uuid.uuid4())
            tx.db.execute("INSERT INTO deployments VALUES (?, ?, ?, ?, ?, 'ACTIVE', ?, ?, ?)",
                          (deployment_id, name, group, client_token, request, revision, tx.now, seq))
        return deployment_id

    def get_deployment(self, deployment_id: str) -> Deployment:
        with self._tx() as tx:
            row = self._refresh(tx, deployment_id)
            req = json.loads(row["request"])
            return Deployment(deployment_id, row["name"], req["targetArn"], self._status(tx.db, row),
                              req["components"], dt(row["created_at"]), str(row["revision"]))

    def cancel_deployment(self, deployment_id: str) -> None:
        with self._tx() as tx:
            row = self._refresh(tx, deployment_id)
            if row["status"] == "INACTIVE":
                raise Conflict(f"deployment {deployment_id} was superseded (INACTIVE) and cannot be canceled")
            if row["status"] == "ACTIVE":
                self._finish(tx, deployment_id, "CANCELED", "the deployment was canceled")

    def list_effective_deployments(self, thing_name: str) -> list[EffectiveDeployment]:
        with self._tx() as tx:
            if not self._known(tx.db, thing_name):
                raise NotFound(f"no core device {thing_name} in the local Greengrass")
            deps = tx.db.execute("SELECT deployment_id FROM executions WHERE thing = ?", (thing_name,)).fetchall()
            for (dep,) in deps:
                self._refresh(tx, dep)
            return [EffectiveDeployment(e.deployment_id, e.deployment_name, self._target(tx.db, e.deployment_id),
                                        e.status, e.reason, e.modified_at)
                    for e in self._executions(tx.db, "x.thing = ?", thing_name)]

    def sweep(self, now: datetime | None = None) -> None:
        """Apply timeouts and abort criteria to every ACTIVE deployment (the stack calls this periodically)."""
        with self._tx() as tx:
            if now is not None:
                tx.now = now.timestamp()
            for (dep,) in tx.db.execute("SELECT id FROM deployments WHERE status = 'ACTIVE'").fetchall():
                self._refresh(tx, dep)

    # -- device side --------------------------------------------------------------------------------------------

    def target_for(self, thing: str) -> DeviceTarget | None:
        """The newest deployment in force (ACTIVE or COMPLETED) for one of the thing's groups, None when there is
        none or the rollout rate holds this thing back for now. Handing it out creates the QUEUED execution."""
        with self._tx() as tx:
            self._seen(tx, thing)
            rows = tx.db.execute(
                "SELECT d.id FROM deployments d JOIN members m ON m.grp = d.grp WHERE m.thing = ?"
                " AND d.status = 'ACTIVE' ORDER BY d.seq DESC", (thing,)).fetchall()
            for (dep,) in rows:
                row = self._refresh(tx, dep)
                if row["status"] == "ACTIVE":
                    break
            else:
                return None
            req = json.loads(row["request"])
            if tx.db.execute("SELECT 1 FROM executions WHERE deployment_id = ? AND thing = ?",
                             (dep, thing)).fetchone() is None:
                per_minute = rules.job_config(req["iotJobConfiguration"]).maximum_per_minute
                started = tx.db.execute("SELECT COUNT(*) FROM executions WHERE deployment_id = ? AND created_at > ?",
                                        (dep, tx.now - 60)).fetchone()[0]
                if per_minute is not None and started >= per_minute:
                    return None
                tx.db.execute("INSERT INTO executions VALUES (?, ?, 'QUEUED', '', '[]', '[]', ?, NULL, ?)",
                              (dep, thing, tx.now, tx.now))
            return DeviceTarget(dep, row["name"], req["targetArn"], req["components"], req["deploymentPolicies"],
                                req["iotJobConfiguration"], dt(row["created_at"]))

    def report(self, thing: str, deployment_id: str, status: str, reason: str = "", error_stack: Sequence[str] = (),
               error_types: Sequence[str] = (), components: Mapping[str, str] | None = None) -> None:
        """Upsert the thing's execution (idempotent); a terminal status emits the AWS status-change event once."""
        if status not in get_args(ExecutionStatus):
            raise ConfigurationError(f"execution status {status!r} is not one of {list(get_args(ExecutionStatus))}")
        with self._tx() as tx:
            self._seen(tx, thing, components)
            row = self._refresh(tx, deployment_id)
            current = tx.db.execute("SELECT status FROM executions WHERE deployment_id = ? AND thing = ?",
                                    (deployment_id, thing)).fetchone()
            if current is None and row["status"] != "ACTIVE":
                return  # a deployment no longer in force is not started any more
            if current is not None and current[0] in TERMINAL_EXECUTION:
                return  # terminal executions are final
            if current is None:
                tx.db.execute("INSERT INTO executions VALUES (?, ?, 'QUEUED', '', '[]', '[]', ?, NULL, ?)",
                              (deployment_id, thing, tx.now, tx.now))
            self._set(tx, deployment_id, thing, status, reason, error_stack, error_types)
            self._refresh(tx, deployment_id)

    def heartbeat(self, thing: str) -> None:
        with self._tx() as tx:
            self._seen(tx, thing)

    def list_deployments(self, group: str | None = None) -> list[Deployment]:
        """Every deployment (to one thing group when `group` is given), newest first."""
        with self._tx() as tx:
            ids = [r[0] for r in tx.db.execute(
                "SELECT id FROM deployments WHERE ? IS NULL OR grp = ? ORDER BY seq DESC", (group, group)).fetchall()]
            out = []
            for deployment_id in ids:
                row = self._refresh(tx, deployment_id)
                req = json.loads(row["request"])
                out.append(Deployment(deployment_id, row["name"], req["targetArn"], self._status(tx.db, row),
                                      req["components"], dt(row["created_at"]), str(row["revision"])))
            return out

    def executions(self, deployment_id: str) -> list[DeviceExecution]:
        with self._tx() as tx:
            self._refresh(tx, deployment_id)
            return sorted(self._executions(tx.db, "x.deployment_id = ?", deployment_id), key=lambda e: e.thing)

    def devices(self) -> list[CoreDeviceInfo]:
        with self._tx() as tx:
            for (dep,) in tx.db.execute("SELECT id FROM deployments WHERE status = 'ACTIVE'").fetchall():
                self._refresh(tx, dep)
            things = [r[0] for r in tx.db.execute("SELECT thing FROM members UNION SELECT thing FROM devices"
                                                  " UNION SELECT thing FROM executions ORDER BY 1")]
            out = []
            for thing in things:
                dev = tx.db.execute("SELECT components, last_seen FROM devices WHERE thing = ?", (thing,)).fetchone()
                groups = tuple(r[0] for r in tx.db.execute(
                    "SELECT grp FROM members WHERE thing = ? ORDER BY grp", (thing,)))
                out.append(CoreDeviceInfo(thing, groups, json.loads(dev[0]) if dev else {},
                                          tuple(self._executions(tx.db, "x.thing = ?", thing)),
                                          dt(dev[1]) if dev and dev[1] is not None else None))
            return out

    # -- internals ----------------------------------------------------------------------------------------------

    def _seen(self, tx: Tx, thing: str, components: Mapping[str, str] | None = None) -> None:
        tx.db.execute("INSERT INTO devices VALUES (?, '{}', ?) ON CONFLICT (thing) DO UPDATE SET last_seen = ?",
                      (thing, tx.now, tx.now))
        if components is not None:
            tx.db.execute("UPDATE devices SET components = ? WHERE thing = ?",
                          (json.dumps(dict(components), sort_keys=True), thing))

    @staticmethod
    def _known(db: sqlite3.Connection, thing: str) -> bool:
        return db.execute("SELECT 1 FROM members WHERE thing = ? UNION SELECT 1 FROM devices WHERE thing = ?"
                          " UNION SELECT 1 FROM executions WHERE thing = ?", (thing,) * 3).fetchone() is not None

    @staticmethod
    def _target(db: sqlite3.Connection, deployment_id: str) -> str:
        return rules.thing_group_arn(REGION, ACCOUNT, db.execute("SELECT grp FROM deployments WHERE id = ?",
                                                           (deployment_id,)).fetchone()[0])

    @staticmethod
    def _executions(db: sqlite3.Connection, where: str, arg: str) -> list[DeviceExecution]:
        rows = db.execute(f"SELECT x.*, d.name FROM executions x JOIN deployments d ON d.id = x.deployment_id"
                          f" WHERE {where} ORDER BY d.seq DESC", (arg,))
        return [execution(r) for r in rows]

    def _status(self, db: sqlite3.Connection, row: sqlite3.Row) -> DeploymentStatus:
        if row["status"] != "ACTIVE":
            return cast(DeploymentStatus, row["status"])
        members = self._members(db, row["grp"])
        done = {r[0] for r in db.execute("SELECT thing FROM executions WHERE deployment_id = ? AND status IN (?, ?)",
                                         (row["id"], *SUCCESS))}
        return "COMPLETED" if members and done.issuperset(members) else "ACTIVE"

    def _refresh(self, tx: Tx, deployment_id: str) -> sqlite3.Row:
        """Apply the IoT job's timeout and abort criteria to an ACTIVE deployment; returns its (new) row."""
        row = tx.db.execute("SELECT * FROM deployments WHERE id = ?", (deployment_id,)).fetchone()
        if row is None:
            raise NotFound(f"no Greengrass deployment {deployment_id} in the local Greengrass")
        if row["status"] != "ACTIVE":
            return cast(sqlite3.Row, row)
        config = rules.job_config(json.loads(row["request"])["iotJobConfiguration"])
        if config.in_progress_timeout_minutes is not None:
            limit = config.in_progress_timeout_minutes
            for (thing,) in tx.db.execute("SELECT thing FROM executions WHERE deployment_id = ? AND status ="
                                          " 'IN_PROGRESS' AND in_progress_at <= ?",
                                          (deployment_id, tx.now - 60 * limit)).fetchall():
                self._set(tx, deployment_id, thing, "TIMED_OUT", f"in progress for more than {limit} min")
        counts = dict(tx.db.execute("SELECT status, COUNT(*) FROM executions WHERE deployment_id = ?"
                                    " GROUP BY status", (deployment_id,)).fetchall())
        reason = abort_reason(config, counts)
        if reason is not None:
            self._finish(tx, deployment_id, "CANCELED", reason)
        return cast(sqlite3.Row, tx.db.execute("SELECT * FROM deployments WHERE id = ?", (deployment_id,)).fetchone())

    def _finish(self, tx: Tx, deployment_id: str, status: DeploymentStatus, reason: str) -> None:
        tx.db.execute("UPDATE deployments SET status = ? WHERE id = ?", (status, deployment_id))
        for (thing,) in tx.db.execute("SELECT thing FROM executions WHERE deployment_id = ? AND status IN"
                                      " ('QUEUED', 'IN_PROGRESS')", (deployment_id,)).fetchall():
            self._set(tx, deployment_id, thing, "CANCELED", reason)

    def _set(self, tx: Tx, deployment_id: str, thing: str, status: str, reason: str,
             error_stack: Sequence[str] = (), error_types: Sequence[str] = ()) -> None:
        tx.db.execute("UPDATE executions SET status = ?, reason = ?, error_stack = ?, error_types = ?, modified_at = ?,"
                      " in_progress_at = COALESCE(in_progress_at, CASE WHEN ? = 'IN_PROGRESS' THEN ? END)"
                      " WHERE deployment_id = ? AND thing = ?",
                      (status, reason, json.dumps(list(error_stack)), json.dumps(list(error_types)), tx.now,
                       status, tx.now, deployment_id, thing))
        if status in TERMINAL_EXECUTION and tx.db.execute(
                "INSERT OR IGNORE INTO emitted VALUES (?, ?, ?)", (thing, deployment_id, status)).rowcount:
            tx.events.append(status_change_event(thing, deployment_id, status, reason, error_stack, error_types,
                                                 tx.now))
