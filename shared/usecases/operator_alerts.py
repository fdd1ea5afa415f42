"""Alerts as operators read them (`nacelle alerts`, the console's Alerts page): filtered lists, one alert with the
text of every notification it sent and its acknowledgement history, and the acknowledgement itself
(shared.usecases.alerts.acknowledge: a second one is added to the history, the first is kept)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from shared.records import SEVERITIES, VERDICTS, AlertRecord, EpisodeAlert, Verdict, alert_from_item
from shared.usecases.alerts import ALERTS, acknowledge, alert_record
from shared.usecases.operator import InvalidRequest, OperatorDeps, page

NOTIFICATION_KINDS = ("alert", "escalation", "resolution")  # the notifications one alert item can send
INTERNAL_KEYS = frozenset({"pk", "sk", "rev"})
STATES = ("open", "closed", "pending", "sent", "acknowledged", "unacknowledged")
VERDICT_SPELLINGS: dict[str, Verdict] = {"fault": "fault", "false-alarm": "false-alarm", "false_alarm": "false-alarm"}


def acks(item: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The alert's acknowledgement history (by, at, verdict, note), oldest first."""
    return [dict(a) for a in item.get("acks") or [] if isinstance(a, Mapping)]


def notifications(item: Mapping[str, Any], log: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """What the alert sent (or holds back), with the text of each notification from the notifier's log."""
    out = []
    for kind in NOTIFICATION_KINDS:
        state = item.get(kind)
        if state is None:
            continue
        entry = log.get(str(item.get(f"{kind}_message_id") or "")) or {}
        out.append({"kind": kind, "state": state, "at": item.get(f"{kind}_at") or entry.get("time"),
                    "message_id": item.get(f"{kind}_message_id"), "subject": entry.get("subject"),
                    "message": entry.get("message")})
    return out


def alert_items(deps: OperatorDeps) -> list[dict[str, Any]]:
    """Every alert item, newest first (what alerts.alert_records orders by: when it began)."""
    def load() -> list[dict[str, Any]]:
        return sorted(deps.alerts.alerts.query(ALERTS), key=lambda i: float(i.get("first_seen_at") or 0.0),
                      reverse=True)

    return deps.reuse("alerts", load)


def summary(a: AlertRecord) -> dict[str, Any]:
    episode = a if isinstance(a, EpisodeAlert) else None
    return {"alert_id": a.alert_id, "kind": a.kind, "turbine_id": a.turbine_id, "severity": a.severity,
            "status": a.status, "since": a.since or None, "ended_at": a.ended_at,
            "score": episode.score if episode is not None else None,
            "model_version": episode.model_version if episode is not None else None,
            "features": list(a.features), "acknowledged": bool(a.acks), "acks": len(a.acks),
            "acked_by": a.acked_by, "verdict": a.verdict}


def _wanted(item: Mapping[str, Any], turbine: str | None, severity: str | None, state: str | None) -> bool:
    if turbine is not None and item.get("turbine_id") != turbine:
        return False
    if severity is not None and item.get("severity") != severity:
        return False
    if state == "acknowledged":
        return bool(item.get("acks"))
    if state == "unacknowledged":
        return not item.get("acks")
    return state is None or item.get("status", "open") == state


def list_view(deps: OperatorDeps, turbine: str | None = None, severity: str | None = None, state: str | None = None,
              offset: int = 0, limit: int = 50) -> dict[str, Any]:
    """A page of the alerts, newest first, filtered by turbine, severity and state (a status, or acknowledged or
    not)."""
    if severity is not None and severity not in SEVERITIES:
        raise InvalidRequest("severity", f"{severity!r} is not one of {', '.join(SEVERITIES)}")
    if state is not None and state not in STATES:
        raise InvalidRequest("state", f"{state!r} is not one of {', '.join(STATES)}")
    found = [i for i in alert_items(deps) if _wanted(i, turbine, severity, state)]
    chosen = page(found, offset, limit)
    chosen["items"] = [summary(alert_from_item(i)) for i in chosen["items"]]
    return chosen


def detail(deps: OperatorDeps, alert_id: str) -> dict[str, Any]:
    item = alert_record(alert_id, deps.alerts).to_item()
    entries: Sequence[Mapping[str, Any]] = deps.notification_log() if deps.notification_log is not None else ()
    log = {str(e.get("id")): e for e in entries}
    doc = {k: v for k, v in item.items() if k not in INTERNAL_KEYS | {"acks"}}
    return {**doc, "notifications": notifications(item, log), "acks": acks(item)}


def verdict_of(value: Any) -> Verdict | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or value not in VERDICT_SPELLINGS:
        raise InvalidRequest("verdict", f"{value!r} is not one of fault, false_alarm")
    return VERDICT_SPELLINGS[value]


def ack(deps: OperatorDeps, alert_id: str, actor: str, verdict: Verdict | None, note: str) -> dict[str, Any]:
    """Acknowledge with an optional verdict (fault, false-alarm) and note; the same acknowledgement again adds
    nothing."""
    assert verdict is None or verdict in VERDICTS
    acknowledge(alert_id, actor, deps.alerts, verdict=verdict, note=note)
    deps.changed()
    return detail(deps, alert_id)
