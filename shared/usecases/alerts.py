"""anomaly_alert: detector episodes and device silence become operator alerts, exactly once.

Every alert is one item (pk "alerts", sk = alert id) in the alert-state table; each notification is claimed
by a conditional write before it is published (and released if publishing fails), so redelivered, duplicated
or out-of-order messages give one alert and one resolution per episode. A close seen before its open still
gives the alert, then the resolution; a late open never reopens a closed episode.

Per turbine, at most `rate_limit` episode alerts go out per fixed window; later episodes of the window are
folded into one summary alert sent when the window ends (never dropped). An alert escalates once when its
episode stays open, unacknowledged, longer than `escalate_after_s`, or when it is the n-th episode of its
turbine within `repeat_window_s`. A device whose last health is older than `offline_after_s` raises one
"offline" alert per outage and one "back online" when health resumes.

Anomaly rows are shared.messages.EpisodeRow (schema v2): one `score` per episode (its peak score /
threshold) and the `contributions` of the peak window (feature -> share of its score). Severity comes from
the score; the alert item keeps the highest score seen and the contributions of the message that carried it.
An episode's alert id is `episode:<thing>:<episode id>`, the thing being the topic's: a device reaches only
its own turbine's alerts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from shared.errors import ConfigurationError, ModelVersionNotFound, NotFound
from shared.messages import BadMessage, EpisodeRow
from shared.observability import correlate, logger
from shared.ports import ModelRegistry, Notifier, ObjectStore, StateStore

ALERTS = "alerts"  # pk of every alert item
DEVICES = "devices"  # pk of the device records deployment_status writes (the state table)
SEVERITIES = ("low", "medium", "high", "critical")
LABELS_PREFIX = "labels/alerts/"
MAX_ATTEMPTS = 20  # optimistic-concurrency retries of one item
Verdict = Literal["fault", "false-alarm"]
NAMED_CONTRIBUTIONS = 3  # features a subject names at most...
NAMED_SHARE = 0.10  # ...each with at least this share of the score (the top one always)
LISTED_SHARE = 0.01  # a body lists each feature with at least this share; the rest as one line


@dataclass(frozen=True)
class AlertPolicy:
    escalate_after_s: float = 1800.0
    repeat_episodes: int = 3
    repeat_window_s: float = 86400.0
    rate_limit: int = 5  # episode alerts per turbine per window
    rate_window_s: float = 3600.0
    offline_after_s: float = 300.0
    retention_s: float = 90 * 86400.0  # expires_at (DynamoDB TTL) of alert items
    severity_ratios: tuple[float, float, float] = (1.5, 3.0, 6.0)  # peak score / threshold: medium, high, critical

    def __post_init__(self) -> None:
        if self.rate_limit < 1 or self.repeat_episodes < 2 or min(self.escalate_after_s, self.rate_window_s,
                                                                  self.repeat_window_s, self.offline_after_s) <= 0:
            raise ConfigurationError(f"invalid alert policy {self}: rate_limit >= 1, repeat_episodes >= 2, "
                                     "times > 0")


@dataclass
class AlertDeps:
    alerts: StateStore  # the alert-state table
    devices: StateStore  # the state table (device records pk="devices")
    registry: ModelRegistry
    notifier: Notifier
    clock: Callable[[], datetime]
    group: str
    policy: AlertPolicy
    store: ObjectStore | None = None  # the data bucket: only acknowledge() with a verdict writes labels


@dataclass(frozen=True)
class Outcome:
    action: str
    detail: str
    sent: tuple[str, ...] = ()  # "<kind>:<alert id>" of every notification published by this call


# -- small helpers --------------------------------------------------------------------------------
def _iso(epoch: float | None) -> str:
    return "-" if epoch is None else datetime.fromtimestamp(float(epoch), UTC).isoformat(timespec="seconds")


def severity_of(score: float, features: Collection[str], missing: Collection[str], policy: AlertPolicy) -> str:
    """From the peak score / threshold, bumped one level for every extra feature involved (max critical)."""
    level = sum(score >= r for r in policy.severity_ratios)
    if missing and level == 0:
        level = 1  # a sensor that stopped reporting is at least medium
    involved = len(set(features) | set(missing))
    return SEVERITIES[min(3, level + max(0, min(2, involved - 1)))]


def _bump(severity: str) -> str:
    return SEVERITIES[min(3, SEVERITIES.index(severity) + 1)]


def _mutate(store: StateStore, pk: str, sk: str, change: Callable[[dict[str, Any] | None], dict[str, Any] | None]
            ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Optimistic read-modify-write on `rev`: returns (before, after); `change` returning None writes nothing."""
    for _ in range(MAX_ATTEMPTS):
        before = store.get(pk, sk)
        after = change(None if before is None else dict(before))
        if after is None:
            return before, before
        if before is None:
            if store.put(pk, sk, {**after, "rev": 1}, if_absent=True):
                return None, {**after, "rev": 1, "pk": pk, "sk": sk}
            continue
        rev = int(before.get("rev", 0))
        changes = {k: v for k, v in after.items() if k not in ("pk", "sk") and before.get(k) != v}
        if not changes:
            return before, before
        if store.update_if(pk, sk, {**changes, "rev": rev + 1}, {"rev": rev if "rev" in before else None}):
            return before, {**after, "rev": rev + 1}
    raise ConfigurationError(f"{pk}/{sk}: too much contention after {MAX_ATTEMPTS} attempts")


