"""What the cloud notes of every device message before applying it: refusals and sequence gaps.

Refused messages (shared.messages.BadMessage, over a size or rate limit, not JSON) are counted, never
applied, like the IoT rule's error action: one item per thing and stream (pk "rejected", sk
"<thing>#<stream>") with the count per reason and the last reason. The message itself is not kept.

Sequence numbers: each stream of each device numbers its messages 1, 2, ... (kept across restarts by the
device's spool). One item per thing and stream (pk "streams") keeps the highest number seen and the numbers
still missing below it; a message that arrives late fills its hole. A hole is a message lost between the
device and the cloud (or dropped by a full spool, which the device also counts): it is logged when seen and
kept in the item for `nacelle fleet status`. A device whose spool was reset starts again at 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from shared.errors import ConfigurationError
from shared.messages import BadMessage, Message, validate
from shared.observability import logger
from shared.ports import StateStore

REJECTED = "rejected"
STREAMS = "streams"
M = TypeVar("M", bound=Message)
MAX_ATTEMPTS = 20  # optimistic-concurrency retries of one item
MAX_MISSING_KEPT = 1000  # holes remembered one by one; beyond, only counted
REASONS = ("schema", "oversize", "json", "quota")


def admit(store: StateStore, row_type: type[M], raw: Mapping[str, Any], now: float) -> M | None:
    """A rule's row -> the checked row (its sequence number noted), or None when refused (counted)."""
    try:
        row = validate(row_type, raw)
    except BadMessage as exc:
        thing = raw.get("thing_name") if isinstance(raw, Mapping) else None
        record_rejected(store, str(thing)[:128] if thing else "?", row_type.STREAM, "schema", exc.reason, now)
        return None
    received = getattr(row, "received_at", None)  # every cloud row has it (the rule's timestamp())
    track_sequence(store, row.turbine_id, row.STREAM, row.seq, None if received is None else int(received))
    return row


def record_rejected(store: StateStore, thing: str, stream: str, reason: str, detail: str, now: float,
                    count: int = 1) -> dict[str, Any]:
    """Count `count` refused messages of `thing` on `stream` (reason: one of REASONS)."""
    sk = f"{thing}#{stream}"

    def change(item: Mapping[str, Any] | None) -> dict[str, Any]:
        by_reason = dict((item or {}).get("by_reason", {}))
        by_reason[reason] = int(by_reason.get(reason, 0)) + count
        return {"thing_name": thing, "stream": stream, "count": int((item or {}).get("count", 0)) + count,
                "by_reason": by_reason, "last_reason": reason, "last_detail": detail[:300], "last_at": now}

    item = _update(store, REJECTED, sk, change)
    logger.warning("device message refused", thing_name=thing, stream=stream, reason=reason, detail=detail[:300],
                   count=count)
    return item


def rejected(store: StateStore) -> list[dict[str, Any]]:
    return store.query(REJECTED)


def track_sequence(store: StateStore, thing: str, stream: str, seq: int, received_at: int | None = None) -> list[int]:
    """Note message `seq` of `thing`'s `stream` (`received_at`: when the broker received it, ms); returns the
    numbers newly found missing (a gap; of a longer one, its last MAX_MISSING_KEPT)."""
    if seq < 1:
        return []  # unnumbered (an older device)
    found: list[int] = []

    def change(item: Mapping[str, Any] | None) -> dict[str, Any] | None:
        found.clear()
        # message 1 again: a reset spool when received after the stream's highest (the same delivery again
        # is a duplicate, not a restart of the numbering)
        if item is None or (seq == 1 < int(item["high"]) and (
                received_at is None or received_at > int(item.get("high_received_at") or -1))):
            past = item or {}
            return {"thing_name": thing, "stream": stream, "high": seq, "missing": [], "high_received_at": received_at,
                    "lost_uncounted": int(past.get("lost_uncounted", 0)), "gaps": int(past.get("gaps", 0))}
        high, missing = int(item["high"]), [int(m) for m in item.get("missing", [])]
        if seq in missing:
            return {**item, "missing": [m for m in missing if m != seq]}
        if seq <= high:
            return None  # a duplicate
        size = seq - high - 1
        hole = list(range(max(high + 1, seq - MAX_MISSING_KEPT), seq))  # never the whole of a huge jump
        found.extend(hole)
        kept = (missing + hole)[-MAX_MISSING_KEPT:]
        overflow = len(missing) + size - len(kept)
        return {**item, "high": seq, "missing": kept, "gaps": int(item.get("gaps", 0)) + (1 if size else 0),
                "lost_uncounted": int(item.get("lost_uncounted", 0)) + overflow, "high_received_at": received_at}

    _update(store, STREAMS, f"{thing}#{stream}", change)
    if found:
        logger.warning("device messages missing", thing_name=thing, stream=stream, first=found[0], last=found[-1],
                       count=len(found))
    return list(found)


def missing_messages(store: StateStore, thing: str) -> dict[str, int]:
    """Stream -> how many of the device's messages never arrived (so far)."""
    return {str(i["stream"]): len(i.get("missing", [])) + int(i.get("lost_uncounted", 0))
            for i in store.query(STREAMS, f"{thing}#")}


def _update(store: StateStore, pk: str, sk: str, change: Any) -> dict[str, Any]:
    """Optimistic read-modify-write on `rev` (`change` returning None writes nothing)."""
    for _ in range(MAX_ATTEMPTS):
        before = store.get(pk, sk)
        after = change(before)
        if after is None:
            return dict(before or {})
        after = {k: v for k, v in after.items() if k not in ("pk", "sk", "rev")}
        if before is None:
            if store.put(pk, sk, {**after, "rev": 1}, if_absent=True):
                return after
            continue
        rev = int(before.get("rev", 0))
        if store.update_if(pk, sk, {**after, "rev": rev + 1}, {"rev": rev}):
            return after
    raise ConfigurationError(f"{pk}/{sk}: too much contention after {MAX_ATTEMPTS} attempts")
