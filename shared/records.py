"""Typed records of the state the alert and rollout use cases keep (docs/fleet.md), one frozen dataclass per kind of
item, with an explicit mapping to the stored item (`to_item`) and back (`from_item`).

The stored shape is the documented one: attribute names are the field names, lists are JSON lists, absent optional
values are null. `from_item` reads items written by earlier versions: a field they lack takes its default (and an
episode acknowledged before acknowledgements were kept as a history gets that one acknowledgement as its history).
Numbers are read by value: DynamoDB may return an integral float as an int.

Conditional writes keep naming attributes (the stores' `update_if`); `changes()` builds such a change set and
refuses a name that is no field of the record.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal, Self, TypeVar, cast

Severity = Literal["low", "medium", "high", "critical"]
SEVERITIES: tuple[Severity, ...] = ("low", "medium", "high", "critical")
Verdict = Literal["fault", "false-alarm"]
VERDICTS: tuple[Verdict, ...] = ("fault", "false-alarm")

R = TypeVar("R", bound="Record")


# -- reading stored values ------------------------------------------------------------------------------------------
def _float(value: Any, default: float = 0.0) -> float:
    return default if value is None else float(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _int(value: Any, default: int = 0) -> int:
    return default if value is None else int(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _str(value: Any, default: str = "") -> str:
    return default if value is None else str(value)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _strs(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in (value or ()))


def _shares(value: Any) -> dict[str, float]:
    return {str(k): float(v) for k, v in sorted((value or {}).items())}


def _severity(value: Any, default: Severity = "low") -> Severity:
    return cast(Severity, value) if value in SEVERITIES else default


def _verdict(value: Any) -> Verdict | None:
    return cast(Verdict, value) if value in VERDICTS else None


def _key(item: Mapping[str, Any]) -> str:
    return _str(item.get("sk"))


class Record(ABC):
    """What every record offers besides its fields: `to_item()`, `from_item()` and `changes()`."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    @abstractmethod
    def to_item(self) -> dict[str, Any]:
        """The stored item (attribute names as they have always been stored)."""

    @classmethod
    @abstractmethod
    def from_item(cls, item: Mapping[str, Any]) -> Self:
        """The record of a stored item; a field the item lacks (an older item) gets its default."""

    @classmethod
    def changes(cls, **values: Any) -> dict[str, Any]:
        """Attributes of a conditional update (or its expectation), each a field of this record."""
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"{cls.__name__} has no field {', '.join(unknown)}")
        return {name: list(v) if isinstance(v, tuple) else v for name, v in values.items()}


def load(cls: type[R], item: Mapping[str, Any] | None) -> R | None:
    """The record of a stored item, None when there is none."""
    return None if item is None else cls.from_item(item)


# -- the alert-state table ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ack(Record):
    """One acknowledgement: who, when, the verdict if one was given, the note."""

    by: str
    at: float
    verdict: Verdict | None = None
    note: str = ""

    def to_item(self) -> dict[str, Any]:
        return {"by": self.by, "at": self.at, "verdict": self.verdict, "note": self.note}

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> Ack:
        return cls(by=_str(item.get("by")), at=_float(item.get("at")), verdict=_verdict(item.get("verdict")),
                   note=_str(item.get("note")))