def _claim(deps: AlertDeps, alert_id: str, flag: str, extra: Mapping[str, Any] | None = None) -> bool:
    """Take the right to send notification `flag` of an alert (None -> 'claimed')."""
    return deps.alerts.update_if(ALERTS, alert_id, {flag: "claimed", **(extra or {})}, {flag: None})


def _send(deps: AlertDeps, alert_id: str, flag: str, subject: str, body: str, attributes: Mapping[str, str]
          ) -> str:
    """Publish a claimed notification; a failed publish gives the claim back so a retry sends it."""
    try:
        message_id = deps.notifier.publish("alerts", subject, body, attributes)
    except Exception:
        deps.alerts.update_if(ALERTS, alert_id, {flag: None}, {flag: "claimed"})
        raise
    deps.alerts.update_if(ALERTS, alert_id, {flag: "sent", f"{flag}_message_id": message_id,
                                            f"{flag}_at": deps.clock().timestamp()}, {flag: "claimed"})
    logger.info("alert notification sent", alert_id=alert_id, notification=flag, message_id=message_id)
    return f"{flag}:{alert_id}"


def _attributes(turbine: str, severity: str, features: list[str], kind: str) -> dict[str, str]:
    return {"turbine_id": turbine, "severity": severity, "features": json.dumps(sorted(features)), "kind": kind}


def _lineage(deps: AlertDeps, version: int | None) -> str:
    if version is None:
        return "model: none loaded"
    try:
        meta = deps.registry.get(deps.group, int(version)).metadata
    except (ModelVersionNotFound, NotFound):
        return f"model: {deps.group} v{version} (not in the registry)"
    dataset = meta.get("nacelle:dataset_hash") or "unknown"
    job = meta.get("nacelle:job") or "unknown"
    return (f"model: {deps.group} v{version}, trained on dataset {dataset} by job {job} "
            f"(code {meta.get('nacelle:code_version') or 'unknown'})")


def _pct(share: float) -> str:
    return "<1 %" if share < 0.005 else f"{share * 100:.0f} %"


def _shares(item: Mapping[str, Any]) -> list[tuple[str, float]]:
    """The contributions, largest first (ties by name)."""
    return sorted(((k, float(v)) for k, v in (item.get("contributions") or {}).items()), key=lambda kv: (-kv[1], kv[0]))


def _deviation(item: Mapping[str, Any]) -> list[str]:
    score, shares = float(item.get("score") or 0.0), _shares(item)
    listed = [(name, share) for name, share in shares if share >= LISTED_SHARE]
    lines = [f"  anomaly score: {score:.2f}x its threshold"] if score > 0 else []
    lines += [f"  {name}: {_pct(share)} of the score" for name, share in listed]
    if len(shares) > len(listed):
        rest = shares[len(listed):]
        lines.append(f"  {len(rest)} other feature(s): {_pct(sum(s for _, s in rest))} of the score together")
    lines += [f"  {name}: samples missing" for name in item.get("missing", [])]
    return lines or ["  (no feature details)"]


