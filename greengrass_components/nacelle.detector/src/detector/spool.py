"""The durable outbox: outgoing messages in SQLite (WAL) under the work dir, sent in order.

* `append` gives each message the next order number; `peek` returns the oldest, `ack` removes it
  after the broker's PUBACK.
* Bounded by `max_messages`: when full, the oldest `health` message goes first, then the oldest
  anomaly `update` (a later update or the close carries what it said), then the oldest `stats` (a
  period's drift statistics: no later message repeats them, but one lost period only delays drift
  monitoring), then the oldest message of any kind (docs/fleet.md). Drops are counted in the
  database, so `dropped` survives restarts, and logged.
* Message `seq`: `append_message` takes the next value of the message's stream counter (one per
  topic kind: "anomalies", "health", "stats") and writes it into the payload in the same transaction as the
  insert, so `seq` keeps increasing across restarts and MessageBuilder's own counter is overridden.
* A failed write (disk full, I/O error) never raises: an append that cannot be written is counted as
  dropped (added to the stored counter by the next write that succeeds) and returns None; an ack that cannot
  delete its message hides it from `peek` and `depth` and is retried with the next write. `failures` counts
  both.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from shared.errors import ConfigurationError

log = logging.getLogger("detector.spool")

T = TypeVar("T")
DROP_ORDER = ("health", "update", "stats")  # kinds dropped first, oldest first; then the oldest of any kind

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,
                                   kind TEXT NOT NULL, payload BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS outbox_kind ON outbox (kind, id);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class SpoolEntry:
    id: int
    topic: str
    kind: str
    payload: bytes


class Spool:
    """Thread-safe (one connection behind a lock): producers append, one publisher peeks and acks."""

    def __init__(self, path: str | Path, max_messages: int) -> None:
        if max_messages < 1:
            raise ConfigurationError(f"spool.maxMessages must be >= 1, got {max_messages}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_messages = max_messages
        self._lock = threading.Lock()
        self.failures = 0  # writes that failed (appends and acks)
        self._lost = 0  # messages not written, not yet in the stored `dropped` counter
        self._gone: set[int] = set()  # acked or discarded, but the delete failed
        self._failing = False
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    # -- producers -----------------------------------------------------------------------------------
    def append(self, topic: str, payload: bytes, kind: str) -> int | None:
        """Queue one message; returns its order number (None: not written, counted as dropped)."""
        with self._lock:
            return self._write(lambda: self._insert(topic, bytes(payload), kind))

    def append_message(self, topic: str, kind: str, stream: str, message: dict[str, Any]) -> tuple[int, int] | None:
        """Queue a JSON message with `seq` = the next number of `stream`; returns (order, seq) (None: not
        written, counted as dropped; its seq is given to the next message)."""
        def insert() -> tuple[int, int]:
            seq = self._counter(stream) + 1
            self._set_counter(stream, seq)
            payload = json.dumps({**message, "seq": seq}, separators=(",", ":"), allow_nan=False).encode()
            return self._insert(topic, payload, kind), seq

        with self._lock:
            return self._write(insert)

    def _write(self, insert: Callable[[], T]) -> T | None:
        """One transaction: the pending deletes, the drops not yet counted, then `insert`."""
        try:
            with self._tx():
                self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in self._gone])
                if self._lost:
                    self._set_counter("dropped", self._counter("dropped") + self._lost)
                out = insert()
        except sqlite3.Error as exc:
            self._lost += 1
            self._failed("message not spooled (counted as dropped)", exc)
            return None
        self._gone.clear()
        self._lost = 0
        self._recovered()
        return out

    def _insert(self, topic: str, payload: bytes, kind: str) -> int:
        depth = self._depth()
        while depth >= self.max_messages:
            self._drop_one()
            depth -= 1
        cur = self._db.execute("INSERT INTO outbox (topic, kind, payload) VALUES (?, ?, ?)", (topic, kind, payload))
        return int(cur.lastrowid or 0)

    def _drop_one(self) -> None:
        row = None
        for kind in DROP_ORDER:
            row = self._db.execute("SELECT id, topic, kind FROM outbox WHERE kind = ? ORDER BY id LIMIT 1",
                                   (kind,)).fetchone()
            if row:
                break
        if row is None:
            row = self._db.execute("SELECT id, topic, kind FROM outbox ORDER BY id LIMIT 1").fetchone()
        self._db.execute("DELETE FROM outbox WHERE id = ?", (row[0],))
        self._set_counter("dropped", self._counter("dropped") + 1)
        log.warning("spool full (%d messages): dropped message %d (%s on %s)", self.max_messages, row[0],
                    row[2], row[1])

    # -- publisher -----------------------------------------------------------------------------------
    def peek(self) -> SpoolEntry | None:
        with self._lock:
            rows = self._db.execute("SELECT id, topic, kind, payload FROM outbox ORDER BY id LIMIT ?",
                                    (len(self._gone) + 1,)).fetchall()
        row = next((r for r in rows if r[0] not in self._gone), None)
        return None if row is None else SpoolEntry(int(row[0]), row[1], row[2], bytes(row[3]))

    def ack(self, entry_id: int) -> None:
        with self._lock:
            try:
                self._db.execute("DELETE FROM outbox WHERE id = ?", (entry_id,))
            except sqlite3.Error as exc:
                self._gone.add(entry_id)
                self._failed(f"message {entry_id} sent but not deleted (hidden, deleted with the next write)", exc)

    def discard(self, entry_id: int, reason: str) -> None:
        """Remove a message the broker refused for good (counted as dropped)."""
        with self._lock:
            log.error("dropped message %d: %s", entry_id, reason)
            try:
                with self._tx():
                    if self._db.execute("DELETE FROM outbox WHERE id = ?", (entry_id,)).rowcount:
                        self._set_counter("dropped", self._counter("dropped") + 1)
            except sqlite3.Error as exc:
                self._gone.add(entry_id)
                self._lost += 1
                self._failed(f"message {entry_id} not deleted (hidden, deleted with the next write)", exc)

    # -- state ---------------------------------------------------------------------------------------
    def depth(self) -> int:
        with self._lock:
            return self._depth() - len(self._gone)

    @property
    def dropped(self) -> int:
        with self._lock:
            return self._counter("dropped") + self._lost

    def seq(self, stream: str) -> int:
        """The last seq given out on `stream` (0 = none yet)."""
        with self._lock:
            return self._counter(stream)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- internals -----------------------------------------------------------------------------------
    def _tx(self) -> _Transaction:
        return _Transaction(self._db)

    def _failed(self, what: str, exc: sqlite3.Error) -> None:
        self.failures += 1
        if not self._failing:  # once per failing spell; `failures` counts them all
            log.error("spool write failed: %s: %s", what, exc)
        self._failing = True
        self._checkpoint()

    def _recovered(self) -> None:
        if self._failing:
            log.warning("spool writes succeed again (%d failed writes so far)", self.failures)
            self._checkpoint()
        self._failing = False

    def _checkpoint(self) -> None:
        """Move the write-ahead log into the database and truncate it: a full disk gets its space back as soon
        as there is room for the move (best effort)."""
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _depth(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return 0 if row is None else int(row[0])

    def _set_counter(self, name: str, value: int) -> None:
        self._db.execute("INSERT INTO counters (name, value) VALUES (?, ?) "
                         "ON CONFLICT(name) DO UPDATE SET value = excluded.value", (name, value))


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
                return
            except sqlite3.Error:
                self._rollback()
                raise
        self._rollback()

    def _rollback(self) -> None:
        if self.db.in_transaction:  # SQLite may have rolled back already (e.g. on a full disk)
            self.db.execute("ROLLBACK")
