"""StateStore on SQLite: one table of (pk, sk) -> JSON attributes, safe across threads and processes."""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from nacelle.local.adapters.sqlite import immediate
from shared.errors import AdapterError, ConfigurationError

_SCHEMA = """CREATE TABLE IF NOT EXISTS items (
    pk TEXT NOT NULL, sk TEXT NOT NULL, attributes TEXT NOT NULL, PRIMARY KEY (pk, sk)
) WITHOUT ROWID"""
KEYS = ("pk", "sk")


def plain(value: Any, path: str) -> Any:
    """`value` as plain JSON (dicts and lists), refusing what DynamoStateStore refuses: non-string map keys,
    NaN and infinities, text that is not Unicode (a lone surrogate), non-JSON types."""
    if isinstance(value, str):
        _check_text(value, path)
        return value
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigurationError(f"state attribute {path} is {value!r}: only finite numbers can be stored")
        return value
    if isinstance(value, list | tuple):
        return [plain(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise ConfigurationError(f"state attribute {path} has a non-string map key")
        for k in value:
            _check_text(k, f"{path} key")
        return {k: plain(v, f"{path}.{k}") for k, v in value.items()}
    raise ConfigurationError(f"state attribute {path} is a {type(value).__name__}, not a JSON value")


def _check_text(value: str, path: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigurationError(f"state attribute {path} is not Unicode text (a lone surrogate): "
                                 "it cannot be stored") from None


def _dumps(attributes: Mapping[str, Any]) -> str:
    values = {name: plain(value, name) for name, value in attributes.items()}
    return json.dumps(values, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def check_key(pk: str, sk: str, item: Mapping[str, Any]) -> None:
    """An item may carry its own pk and sk (a dict from get() put back as it is), never other ones."""
    for name, value in (("pk", pk), ("sk", sk)):
        if name in item and item[name] != value:
            raise ConfigurationError(f"item {name}={item[name]!r} contradicts the key ({pk}, {sk})")


def same_value(a: Any, b: Any) -> bool:
    """Equality as DynamoDB compares: typed (True is not 1), numbers by value (1 == 1.0), lists and maps deeply."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


class SqliteStateStore:
    """The DynamoStateStore semantics: items come back with `pk` and `sk`; `update_if` is an upsert under its
    condition; an expected None matches an absent attribute or a stored null.

    One short-lived connection per call (WAL: readers never block the writer); conditional writes run inside
    BEGIN IMMEDIATE, which takes the write lock before reading, so check and write are one atomic step.
    """

    def __init__(self, db_path: Path, timeout_s: float = 30.0) -> None:
        self.db_path = db_path
        self.timeout_s = timeout_s
        db_path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the database file
            conn.execute(_SCHEMA)
        # Open (and reading the WAL index) for the store's lifetime, so a per-call connection is never the last one:
        # closing the last one checkpoints, fsyncs and deletes the -wal/-shm files, ~10x the cost of the call.
        self._keeper = sqlite3.connect(db_path, check_same_thread=False)
        self._keeper.execute("SELECT 1 FROM items LIMIT 1").fetchall()

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            # timeout is SQLite's busy timeout; isolation_level=None: autocommit unless we BEGIN ourselves.
            with closing(sqlite3.connect(self.db_path, timeout=self.timeout_s, isolation_level=None)) as conn:
                conn.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; a crash may lose only the last commits
                yield conn
        except sqlite3.Error as e:
            raise AdapterError(f"state database {self.db_path}: {e}") from e

    @contextmanager
    def _write_transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn, immediate(conn):
            yield conn

    @staticmethod
    def _row(pk: str, sk: str, attributes: str) -> dict[str, Any]:
        return {**json.loads(attributes), "pk": pk, "sk": sk}

    def get(self, pk: str, sk: str) -> dict[str, Any] | None:
        with self._connect() as conn:
            row = conn.execute("SELECT attributes FROM items WHERE pk = ? AND sk = ?", (pk, sk)).fetchone()
        return self._row(pk, sk, row[0]) if row else None

    def put(self, pk: str, sk: str, item: Mapping[str, Any], if_absent: bool = False) -> bool:
        check_key(pk, sk, item)
        attributes = _dumps({k: v for k, v in item.items() if k not in KEYS})
        # Single statements are atomic on their own.
        sql = ("INSERT INTO items VALUES (?, ?, ?) ON CONFLICT DO NOTHING" if if_absent
               else "INSERT OR REPLACE INTO items VALUES (?, ?, ?)")
        with self._connect() as conn:
            return conn.execute(sql, (pk, sk, attributes)).rowcount == 1

    def update_if(self, pk: str, sk: str, changes: Mapping[str, Any], expected: Mapping[str, Any]) -> bool:
        if not changes:
            raise ConfigurationError("update_if needs at least one change")
        if any(name in KEYS for name in changes):
            raise ConfigurationError("update_if cannot change pk or sk")
        _dumps(changes)
        with self._write_transaction() as conn:
            row = conn.execute("SELECT attributes FROM items WHERE pk = ? AND sk = ?", (pk, sk)).fetchone()
            current = self._row(pk, sk, row[0]) if row else {}
            for name, value in expected.items():
                if not (current.get(name) is None if value is None
                        else name in current and same_value(current[name], value)):
                    return False
            attributes = {k: v for k, v in current.items() if k not in KEYS} | dict(changes)
            conn.execute("INSERT OR REPLACE INTO items VALUES (?, ?, ?)", (pk, sk, _dumps(attributes)))
        return True

    def delete(self, pk: str, sk: str) -> bool:
        with self._connect() as conn:
            return conn.execute("DELETE FROM items WHERE pk = ? AND sk = ?", (pk, sk)).rowcount == 1

    def query(self, pk: str, sk_prefix: str = "") -> list[dict[str, Any]]:
        # substr() counts characters like len(); BINARY collation orders like DynamoDB (UTF-8 bytes).
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT sk, attributes FROM items WHERE pk = ? AND substr(sk, 1, ?) = ? ORDER BY sk",
                (pk, len(sk_prefix), sk_prefix)).fetchall()
        return [self._row(pk, sk, attributes) for sk, attributes in rows]