def _top(item: Mapping[str, Any]) -> str:
    """One line for a subject: "score 3.4x threshold, mostly rps (64 %), voltage (21 %)"."""
    score, shares, missing = float(item.get("score") or 0.0), _shares(item), list(item.get("missing", []))
    named = [f"{name} ({_pct(share)})" for i, (name, share) in enumerate(shares[:NAMED_CONTRIBUTIONS])
             if i == 0 or share >= NAMED_SHARE]
    parts = [f"score {score:.1f}x threshold"] if score > 0 else []
    if named:
        parts.append(("mostly " if len(shares) > 1 else "") + ", ".join(named))
    text = ", ".join(parts)
    if missing:
        text += ("; " if text else "") + ", ".join(missing) + " missing"
    return text or "anomaly"


# -- episodes --------------------------------------------------------------------------------------
def episode_alert_id(thing: str, episode_id: str) -> str:
    """The sending thing (the topic's, which its certificate authorises) is part of the identity: a device
    can neither touch another turbine's alert nor claim an id another turbine will use."""
    return f"episode:{thing}:{episode_id}"


def on_anomaly(row: EpisodeRow, deps: AlertDeps) -> Outcome:
    if row.turbine_id != row.thing_name:  # validate() refuses it; this guards rows built in code
        raise BadMessage(f"anomaly message on turbines/{row.thing_name}/anomalies claims turbine {row.turbine_id!r}")
    correlate(turbine_id=row.thing_name, episode_id=row.episode_id)
    alert_id = episode_alert_id(row.thing_name, row.episode_id)
    now = deps.clock().timestamp()

    def merge(item: dict[str, Any] | None) -> dict[str, Any]:
        if item is None:
            item = {"kind": "episode", "alert_id": alert_id, "turbine_id": row.thing_name,
                    "episode_id": row.episode_id, "status": "open", "first_seen_at": now, "score": 0.0,
                    "contributions": {}, "missing": [], "features": [], "last_seq": 0, "started_at": row.started_at,
                    "opened_at": row.opened_at, "last_flagged_at": None, "ended_at": None,
                    "model_version": row.model_version, "expires_at": int(now + deps.policy.retention_s)}
        item.setdefault("score", 0.0)  # an item written before schema v2
        item.setdefault("contributions", {})
        if row.score > float(item["score"]):  # the peak so far, with its window's explanation (first one on ties)
            item.update(score=row.score, contributions=dict(sorted(row.contributions.items())))
        flagged = [t for t in (item.get("last_flagged_at"), row.last_flagged_at) if t is not None]
        item.update(missing=sorted(set(item["missing"]) | set(row.missing)),
                    features=sorted(set(item["features"]) | set(row.features) | set(row.missing)),
                    last_seq=max(int(item["last_seq"]), row.seq), last_message_at=now,
                    started_at=min(float(item["started_at"]), row.started_at),
                    last_flagged_at=max(flagged, default=None))
        if item.get("model_version") is None:
            item["model_version"] = row.model_version
        if row.kind == "close" and item["status"] == "open":
            item.update(status="closed", ended_at=row.ended_at if row.ended_at is not None else row.opened_at)
        if row.kind == "interrupt" and item["status"] == "open" and item.get("interrupted_at") is None:
            item["interrupted_at"] = now  # stays open: only a real end, or the lack of one, settles it
        severity = severity_of(float(item["score"]), item["features"], item["missing"], deps.policy)
        item["severity"] = _bump(severity) if item.get("escalated") == "repeated" else severity
        return item

    before, item = _mutate(deps.alerts, ALERTS, alert_id, merge)
    assert item is not None
    seen = float(item["first_seen_at"])  # the turbine's episode index, for the repeat rule
    deps.alerts.put(f"turbine#{row.thing_name}", f"{seen:017.6f}#{row.episode_id}",
                    {"alert_id": alert_id, "seen_at": seen, "expires_at": item["expires_at"]}, if_absent=True)
    sent = list(_settle_episode(item, deps))
    if row.kind == "close" and item["status"] == "closed":
        sent += _end_interrupted(item, deps)
    sent += sweep(deps)
    action = "new" if before is None else "duplicate" if before.get("rev") == item.get("rev") else "updated"
    return Outcome(action, f"{alert_id} {item['status']} ({row.kind} #{row.seq})", tuple(sent))


