"""Local jobs (training now, compile later): a SQLite table and detached runner processes.

A runner is its own process session, so it outlives a crashed `nacelle up`; the next `up` kills
such an orphan and reports the job Failed (never silently lost). A job started while no `up` runs
(`nacelle jobs retry` on a stopped stack) is `standalone`: the next `up` adopts it while it runs.
The runner reports the end of a job itself: it records the status and puts the AWS-shaped
state-change event on the bus.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nacelle.local.adapters.sqlite import connect
from shared.errors import JobAlreadyExists, JobNotFound

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    job_dir TEXT NOT NULL,
    pid INTEGER,
    failure_reason TEXT,
    model_key TEXT,
    created_at TEXT NOT NULL,
    ended_at TEXT,
    owner TEXT
)"""
STACK, STANDALONE = "stack", "standalone"  # who started a job: a running `nacelle up`, or a command without one
TERMINAL = ("Completed", "Failed", "Stopped")


@dataclass(frozen=True)
class JobRecord:
    name: str
    kind: str
    status: str
    request: dict[str, Any]
    job_dir: Path
    pid: int | None
    failure_reason: str | None
    model_key: str | None
    created_at: str
    ended_at: str | None
    owner: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "status": self.status, "pid": self.pid,
                "failure_reason": self.failure_reason, "model_key": self.model_key,
                "created_at": self.created_at, "ended_at": self.ended_at, "job_dir": str(self.job_dir),
                "owner": self.owner, "request": self.request}


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


class JobTable:
    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        db_path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(SCHEMA)
            if "owner" not in {r[1] for r in db.execute("PRAGMA table_info(jobs)")}:  # a table from before
                db.execute("ALTER TABLE jobs ADD COLUMN owner TEXT")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with connect(self.db_path) as db:
            yield db

    def create(self, name: str, kind: str, request: dict[str, Any], job_dir: Path) -> JobRecord:
        with self._connect() as db:
            try:
                db.execute("INSERT INTO jobs (name, kind, status, request, job_dir, created_at) "
                           "VALUES (?, ?, 'InProgress', ?, ?, ?)",
                           (name, kind, json.dumps(request), str(job_dir), now_iso()))
            except sqlite3.IntegrityError as exc:
                raise JobAlreadyExists(f"a job named {name} already exists") from exc
        return self.get(name)

    def get(self, name: str) -> JobRecord:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise JobNotFound(f"no local job named {name}")
        return _record(row)

    def list(self, kind: str | None = None) -> list[JobRecord]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM jobs WHERE ? IS NULL OR kind = ? ORDER BY created_at",
                              (kind, kind)).fetchall()
        return [_record(r) for r in rows]

    def set_pid(self, name: str, pid: int, owner: str = STACK) -> None:
        with self._connect() as db:
            db.execute("UPDATE jobs SET pid = ?, owner = ? WHERE name = ?", (pid, owner, name))

    def adopt(self, name: str) -> bool:
        """A running standalone job becomes the stack's (stopped and recovered with it from now on)."""
        with self._connect() as db:
            cur = db.execute("UPDATE jobs SET owner = ? WHERE name = ? AND owner = ? AND status = 'InProgress'",
                             (STACK, name, STANDALONE))
            return cur.rowcount == 1

    def finish(self, name: str, status: str, failure_reason: str | None = None,
               model_key: str | None = None) -> bool:
        """Record the end of a job once; False when it had already ended."""
        with self._connect() as db:
            cur = db.execute("UPDATE jobs SET status = ?, failure_reason = ?, model_key = ?, ended_at = ? "
                             "WHERE name = ? AND status = 'InProgress'",
                             (status, failure_reason, model_key, now_iso(), name))
            return cur.rowcount == 1


def _record(row: sqlite3.Row) -> JobRecord:
    return JobRecord(row["name"], row["kind"], row["status"], json.loads(row["request"]), Path(row["job_dir"]),
                     row["pid"], row["failure_reason"], row["model_key"], row["created_at"], row["ended_at"],
                     row["owner"])


_RUNNERS: list[subprocess.Popen[bytes]] = []  # kept so finished runners are reaped, not left as zombies


def stack_running(home: Path) -> bool:
    """Whether a `nacelle up` holds the data directory's lock (nacelle.local.runtime.stack.StackLock)."""
    path = home / "up.lock"
    if not path.exists():
        return False
    with path.open("r") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


def job_owner(home: Path) -> str:
    return STACK if stack_running(home) else STANDALONE


def spawn_runner(home: Path, name: str, log_file: Path) -> int:
    """Start `python -m nacelle.local.runtime.jobrunner` in its own session; returns its pid."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    _RUNNERS[:] = [p for p in _RUNNERS if p.poll() is None]
    with log_file.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "nacelle.local.runtime.jobrunner", str(home.resolve()), name],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=home)
    _RUNNERS.append(proc)
    return proc.pid


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of this process counts as dead
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def kill_group(pid: int) -> None:
    """Stop a runner and everything it started (its own process group)."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