@dataclass(frozen=True, kw_only=True)
class AlertRecord(Record):
    """pk "alerts": what every alert has. Each notification (alert, escalation, resolution) is None, then
    "claimed" by a conditional write, then "sent" (the alert of a rate-limited episode: "folded"; of an episode
    that continues an interrupted one, whose alert stands for both: "continued")."""

    KIND: ClassVar[str] = ""
    alert_id: str
    turbine_id: str = ""
    status: str = "open"
    severity: Severity = "low"
    features: tuple[str, ...] = ()
    first_seen_at: float | None = None
    ended_at: float | None = None
    expires_at: int = 0  # DynamoDB TTL
    alert: str | None = None
    alert_message_id: str | None = None
    alert_at: float | None = None
    escalation: str | None = None
    escalation_message_id: str | None = None
    escalation_at: float | None = None
    resolution: str | None = None
    resolution_message_id: str | None = None
    resolution_at: float | None = None
    acks: tuple[Ack, ...] = ()  # oldest first
    label_key: str | None = None  # the training label the latest verdict wrote
    rev: int = 0  # optimistic concurrency of read-modify-write updates

    @property
    def kind(self) -> str:
        return self.KIND

    @property
    def acked_at(self) -> float | None:
        """The first acknowledgement (no escalation after it)."""
        return self.acks[0].at if self.acks else None

    @property
    def acked_by(self) -> str | None:
        return self.acks[-1].by if self.acks else None

    @property
    def note(self) -> str:
        return self.acks[-1].note if self.acks else ""

    @property
    def verdict(self) -> Verdict | None:
        """The latest verdict given (an acknowledgement without one keeps it)."""
        return next((a.verdict for a in reversed(self.acks) if a.verdict is not None), None)

    @property
    def verdict_at(self) -> float | None:
        return next((a.at for a in reversed(self.acks) if a.verdict is not None), None)

    @property
    def since(self) -> float:
        """When the alert began, for ordering."""
        return _float(self.first_seen_at)

    def _common_item(self) -> dict[str, Any]:
        return {
            "kind": self.KIND, "alert_id": self.alert_id, "turbine_id": self.turbine_id, "status": self.status,
            "severity": self.severity, "features": list(self.features), "first_seen_at": self.first_seen_at,
            "ended_at": self.ended_at, "expires_at": self.expires_at,
            "alert": self.alert, "alert_message_id": self.alert_message_id, "alert_at": self.alert_at,
            "escalation": self.escalation, "escalation_message_id": self.escalation_message_id,
            "escalation_at": self.escalation_at,
            "resolution": self.resolution, "resolution_message_id": self.resolution_message_id,
            "resolution_at": self.resolution_at,
            "acks": [a.to_item() for a in self.acks],
            # the acknowledgement as items had it before the history: derived, read by nothing but people
            "acked_by": self.acked_by, "acked_at": self.acked_at, "note": self.note, "verdict": self.verdict,
            "verdict_at": self.verdict_at, "label_key": self.label_key,
            "rev": self.rev,
        }

    @staticmethod
    def _common_fields(item: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "alert_id": _str(item.get("alert_id")) or _key(item), "turbine_id": _str(item.get("turbine_id")),
            "status": _str(item.get("status"), "open"), "severity": _severity(item.get("severity")),
            "features": _strs(item.get("features")), "first_seen_at": _opt_float(item.get("first_seen_at")),
            "ended_at": _opt_float(item.get("ended_at")), "expires_at": _int(item.get("expires_at")),
            "alert": _opt_str(item.get("alert")), "alert_message_id": _opt_str(item.get("alert_message_id")),
            "alert_at": _opt_float(item.get("alert_at")),
            "escalation": _opt_str(item.get("escalation")),
            "escalation_message_id": _opt_str(item.get("escalation_message_id")),
            "escalation_at": _opt_float(item.get("escalation_at")),
            "resolution": _opt_str(item.get("resolution")),
            "resolution_message_id": _opt_str(item.get("resolution_message_id")),
            "resolution_at": _opt_float(item.get("resolution_at")),
            "acks": _acks(item), "label_key": _opt_str(item.get("label_key")), "rev": _int(item.get("rev")),
        }


def _acks(item: Mapping[str, Any]) -> tuple[Ack, ...]:
    if "acks" in item:
        return tuple(Ack.from_item(a) for a in item.get("acks") or ())
    if item.get("acked_by") is None and item.get("acked_at") is None:
        return ()
    # written before the history: one acknowledgement, its verdict and note
    return (Ack(by=_str(item.get("acked_by")), at=_float(item.get("acked_at")), verdict=_verdict(item.get("verdict")),
                note=_str(item.get("note"))),)