def _settle_episode(item: dict[str, Any], deps: AlertDeps) -> list[str]:
    """Send what an episode still owes: its alert (or its place in a summary), then its resolution."""
    alert_id, sent = item["alert_id"], []
    if item.get("alert") is None:
        window, index = _rate_slot(item, deps)
        if index >= deps.policy.rate_limit:
            summary_id = f"summary:{item['turbine_id']}:{int(window)}"
            deps.alerts.put(ALERTS, summary_id, {
                "kind": "summary", "alert_id": summary_id, "turbine_id": item["turbine_id"], "status": "pending",
                "window_start": window, "due_at": window + deps.policy.rate_window_s,
                "expires_at": int(window + deps.policy.retention_s)}, if_absent=True)
            deps.alerts.update_if(ALERTS, alert_id, {"alert": "folded", "summary_id": summary_id}, {"alert": None})
            logger.info("episode folded into summary", alert_id=alert_id, summary_id=summary_id)
        else:
            repeats = _recent_episodes(item["turbine_id"], deps)
            escalated = repeats >= deps.policy.repeat_episodes
            extra = {"escalated": "repeated", "severity": _bump(item["severity"])} if escalated else {}
            if _claim(deps, alert_id, "alert", extra):
                item.update(extra)
                sent.append(_send(deps, alert_id, "alert", *_episode_message(item, deps, repeats)))
    current = deps.alerts.get(ALERTS, alert_id) or item
    if current.get("status") == "closed" and current.get("alert") == "sent" and current.get("resolution") is None \
            and _claim(deps, alert_id, "resolution"):
        sent.append(_send(deps, alert_id, "resolution", *_resolution_message(current, deps)))
    return sent


def _end_interrupted(closed: Mapping[str, Any], deps: AlertDeps) -> list[str]:
    """An episode of the turbine ended for real: the episodes interrupted before it started (their
    detector stopped or changed model while they were open) ended with it."""
    sent: list[str] = []
    for item in deps.alerts.query(ALERTS, f"episode:{closed['turbine_id']}:"):
        if (item.get("status") == "open"
                and item.get("interrupted_at") is not None and item["alert_id"] != closed["alert_id"]
                and float(item["started_at"]) < float(closed["started_at"])
                and deps.alerts.update_if(ALERTS, item["alert_id"], {"status": "closed", "ended_at": closed["ended_at"],
                                                                     "ended_with": closed["episode_id"]},
                                          {"status": "open"})):
            sent += _settle_episode(deps.alerts.get(ALERTS, item["alert_id"]) or item, deps)
    return sent


def _rate_slot(item: Mapping[str, Any], deps: AlertDeps) -> tuple[float, int]:
    """The turbine's rate window of the episode's first sighting, and the episode's place in it."""
    window_s = deps.policy.rate_window_s
    window = math.floor(float(item["first_seen_at"]) / window_s) * window_s

    def add(slot: dict[str, Any] | None) -> dict[str, Any] | None:
        slot = slot or {"episodes": [], "expires_at": int(window + deps.policy.retention_s)}
        if item["alert_id"] in slot["episodes"]:
            return None
        slot["episodes"] = [*slot["episodes"], item["alert_id"]]
        return slot

    _, slot = _mutate(deps.alerts, f"rate#{item['turbine_id']}", f"{int(window)}", add)
    assert slot is not None
    return window, list(slot["episodes"]).index(item["alert_id"])


def _recent_episodes(turbine: str, deps: AlertDeps) -> int:
    since = deps.clock().timestamp() - deps.policy.repeat_window_s
    return sum(float(i["seen_at"]) >= since for i in deps.alerts.query(f"turbine#{turbine}"))


def _episode_message(item: Mapping[str, Any], deps: AlertDeps, repeats: int) -> tuple[str, str, dict[str, str]]:
    turbine, severity = item["turbine_id"], item["severity"]
    prefix = "REPEATED " if item.get("escalated") == "repeated" else ""
    subject = f"[{severity.upper()}] {prefix}{turbine}: {_top(item)}"
    state = "still open" if item["status"] == "open" else f"already ended at {_iso(item.get('ended_at'))}"
    lines = [f"Turbine {turbine}: anomaly episode {item['episode_id']} ({severity}), {state}.",
             "", "What deviated (the peak anomaly score and each sensor's share of it):", *_deviation(item), "",
             f"Started:  {_iso(item['started_at'])} (opened {_iso(item['opened_at'])}, "
             f"last flagged {_iso(item.get('last_flagged_at'))})",
             _lineage(deps, item.get("model_version"))]
    if item.get("escalated") == "repeated":
        lines.append(f"Escalated: episode {repeats} of this turbine within {deps.policy.repeat_window_s / 3600:g} h.")
    lines += ["", f"Acknowledge: nacelle alerts ack {item['alert_id']} --verdict fault|false-alarm"]
    return subject, "\n".join(lines), _attributes(turbine, severity, item["features"], "alert")


