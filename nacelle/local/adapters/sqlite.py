"""What the local SQLite stores share."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A transaction holding the write lock from its first statement, so a check and the write that
    depends on it are one atomic step across threads and processes (no lock-upgrade deadlocks).
    The connection must be in autocommit mode (isolation_level=None)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextmanager
def connect(db_path: Path, timeout_s: float = 30.0) -> Iterator[sqlite3.Connection]:
    """One connection per call (safe across threads and processes), rows by name, autocommit unless a
    transaction is begun (`immediate`), waiting up to `timeout_s` for another writer."""
    db = sqlite3.connect(db_path, timeout=timeout_s, isolation_level=None)
    db.row_factory = sqlite3.Row
    try:
        db.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
        yield db
    finally:
        db.close()