@dataclass(frozen=True, kw_only=True)
class EpisodeAlert(AlertRecord):
    """sk "episode:<thing>:<episode id>": one anomaly episode, merged over its messages."""

    KIND: ClassVar[str] = "episode"
    episode_id: str = ""
    score: float = 0.0  # the highest peak score / threshold seen
    contributions: Mapping[str, float] = field(default_factory=dict)  # of the message that carried that score
    missing: tuple[str, ...] = ()
    last_seq: int = 0
    started_at: float = 0.0
    opened_at: float = 0.0
    last_flagged_at: float | None = None
    model_version: int | None = None
    last_message_at: float | None = None
    interrupted_at: float | None = None  # the detector stopped or changed model while it was open
    ended_with: str | None = None  # the later episode whose end ended this interrupted one
    continues: str | None = None  # the interrupted episode's alert id this episode carries on (no alert of its own)
    continued_by: str | None = None  # the episode id that carries this interrupted one on
    escalated: str | None = None  # "repeated" | "open-too-long"
    summary_id: str | None = None  # folded into this summary by the rate limit

    @property
    def over_threshold_s(self) -> float:
        """How long the score has been over its threshold: from the first flagged window to the last one."""
        last = self.last_flagged_at if self.last_flagged_at is not None else self.opened_at
        return max(0.0, last - self.started_at)

    def to_item(self) -> dict[str, Any]:
        return {**self._common_item(), "episode_id": self.episode_id, "score": self.score,
                "contributions": dict(sorted(self.contributions.items())), "missing": list(self.missing),
                "last_seq": self.last_seq, "started_at": self.started_at, "opened_at": self.opened_at,
                "last_flagged_at": self.last_flagged_at, "model_version": self.model_version,
                "last_message_at": self.last_message_at, "interrupted_at": self.interrupted_at,
                "ended_with": self.ended_with, "continues": self.continues, "continued_by": self.continued_by,
                "escalated": self.escalated, "summary_id": self.summary_id}

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> EpisodeAlert:
        return cls(**cls._common_fields(item), episode_id=_str(item.get("episode_id")),
                   score=_float(item.get("score")),  # items written before schema v2 have none
                   contributions=_shares(item.get("contributions")), missing=_strs(item.get("missing")),
                   last_seq=_int(item.get("last_seq")), started_at=_float(item.get("started_at")),
                   opened_at=_float(item.get("opened_at")), last_flagged_at=_opt_float(item.get("last_flagged_at")),
                   model_version=_opt_int(item.get("model_version")),
                   last_message_at=_opt_float(item.get("last_message_at")),
                   interrupted_at=_opt_float(item.get("interrupted_at")), ended_with=_opt_str(item.get("ended_with")),
                   continues=_opt_str(item.get("continues")), continued_by=_opt_str(item.get("continued_by")),
                   escalated=_opt_str(item.get("escalated")), summary_id=_opt_str(item.get("summary_id")))


@dataclass(frozen=True, kw_only=True)
class SummaryAlert(AlertRecord):
    """sk "summary:<thing>:<window start>": the episodes a turbine's rate window folded, sent when it ends.
    status: pending -> sending (claimed) -> sent."""

    KIND: ClassVar[str] = "summary"
    status: str = "pending"
    window_start: float = 0.0
    due_at: float = 0.0
    episodes: tuple[str, ...] = ()  # alert ids, set when it is sent

    @property
    def since(self) -> float:
        return _float(self.first_seen_at, self.window_start)

    def to_item(self) -> dict[str, Any]:
        return {**self._common_item(), "window_start": self.window_start, "due_at": self.due_at,
                "episodes": list(self.episodes)}

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> SummaryAlert:
        return cls(**{**cls._common_fields(item), "status": _str(item.get("status"), "pending")},
                   window_start=_float(item.get("window_start")), due_at=_float(item.get("due_at")),
                   episodes=_strs(item.get("episodes")))


@dataclass(frozen=True, kw_only=True)
class OfflineAlert(AlertRecord):
    """sk "offline:<thing>:<last health>": one outage of a device's health reports."""

    KIND: ClassVar[str] = "offline"
    severity: Severity = "high"
    last_health_at: float = 0.0  # the last health report before the silence (0: never reported)

    def to_item(self) -> dict[str, Any]:
        return {**self._common_item(), "last_health_at": self.last_health_at}

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> OfflineAlert:
        return cls(**{**cls._common_fields(item), "severity": _severity(item.get("severity"), "high")},
                   last_health_at=_float(item.get("last_health_at")))