def _resolution_message(item: Mapping[str, Any], deps: AlertDeps) -> tuple[str, str, dict[str, str]]:
    turbine = item["turbine_id"]
    duration = max(0.0, float(item.get("ended_at") or 0) - float(item["started_at"]))
    continued = (f" The detector stopped or changed model during it; it ended with episode {item['ended_with']}."
                 if item.get("ended_with") else "")
    body = (f"Turbine {turbine}: anomaly episode {item['episode_id']} ended at {_iso(item.get('ended_at'))} "
            f"after {duration / 60:.1f} min.{continued}\n\nPeak deviation:\n" + "\n".join(_deviation(item)) +
            f"\n\n{_lineage(deps, item.get('model_version'))}\nAlert: {item['alert_id']}")
    return (f"[RESOLVED] {turbine}: {_top(item)}", body,
            _attributes(turbine, item["severity"], item["features"], "resolution"))


# -- escalations and summaries (every invocation and the scheduled check) ------------------------
def sweep(deps: AlertDeps) -> list[str]:
    """Escalate long-open unacknowledged episodes, settle interrupted ones whose end was never seen
    as "unknown" (after the offline limit), and send summaries whose window has ended."""
    now, sent = deps.clock().timestamp(), []
    for item in deps.alerts.query(ALERTS, "episode:"):
        if (item.get("status") == "open" and item.get("interrupted_at") is not None
                and now - float(item["interrupted_at"]) >= deps.policy.offline_after_s
                and deps.alerts.update_if(ALERTS, item["alert_id"], {"status": "unknown"}, {"status": "open"})):
            if item.get("alert") == "sent" and _claim(deps, item["alert_id"], "resolution"):
                sent.append(_send(deps, item["alert_id"], "resolution", *_unknown_message(item, deps)))
            continue
        if (item.get("status") == "open" and item.get("alert") == "sent" and not item.get("escalated")
                and not item.get("acked_at") and now - float(item["first_seen_at"]) >= deps.policy.escalate_after_s
                and _claim(deps, item["alert_id"], "escalation", {"escalated": "open-too-long"})):
            sent.append(_send(deps, item["alert_id"], "escalation", *_escalation_message(item, now, deps)))
    for summary in deps.alerts.query(ALERTS, "summary:"):
        if summary.get("status") == "pending" and float(summary["due_at"]) <= now \
                and deps.alerts.update_if(ALERTS, summary["alert_id"], {"status": "sending"}, {"status": "pending"}):
            sent.append(_send_summary(summary, deps))
    return sent


def _unknown_message(item: Mapping[str, Any], deps: AlertDeps) -> tuple[str, str, dict[str, str]]:
    turbine = item["turbine_id"]
    body = (f"Turbine {turbine}: the detector stopped or changed model at {_iso(item['interrupted_at'])} while "
            f"anomaly episode {item['episode_id']} (started {_iso(item['started_at'])}) was still open, and no "
            f"end of it has been reported within {deps.policy.offline_after_s / 60:g} min. Whether the condition "
            f"has ended is unknown: check the turbine.\n\nPeak deviation:\n" + "\n".join(_deviation(item)) +
            f"\n\n{_lineage(deps, item.get('model_version'))}\nAlert: {item['alert_id']}")
    return (f"[UNKNOWN] {turbine}: end of the episode not seen, {_top(item)}", body,
            _attributes(turbine, item["severity"], item["features"], "unknown"))


