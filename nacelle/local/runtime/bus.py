"""The local event bus: EventBridge, Lambda async invoke and one-time Scheduler schedules, durable in SQLite.

`EventBus.put` stores the event and one delivery per matching rule in one transaction, then wakes the
dispatcher: a Condition for puts in this process, a datagram on `<db>.sock` for puts from other processes.
Concurrent puts of one process share a transaction (group commit: one commit, one fsync of the WAL for all of
them); each returns once its own event is committed. The database keeps SQLite's default synchronous=FULL with
WAL, so a put that returned survives a power loss.
`Dispatcher` claims due deliveries, calls the targets on a small pool and retries failures with exponential
backoff; after `max_attempts` a delivery is dead (a dead letter) until redriven. Delivery is at-least-once:
a delivery interrupted by a crash is made again when the next dispatcher starts.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import random
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal

from nacelle.local.adapters.sqlite import immediate
from nacelle.local.runtime.patterns import EventTest, compile_pattern
from shared.errors import AdapterError, ConfigurationError, Conflict, DataError, NacelleError, NotFound
from shared.ports import Envelope

log = logging.getLogger(__name__)

DeliveryStatus = Literal["pending", "delivering", "done", "dead"]
STATUSES: tuple[DeliveryStatus, ...] = ("pending", "delivering", "done", "dead")
Target = Callable[[dict[str, Any]], object]
Clock = Callable[[], float]

BUSY_TIMEOUT_MS = 30_000
MAX_SOCKET_PATH = 100  # AF_UNIX allows 108 bytes on Linux, 104 on macOS

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id         TEXT PRIMARY KEY,
    body       TEXT NOT NULL,           -- the event exactly as targets receive it (EventBridge shape), JSON
    dedup_key  TEXT UNIQUE,             -- the name of a one-time schedule; NULL for plain puts
    put_at     REAL NOT NULL            -- epoch seconds
);
CREATE TABLE IF NOT EXISTS deliveries (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT NOT NULL REFERENCES events (id),
    rule         TEXT NOT NULL,
    target       TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('pending', 'delivering', 'done', 'dead')),
    attempts     INTEGER NOT NULL DEFAULT 0,  -- attempts started, counted when claimed
    available_at REAL NOT NULL,               -- due from (epoch seconds)
    last_error   TEXT,                        -- "ExceptionType: message" of the last failed attempt
    updated_at   REAL NOT NULL,
    UNIQUE (event_id, rule)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, available_at);
"""


@dataclass(frozen=True)
class Rule:
    """An EventBridge rule with one target: events matching `pattern` go to the target named `target`."""

    name: str
    target: str
    pattern: Mapping[str, Any]
    _test: EventTest = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_test", compile_pattern(self.pattern))  # ConfigurationError when malformed

    def matches(self, event: Mapping[str, Any]) -> bool:
        return self._test(event)


@dataclass(frozen=True)
class Delivery:
    """One event on its way to one rule's target."""

    id: int
    event_id: str
    rule: str
    target: str
    status: DeliveryStatus
    attempts: int
    available_at: float  # epoch seconds
    last_error: str | None
    updated_at: float


@dataclass(frozen=True)
class _Claim:
    id: int
    target: str
    attempts: int  # including the attempt being made
    body: str


@dataclass(eq=False)
class _Put:
    """One put() waiting for its group commit; the leader of the commit fills in the outcome."""

    event_id: str
    body: str
    dedup_key: str | None
    now: float
    due: float
    targets: list[tuple[str, str]]
    done: bool = False
    stored: bool = False  # False with no error: the dedup key was already used
    error: BaseException | None = None


def socket_path_for(db_path: Path) -> Path:
    """`<db>.sock`, or a name hashed from it in /tmp when that is too long for AF_UNIX."""
    path = Path(f"{db_path.resolve()}.sock")
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(os.fsencode(path)).hexdigest()[:24]
    return Path("/tmp") / f"nacelle-bus-{digest}.sock"  # not TMPDIR: every process must agree on it