@dataclass(frozen=True, kw_only=True)
class DriftAlert(AlertRecord):
    """sk "drift:<thing>:<model version>:<since>": one drift of a turbine's data (shared/usecases/drift.py), from the
    first of the periods that raised it until enough periods look as before. `features` names the drifting
    features; `distances` (to the training baseline) and `turbine_changes` (from the turbine's own first periods) are
    those of the latest drifting period, in training standard deviations."""

    KIND: ClassVar[str] = "drift"
    severity: Severity = "medium"
    model_version: int | None = None
    since: float = 0.0  # start of the first drifting period (sample time)
    last_period: float = 0.0  # start of the latest drifting period
    distances: Mapping[str, float] = field(default_factory=dict)
    turbine_changes: Mapping[str, float] = field(default_factory=dict)
    score_distance: float | None = None
    score_change: float | None = None

    def to_item(self) -> dict[str, Any]:
        return {**self._common_item(), "model_version": self.model_version, "since": self.since,
                "last_period": self.last_period, "distances": dict(sorted(self.distances.items())),
                "turbine_changes": dict(sorted(self.turbine_changes.items())), "score_distance": self.score_distance,
                "score_change": self.score_change}

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> DriftAlert:
        return cls(**{**cls._common_fields(item), "severity": _severity(item.get("severity"), "medium")},
                   model_version=_opt_int(item.get("model_version")), since=_float(item.get("since")),
                   last_period=_float(item.get("last_period")), distances=_shares(item.get("distances")),
                   turbine_changes=_shares(item.get("turbine_changes")),
                   score_distance=_opt_float(item.get("score_distance")),
                   score_change=_opt_float(item.get("score_change")))


ALERT_KINDS: dict[str, type[AlertRecord]] = {c.KIND: c for c in (EpisodeAlert, SummaryAlert, OfflineAlert, DriftAlert)}


def alert_from_item(item: Mapping[str, Any]) -> AlertRecord:
    """The record of any alert item, by its kind (an item of no known kind reads as an episode)."""
    return ALERT_KINDS.get(_str(item.get("kind")), EpisodeAlert).from_item(item)


@dataclass(frozen=True)
class EpisodeSighting(Record):
    """pk "turbine#<thing>", sk "<day, 06d>#<first seen, 017.6f>#<episode id>" (alerts.sighting_key): a turbine's
    episodes, for the repeat rule."""

    alert_id: str
    seen_at: float
    expires_at: int

    def to_item(self) -> dict[str, Any]:
        return {"alert_id": self.alert_id, "seen_at": self.seen_at, "expires_at": self.expires_at}

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> EpisodeSighting:
        return cls(_str(item.get("alert_id")), _float(item.get("seen_at")), _int(item.get("expires_at")))


@dataclass(frozen=True)
class RateSlot(Record):
    """pk "rate#<thing>", sk "<window start>": the episodes of a turbine's rate window, in order of arrival."""

    episodes: tuple[str, ...] = ()
    expires_at: int = 0
    rev: int = 0

    def to_item(self) -> dict[str, Any]:
        return {"episodes": list(self.episodes), "expires_at": self.expires_at, "rev": self.rev}

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> RateSlot:
        return cls(_strs(item.get("episodes")), _int(item.get("expires_at")), _int(item.get("rev")))


@dataclass(frozen=True)
class DeviceOutage(Record):
    """pk "device", sk <thing>: the offline alert of the device's current outage (None: none)."""

    outage: str | None = None

    def to_item(self) -> dict[str, Any]:
        return {"outage": self.outage}

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> DeviceOutage:
        return cls(_opt_str(item.get("outage")))


# -- the state table: devices ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceRecord(Record):
    """pk "devices", sk <thing>: the latest health row deployment_status took (anomaly_alert's offline check reads
    it)."""

    thing_name: str
    last_health_at: float = 0.0  # epoch s, from the row's received_at (0: never)
    received_at_ms: int | None = None
    model_version: int | None = None
    inference_rate_hz: float | None = None
    health: Mapping[str, Any] = field(default_factory=dict)  # the row itself
    unexpected_version: str | None = None  # why the model version it serves was never deployed to it

    @property
    def sensors(self) -> Mapping[str, Any] | None:
        """Its signal source as the row reported it (shared.messages.SensorsSummary; None: not reported)."""
        block = self.health.get("sensors")
        return block if isinstance(block, Mapping) else None

    def to_item(self) -> dict[str, Any]:
        return {"thing_name": self.thing_name, "last_health_at": self.last_health_at,
                "received_at_ms": self.received_at_ms, "model_version": self.model_version,
                "inference_rate_hz": self.inference_rate_hz, "health": dict(self.health),
                "unexpected_version": self.unexpected_version}

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> DeviceRecord:
        return cls(thing_name=_str(item.get("thing_name")) or _key(item),
                   last_health_at=_float(item.get("last_health_at")),
                   received_at_ms=_opt_int(item.get("received_at_ms")),
                   model_version=_opt_int(item.get("model_version")),
                   inference_rate_hz=_opt_float(item.get("inference_rate_hz")), health=dict(item.get("health") or {}),
                   unexpected_version=_opt_str(item.get("unexpected_version")))


