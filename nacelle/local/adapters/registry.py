"""ModelRegistry in SQLite, the local stand-in for the SageMaker Model Registry.

One database file (WAL mode) shared by every local process. Writers take SQLite's write lock up front
(BEGIN IMMEDIATE), so version numbers are assigned atomically across processes. Whenever a package is created or
its approval status changes, `on_change` receives the EventBridge event SageMaker would emit ("SageMaker Model
Package State Change", shape as in the SageMaker developer guide's EventBridge examples).
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from nacelle.local.adapters.sqlite import connect, immediate
from shared.aws.registry import CONTENT_TYPES, TOKEN_KEY, approval_description, validate_metadata
from shared.errors import ConfigurationError, ModelVersionNotFound
from shared.ports import ApprovalStatus, ModelVersion

REGION = "local"
ACCOUNT = "000000000000"
DETAIL_TYPE = "SageMaker Model Package State Change"
SOURCE = "aws.sagemaker"
REGISTER_ACTOR = "registry"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS groups (
    name TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    grp TEXT NOT NULL REFERENCES groups(name),
    version INTEGER NOT NULL,
    status TEXT NOT NULL,
    model_data_key TEXT NOT NULL,
    description TEXT NOT NULL,
    metadata TEXT NOT NULL,
    token TEXT NOT NULL,
    approval_description TEXT,
    created_at TEXT NOT NULL,
    modified_at TEXT NOT NULL,
    PRIMARY KEY (grp, version),
    UNIQUE (grp, token)
);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    grp TEXT NOT NULL,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_version ON history (grp, version, id);
CREATE TABLE IF NOT EXISTS outbox (  -- state changes committed but not yet announced (their event put after)
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    grp TEXT NOT NULL,
    version INTEGER NOT NULL
);
"""


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _event_time(stamp: str) -> str:
    # EventBridge and SageMaker's event detail write times as 2021-02-24T17:00:14Z.
    return datetime.fromisoformat(stamp).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def package_arn(group: str, version: int) -> str:
    return f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model-package/{group}/{version}"