def _escalation_message(item: Mapping[str, Any], now: float, deps: AlertDeps) -> tuple[str, str, dict[str, str]]:
    turbine, severity = item["turbine_id"], _bump(item["severity"])
    minutes = (now - float(item["first_seen_at"])) / 60
    body = (f"Turbine {turbine}: anomaly episode {item['episode_id']} has been open for {minutes:.0f} min "
            f"without acknowledgement.\n\nWhat deviated:\n" + "\n".join(_deviation(item)) +
            f"\n\nStarted: {_iso(item['started_at'])}\n{_lineage(deps, item.get('model_version'))}\n\n"
            f"Acknowledge: nacelle alerts ack {item['alert_id']} --verdict fault|false-alarm")
    return (f"[ESCALATED {severity.upper()}] {turbine}: open {minutes:.0f} min, {_top(item)}", body,
            _attributes(turbine, severity, item["features"], "escalation"))


def _send_summary(summary: Mapping[str, Any], deps: AlertDeps) -> str:
    turbine, sid = summary["turbine_id"], summary["alert_id"]
    slot = deps.alerts.get(f"rate#{turbine}", str(int(summary["window_start"]))) or {"episodes": []}
    folded = [deps.alerts.get(ALERTS, a) for a in slot["episodes"][deps.policy.rate_limit:]]
    items = [i for i in folded if i is not None]
    severity = max((i["severity"] for i in items), key=SEVERITIES.index, default="low")
    features = sorted({f for i in items for f in i["features"]})
    lines = [f"Turbine {turbine} raised more than {deps.policy.rate_limit} anomaly episodes between "
             f"{_iso(summary['window_start'])} and {_iso(summary['due_at'])}; these {len(items)} were folded "
             "into this summary:", ""]
    lines += [f"  {i['alert_id']}  {i['severity']:8s} {_top(i)}  started {_iso(i['started_at'])}  {i['status']}"
              for i in items]
    deps.alerts.update_if(ALERTS, sid, {"alert": "claimed", "episodes": [i["alert_id"] for i in items],
                                        "severity": severity, "features": features}, {"status": "sending"})
    try:
        message_id = deps.notifier.publish(
            "alerts", f"[{severity.upper()}] {turbine}: {len(items)} more anomaly episodes (summary)",
            "\n".join(lines), _attributes(turbine, severity, features, "summary"))
    except Exception:
        deps.alerts.update_if(ALERTS, sid, {"status": "pending", "alert": None}, {"status": "sending"})
        raise
    deps.alerts.update_if(ALERTS, sid, {"status": "sent", "alert": "sent", "alert_message_id": message_id,
                                        "alert_at": deps.clock().timestamp()}, {"status": "sending"})
    return f"summary:{sid}"


# -- offline devices --------------------------------------------------------------------------------
def on_scheduled_check(deps: AlertDeps) -> Outcome:
    """Offline / back-online per device (from the health records), then the sweep."""
    now, sent = deps.clock().timestamp(), []
    for device in deps.devices.query(DEVICES):
        thing = str(device.get("thing_name") or device["sk"])
        last = float(device.get("last_health_at") or 0.0)
        outage = (deps.alerts.get("device", thing) or {}).get("outage")
        if outage:  # health resumed since the outage began (even if it stopped again since)
            sent += _back_online(thing, last, outage, deps)
        if now - last > deps.policy.offline_after_s:
            sent += _offline(thing, last, now, deps)
    sent += sweep(deps)
    return Outcome("checked", f"{len(sent)} notification(s)", tuple(sent))


def _offline(thing: str, last: float, now: float, deps: AlertDeps) -> list[str]:
    alert_id = f"offline:{thing}:{int(last)}"  # one per outage: keyed by the last health before the silence
    deps.alerts.put(ALERTS, alert_id, {"kind": "offline", "alert_id": alert_id, "turbine_id": thing,
                                       "status": "open", "severity": "high", "features": [], "first_seen_at": now,
                                       "last_health_at": last, "expires_at": int(now + deps.policy.retention_s)},
                    if_absent=True)
    deps.alerts.update_if("device", thing, {"outage": alert_id}, {"outage": None})
    if not _claim(deps, alert_id, "alert"):
        return []
    silent = f"for {(now - last) / 60:.1f} min" if last else "at all"
    body = (f"Turbine {thing} has sent no health report {silent} (last one at {_iso(last or None)}; "
            f"the limit is {deps.policy.offline_after_s / 60:g} min). Its anomaly detection is not being "
            f"reported either.\n\nAlert: {alert_id}")
    return [_send(deps, alert_id, "alert", f"[HIGH] {thing}: turbine offline", body,
                  _attributes(thing, "high", [], "offline"))]