@dataclass(frozen=True)
class HealthStreak(Record):
    """pk "device#<thing>", sk "health": how long the device has served one deployed version at a non-zero rate."""

    thing_name: str
    received_at_ms: int | None = None
    model_version: int | None = None
    inference_rate_hz: float | None = None
    streak_version: int | None = None
    ready_since: float | None = None
    last_ready_at: float | None = None

    @property
    def soaked_s(self) -> float:
        if self.ready_since is None or self.last_ready_at is None:
            return 0.0
        return self.last_ready_at - self.ready_since

    def to_item(self) -> dict[str, Any]:
        return {"thing_name": self.thing_name, "received_at_ms": self.received_at_ms,
                "model_version": self.model_version, "inference_rate_hz": self.inference_rate_hz,
                "streak_version": self.streak_version, "ready_since": self.ready_since,
                "last_ready_at": self.last_ready_at}

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> HealthStreak:
        return cls(thing_name=_str(item.get("thing_name")), received_at_ms=_opt_int(item.get("received_at_ms")),
                   model_version=_opt_int(item.get("model_version")),
                   inference_rate_hz=_opt_float(item.get("inference_rate_hz")),
                   streak_version=_opt_int(item.get("streak_version")),
                   ready_since=_opt_float(item.get("ready_since")), last_ready_at=_opt_float(item.get("last_ready_at")))


@dataclass(frozen=True)
class FleetProgress(Record):
    """pk "group#<group>", sk "succeeded#<deployment id>": how many devices the fleet deployment's status
    events saw succeed (each device counted once, when its recorded status became a success). It only says
    when to look: the rollout is done when every device's recorded execution succeeded
    (shared.usecases.rollout). It can count short (a crash after the execution was recorded), never long but
    for a device whose success was later replaced: the watchdog's check looks at every device whatever the
    count."""

    deployment_id: str
    succeeded: int = 0

    def to_item(self) -> dict[str, Any]:
        return {"deployment_id": self.deployment_id, "succeeded": self.succeeded}

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> Self:
        return cls(deployment_id=str(item.get("deployment_id") or ""), succeeded=int(item.get("succeeded") or 0))


@dataclass(frozen=True)
class ExecutionRecord(Record):
    """pk "device#<thing>", sk "deployment#<id>": the device's execution of a deployment, the latest by event time."""

    deployment_id: str
    thing_name: str
    status: str
    reason: str = ""
    error_stack: tuple[str, ...] = ()
    at: float = 0.0  # when it was recorded
    event_time: float | None = None  # the AWS event's time (None: polled)

    def to_item(self) -> dict[str, Any]:
        return {"deployment_id": self.deployment_id, "thing_name": self.thing_name, "status": self.status,
                "reason": self.reason, "error_stack": list(self.error_stack), "at": self.at,
                "event_time": self.event_time}

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> ExecutionRecord:
        return cls(_str(item.get("deployment_id")), _str(item.get("thing_name")), _str(item.get("status")),
                   _str(item.get("reason")), _strs(item.get("error_stack")), _float(item.get("at")),
                   _opt_float(item.get("event_time")))


