"""anomaly_alert: detector episodes and device silence become operator alerts, exactly once.

Every alert is one item (pk "alerts", sk = alert id) in the alert-state table, read and written as a typed
record (shared.records: EpisodeAlert, SummaryAlert, OfflineAlert); each notification is claimed
by a conditional write before it is published (and released if publishing fails), so redelivered, duplicated
or out-of-order messages give one alert and one resolution per episode. A close seen before its open still
gives the alert, then the resolution; a late open never reopens a closed episode. An episode that carries on an
interrupted one (the detector changed model or restarted while the condition went on) sends no alert of its own:
the first episode's alert stands for both, and is resolved when the later one ends.

Per turbine, at most `rate_limit` episode alerts go out per fixed window; later episodes of the window are
folded into one summary alert sent when the window ends (never dropped). An alert escalates once when its
episode stays open, unacknowledged, longer than `escalate_after_s`, or when it is the n-th episode of its
turbine within `repeat_window_s`. A device whose last health is older than `offline_after_s` raises one
"offline" alert per outage and one "back online" when health resumes.

Anomaly rows are shared.messages.EpisodeRow (schema v2): one `score` per episode (its peak score /
threshold) and the `contributions` of the peak window (feature -> share of its score). The alert item keeps
the highest score seen and the contributions of the message that carried it; its severity comes from how far
AND how long the score exceeds its threshold (severity_of), so it can rise while the episode lasts (the alert
goes out with what is known at the time). An episode's alert id is `episode:<thing>:<episode id>`, the thing
being the topic's: a device reaches only its own turbine's alerts.

Every message touches a fixed number of items, however long the alert history: what must be looked at
again later (open episodes, pending summaries) has an entry in the small "open" index (pk "open"), and the
scheduled check (on_scheduled_check) escalates, settles and sends summaries from it alone.

Acknowledgements are kept as a history (who, when, verdict, note); the first stops the escalation, the latest
verdict is the alert's and the training label.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cache, partial
from typing import Any, Literal, TypeVar

from shared import settings as defaults
from shared.errors import ConfigurationError, ModelVersionNotFound, NotFound
from shared.messages import BadMessage, EpisodeRow
from shared.observability import correlate, logger
from shared.ports import ModelRegistry, Notifier, ObjectStore, StateStore
from shared.records import (
    SEVERITIES,
    VERDICTS,
    Ack,
    AlertRecord,
    DeviceOutage,
    DeviceRecord,
    EpisodeAlert,
    EpisodeSighting,
    OfflineAlert,
    RateSlot,
    Severity,
    SummaryAlert,
    Verdict,
    alert_from_item,
    load,
    records,
)
from shared.usecases.outcome import Outcome

ALERTS = "alerts"  # pk of every alert item
OPEN = "open"  # pk of the open index: one entry (sk = alert id) per open episode and pending summary
DEVICES = "devices"  # pk of the device records deployment_status writes (the state table)
LABELS_PREFIX = "labels/alerts/"
MAX_ATTEMPTS = 20  # optimistic-concurrency retries of one item
NAMED_CONTRIBUTIONS = 3  # features a subject names at most...
NAMED_SHARE = 0.10  # ...each with at least this share of the score (the top one always)
LISTED_SHARE = 0.01  # a body lists each feature with at least this share; the rest as one line
Notice = Literal["alert", "escalation", "resolution"]  # an alert's notifications, each claimed before it is sent
Versioned = TypeVar("Versioned", bound=AlertRecord | RateSlot)  # records written by read-modify-write on `rev`
Open = TypeVar("Open", EpisodeAlert, SummaryAlert)  # what the open index lists


@dataclass(frozen=True)
class AlertPolicy:
    escalate_after_s: float = defaults.ALERT_ESCALATE_AFTER_S
    repeat_episodes: int = defaults.ALERT_REPEAT_EPISODES
    repeat_window_s: float = defaults.ALERT_REPEAT_WINDOW_S
    rate_limit: int = defaults.ALERT_RATE_LIMIT  # episode alerts per turbine per window
    rate_window_s: float = defaults.ALERT_RATE_WINDOW_S
    offline_after_s: float = defaults.OFFLINE_AFTER_S
    retention_s: float = defaults.ALERT_RETENTION_S  # expires_at (DynamoDB TTL) of alert items
    # medium, high, critical: the peak score / threshold at least severity_ratios[i] AND the episode over its
    # threshold for at least severity_durations_s[i] (severity_of)
    severity_ratios: tuple[float, float, float] = defaults.SEVERITY_RATIOS
    severity_durations_s: tuple[float, float, float] = defaults.SEVERITY_DURATIONS_S

    def __post_init__(self) -> None:
        if self.rate_limit < 1 or self.repeat_episodes < 2 or min(self.escalate_after_s, self.rate_window_s,
                                                                  self.repeat_window_s, self.offline_after_s) <= 0:
            raise ConfigurationError(f"invalid alert policy {self}: rate_limit >= 1, repeat_episodes >= 2, "
                                     "times > 0")
        for name, ladder in (("severity_ratios", self.severity_ratios),
                             ("severity_durations_s", self.severity_durations_s)):
            if len(ladder) != 3 or min(ladder) < 0 or list(ladder) != sorted(ladder):
                raise ConfigurationError(f"invalid alert policy: {name} {ladder} must be three non-decreasing "
                                         "values >= 0 (medium, high, critical)")


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


# -- small helpers --------------------------------------------------------------------------------
def _iso(epoch: float | None) -> str:
    return "-" if epoch is None else datetime.fromtimestamp(float(epoch), UTC).isoformat(timespec="seconds")


def severity_of(score: float, over_threshold_s: float, missing: Collection[str], policy: AlertPolicy) -> Severity:
    """How far AND how long the score exceeds its threshold: the highest of medium, high, critical whose minimum
    peak score / threshold (policy.severity_ratios) and minimum time over the threshold (severity_durations_s)
    the episode both reaches, else low. A sensor that stopped reporting (`missing`) is at least medium."""
    level = max((i + 1 for i, (ratio, duration) in enumerate(zip(policy.severity_ratios, policy.severity_durations_s,
                                                                   strict=True))
                 if score >= ratio and over_threshold_s >= duration), default=0)
    if missing and level == 0:
        level = 1
    return SEVERITIES[level]


def _bump(severity: Severity) -> Severity:
    return SEVERITIES[min(3, SEVERITIES.index(severity) + 1)]


def _mutate(store: StateStore, pk: str, sk: str, read: Callable[[Mapping[str, Any]], Versioned],
            change: Callable[[Versioned | None], Versioned | None]) -> tuple[Versioned | None, Versioned | None]:
    """Optimistic read-modify-write on `rev`: returns (before, after); `change` returning None writes nothing,
    and so does a change that leaves every stored attribute as it was."""
    for _ in range(MAX_ATTEMPTS):
        item = store.get(pk, sk)
        before = None if item is None else read(item)
        after = change(before)
        if after is None:
            return before, before
        if item is None or before is None:
            created = replace(after, rev=1)
            if store.put(pk, sk, created.to_item(), if_absent=True):
                return None, created
            continue
        stored, wanted = before.to_item(), after.to_item()
        changes = {k: v for k, v in wanted.items() if k != "rev" and stored.get(k) != v}
        if not changes:
            return before, before
        rev = before.rev
        if store.update_if(pk, sk, {**changes, "rev": rev + 1}, {"rev": rev if "rev" in item else None}):
            return before, replace(after, rev=rev + 1)
    raise ConfigurationError(f"{pk}/{sk}: too much contention after {MAX_ATTEMPTS} attempts")


def _claim(deps: AlertDeps, alert_id: str, flag: Notice, extra: Mapping[str, Any] | None = None) -> bool:
    """Take the right to send notification `flag` of an alert (None -> 'claimed'; `<flag>_at` the claim's time
    until the send records its own)."""
    return deps.alerts.update_if(ALERTS, alert_id, {flag: "claimed", f"{flag}_at": deps.clock().timestamp(),
                                                    **(extra or {})}, {flag: None})


STALE_CLAIM_S = 900.0  # a claimed notification not sent by then was claimed by a function that died (15 min max)


def _release_stale_claims(item: AlertRecord, now: float, deps: AlertDeps) -> bool:
    """Give back an alert's alert or resolution claimed by a function that died before sending it (that very claim:
    a fresh one taken meanwhile stays)."""
    released = False
    for flag, state, at in (("alert", item.alert, item.alert_at), ("resolution", item.resolution, item.resolution_at)):
        if state == "claimed" and at is not None and now - at >= STALE_CLAIM_S \
                and deps.alerts.update_if(ALERTS, item.alert_id, {flag: None}, {flag: "claimed", f"{flag}_at": at}):
            logger.warning("a claimed notification was never sent: claimed again", alert_id=item.alert_id,
                           notification=flag)
            released = True
    return released


Message = tuple[str, str, Mapping[str, str]]  # subject, body, attributes


def _send(deps: AlertDeps, alert_id: str, flag: Notice, message: Callable[[], Message]) -> str:
    """Build and publish a claimed notification; a failure in either gives the claim back so a retry sends it."""
    try:
        subject, body, attributes = message()
        message_id = deps.notifier.publish("alerts", subject, body, attributes)
    except Exception:
        deps.alerts.update_if(ALERTS, alert_id, {flag: None}, {flag: "claimed"})
        raise
    deps.alerts.update_if(ALERTS, alert_id, AlertRecord.changes(**{
        flag: "sent", f"{flag}_message_id": message_id, f"{flag}_at": deps.clock().timestamp()}), {flag: "claimed"})
    logger.info("alert notification sent", alert_id=alert_id, notification=flag, message_id=message_id)
    return f"{flag}:{alert_id}"


def _attributes(turbine: str, severity: str, features: Collection[str], kind: str) -> dict[str, str]:
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


def _shares(item: EpisodeAlert) -> list[tuple[str, float]]:
    """The contributions, largest first (ties by name)."""
    return sorted(item.contributions.items(), key=lambda kv: (-kv[1], kv[0]))


def _deviation(item: EpisodeAlert) -> list[str]:
    shares = _shares(item)
    listed = [(name, share) for name, share in shares if share >= LISTED_SHARE]
    lines = [f"  anomaly score: {item.score:.2f}x its threshold"] if item.score > 0 else []
    lines += [f"  {name}: {_pct(share)} of the score" for name, share in listed]
    if len(shares) > len(listed):
        rest = shares[len(listed):]
        lines.append(f"  {len(rest)} other feature(s): {_pct(sum(s for _, s in rest))} of the score together")
    lines += [f"  {name}: samples missing or frozen" for name in item.missing]
    return lines or ["  (no feature details)"]


def _top(item: EpisodeAlert) -> str:
    """One line for a subject: "score 3.4x threshold, mostly rps (64 %), voltage (21 %)"."""
    shares = _shares(item)
    named = [f"{name} ({_pct(share)})" for i, (name, share) in enumerate(shares[:NAMED_CONTRIBUTIONS])
             if i == 0 or share >= NAMED_SHARE]
    parts = [f"score {item.score:.1f}x threshold"] if item.score > 0 else []
    if named:
        parts.append(("mostly " if len(shares) > 1 else "") + ", ".join(named))
    text = ", ".join(parts)
    if item.missing:
        text += ("; " if text else "") + ", ".join(item.missing) + " missing or frozen"
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
    carried = cache(lambda: _carried_on(row, deps))  # looked up once, and only for a new episode

    def merge(current: EpisodeAlert | None) -> EpisodeAlert:
        if current is None:
            earlier = carried()
            current = EpisodeAlert(
                alert_id=alert_id, turbine_id=row.thing_name, episode_id=row.episode_id, first_seen_at=now,
                started_at=row.started_at, opened_at=row.opened_at, model_version=row.model_version,
                expires_at=int(now + deps.policy.retention_s), continues=earlier.alert_id if earlier else None,
                alert="continued" if earlier else None)
        item = current
        peak = row.score > item.score  # the peak so far, with its window's explanation (first one on ties)
        flagged = [t for t in (item.last_flagged_at, row.last_flagged_at) if t is not None]
        item = replace(item, score=row.score if peak else item.score,
                       contributions=dict(sorted(row.contributions.items())) if peak else item.contributions,
                       missing=tuple(sorted(set(item.missing) | set(row.missing))),
                       features=tuple(sorted(set(item.features) | set(row.features) | set(row.missing))),
                       last_seq=max(item.last_seq, row.seq), last_message_at=now,
                       started_at=min(item.started_at, row.started_at), last_flagged_at=max(flagged, default=None),
                       model_version=row.model_version if item.model_version is None else item.model_version)
        if row.kind == "close" and item.status == "open":
            item = replace(item, status="closed", ended_at=row.ended_at if row.ended_at is not None else row.opened_at)
        if row.kind == "interrupt" and item.status == "open" and item.interrupted_at is None:
            item = replace(item, interrupted_at=now)  # stays open: only a real end, or the lack of one, settles it
        severity = severity_of(item.score, item.over_threshold_s, item.missing, deps.policy)
        return replace(item, severity=_bump(severity) if item.escalated == "repeated" else severity)

    before, item = _mutate(deps.alerts, ALERTS, alert_id, EpisodeAlert.from_item, merge)
    assert item is not None
    if item.status == "open":  # redelivered messages repair an entry a crash left unwritten
        deps.alerts.put(OPEN, alert_id, {"expires_at": item.expires_at}, if_absent=True)
    else:
        deps.alerts.delete(OPEN, alert_id)
    if item.continues is None:  # the turbine's episode index, for the repeat rule (a continuation adds none)
        seen = item.since
        deps.alerts.put(f"turbine#{row.thing_name}", sighting_key(seen, row.episode_id),
                        EpisodeSighting(alert_id, seen, item.expires_at).to_item(), if_absent=True)
    else:  # (again, after a crash) the interrupted episode learns which one carries it on
        deps.alerts.update_if(ALERTS, item.continues, EpisodeAlert.changes(continued_by=row.episode_id),
                              {"continued_by": None})
    sent = list(_settle_episode(item, deps))
    if row.kind == "close" and item.status == "closed":
        sent += _end_interrupted(item, deps)
    action = "new" if before is None else "duplicate" if before.rev == item.rev else "updated"
    return Outcome(action, f"{alert_id} {item.status} ({row.kind} #{row.seq})", sent=tuple(sent))


def _carried_on(row: EpisodeRow, deps: AlertDeps) -> EpisodeAlert | None:
    """The interrupted episode of the turbine that this new one carries on: still open (its end unseen), carried
    on by no other, started before it and last flagged at most the offline limit before it started (the detector
    changed model or restarted while the condition went on). Its alert stands for both: one condition, one alert
    and one resolution, sent when this one ends."""
    interrupted = [item for item in _open(EpisodeAlert, deps, f"episode:{row.thing_name}:")
                   if item.status == "open" and item.interrupted_at is not None and item.continued_by is None
                   and item.started_at < row.started_at
                   and row.started_at - (item.last_flagged_at or item.opened_at) <= deps.policy.offline_after_s]
    return max(interrupted, key=lambda item: item.started_at, default=None)


def _still_carried_on(item: EpisodeAlert, deps: AlertDeps) -> bool:
    """The episode that carries this interrupted one on is still open."""
    if item.continued_by is None:
        return False
    later = load(EpisodeAlert, deps.alerts.get(ALERTS, episode_alert_id(item.turbine_id, item.continued_by)))
    return later is not None and later.status == "open"


def _settle_episode(item: EpisodeAlert, deps: AlertDeps) -> list[str]:
    """Send what an episode still owes: its alert (or its place in a summary), then its resolution."""
    alert_id, sent = item.alert_id, []
    if item.alert is None:
        window, index = _rate_slot(item, deps)
        if index >= deps.policy.rate_limit:
            summary_id = f"summary:{item.turbine_id}:{int(window)}"
            deps.alerts.put(ALERTS, summary_id, SummaryAlert(
                alert_id=summary_id, turbine_id=item.turbine_id, window_start=window,
                due_at=window + deps.policy.rate_window_s, expires_at=int(window + deps.policy.retention_s)).to_item(),
                if_absent=True)
            deps.alerts.put(OPEN, summary_id, {"expires_at": int(window + deps.policy.retention_s)}, if_absent=True)
            deps.alerts.update_if(ALERTS, alert_id, EpisodeAlert.changes(alert="folded", summary_id=summary_id),
                                  {"alert": None})
            logger.info("episode folded into summary", alert_id=alert_id, summary_id=summary_id)
        else:
            repeats = _recent_episodes(item.turbine_id, deps)
            if repeats >= deps.policy.repeat_episodes:
                item = replace(item, escalated="repeated", severity=_bump(item.severity))
                extra = EpisodeAlert.changes(escalated=item.escalated, severity=item.severity)
            else:
                extra = {}
            if _claim(deps, alert_id, "alert", extra):
                sent.append(_send(deps, alert_id, "alert", lambda: _episode_message(item, deps, repeats)))
    current = load(EpisodeAlert, deps.alerts.get(ALERTS, alert_id)) or item
    if current.status == "closed" and current.alert == "sent" and current.resolution is None \
            and _claim(deps, alert_id, "resolution"):
        sent.append(_send(deps, alert_id, "resolution", lambda: _resolution_message(current, deps)))
    return sent


def _end_interrupted(closed: EpisodeAlert, deps: AlertDeps) -> list[str]:
    """An episode of the turbine ended for real: the episodes interrupted before it started (their
    detector stopped or changed model while they were open) ended with it."""
    sent: list[str] = []
    for item in _open(EpisodeAlert, deps, f"episode:{closed.turbine_id}:"):
        if (item.status == "open" and item.interrupted_at is not None and item.alert_id != closed.alert_id
                and item.started_at < closed.started_at
                and deps.alerts.update_if(ALERTS, item.alert_id,
                                          EpisodeAlert.changes(status="closed", ended_at=closed.ended_at,
                                                               ended_with=closed.episode_id),
                                          {"status": "open"})):
            sent += _settle_episode(load(EpisodeAlert, deps.alerts.get(ALERTS, item.alert_id)) or item, deps)
    return sent


def _rate_slot(item: EpisodeAlert, deps: AlertDeps) -> tuple[float, int]:
    """The turbine's rate window of the episode's first sighting, and the episode's place in it."""
    window_s = deps.policy.rate_window_s
    window = math.floor(item.since / window_s) * window_s

    def add(slot: RateSlot | None) -> RateSlot | None:
        if slot is None:
            slot = RateSlot(expires_at=int(window + deps.policy.retention_s))
        if item.alert_id in slot.episodes:
            return None
        return replace(slot, episodes=(*slot.episodes, item.alert_id))

    _, slot = _mutate(deps.alerts, f"rate#{item.turbine_id}", f"{int(window)}", RateSlot.from_item, add)
    assert slot is not None
    return window, slot.episodes.index(item.alert_id)