class SqliteRegistry:
    def __init__(self, db_path: Path, bucket: str, on_change: Callable[[dict[str, Any]], None] | None = None,
                 *, image_uri: str = "nacelle-local/inference:latest",
                 clock: Callable[[], datetime] = _now) -> None:
        self.db_path = Path(db_path)
        self.bucket = bucket
        self.on_change = on_change
        self.image_uri = image_uri  # only shown in the events' InferenceSpecification
        self._clock = clock
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
        self._announce()  # what a process killed between a commit and its event left unannounced

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with connect(self.db_path) as db:
            yield db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A transaction holding the write lock from its first statement (reads inside it are consistent)."""
        with self._connect() as db, immediate(db):
            yield db

    # -- rows -> values -----------------------------------------------------------------------------------------

    @staticmethod
    def _row(db: sqlite3.Connection, group: str, version: int) -> sqlite3.Row:
        row = db.execute("SELECT * FROM versions WHERE grp = ? AND version = ?", (group, version)).fetchone()
        if row is None:
            raise ModelVersionNotFound(f"no model package {group}/{version}")
        return cast(sqlite3.Row, row)

    @staticmethod
    def _version(row: sqlite3.Row) -> ModelVersion:
        return ModelVersion(group=row["grp"], version=int(row["version"]), status=cast(ApprovalStatus, row["status"]),
                            model_data_key=row["model_data_key"], metadata=json.loads(row["metadata"]),
                            description=row["description"], created_at=datetime.fromisoformat(row["created_at"]),
                            arn=package_arn(row["grp"], int(row["version"])))

    def _state_change_event(self, row: sqlite3.Row) -> dict[str, Any]:
        """The EventBridge event SageMaker emits for this package in its current state."""
        arn = package_arn(row["grp"], int(row["version"]))
        detail: dict[str, Any] = {
            "ModelPackageGroupName": row["grp"],
            "ModelPackageVersion": int(row["version"]),
            "ModelPackageArn": arn,
            "ModelPackageName": row["grp"],  # a versioned package is named after its group
            "ModelPackageDescription": row["description"],
            "CreationTime": _event_time(row["created_at"]),
            "InferenceSpecification": {
                "Containers": [{"Image": self.image_uri,
                                "ModelDataUrl": f"s3://{self.bucket}/{row['model_data_key']}"}],
                "SupportedContentTypes": CONTENT_TYPES,
                "SupportedResponseMIMETypes": CONTENT_TYPES,
            },
            "ModelPackageStatus": "Completed",
            "ModelPackageStatusDetails": {"ValidationStatuses": [], "ImageScanStatuses": []},
            "CertifyForMarketplace": False,
            "ModelApprovalStatus": row["status"],
            "LastModifiedTime": _event_time(row["modified_at"]),
        }
        if row["approval_description"] is not None:
            detail["ApprovalDescription"] = row["approval_description"]
        return {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": DETAIL_TYPE,
            "source": SOURCE,
            "account": ACCOUNT,
            "time": _event_time(row["modified_at"]),
            "region": REGION,
            "resources": [arn],
            "detail": detail,
        }

    def _announce(self) -> None:
        """Put the state change event of every change in the outbox (written in the change's own transaction), then
        drop it: a change is announced at least once, even when its process was killed right after the commit.
        Called after each commit, so a listener reading the registry sees the new state."""
        if self.on_change is None:
            return
        with self._connect() as db:
            pending = db.execute("SELECT id, grp, version FROM outbox ORDER BY id").fetchall()
        for entry_id, group, version in pending:
            with self._connect() as db:
                row = self._row(db, group, version)
            self.on_change(self._state_change_event(row))
            with self._write() as db:
                db.execute("DELETE FROM outbox WHERE id = ?", (entry_id,))

    @staticmethod
    def _to_announce(db: sqlite3.Connection, group: str, version: int) -> None:
        db.execute("INSERT INTO outbox (grp, version) VALUES (?, ?)", (group, version))

    # -- ModelRegistry --------------------------------------------------------------------------------------------

    def ensure_group(self, group: str, description: str = "") -> None:
        with self._connect() as db:
            db.execute("INSERT OR IGNORE INTO groups (name, description, created_at) VALUES (?, ?, ?)",
                       (group, description, _iso(self._clock())))

    def register(self, group: str, model_data_key: str, status: ApprovalStatus, description: str,
                 metadata: Mapping[str, str], idempotency_token: str) -> ModelVersion:
        properties = validate_metadata({**metadata, TOKEN_KEY: idempotency_token})
        with self._write() as db:
            existing = db.execute("SELECT * FROM versions WHERE grp = ? AND token = ?",
                                  (group, idempotency_token)).fetchone()
            if existing is not None:
                return self._version(existing)
            if db.execute("SELECT 1 FROM groups WHERE name = ?", (group,)).fetchone() is None:
                raise ConfigurationError(f"model package group {group} does not exist; call ensure_group first")
            version = int(db.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE grp = ?",
                                     (group,)).fetchone()[0])
            now = _iso(self._clock())
            db.execute("INSERT INTO versions (grp, version, status, model_data_key, description, metadata, token, "
                       "created_at, modified_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (group, version, status, model_data_key, description, json.dumps(properties),
                        idempotency_token, now, now))
            db.execute("INSERT INTO history (grp, version, status, actor, reason, at) VALUES (?, ?, ?, ?, ?, ?)",
                       (group, version, status, REGISTER_ACTOR, "registered", now))
            self._to_announce(db, group, version)
            row = self._row(db, group, version)
        self._announce()
        return self._version(row)

    def get(self, group: str, version: int) -> ModelVersion:
        with self._connect() as db:
            return self._version(self._row(db, group, version))

    def list(self, group: str, status: ApprovalStatus | None = None) -> list[ModelVersion]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM versions WHERE grp = ? AND (? IS NULL OR status = ?) ORDER BY version",
                              (group, status, status)).fetchall()
        return [self._version(row) for row in rows]

    def set_status(self, group: str, version: int, status: ApprovalStatus, reason: str, actor: str) -> ModelVersion:
        with self._write() as db:
            before = self._row(db, group, version)
            now = _iso(self._clock())
            db.execute("UPDATE versions SET status = ?, approval_description = ?, modified_at = ? "
                       "WHERE grp = ? AND version = ?",
                       (status, approval_description(actor, reason), now, group, version))
            db.execute("INSERT INTO history (grp, version, status, actor, reason, at) VALUES (?, ?, ?, ?, ?, ?)",
                       (group, version, status, actor, reason, now))
            if before["status"] != status:
                self._to_announce(db, group, version)
            row = self._row(db, group, version)
        self._announce()
        return self._version(row)

    def update_metadata(self, group: str, version: int, metadata: Mapping[str, str]) -> ModelVersion:
        with self._write() as db:
            current = self._row(db, group, version)
            merged = validate_metadata({**json.loads(current["metadata"]), **metadata})
            db.execute("UPDATE versions SET metadata = ?, modified_at = ? WHERE grp = ? AND version = ?",
                       (json.dumps(merged), _iso(self._clock()), group, version))
            row = self._row(db, group, version)
        return self._version(row)

    # -- local only -----------------------------------------------------------------------------------------------

    def history(self, group: str, version: int) -> builtins.list[dict[str, Any]]:
        """Every status the version has had, oldest first: version, status, actor, reason, at (ISO 8601, UTC)."""
        with self._connect() as db:
            self._row(db, group, version)
            rows = db.execute("SELECT version, status, actor, reason, at FROM history WHERE grp = ? AND version = ? "
                              "ORDER BY id", (group, version)).fetchall()
        return [dict(row) for row in rows]