# -- the state table: rollouts (pk "group#<group>") -----------------------------------------------------------------
@dataclass(frozen=True)
class RolloutRecord(Record):
    """sk "rollout#<version>": one version's rollout; `stage` follows shared.usecases.lifecycle.ROLLOUT."""

    version: int
    stage: str
    components: Mapping[str, Any] = field(default_factory=dict)  # the deployment's components (both groups)
    waiting_since: float | None = None
    canary_deployment_id: str | None = None
    canary_started_at: float | None = None
    canary_things: tuple[str, ...] = ()
    fleet_deployment_id: str | None = None  # "" while a promotion has claimed the stage but not yet deployed
    fleet_started_at: float | None = None
    fleet_things: tuple[str, ...] = ()
    readiness: Mapping[str, float] = field(default_factory=dict)  # seconds soaked per canary device at promotion
    stuck_reported_canary: bool | None = None
    stuck_reported_fleet: bool | None = None
    done_at: float | None = None
    failed_stage: str | None = None
    failure_reason: str | None = None
    failed_at: float | None = None
    canceled_at: float | None = None
    superseded_by: int | str | None = None  # the newer version, or "rollback to v<n>"
    canary_only: bool | None = None  # approved for the canary only: the promotion waits for a person's approval
    canary_passed_at: float | None = None  # a canary-only rollout's canary soaked (it holds there)
    promotion_refused_at: float | None = None  # soaked, but the version was no longer approved: never promoted
    refused_status: str | None = None  # the registry status that refused the promotion (its notice names it)
    refused_failed: bool | None = None  # ... and whether the version was marked failed then
    stuck_note_canary: str | None = None  # how long and on which devices the stage's deployment was stuck
    stuck_note_fleet: str | None = None
    restore_note: str | None = None  # what the failure did to the thing groups (its notice says it)
    notified: tuple[str, ...] | None = None  # notice kinds sent; None: stored before they were noted (all sent)

    def deployment_id(self, stage: str) -> str:
        """The deployment of stage canary or fleet ("" when it has none, or for another stage)."""
        return _str({"canary": self.canary_deployment_id, "fleet": self.fleet_deployment_id}.get(stage))

    def things(self, stage: str) -> tuple[str, ...]:
        """The devices of stage canary or fleet when its deployment was created."""
        return {"canary": self.canary_things, "fleet": self.fleet_things}.get(stage, ())

    def started_at(self, stage: str) -> float:
        return _float({"canary": self.canary_started_at, "fleet": self.fleet_started_at}.get(stage))

    def to_item(self) -> dict[str, Any]:
        return {"version": self.version, "stage": self.stage, "components": dict(self.components),
                "waiting_since": self.waiting_since, "canary_deployment_id": self.canary_deployment_id,
                "canary_started_at": self.canary_started_at, "canary_things": list(self.canary_things),
                "fleet_deployment_id": self.fleet_deployment_id, "fleet_started_at": self.fleet_started_at,
                "fleet_things": list(self.fleet_things), "readiness": dict(self.readiness),
                "stuck_reported_canary": self.stuck_reported_canary, "stuck_reported_fleet": self.stuck_reported_fleet,
                "done_at": self.done_at, "failed_stage": self.failed_stage, "failure_reason": self.failure_reason,
                "failed_at": self.failed_at, "canceled_at": self.canceled_at, "superseded_by": self.superseded_by,
                "canary_only": self.canary_only, "canary_passed_at": self.canary_passed_at,
                "promotion_refused_at": self.promotion_refused_at, "refused_status": self.refused_status,
                "refused_failed": self.refused_failed, "stuck_note_canary": self.stuck_note_canary,
                "stuck_note_fleet": self.stuck_note_fleet, "restore_note": self.restore_note,
                "notified": None if self.notified is None else list(self.notified)}

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> RolloutRecord:
        superseded = item.get("superseded_by")
        return cls(version=_int(item.get("version")), stage=_str(item.get("stage")),
                   components=dict(item.get("components") or {}), waiting_since=_opt_float(item.get("waiting_since")),
                   canary_deployment_id=_opt_str(item.get("canary_deployment_id")),
                   canary_started_at=_opt_float(item.get("canary_started_at")),
                   canary_things=_strs(item.get("canary_things")),
                   fleet_deployment_id=_opt_str(item.get("fleet_deployment_id")),
                   fleet_started_at=_opt_float(item.get("fleet_started_at")),
                   fleet_things=_strs(item.get("fleet_things")),
                   readiness={str(k): float(v) for k, v in (item.get("readiness") or {}).items()},
                   stuck_reported_canary=_opt_bool(item.get("stuck_reported_canary")),
                   stuck_reported_fleet=_opt_bool(item.get("stuck_reported_fleet")),
                   done_at=_opt_float(item.get("done_at")), failed_stage=_opt_str(item.get("failed_stage")),
                   failure_reason=_opt_str(item.get("failure_reason")), failed_at=_opt_float(item.get("failed_at")),
                   canceled_at=_opt_float(item.get("canceled_at")),
                   superseded_by=superseded if isinstance(superseded, int | str) else None,
                   canary_only=_opt_bool(item.get("canary_only")),
                   canary_passed_at=_opt_float(item.get("canary_passed_at")),
                   promotion_refused_at=_opt_float(item.get("promotion_refused_at")),
                   refused_status=_opt_str(item.get("refused_status")),
                   refused_failed=_opt_bool(item.get("refused_failed")),
                   stuck_note_canary=_opt_str(item.get("stuck_note_canary")),
                   stuck_note_fleet=_opt_str(item.get("stuck_note_fleet")),
                   restore_note=_opt_str(item.get("restore_note")),
                   notified=None if item.get("notified") is None else _strs(item.get("notified")))


