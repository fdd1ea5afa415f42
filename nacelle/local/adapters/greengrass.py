"""Greengrass v2 in SQLite: the local stand-in for components, thing groups and deployments, plus the
device-side API the simulated core devices (nacelle/local/edge/nucleus.py) poll and report to.

IoT Jobs semantics applied lazily on every read and report, and by `sweep()`: an IN_PROGRESS execution older than
timeoutConfig.inProgressTimeoutInMinutes becomes TIMED_OUT; when an abortConfig criterion holds (at least
minNumberOfExecutedThings executions terminal, and failures of failureType >= thresholdPercentage of them) the
deployment becomes CANCELED with its unfinished executions; jobExecutionsRolloutConfig.maximumPerMinute limits how
many things receive the deployment per 60 s. A deployment stays ACTIVE until every current member of its group
SUCCEEDED (then COMPLETED); failures alone leave it ACTIVE, as on AWS (aws/aws-cli#6185). Terminal executions are
final (IoT Jobs refuses later updates); a device's later report on them is ignored.

Targets: a thing group, or a thing (a deployment to the core device itself, e.g. its nacelle.sensors with its own
configuration). A new deployment supersedes only its own target's. A device applies the deployments of its targets
oldest first, and runs their union as Greengrass v2 does: the deployment it applies plus, for each of its other
targets, the newest deployment to that target it applied successfully (DeviceTarget.effective_components), so a group
rollout leaves the thing deployment's components running and the reverse.
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
    THING_TARGET,
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
_THING_ARN_PREFIX = rules.thing_arn(REGION, ACCOUNT, "")


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
        group = _target_key(target_arn)
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
            self._check_target(tx.db, group)
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
        """The deployment in force (ACTIVE or COMPLETED) to the thing or one of its groups that it is to apply: the
        oldest it has not finished (as IoT jobs queue), else the newest (already applied); None when there is none
        or the rollout rate holds this thing back for now. Handing it out creates the QUEUED execution. It carries
        what the thing's other targets deployed to it (DeviceTarget.others)."""
        return self.targets_for([thing])[thing]

    def targets_for(self, things: Sequence[str]) -> dict[str, DeviceTarget | None]:
        """`target_for` of many things in one transaction, in their order (a host of light devices polls for all
        of its turbines at once; nacelle/local/edge/light.py)."""
        with self._tx() as tx:
            return {thing: self._target_for(tx, thing) for thing in things}

    def _target_for(self, tx: Tx, thing: str) -> DeviceTarget | None:
        self._seen(tx, thing)
        targets = self._targets_of(tx.db, thing)
        in_force = []  # at most one per target, oldest first
        for (dep,) in tx.db.execute(f"SELECT id FROM deployments WHERE status = 'ACTIVE' AND grp IN"
                                    f" ({', '.join('?' * len(targets))}) ORDER BY seq", targets).fetchall():
            row = self._refresh(tx, dep)
            if row["status"] == "ACTIVE":
                in_force.append(row)
        finished = {r[0] for r in tx.db.execute(
            f"SELECT deployment_id FROM executions WHERE thing = ? AND status IN"
            f" ({', '.join('?' * len(TERMINAL_EXECUTION))})", (thing, *TERMINAL_EXECUTION))}
        pending = [row for row in in_force if row["id"] not in finished]
        for row in pending:
            if self._start_execution(tx, row, thing):
                return self._device_target(tx, row, thing, targets)
        if pending or not in_force:
            return None  # held back by a rollout rate, or nothing deployed to it
        return self._device_target(tx, in_force[-1], thing, targets)

    def _start_execution(self, tx: Tx, row: sqlite3.Row, thing: str) -> bool:
        """The thing's execution of the deployment exists, or was just QUEUED; False: the rollout rate holds it."""
        dep = row["id"]
        if tx.db.execute("SELECT 1 FROM executions WHERE deployment_id = ? AND thing = ?",
                         (dep, thing)).fetchone() is not None:
            return True
        per_minute = rules.job_config(json.loads(row["request"])["iotJobConfiguration"]).maximum_per_minute
        started = tx.db.execute("SELECT COUNT(*) FROM executions WHERE deployment_id = ? AND created_at > ?",
                                (dep, tx.now - 60)).fetchone()[0]
        if per_minute is not None and started >= per_minute:
            return False
        tx.db.execute("INSERT INTO executions VALUES (?, ?, 'QUEUED', '', '[]', '[]', ?, NULL, ?)",
                      (dep, thing, tx.now, tx.now))
        return True

    @staticmethod
    def _device_target(tx: Tx, row: sqlite3.Row, thing: str, targets: Sequence[str]) -> DeviceTarget:
        """The deployment with, for each other target of the thing, its newest deployment the thing applied."""
        others: dict[str, Any] = {}
        for target in targets:
            if target == row["grp"]:
                continue
            last = tx.db.execute(
                "SELECT d.request FROM deployments d JOIN executions x ON x.deployment_id = d.id WHERE d.grp = ?"
                " AND x.thing = ? AND x.status IN (?, ?) ORDER BY d.seq DESC LIMIT 1", (target, thing, *SUCCESS),
            ).fetchone()
            if last is not None:
                applied = json.loads(last[0])
                others[applied["targetArn"]] = applied["components"]
        req = json.loads(row["request"])
        return DeviceTarget(row["id"], row["name"], req["targetArn"], req["components"], req["deploymentPolicies"],
                            req["iotJobConfiguration"], dt(row["created_at"]), others)

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
            if current is None and thing not in self._things_of(tx.db, row["grp"]):
                raise NotFound(f"{thing} is not a target of deployment {deployment_id} (it has no execution of it)")
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

    def list_deployments(self, group: str | None = None, *, thing: str | None = None) -> list[Deployment]:
        """Every deployment (to one thing group when `group` is given, to the thing itself when `thing` is), newest
        first."""
        key = THING_TARGET + thing if thing is not None else group
        with self._tx() as tx:
            ids = [r[0] for r in tx.db.execute(
                "SELECT id FROM deployments WHERE ? IS NULL OR grp = ? ORDER BY seq DESC", (key, key)).fetchall()]
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
        request = db.execute("SELECT request FROM deployments WHERE id = ?", (deployment_id,)).fetchone()[0]
        return str(json.loads(request)["targetArn"])

    def _check_target(self, db: sqlite3.Connection, target: str) -> None:
        if not target.startswith(THING_TARGET):
            self._group(db, target)
        elif not self._known(db, target[len(THING_TARGET):]):
            raise NotFound(f"no thing {target[len(THING_TARGET):]} in the local Greengrass (provision it first)")

    def _targets_of(self, db: sqlite3.Connection, thing: str) -> list[str]:
        """The deployment targets a thing belongs to: its groups and itself."""
        return [*(r[0] for r in db.execute("SELECT grp FROM members WHERE thing = ? ORDER BY grp", (thing,))),
                THING_TARGET + thing]

    def _things_of(self, db: sqlite3.Connection, target: str) -> list[str]:
        return [target[len(THING_TARGET):]] if target.startswith(THING_TARGET) else self._members(db, target)

    @staticmethod
    def _executions(db: sqlite3.Connection, where: str, arg: str) -> list[DeviceExecution]:
        rows = db.execute(f"SELECT x.*, d.name FROM executions x JOIN deployments d ON d.id = x.deployment_id"
                          f" WHERE {where} ORDER BY d.seq DESC", (arg,))
        return [execution(r) for r in rows]

    def _status(self, db: sqlite3.Connection, row: sqlite3.Row) -> DeploymentStatus:
        if row["status"] != "ACTIVE":
            return cast(DeploymentStatus, row["status"])
        members = self._things_of(db, row["grp"])
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


def _target_key(target_arn: str) -> str:
    """deployments.grp of a target ARN: a thing group's name, or THING_TARGET + a thing's name."""
    for prefix, key in ((_GROUP_ARN_PREFIX, ""), (_THING_ARN_PREFIX, THING_TARGET)):
        name = target_arn[len(prefix):] if target_arn.startswith(prefix) else ""
        if name:
            if "/" in name:
                break
            return key + name
    raise ConfigurationError(f"deployment target {target_arn!r}: the local Greengrass deploys to thing groups "
                             f"({_GROUP_ARN_PREFIX}<name>) and things ({_THING_ARN_PREFIX}<name>)")
