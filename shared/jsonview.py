"""Values for JSON and for people: times as ISO 8601 UTC strings, registry figures as numbers. The CLI's
--json output and the operator console (services/console) both go through these."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

TIME_KEYS = frozenset({"at", "since", "time", "last_seen", "window_start"})  # besides every key ending in _at
_PLAIN = frozenset({int, float, str, bool, type(None)})  # values JSON takes as they are (outside time keys)
_MS_EPOCH = 1e11  # a larger epoch number is in milliseconds (the IoT rule's received_at)


def as_datetime(value: Any) -> datetime | None:
    """An epoch (seconds or milliseconds), an ISO 8601 string or a datetime, as an aware UTC datetime; None for no
    time, or one no datetime holds (NaN, 1e20, 0001-01-01T00:00+01:00)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        if isinstance(value, datetime):
            return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value / 1000 if abs(value) > _MS_EPOCH else value, UTC)
        if isinstance(value, str) and value:
            return as_datetime(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except (ValueError, OverflowError, OSError):
        return None
    return None


def iso(value: Any, precise: bool = False) -> str:
    """ISO 8601 UTC with a Z, to the second (to the millisecond when `precise`); "" for no time."""
    moment = as_datetime(value)
    if moment is None:
        return ""
    return moment.isoformat(timespec="milliseconds" if precise else "seconds").replace("+00:00", "Z")


def is_time_key(key: str) -> bool:
    return key.endswith("_at") or key in TIME_KEYS


def json_ready(value: Any, key: str = "") -> Any:
    """A value for JSON output: times (datetimes, and epoch numbers or ISO strings under a time key) as
    ISO 8601 UTC strings, paths as strings, tuples as lists. A number under a time key that is no time is None
    (unknown)."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if not is_time_key(key) and all(type(v) in _PLAIN for v in value):  # e.g. a series: nothing to convert
            return list(value)
        return [json_ready(v, key) for v in value]
    if isinstance(value, datetime) or (key and is_time_key(key) and as_datetime(value) is not None):
        return iso(value, precise=True)
    if key and is_time_key(key) and isinstance(value, int | float) and not isinstance(value, bool):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def number(text: Any) -> float | int | None:
    """A registry metadata figure ("0.875", "-", "") as a number, None when it is none."""
    if isinstance(text, bool):
        return None
    if isinstance(text, int | float):
        return text
    try:
        value = float(str(text))
    except ValueError:
        return None
    return int(value) if value.is_integer() and "." not in str(text) and "e" not in str(text).lower() else value