def _opt_bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


@dataclass(frozen=True)
class DeploymentRecord(Record):
    """sk "deployment#<id>": which version a deployment carries, and why (canary, fleet, restore-after-<v>,
    rollback-<n>); a restore or a rollback also keeps the first device failure of it and whether it was notified."""

    deployment_id: str
    version: int
    stage: str
    failure: str | None = None  # a restore or rollback deployment: the first device that failed it, and how
    notified: bool | None = None  # True once the failure's notice was sent

    def to_item(self) -> dict[str, Any]:
        return {"deployment_id": self.deployment_id, "version": self.version, "stage": self.stage,
                "failure": self.failure, "notified": self.notified}

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> DeploymentRecord:
        return cls(_str(item.get("deployment_id")), _int(item.get("version")), _str(item.get("stage")),
                   _opt_str(item.get("failure")), _opt_bool(item.get("notified")))


@dataclass(frozen=True)
class CanaryAssignment(Record):
    """sk "canary": what the canary thing group was last given."""

    version: int
    deployment_id: str

    def to_item(self) -> dict[str, Any]:
        return {"version": self.version, "deployment_id": self.deployment_id}

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> CanaryAssignment:
        return cls(_int(item.get("version")), _str(item.get("deployment_id")))


@dataclass(frozen=True)
class FleetAssignment(Record):
    """sk "fleet": what the fleet thing group was last given, and the version it had before (what a failure
    restores)."""

    version: int
    components: Mapping[str, Any]
    deployment_id: str
    kind: str  # promotion | restore-after-<v> | rollback-<n>
    previous: int | None = None
    since: float = 0.0
    generation: int = 0
    notified: bool | None = None  # a rollback: False until its notice was sent (None: nothing to announce)

    def to_item(self) -> dict[str, Any]:
        return {"version": self.version, "components": dict(self.components), "deployment_id": self.deployment_id,
                "kind": self.kind, "previous": self.previous, "since": self.since, "generation": self.generation,
                "notified": self.notified}

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> FleetAssignment:
        return cls(_int(item.get("version")), dict(item.get("components") or {}), _str(item.get("deployment_id")),
                   _str(item.get("kind")), _opt_int(item.get("previous")), _float(item.get("since")),
                   _int(item.get("generation")), _opt_bool(item.get("notified")))


@dataclass(frozen=True)
class ConflictRecord(Record):
    """sk "conflict#<version>": a component conflict of that version, alerted once."""

    version: int
    reason: str

    def to_item(self) -> dict[str, Any]:
        return {"version": self.version, "reason": self.reason}

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> ConflictRecord:
        return cls(_int(item.get("version")), _str(item.get("reason")))