class EventBus:
    """Durable events and deliveries in SQLite (WAL); safe to share between threads and processes."""

    def __init__(self, db_path: Path, rules: Sequence[Rule], *, region: str = "local",
                 account: str = "000000000000", clock: Clock = time.time) -> None:
        names = [rule.name for rule in rules]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"rule names must be unique, got {names}")
        self.db_path = Path(db_path)
        self.rules = tuple(rules)
        self.region = region
        self.account = account
        self.clock = clock
        self.socket_path = socket_path_for(self.db_path)
        self._local = threading.local()  # one connection per thread
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        # Wake-ups: every put, redrive or finished delivery bumps the generation under the condition.
        self.wakeup = threading.Condition()
        self.generation = 0
        self.dispatcher_attached = False  # a dispatcher of this instance listens: skip the datagram
        # Group commit of concurrent puts (_commit): the puts waiting for a transaction, and whether one is under way.
        self._group = threading.Condition(threading.Lock())
        self._queue: list[_Put] = []
        self._leading = False
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:  # not a database, or a damaged one
            raise NacelleError(f"{self.db_path}: the event bus cannot be read ({exc}); move it aside to start a new "
                               "one (the events and deliveries it held, pending ones included, are lost)") from exc

    # -- publishing ------------------------------------------------------------------------------
    def put(self, envelope: Envelope | Mapping[str, Any], deliver_at: datetime | None = None,
            dedup_key: str | None = None) -> str | None:
        """Store the event and its deliveries; returns its id, or None when `dedup_key` was already used.

        `deliver_at` delays every delivery (a naive datetime is UTC, as in Scheduler's at() expressions).
        Returns once the event is committed. Concurrent puts of this instance share one transaction and its
        commit (group commit: _commit), each isolated by a savepoint, so one refused event refuses only itself.
        """
        now = self.clock()
        due = now if deliver_at is None else _epoch(deliver_at)
        event, body, targets = self._encode(envelope, due)
        put = _Put(str(event["id"]), body, dedup_key, now, due, targets)
        self._commit(put)
        if put.error is not None:
            raise put.error
        if put.stored and targets:
            self.wake()
        return put.event_id if put.stored else None

    def put_many(self, envelopes: Sequence[Envelope | Mapping[str, Any]]) -> list[str]:
        """Store events due now and their deliveries in one transaction (one commit for the batch);
        returns their ids. All or none: one bad event refuses the batch."""
        now = self.clock()
        rows, deliveries = [], []
        for envelope in envelopes:
            event, body, targets = self._encode(envelope, now)
            rows.append((event["id"], body, None, now))
            deliveries += [(event["id"], rule, target, now, now) for rule, target in targets]
        if not rows:
            return []
        with self._transaction() as conn:
            try:
                conn.executemany("INSERT INTO events (id, body, dedup_key, put_at) VALUES (?, ?, ?, ?)", rows)
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"an event of the batch is already on the bus: {exc}") from exc
            conn.executemany(
                "INSERT INTO deliveries (event_id, rule, target, status, available_at, updated_at)"
                " VALUES (?, ?, ?, 'pending', ?, ?)", deliveries)
        if deliveries:
            self.wake()
        return [row[0] for row in rows]

    def publish(self, event: Envelope | Mapping[str, Any], deliver_at: datetime | None = None,
                dedup_key: str | None = None) -> None:
        """shared.ports.EventPublisher. As on AWS: an event due now is put at once and never de-duplicated;
        `dedup_key` only names a delayed delivery (a schedule)."""
        if deliver_at is None or _epoch(deliver_at) <= self.clock():
            deliver_at = dedup_key = None
        self.put(event, deliver_at, dedup_key)

    # -- inspection and operations ---------------------------------------------------------------
    def event(self, event_id: str) -> dict[str, Any]:
        row = self._connect().execute("SELECT body FROM events WHERE id = ?", (event_id,)).fetchone()
        if row is None:
            raise NotFound(f"no event {event_id} on the bus")
        event: dict[str, Any] = json.loads(row[0])
        return event

    def events(self, detail_type: str) -> list[tuple[dict[str, Any], float]]:
        """Every stored event of one detail-type with the time it was put, oldest first."""
        rows = self._connect().execute("SELECT body, put_at FROM events ORDER BY put_at").fetchall()
        out = [(json.loads(body), float(put_at)) for body, put_at in rows]
        return [(event, at) for event, at in out if event.get("detail-type") == detail_type]

    def deliveries(self, status: DeliveryStatus | None = None, *, event_id: str | None = None) -> list[Delivery]:
        """Deliveries in insertion order, optionally of one status and/or one event."""
        filters = {column: value for column, value in (("status", status), ("event_id", event_id))
                   if value is not None}
        where = " AND ".join(f"{column} = ?" for column in filters) or "1 = 1"
        rows = self._connect().execute(f"SELECT * FROM deliveries WHERE {where} ORDER BY id",
                                       list(filters.values())).fetchall()
        return [Delivery(**dict(row)) for row in rows]

    def dlq(self) -> list[Delivery]:
        """Dead letters: deliveries that failed max_attempts times or had no such target."""
        return self.deliveries("dead")

    def redrive(self, delivery_ids: Sequence[int] | None = None) -> int:
        """Dead deliveries (all, or those ids) back to pending now with attempts reset; returns how many."""
        now = self.clock()
        query = "UPDATE deliveries SET status = 'pending', attempts = 0, available_at = ?, updated_at = ?" \
                " WHERE status = 'dead'"
        args: list[Any] = [now, now]
        if delivery_ids is not None:
            query += f" AND id IN ({', '.join('?' * len(delivery_ids))})"
            args += list(delivery_ids)
        with self._transaction() as conn:
            count = conn.execute(query, args).rowcount
        if count:
            self.wake()
        return count

    def stats(self) -> dict[str, int]:
        """Number of events, and of deliveries per status."""
        conn = self._connect()
        counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
        counts.update(conn.execute("SELECT status, COUNT(*) FROM deliveries GROUP BY status").fetchall())
        return {"events": conn.execute("SELECT COUNT(*) FROM events").fetchone()[0], **counts}

    def close(self) -> None:
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def __enter__(self) -> EventBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- wake-ups --------------------------------------------------------------------------------
    def wake(self) -> None:
        """Wake the dispatcher: in this process through the condition, in another through its socket."""
        self.notify()
        if self.dispatcher_attached:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            with suppress(OSError):  # nobody listening (or its queue is full: it is awake anyway)
                sock.sendto(b"put", os.fsencode(self.socket_path))

    def notify(self) -> None:
        with self.wakeup:
            self.generation += 1
            self.wakeup.notify_all()

    # -- the dispatcher's side -------------------------------------------------------------------
    def claim(self, now: float, limit: int) -> list[_Claim]:
        """Atomically move up to `limit` due pending deliveries to delivering, counting the attempt."""
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT d.id, d.target, d.attempts + 1, e.body FROM deliveries d JOIN events e ON e.id = d.event_id"
                " WHERE d.status = 'pending' AND d.available_at <= ? ORDER BY d.available_at, d.id LIMIT ?",
                (now, limit)).fetchall()
            conn.executemany(
                "UPDATE deliveries SET status = 'delivering', attempts = attempts + 1, updated_at = ? WHERE id = ?",
                [(now, row[0]) for row in rows])
        return [_Claim(*row) for row in rows]

    def settle(self, delivery_id: int, status: DeliveryStatus, now: float, error: str | None = None,
               available_at: float | None = None) -> None:
        """Record the outcome of an attempt: done, dead, or pending again from `available_at`."""
        with self._transaction() as conn:
            conn.execute(
                "UPDATE deliveries SET status = ?, updated_at = ?, last_error = COALESCE(?, last_error),"
                " available_at = COALESCE(?, available_at) WHERE id = ? AND status = 'delivering'",
                (status, now, error, available_at, delivery_id))

    def recover(self, now: float, max_attempts: int) -> int:
        """Deliveries a dead dispatcher left in delivering: pending again, or dead when out of attempts."""
        with self._transaction() as conn:
            count = conn.execute(
                "UPDATE deliveries SET status = CASE WHEN attempts >= ? THEN 'dead' ELSE 'pending' END,"
                " available_at = ?, updated_at = ?, last_error = 'Interrupted: the dispatcher stopped mid-delivery'"
                " WHERE status = 'delivering'", (max_attempts, now, now)).rowcount
        if count:
            self.notify()
        return count

    def next_due(self) -> float | None:
        """The earliest available_at of a pending delivery."""
        row = self._connect().execute("SELECT MIN(available_at) FROM deliveries WHERE status = 'pending'").fetchone()
        return None if row[0] is None else float(row[0])

    # -- internals -------------------------------------------------------------------------------
    def _encode(self, envelope: Envelope | Mapping[str, Any], due: float
                ) -> tuple[dict[str, Any], str, list[tuple[str, str]]]:
        """The event as stored (EventBridge shape), its JSON body and its (rule, target) deliveries."""
        event = self._event_dict(envelope, due)
        try:
            body = json.dumps(event, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise DataError(f"event {event['detail-type']!r} from {event['source']!r} is not JSON: {exc}") from exc
        return event, body, [(rule.name, rule.target) for rule in self.rules if rule.matches(event)]

    def _event_dict(self, envelope: Envelope | Mapping[str, Any], due: float) -> dict[str, Any]:
        if not isinstance(envelope, Envelope):
            missing = [key for key in ("source", "detail-type", "detail") if key not in envelope]
            if missing:
                raise DataError(f"the event has no {', '.join(missing)}: {dict(envelope)!r}")
            envelope = Envelope(source=envelope["source"], detail_type=envelope["detail-type"],
                                detail=envelope["detail"], id=envelope.get("id") or "",
                                time=envelope.get("time") or "", resources=tuple(envelope.get("resources") or ()))
        if not (isinstance(envelope.source, str) and envelope.source):
            raise DataError(f"the event source must be a non-empty string, got {envelope.source!r}")
        if not (isinstance(envelope.detail_type, str) and envelope.detail_type):
            raise DataError(f"the event detail-type must be a non-empty string, got {envelope.detail_type!r}")
        if not isinstance(envelope.detail, Mapping):
            raise DataError(f"the event detail must be an object, got {envelope.detail!r}")
        event = envelope.to_dict(self.region, self.account)
        event["id"] = event["id"] or str(uuid.uuid4())
        # A delayed event is put by the schedule when it fires, so that is its time.
        event["time"] = event["time"] or datetime.fromtimestamp(due, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return event

    def _commit(self, put: _Put) -> None:
        """Group commit: queue `put`; the first caller to find no commit under way leads: it writes every queued
        put in one transaction and commits once, then hands over. Followers wait for the commit of their own
        put. The bus keeps SQLite's default synchronous=FULL, so a committed put is on disk when put() returns."""
        with self._group:
            self._queue.append(put)
            while not put.done:
                if not self._leading:
                    self._leading = True
                    batch, self._queue = self._queue, []
                    break
                self._group.wait()
            else:
                return
        committed = False
        try:
            with self._transaction() as conn:
                for queued in batch:
                    self._write(conn, queued)
            committed = True
        except Exception as exc:  # nothing of the batch was committed: every put of it fails with the cause
            for queued in batch:
                queued.error = exc
        finally:
            with self._group:
                for queued in batch:
                    if not committed:
                        queued.stored = False
                        # the leader was interrupted (KeyboardInterrupt...): it raises that itself
                        queued.error = queued.error or AdapterError("the bus transaction was interrupted")
                    queued.done = True
                self._leading = False
                self._group.notify_all()

    @staticmethod
    def _write(conn: sqlite3.Connection, put: _Put) -> None:
        """One put inside the batch's transaction, under its own savepoint."""
        conn.execute("SAVEPOINT put")
        try:
            if put.dedup_key is not None and conn.execute(
                    "SELECT 1 FROM events WHERE dedup_key = ?", (put.dedup_key,)).fetchone():
                conn.execute("RELEASE put")
                return
            conn.execute("INSERT INTO events (id, body, dedup_key, put_at) VALUES (?, ?, ?, ?)",
                         (put.event_id, put.body, put.dedup_key, put.now))
            conn.executemany(
                "INSERT INTO deliveries (event_id, rule, target, status, available_at, updated_at)"
                " VALUES (?, ?, ?, 'pending', ?, ?)",
                [(put.event_id, rule, target, put.due, put.now) for rule, target in put.targets])
        except sqlite3.IntegrityError as exc:
            conn.execute("ROLLBACK TO put")
            conn.execute("RELEASE put")
            put.error = Conflict(f"an event with id {put.event_id} is already on the bus")
            put.error.__cause__ = exc
            return
        conn.execute("RELEASE put")
        put.stored = True

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: autocommit, transactions only where we BEGIN them
            conn = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.row_factory = sqlite3.Row
            with self._connections_lock:
                self._connections.append(conn)
            self._local.conn = conn
        return conn

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return immediate(self._connect())


class Dispatcher:
    """Delivers the bus's due deliveries to targets (the Lambda async invoke of the local stack).

    One dispatcher per database (a lock file enforces it). `start()` runs a thread that wakes on puts,
    claims due deliveries and hands them to a pool of `workers`; between events it sleeps until the
    earliest pending delivery is due, or until woken.
    """

    def __init__(self, bus: EventBus, targets: Mapping[str, Target], *, max_attempts: int = 5,
                 backoff_base_s: float = 1.0, backoff_max_s: float = 60.0, workers: int = 4,
                 clock: Clock | None = None, jitter: float = 0.1) -> None:
        if max_attempts < 1 or workers < 1 or backoff_base_s < 0 or backoff_max_s < 0 or jitter < 0:
            raise ConfigurationError("the dispatcher needs max_attempts >= 1, workers >= 1, backoffs and jitter >= 0")
        self.bus = bus
        self.targets = dict(targets)
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.workers = workers
        self.clock = clock or bus.clock
        self.jitter = jitter
        self.loop_iterations = 0  # passes of the dispatch loop; stays flat while idle (no polling)
        self._random = random.Random()
        self._lock_path = self.bus.db_path.with_name(f"{self.bus.db_path.name}.lock")
        self._lock_fd: int | None = None
        self._inflight = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._listener: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._pool: ThreadPoolExecutor | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Take the database's dispatcher lock, recover interrupted deliveries and start delivering."""
        if self._thread is not None:
            return
        self._acquire_lock()
        try:
            recovered = self.recover()
            if recovered:
                log.warning("recovered interrupted deliveries count=%d", recovered)
            self._socket = self._bind()
        except BaseException:
            self._release_lock()
            raise
        self.bus.dispatcher_attached = True
        self._stopping = False
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="nacelle-bus-worker")
        self._listener = threading.Thread(target=self._listen, args=(self._socket,), name="nacelle-bus-socket",
                                          daemon=True)
        self._thread = threading.Thread(target=self._run, name="nacelle-bus-dispatcher", daemon=True)
        self._listener.start()
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop claiming, wait up to `timeout` for deliveries in flight, release the socket and the lock.

        A delivery still running after `timeout` stays `delivering` and is made again by the next start.
        """
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout
        with self.bus.wakeup:
            self._stopping = True
            self.bus.wakeup.notify_all()
        assert self._socket is not None and self._listener is not None and self._pool is not None
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, suppress(OSError):
            sock.sendto(b"stop", os.fsencode(self.bus.socket_path))  # unblocks the listener's recv
        self._thread.join(timeout)
        self._listener.join(max(0.0, deadline - time.monotonic()))
        with self.bus.wakeup:
            idle = self.bus.wakeup.wait_for(lambda: self._inflight == 0, max(0.0, deadline - time.monotonic()))
        if not idle:
            log.warning("deliveries still running at stop count=%d", self._inflight)
        self._pool.shutdown(wait=False)
        self._socket.close()
        self.bus.socket_path.unlink(missing_ok=True)
        self.bus.dispatcher_attached = False
        self._release_lock()
        self._thread = self._listener = self._socket = self._pool = None

    def __enter__(self) -> Dispatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def recover(self) -> int:
        """Put deliveries left `delivering` by a dead dispatcher back to pending; returns how many.

        Takes the dispatcher lock for the moment when not started: Conflict while another dispatcher runs.
        """
        held = self._lock_fd is not None
        if not held:
            self._acquire_lock()
        try:
            return self.bus.recover(self.clock(), self.max_attempts)
        finally:
            if not held:
                self._release_lock()

    def run_until_idle(self, timeout_s: float = 10.0) -> int:
        """Deliver, in this thread, everything due now (and what that puts); returns how many were done."""
        deadline = time.monotonic() + timeout_s
        done = 0
        while time.monotonic() < deadline:
            claims = self.bus.claim(self.clock(), 1)
            if not claims:
                break
            if self._deliver(claims[0]):
                done += 1
        return done

    # -- the loop --------------------------------------------------------------------------------
    def _run(self) -> None:
        bus = self.bus
        while True:
            with bus.wakeup:
                if self._stopping:
                    return
                seen = bus.generation
            self.loop_iterations += 1
            try:
                timeout = self._dispatch_due()
            except sqlite3.Error:
                log.exception("the bus database failed; retrying in 1 s")
                timeout = 1.0
            with bus.wakeup:  # a put since `seen` changed the generation: no lost wake-up
                bus.wakeup.wait_for(partial(self._woken, seen), timeout)

    def _woken(self, seen: int) -> bool:
        return self._stopping or self.bus.generation != seen

    def _dispatch_due(self) -> float | None:
        """Hand due deliveries to free workers; return how long to sleep (None: until woken)."""
        assert self._pool is not None
        with self.bus.wakeup:
            free = self.workers - self._inflight
        if free <= 0:
            return None  # a finishing worker wakes us
        claims = self.bus.claim(self.clock(), free)
        with self.bus.wakeup:
            self._inflight += len(claims)
        for claim in claims:
            self._pool.submit(self._work, claim)
        if len(claims) == free:
            return None
        due = self.bus.next_due()
        return None if due is None else max(0.0, due - self.clock())

    def _listen(self, sock: socket.socket) -> None:
        while True:
            try:
                sock.recv(16)  # blocks until a put in another process (or stop) sends a datagram
                while True:  # one wake-up for a burst
                    sock.recv(16, socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass
            except OSError:
                return
            if self._stopping:
                return
            self.bus.notify()

    def _work(self, claim: _Claim) -> None:
        try:
            self._deliver(claim)
        except Exception:  # the bus itself failed; the row stays delivering until the next start
            log.exception("could not record a delivery outcome delivery_id=%d", claim.id)
        finally:
            with self.bus.wakeup:
                self._inflight -= 1
            self.bus.notify()

    def _deliver(self, claim: _Claim) -> bool:
        """Make one attempt and record its outcome; True when the target succeeded."""
        target = self.targets.get(claim.target)
        if target is None:
            error = f"ConfigurationError: no target named {claim.target!r} (known: {sorted(self.targets)})"
            log.error("dead letter delivery_id=%d error=%s", claim.id, error)
            self.bus.settle(claim.id, "dead", self.clock(), error)
            return False
        try:
            target(json.loads(claim.body))
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            now = self.clock()
            if claim.attempts >= self.max_attempts:
                log.error("dead letter delivery_id=%d target=%s attempts=%d error=%s",
                          claim.id, claim.target, claim.attempts, error)
                self.bus.settle(claim.id, "dead", now, error)
            else:
                retry_at = now + self._backoff(claim.attempts)
                log.warning("delivery failed delivery_id=%d target=%s attempts=%d retry_in=%.2fs error=%s",
                            claim.id, claim.target, claim.attempts, retry_at - now, error)
                self.bus.settle(claim.id, "pending", now, error, retry_at)
            return False
        self.bus.settle(claim.id, "done", self.clock())
        return True

    def _backoff(self, attempts: int) -> float:
        delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempts - 1))
        return min(self.backoff_max_s, delay * (1 + self.jitter * self._random.random()))

    # -- the dispatcher lock and the wake-up socket ----------------------------------------------
    def _acquire_lock(self) -> None:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the kernel if this process dies
        except BlockingIOError:
            os.close(fd)
            raise Conflict(f"another dispatcher is running on {self.bus.db_path}") from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def _bind(self) -> socket.socket:
        path = self.bus.socket_path
        path.unlink(missing_ok=True)  # we hold the lock: any socket file left there is stale
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(os.fsencode(path))
        except OSError:
            sock.close()
            raise
        return sock


def _epoch(moment: datetime) -> float:
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
