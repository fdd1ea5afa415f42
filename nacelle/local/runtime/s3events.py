"""S3 -> EventBridge for the filesystem object store.

Every object written through `EventingObjectStore` produces an `Object Created` event (as S3 does
with EventBridge notifications on). `RawWatcher` also picks up files copied straight into the raw
folder, once their size and mtime have been stable for a moment (so half-copied files wait).

An object is marked announced only after its event is on the durable bus (an outbox): a writer
killed in between leaves it unmarked, and the watcher, or the next `data put` of the same file,
announces it. Consumers are idempotent, so the rare double announcement is harmless.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nacelle.local.adapters.objectstore import TMP_PREFIX, key_problem, remove_if_abandoned
from nacelle.local.runtime.awsevents import object_created
from shared.errors import NacelleError
from shared.observability import logger
from shared.ports import ObjectInfo

Publish = Callable[[dict[str, Any]], object]


class NotifiedKeys:
    """Which (key, size, mtime) have had their event, so nothing is announced twice by the watcher."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS notified (key TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER)")

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.db_path, timeout=30, isolation_level=None)

    def mark(self, key: str, size: int, mtime_ns: int) -> None:
        db = self._db()
        try:
            db.execute("INSERT OR REPLACE INTO notified VALUES (?, ?, ?)", (key, size, mtime_ns))
        finally:
            db.close()

    def get(self, key: str) -> tuple[int, int] | None:
        db = self._db()
        try:
            row = db.execute("SELECT size, mtime_ns FROM notified WHERE key = ?", (key,)).fetchone()
            return None if row is None else (int(row[0]), int(row[1]))
        finally:
            db.close()

    def seen(self) -> dict[str, tuple[int, int]]:
        db = self._db()
        try:
            return {k: (s, m) for k, s, m in db.execute("SELECT key, size, mtime_ns FROM notified")}
        finally:
            db.close()


class EventingObjectStore:
    """An ObjectStore that announces every object it creates."""

    def __init__(self, inner: Any, publish: Publish, notified: NotifiedKeys) -> None:
        self.inner = inner
        self.bucket: str = inner.bucket
        self._publish = publish
        self._notified = notified

    def _announce(self, key: str, data: bytes) -> None:
        stat = self.inner.path(key).stat()
        self._publish(object_created(self.bucket, key, len(data), hashlib.md5(data).hexdigest()))
        self._notified.mark(key, stat.st_size, stat.st_mtime_ns)  # only once the event is durable

    def announce_if_unannounced(self, key: str) -> bool:
        """Announce an object stored earlier whose event never went out (its writer was killed); True if so."""
        stat = self.inner.path(key).stat()
        if self._notified.get(key) == (stat.st_size, stat.st_mtime_ns):
            return False
        self._announce(key, self.get(key))
        return True

    def get(self, key: str) -> bytes:
        return bytes(self.inner.get(key))

    def size(self, key: str) -> int:
        return int(self.inner.size(key))

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.inner.put(key, data, content_type)
        self._announce(key, data)

    def put_if_absent(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> bool:
        created = bool(self.inner.put_if_absent(key, data, content_type))
        if created:
            self._announce(key, data)
        return created

    def exists(self, key: str) -> bool:
        return bool(self.inner.exists(key))

    def list(self, prefix: str) -> list[ObjectInfo]:
        return list(self.inner.list(prefix))

    def uri(self, key: str) -> str:
        return str(self.inner.uri(key))

    def path(self, key: str) -> Path:
        return Path(self.inner.path(key))


class RawWatcher:
    """Scans the raw folder for files that arrived without going through the store."""

    def __init__(self, bucket_dir: Path, bucket: str, publish: Publish, notified: NotifiedKeys,
                 interval_s: float = 1.0) -> None:
        self.bucket_dir, self.bucket = bucket_dir, bucket
        self._publish, self._notified, self.interval_s = publish, notified, interval_s
        self._pending: dict[str, tuple[int, int]] = {}
        self._reported: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def scan(self) -> list[str]:
        """One pass; returns the keys announced. A file is announced once its stat is stable; an entry
        that cannot become an object (its name, a link) is reported once and skipped; the temp file of
        a writer killed mid-write is removed."""
        raw = self.bucket_dir / "raw"
        if not raw.is_dir():
            return []
        seen = self._notified.seen()
        announced = []
        for path in sorted(raw.rglob("*")):
            try:
                if path.name.startswith(TMP_PREFIX):
                    remove_if_abandoned(path)
                    continue
                key = self._key(path)
                if key is None:
                    continue
                stat = path.stat()
                current = (stat.st_size, stat.st_mtime_ns)
                if seen.get(key) == current:
                    continue
                if self._pending.get(key) != current:
                    self._pending[key] = current  # first sight: wait one interval for the copy to finish
                    continue
                del self._pending[key]
                self._publish(object_created(self.bucket, key, stat.st_size, "", reason="CopyObject"))
                self._notified.mark(key, *current)  # only once the event is durable
                announced.append(key)
            except (OSError, NacelleError) as e:  # one bad entry never stops the watcher
                self._report(path, str(e))
        return announced

    def _key(self, path: Path) -> str | None:
        """The object key of a file in the raw folder; None for what is not an object (folders, hidden
        and temp files) or cannot be one (reported once)."""
        if path.is_symlink():
            self._report(path, "a symbolic link; copy the file itself")
            return None
        if not path.is_file() or path.name.startswith(".") or path.name.endswith(".tmp"):
            return None
        key = path.relative_to(self.bucket_dir).as_posix()
        if problem := key_problem(key):
            self._report(path, f"the name {problem}")
            return None
        return key

    def _report(self, path: Path, reason: str) -> None:
        name = repr(str(path))
        if name not in self._reported:
            self._reported.add(name)
            logger.warning("raw folder entry skipped", path=name, reason=reason)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="raw-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.scan()
            except Exception:  # e.g. the bus briefly locked: the next pass retries, the thread lives on
                logger.exception("raw folder scan failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