SIGHTING_DAY_S = 86_400  # sightings are keyed by day: the repeat rule reads only the days of its window


def sighting_key(seen_at: float, episode_id: str) -> str:
    return f"{int(seen_at // SIGHTING_DAY_S):06d}#{seen_at:017.6f}#{episode_id}"


def _recent_episodes(turbine: str, deps: AlertDeps) -> int:
    now = deps.clock().timestamp()
    since = now - deps.policy.repeat_window_s
    days = range(int(since // SIGHTING_DAY_S), int(now // SIGHTING_DAY_S) + 1)
    return sum(s.seen_at >= since for day in days
               for s in records(EpisodeSighting, deps.alerts.query(f"turbine#{turbine}", f"{day:06d}#")))


def _episode_message(item: EpisodeAlert, deps: AlertDeps, repeats: int) -> tuple[str, str, dict[str, str]]:
    turbine, severity = item.turbine_id, item.severity
    prefix = "REPEATED " if item.escalated == "repeated" else ""
    subject = f"[{severity.upper()}] {prefix}{turbine}: {_top(item)}"
    state = "still open" if item.status == "open" else f"already ended at {_iso(item.ended_at)}"
    lines = [f"Turbine {turbine}: anomaly episode {item.episode_id} ({severity}), {state}.",
             "", "What deviated (the peak anomaly score and each sensor's share of it):", *_deviation(item), "",
             f"Started:  {_iso(item.started_at)} (opened {_iso(item.opened_at)}, "
             f"last flagged {_iso(item.last_flagged_at)})",
             _lineage(deps, item.model_version)]
    if item.escalated == "repeated":
        lines.append(f"Escalated: episode {repeats} of this turbine within {deps.policy.repeat_window_s / 3600:g} h.")
    lines += ["", f"Acknowledge: nacelle alerts ack {item.alert_id} --verdict fault|false-alarm"]
    return subject, "\n".join(lines), _attributes(turbine, severity, item.features, "alert")


def _resolution_message(item: EpisodeAlert, deps: AlertDeps) -> tuple[str, str, dict[str, str]]:
    turbine = item.turbine_id
    duration = max(0.0, (item.ended_at or 0.0) - item.started_at)
    continued = (f" The detector stopped or changed model during it; it ended with episode {item.ended_with}."
                 if item.ended_with else "")
    body = (f"Turbine {turbine}: anomaly episode {item.episode_id} ended at {_iso(item.ended_at)} "
            f"after {duration / 60:.1f} min.{continued}\n\nPeak deviation:\n" + "\n".join(_deviation(item)) +
            f"\n\n{_lineage(deps, item.model_version)}\nAlert: {item.alert_id}")
    return (f"[RESOLVED] {turbine}: {_top(item)}", body,
            _attributes(turbine, item.severity, item.features, "resolution"))


# -- escalations and summaries (every invocation and the scheduled check) ------------------------
def _open(kind: type[Open], deps: AlertDeps, prefix: str) -> list[Open]:
    """The records the open index lists under `prefix`; entries of records no longer open (or gone) are
    removed on the way."""
    found = []
    for entry in deps.alerts.query(OPEN, prefix):
        record = load(kind, deps.alerts.get(ALERTS, entry["sk"]))
        if record is None or record.status not in ("open", "pending"):
            deps.alerts.delete(OPEN, entry["sk"])
        else:
            found.append(record)
    return found


def sweep(deps: AlertDeps) -> list[str]:
    """Escalate long-open unacknowledged episodes, settle interrupted ones whose end was never seen
    as "unknown" (after the offline limit, unless a later episode still open carries them on), and send
    summaries whose window has ended: from the open index, so its cost follows what is open, not the history."""
    now, sent = deps.clock().timestamp(), []
    for item in _open(EpisodeAlert, deps, "episode:"):
        if _release_stale_claims(item, now, deps):
            sent += _settle_episode(load(EpisodeAlert, deps.alerts.get(ALERTS, item.alert_id)) or item, deps)
            continue
        if (item.status == "open" and item.interrupted_at is not None
                and now - item.interrupted_at >= deps.policy.offline_after_s and not _still_carried_on(item, deps)
                and deps.alerts.update_if(ALERTS, item.alert_id, {"status": "unknown"}, {"status": "open"})):
            if item.alert == "sent" and _claim(deps, item.alert_id, "resolution"):
                sent.append(_send(deps, item.alert_id, "resolution", partial(_unknown_message, item, deps)))
            continue
        if (item.status == "open" and item.alert == "sent" and not item.escalated and not item.acks
                and now - item.since >= deps.policy.escalate_after_s
                and _claim(deps, item.alert_id, "escalation", EpisodeAlert.changes(escalated="open-too-long"))):
            sent.append(_send(deps, item.alert_id, "escalation", partial(_escalation_message, item, now, deps)))
    for summary in _open(SummaryAlert, deps, "summary:"):
        if summary.status == "pending" and summary.due_at <= now \
                and deps.alerts.update_if(ALERTS, summary.alert_id, {"status": "sending"}, {"status": "pending"}):
            sent.append(_send_summary(summary, deps))
    return sent


def _unknown_message(item: EpisodeAlert, deps: AlertDeps) -> tuple[str, str, dict[str, str]]:
    turbine = item.turbine_id
    body = (f"Turbine {turbine}: the detector stopped or changed model at {_iso(item.interrupted_at)} while "
            f"anomaly episode {item.episode_id} (started {_iso(item.started_at)}) was still open, and no "
            f"end of it has been reported within {deps.policy.offline_after_s / 60:g} min. Whether the condition "
            f"has ended is unknown: check the turbine.\n\nPeak deviation:\n" + "\n".join(_deviation(item)) +
            f"\n\n{_lineage(deps, item.model_version)}\nAlert: {item.alert_id}")
    return (f"[UNKNOWN] {turbine}: end of the episode not seen, {_top(item)}", body,
            _attributes(turbine, item.severity, item.features, "unknown"))


def _escalation_message(item: EpisodeAlert, now: float, deps: AlertDeps) -> tuple[str, str, dict[str, str]]:
    turbine, severity = item.turbine_id, _bump(item.severity)
    minutes = (now - item.since) / 60
    body = (f"Turbine {turbine}: anomaly episode {item.episode_id} has been open for {minutes:.0f} min "
            f"without acknowledgement.\n\nWhat deviated:\n" + "\n".join(_deviation(item)) +
            f"\n\nStarted: {_iso(item.started_at)}\n{_lineage(deps, item.model_version)}\n\n"
            f"Acknowledge: nacelle alerts ack {item.alert_id} --verdict fault|false-alarm")
    return (f"[ESCALATED {severity.upper()}] {turbine}: open {minutes:.0f} min, {_top(item)}", body,
            _attributes(turbine, severity, item.features, "escalation"))


def _send_summary(summary: SummaryAlert, deps: AlertDeps) -> str:
    turbine, sid = summary.turbine_id, summary.alert_id
    slot = load(RateSlot, deps.alerts.get(f"rate#{turbine}", str(int(summary.window_start)))) or RateSlot()
    folded = [load(EpisodeAlert, deps.alerts.get(ALERTS, a)) for a in slot.episodes[deps.policy.rate_limit:]]
    items = [i for i in folded if i is not None]
    severity = max((i.severity for i in items), key=SEVERITIES.index, default="low")
    features = sorted({f for i in items for f in i.features})
    lines = [f"Turbine {turbine} raised more than {deps.policy.rate_limit} anomaly episodes between "
             f"{_iso(summary.window_start)} and {_iso(summary.due_at)}; these {len(items)} were folded "
             "into this summary:", ""]
    lines += [f"  {i.alert_id}  {i.severity:8s} {_top(i)}  started {_iso(i.started_at)}  {i.status}"
              for i in items]
    deps.alerts.update_if(ALERTS, sid, SummaryAlert.changes(alert="claimed", episodes=[i.alert_id for i in items],
                                                            severity=severity, features=features),
                          {"status": "sending"})
    try:
        message_id = deps.notifier.publish(
            "alerts", f"[{severity.upper()}] {turbine}: {len(items)} more anomaly episodes (summary)",
            "\n".join(lines), _attributes(turbine, severity, features, "summary"))
    except Exception:
        deps.alerts.update_if(ALERTS, sid, {"status": "pending", "alert": None}, {"status": "sending"})
        raise
    deps.alerts.update_if(ALERTS, sid, SummaryAlert.changes(status="sent", alert="sent", alert_message_id=message_id,
                                                            alert_at=deps.clock().timestamp()), {"status": "sending"})
    return f"summary:{sid}"


# -- offline devices --------------------------------------------------------------------------------
def on_scheduled_check(deps: AlertDeps) -> Outcome:
    """Offline / back-online per device (from the health records), then the sweep."""
    now, sent = deps.clock().timestamp(), []
    for device in records(DeviceRecord, deps.devices.query(DEVICES)):
        thing, last = device.thing_name, device.last_health_at
        outage = (load(DeviceOutage, deps.alerts.get("device", thing)) or DeviceOutage()).outage
        if outage:  # health resumed since the outage began (even if it stopped again since)
            sent += _back_online(thing, last, outage, deps)
        if now - last > deps.policy.offline_after_s:
            sent += _offline(thing, last, now, deps)
    sent += sweep(deps)
    return Outcome("checked", f"{len(sent)} notification(s)", sent=tuple(sent))


def _offline(thing: str, last: float, now: float, deps: AlertDeps) -> list[str]:
    alert_id = f"offline:{thing}:{int(last)}"  # one per outage: keyed by the last health before the silence
    deps.alerts.put(ALERTS, alert_id, OfflineAlert(alert_id=alert_id, turbine_id=thing, first_seen_at=now,
                                                   last_health_at=last,
                                                   expires_at=int(now + deps.policy.retention_s)).to_item(),
                    if_absent=True)
    deps.alerts.update_if("device", thing, DeviceOutage.changes(outage=alert_id), {"outage": None})
    if not _claim(deps, alert_id, "alert"):
        return []
    silent = f"for {(now - last) / 60:.1f} min" if last else "at all"
    body = (f"Turbine {thing} has sent no health report {silent} (last one at {_iso(last or None)}; "
            f"the limit is {deps.policy.offline_after_s / 60:g} min). Its anomaly detection is not being "
            f"reported either.\n\nAlert: {alert_id}")
    return [_send(deps, alert_id, "alert", lambda: (f"[HIGH] {thing}: turbine offline", body,
                                                    _attributes(thing, "high", [], "offline")))]


def _back_online(thing: str, last: float, outage: str, deps: AlertDeps) -> list[str]:
    item = load(OfflineAlert, deps.alerts.get(ALERTS, outage))
    if item is None or last <= item.last_health_at:
        return []
    sent = []
    deps.alerts.update_if(ALERTS, outage, OfflineAlert.changes(status="closed", ended_at=last), {"status": "open"})
    if item.alert == "sent" and _claim(deps, outage, "resolution"):
        body = (f"Turbine {thing} is reporting health again since {_iso(last)} (silent since "
                f"{_iso(item.last_health_at or None)}).\n\nAlert: {outage}")
        sent.append(_send(deps, outage, "resolution", lambda: (f"[RESOLVED] {thing}: back online", body,
                                                               _attributes(thing, "high", [], "online"))))
    if item.alert in ("sent", None):
        deps.alerts.update_if("device", thing, {"outage": None}, {"outage": outage})
    return sent


# -- operator actions ------------------------------------------------------------------------------
def alert_records(deps: AlertDeps, status: str | None = None) -> list[AlertRecord]:
    """Every alert (with `status`, when given), newest first."""
    alerts = [a for a in map(alert_from_item, deps.alerts.query(ALERTS)) if status is None or a.status == status]
    return sorted(alerts, key=lambda a: a.since, reverse=True)


def alert_record(alert_id: str, deps: AlertDeps) -> AlertRecord:
    item = deps.alerts.get(ALERTS, alert_id)
    if item is None:
        raise NotFound(f"no alert {alert_id!r} (see `nacelle alerts list`)")
    return alert_from_item(item)


def list_alerts(deps: AlertDeps, status: str | None = None) -> list[dict[str, Any]]:
    """alert_records as their stored items, every field present (what the CLI prints)."""
    return [a.to_item() for a in alert_records(deps, status)]


def get_alert(alert_id: str, deps: AlertDeps) -> dict[str, Any]:
    """alert_record as its stored item, every field present."""
    return alert_record(alert_id, deps).to_item()


def acknowledge(alert_id: str, actor: str, deps: AlertDeps, verdict: Verdict | None = None,
                note: str = "") -> dict[str, Any]:
    """Add an acknowledgement (who, when, the verdict if any, the note) to the alert's history; earlier ones are
    kept. The first stops its escalation; the latest verdict is the alert's and becomes a training label (written
    again from the history at every verdict). The same acknowledgement again (by, verdict and note those of the
    latest) adds nothing. Returns the alert's item."""
    record = alert_record(alert_id, deps)
    if verdict is not None and not isinstance(record, EpisodeAlert):
        raise ConfigurationError(f"{alert_id} is a {record.kind} alert: verdicts apply to anomaly episodes")
    if verdict not in (None, *VERDICTS):
        raise ConfigurationError(f"verdict must be fault or false-alarm, got {verdict!r}")
    if verdict is not None and deps.store is None:
        raise ConfigurationError("acknowledging with a verdict needs the data bucket (AlertDeps.store)")
    ack = Ack(by=actor, at=deps.clock().timestamp(), verdict=verdict, note=note)

    def add(current: AlertRecord | None) -> AlertRecord | None:
        if current is None:
            return None
        latest = current.acks[-1] if current.acks else None
        if latest is not None and (latest.by, latest.verdict, latest.note) == (ack.by, ack.verdict, ack.note):
            return None
        return replace(current, acks=(*current.acks, ack),
                       label_key=label_key(alert_id) if verdict is not None else current.label_key)

    _, after = _mutate(deps.alerts, ALERTS, alert_id, alert_from_item, add)
    if verdict is not None and isinstance(after, EpisodeAlert):
        _write_label(after, deps)
    logger.info("alert acknowledged", alert_id=alert_id, actor=actor, verdict=verdict)
    return get_alert(alert_id, deps)


def label_key(alert_id: str) -> str:
    return f"{LABELS_PREFIX}{alert_id.replace(':', '_')}/labels.json"


def _write_label(item: EpisodeAlert, deps: AlertDeps) -> str:
    """labels/alerts/<alert>/labels.json in the labels.json format training reads (shared.ml.metrics.load_labels),
    from the alert's latest verdict, with every acknowledgement as its source.

    A fault becomes a labelled episode (training keeps it out of the normal windows, evaluation counts it);
    a false alarm lists no episode, so its span stays normal data, and is recorded under `false_alarms`.
    """
    assert deps.store is not None  # acknowledge() checked it
    latest = next(a for a in reversed(item.acks) if a.verdict is not None)
    # the span in the device's clock, as the samples it labels: never the cloud's receive time (clocks differ)
    end = item.ended_at or item.last_flagged_at or item.opened_at
    span = {"turbine_id": item.turbine_id, "start": item.started_at, "end": max(float(end), item.started_at)}
    severity = {"critical": "high"}.get(item.severity, item.severity)  # the simulator's scale
    doc = {"episodes": [{**span, "fault": "operator-confirmed", "severity": severity}]
           if latest.verdict == "fault" else [],
           "false_alarms": [span] if latest.verdict == "false-alarm" else [],
           "source": {"alert_id": item.alert_id, "episode_id": item.episode_id, "verdict": latest.verdict,
                      "by": latest.by, "note": latest.note, "model_version": item.model_version,
                      "acks": [a.to_item() for a in item.acks]}}
    key = label_key(item.alert_id)
    deps.store.put(key, json.dumps(doc, indent=1).encode(), "application/json")
    return key