@dataclass(frozen=True)
class DriftState(Record):
    """pk "drift", sk <thing> in the state table: where a turbine's drift monitoring stands for the model version it
    runs. `periods`: the latest judged periods (start -> drifting); `reference`: per feature (and `score_reference`
    for the anomaly score) the sum of the quantile sketches of the turbine's first judged periods, started at
    `reference_starts`; `status` "ok" or "drifting" since `since`, with its open `alert_id`."""

    thing_name: str
    model_version: int | None = None
    periods: Mapping[str, bool] = field(default_factory=dict)
    reference_starts: tuple[str, ...] = ()
    reference: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    score_reference: tuple[float, ...] = ()
    status: str = "ok"
    since: float | None = None
    alert_id: str | None = None
    rev: int = 0

    def to_item(self) -> dict[str, Any]:
        return {"thing_name": self.thing_name, "model_version": self.model_version,
                "periods": dict(sorted(self.periods.items())), "reference_starts": list(self.reference_starts),
                "reference": {k: list(v) for k, v in sorted(self.reference.items())},
                "score_reference": list(self.score_reference), "status": self.status, "since": self.since,
                "alert_id": self.alert_id, "rev": self.rev}

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> DriftState:
        return cls(thing_name=_str(item.get("thing_name")) or _key(item),
                   model_version=_opt_int(item.get("model_version")),
                   periods={str(k): bool(v) for k, v in (item.get("periods") or {}).items()},
                   reference_starts=_strs(item.get("reference_starts")),
                   reference={str(k): tuple(float(x) for x in v) for k, v in (item.get("reference") or {}).items()},
                   score_reference=tuple(float(x) for x in item.get("score_reference") or ()),
                   status=_str(item.get("status"), "ok"), since=_opt_float(item.get("since")),
                   alert_id=_opt_str(item.get("alert_id")), rev=_int(item.get("rev")))



@dataclass(frozen=True)
class PeriodSummary(Record):
    """One detector period as the console's timeline draws it (shared/usecases/turbine_periods.py): the anomaly
    score's quantiles at SCORE_LEVELS divided by the model version's threshold (1.0 is the threshold; () when the
    threshold is unknown), and per feature its p05, p50, p95 and mean."""

    start: float
    period_s: float
    model_version: int | None
    seq: int = 0
    windows: int = 0
    operating_windows: int = 0
    threshold: float | None = None  # the version's threshold on its raw score
    score: tuple[float, ...] = ()
    features: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    def to_item(self) -> dict[str, Any]:
        return {"start": self.start, "period_s": self.period_s, "model_version": self.model_version, "seq": self.seq,
                "windows": self.windows, "operating_windows": self.operating_windows, "threshold": self.threshold,
                "score": list(self.score), "features": {k: list(v) for k, v in sorted(self.features.items())}}

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> PeriodSummary:
        return cls(start=_float(item.get("start")), period_s=_float(item.get("period_s")),
                   model_version=_opt_int(item.get("model_version")), seq=_int(item.get("seq")),
                   windows=_int(item.get("windows")), operating_windows=_int(item.get("operating_windows")),
                   threshold=_opt_float(item.get("threshold")),
                   score=tuple(map(float, item.get("score") or ())),
                   features={str(k): tuple(map(float, v)) for k, v in (item.get("features") or {}).items()})


@dataclass(frozen=True)
class PeriodHistory(Record):
    """pk "periods", sk <thing> in the state table: the turbine's latest period summaries, by period key (start, then
    model version: a swap splits a period in two), newest last; `rev` for conditional writes."""

    thing_name: str
    periods: Mapping[str, PeriodSummary] = field(default_factory=dict)
    rev: int = 0

    def to_item(self) -> dict[str, Any]:
        return {"thing_name": self.thing_name, "rev": self.rev,
                "periods": {k: p.to_item() for k, p in sorted(self.periods.items())}}

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> PeriodHistory:
        return cls(thing_name=_str(item.get("thing_name")) or _key(item), rev=_int(item.get("rev")),
                   periods={str(k): PeriodSummary.from_item(v) for k, v in (item.get("periods") or {}).items()})

def records(cls: type[R], items: Iterable[Mapping[str, Any]]) -> list[R]:
    return [cls.from_item(i) for i in items]


__all__ = [
    "ALERT_KINDS",
    "SEVERITIES",
    "VERDICTS",
    "Ack",
    "AlertRecord",
    "CanaryAssignment",
    "ConflictRecord",
    "DeploymentRecord",
    "DeviceOutage",
    "DeviceRecord",
    "DriftAlert",
    "DriftState",
    "EpisodeAlert",
    "EpisodeSighting",
    "ExecutionRecord",
    "FleetAssignment",
    "FleetProgress",
    "HealthStreak",
    "OfflineAlert",
    "PeriodHistory",
    "PeriodSummary",
    "RateSlot",
    "Record",
    "RolloutRecord",
    "Severity",
    "SummaryAlert",
    "Verdict",
    "alert_from_item",
    "load",
    "records",
]