def _back_online(thing: str, last: float, outage: str, deps: AlertDeps) -> list[str]:
    item = deps.alerts.get(ALERTS, outage)
    if item is None or last <= float(item["last_health_at"]):
        return []
    sent = []
    deps.alerts.update_if(ALERTS, outage, {"status": "closed", "ended_at": last}, {"status": "open"})
    if item.get("alert") == "sent" and _claim(deps, outage, "resolution"):
        body = (f"Turbine {thing} is reporting health again since {_iso(last)} (silent since "
                f"{_iso(item['last_health_at'] or None)}).\n\nAlert: {outage}")
        sent.append(_send(deps, outage, "resolution", f"[RESOLVED] {thing}: back online", body,
                          _attributes(thing, "high", [], "online")))
    if item.get("alert") in ("sent", None):
        deps.alerts.update_if("device", thing, {"outage": None}, {"outage": outage})
    return sent


# -- operator actions ------------------------------------------------------------------------------
def list_alerts(deps: AlertDeps, status: str | None = None) -> list[dict[str, Any]]:
    """Every alert, newest first."""
    items = [i for i in deps.alerts.query(ALERTS) if status is None or i.get("status") == status]
    return sorted(items, key=lambda i: float(i.get("first_seen_at") or i.get("window_start") or 0), reverse=True)


def get_alert(alert_id: str, deps: AlertDeps) -> dict[str, Any]:
    item = deps.alerts.get(ALERTS, alert_id)
    if item is None:
        raise NotFound(f"no alert {alert_id!r} (see `nacelle alerts list`)")
    return item


def acknowledge(alert_id: str, actor: str, deps: AlertDeps, verdict: Verdict | None = None,
                note: str = "") -> dict[str, Any]:
    """Record who acknowledged and when (no escalation afterwards); a verdict becomes a label for training."""
    item = get_alert(alert_id, deps)
    if verdict is not None and item.get("kind") != "episode":
        raise ConfigurationError(f"{alert_id} is a {item.get('kind')} alert: verdicts apply to anomaly episodes")
    if verdict not in (None, "fault", "false-alarm"):
        raise ConfigurationError(f"verdict must be fault or false-alarm, got {verdict!r}")
    now = deps.clock().timestamp()
    changes: dict[str, Any] = {"acked_by": actor, "acked_at": item.get("acked_at") or now, "note": note}
    if verdict is not None:
        changes.update(verdict=verdict, verdict_at=now, label_key=_write_label(item, verdict, actor, note, deps))
    _mutate(deps.alerts, ALERTS, alert_id, lambda current: None if current is None else {**current, **changes})
    logger.info("alert acknowledged", alert_id=alert_id, actor=actor, verdict=verdict)
    return get_alert(alert_id, deps)


def label_key(alert_id: str) -> str:
    return f"{LABELS_PREFIX}{alert_id.replace(':', '_')}/labels.json"


def _write_label(item: Mapping[str, Any], verdict: Verdict, actor: str, note: str, deps: AlertDeps) -> str:
    """labels/alerts/<alert>/labels.json in the labels.json format training reads (shared.ml.metrics.load_labels).

    A fault becomes a labelled episode (training keeps it out of the normal windows, evaluation counts it);
    a false alarm lists no episode, so its span stays normal data, and is recorded under `false_alarms`.
    """
    if deps.store is None:
        raise ConfigurationError("acknowledging with a verdict needs the data bucket (AlertDeps.store)")
    end = item.get("ended_at") or item.get("last_message_at") or item["opened_at"]
    span = {"turbine_id": item["turbine_id"], "start": float(item["started_at"]), "end": float(end)}
    severity = {"critical": "high"}.get(item["severity"], item["severity"])  # the simulator's scale
    doc = {"episodes": [{**span, "fault": "operator-confirmed", "severity": severity}] if verdict == "fault" else [],
           "false_alarms": [span] if verdict == "false-alarm" else [],
           "source": {"alert_id": item["alert_id"], "episode_id": item.get("episode_id"), "verdict": verdict,
                      "by": actor, "note": note, "model_version": item.get("model_version")}}
    key = label_key(item["alert_id"])
    deps.store.put(key, json.dumps(doc, indent=1).encode(), "application/json")
    return key
