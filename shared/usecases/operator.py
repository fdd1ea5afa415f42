"""What the operator console (services/console) reads and does, over the same ports and use cases the Lambdas and
the CLI use. The read models live in operator_models, operator_fleet, operator_alerts, operator_data and
operator_timeline; this module holds their dependencies, request checks and paging.

A runtime without some source (AWS has no local job table, device inventory or notification log) leaves it None;
the views then say less, never something else."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from shared.errors import DataError
from shared.usecases.alerts import AlertDeps
from shared.usecases.compilation import CompileDeps
from shared.usecases.retraining import ArrivalDeps
from shared.usecases.rollout_state import RolloutDeps

T = TypeVar("T")
MAX_LIMIT = 500
MAX_VERSION = 2**31 - 1  # a registry's version numbers are 32-bit


class InvalidRequest(DataError):
    """An operator's request names a field with a value the console cannot use."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class DeviceInventory:
    """What the device registry knows of a core device besides its health (Greengrass' core device view)."""

    groups: tuple[str, ...] = ()
    components: Mapping[str, str] | None = None  # name -> version; None: unknown
    last_seen: float | None = None


class JobCatalog(Protocol):
    """Training and compile jobs with their progress and log (the local job table)."""

    def jobs(self) -> list[dict[str, Any]]: ...  # newest first: name, kind, status, created_at, ended_at, ...

    def job(self, name: str, log_lines: int) -> dict[str, Any]: ...  # + progress, log_tail; raises JobNotFound


class Memo:
    """Results of whole-table reads, reused for `max_age_s`: a polling page (or several) costs one read a second
    however often it asks. One load at a time (the others wait for it and take its result)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()  # a load may read another memoised table
        self._values: dict[str, tuple[float, Any]] = {}

    def get(self, key: str, max_age_s: float, load: Callable[[], T]) -> T:
        with self._lock:
            hit = self._values.get(key)
            if hit is not None and time.monotonic() - hit[0] <= max_age_s:
                return hit[1]
            started = time.monotonic()
            value = load()
            self._values[key] = (started, value)
            return value

    def clear(self) -> None:
        with self._lock:
            self._values.clear()


@dataclass(frozen=True)
class OperatorDeps:
    alerts: AlertDeps
    rollout: RolloutDeps
    arrival: ArrivalDeps
    offline_after_s: float
    compile: CompileDeps | None = None  # None: compile retries are not offered
    training_retry: bool = True  # False: training retries are not offered (the deps cannot start a job)
    history: Callable[[str, int], list[dict[str, Any]]] | None = None  # a version's approval history
    jobs: JobCatalog | None = None  # None: jobs are read from the state table
    inventory: Callable[[], Mapping[str, DeviceInventory]] | None = None
    notification_log: Callable[[], Sequence[Mapping[str, Any]]] | None = None  # what the notifier sent
    fresh_s: float = 1.0  # a whole-table read (alerts, devices) this recent is reused; a change made here clears it
    memo: Memo = field(default_factory=Memo, compare=False, repr=False)

    @property
    def group(self) -> str:
        return self.rollout.group

    def now(self) -> float:
        return self.rollout.clock().timestamp()

    def reuse(self, key: str, load: Callable[[], T]) -> T:
        return self.memo.get(key, self.fresh_s, load)

    def changed(self) -> None:
        """Something changed through the console: the next reads see it."""
        self.memo.clear()


def page(items: Sequence[T], offset: int, limit: int) -> dict[str, Any]:
    """One page of a list: the items, the total and where the next page starts (None: this is the last)."""
    chosen = list(items[offset:offset + limit])
    following = offset + limit
    return {"items": chosen, "total": len(items), "offset": offset, "limit": limit,
            "next_offset": following if following < len(items) else None}


def integer(params: Mapping[str, str | None], name: str, default: int, low: int, high: int) -> int:
    """A whole-number query parameter within [low, high]."""
    text = params.get(name)
    if text is None or text == "":
        return default
    raw = text.strip()
    digits = raw.removeprefix("-")
    if not _ascii_digits(digits):
        raise InvalidRequest(name, f"{text[:40]!r} is not a whole number")
    value = int(raw) if len(digits) <= 18 else None  # no int() of an endless number
    if value is None or not low <= value <= high:
        raise InvalidRequest(name, f"{raw[:40]} is outside {low}..{high}")
    return value


def _ascii_digits(text: str) -> bool:
    """0-9 only: str.isdigit() also takes '²' (which int() refuses) and other scripts' digits."""
    return text.isascii() and text.isdigit()


def paging(params: Mapping[str, str | None], default_limit: int = 50) -> tuple[int, int]:
    return integer(params, "offset", 0, 0, 10**9), integer(params, "limit", default_limit, 1, MAX_LIMIT)


def choice(params: Mapping[str, Any], name: str, allowed: Sequence[str]) -> str | None:
    """An optional parameter that must be one of `allowed`."""
    value = params.get(name)
    if value is None or value == "":
        return None
    if value not in allowed:
        raise InvalidRequest(name, f"{value!r} is not one of {', '.join(allowed)}")
    return str(value)


def version_number(text: Any, field: str = "version") -> int:
    """A model version as operators write it: 2, "2" or "v2"."""
    raw = str(text).strip()
    digits = raw[1:] if raw[:1] in ("v", "V") else raw
    if isinstance(text, bool) or not _ascii_digits(digits) or len(digits) > 10 or not 1 <= int(digits) <= MAX_VERSION:
        raise InvalidRequest(field, f"{raw[:40]!r} is not a model version (e.g. 2 or v2)")
    return int(digits)


def text(body: Mapping[str, Any], name: str, required: bool = False, max_len: int = 1000) -> str:
    value = body.get(name)
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise InvalidRequest(name, f"must be text, got {type(value).__name__}")
    if required and not value.strip():
        raise InvalidRequest(name, "is required")
    if len(value) > max_len:
        raise InvalidRequest(name, f"is longer than {max_len} characters")
    return value.strip()


def flag(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise InvalidRequest(name, f"must be true or false, got {value!r}")
    return value
