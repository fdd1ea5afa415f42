"""EventPublisher on EventBridge: PutEvents now, or a one-time EventBridge Scheduler schedule for later."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
from botocore.exceptions import ClientError

from shared.errors import AdapterError
from shared.ports import Envelope

MAX_SCHEDULE_NAME = 64
_SCHEDULE_NAME = re.compile(r"[0-9a-zA-Z\-_.]{1,64}")
_INVALID_NAME_CHARS = re.compile(r"[^0-9a-zA-Z\-_.]")
_HASH_CHARS = 16


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _utc(moment: datetime) -> datetime:
    # Naive datetimes are taken as UTC (Lambda's clock); aware ones are converted.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def schedule_name(dedup_key: str | None) -> str:
    """A valid schedule name ([0-9a-zA-Z-_.]{1,64}): the key itself when it is one, else a readable prefix plus a
    hash of the whole key (so keys differing only in invalid characters or past 64 characters stay distinct)."""
    if dedup_key is None:
        return str(uuid.uuid4())
    if _SCHEDULE_NAME.fullmatch(dedup_key):
        return dedup_key
    digest = hashlib.sha256(dedup_key.encode()).hexdigest()[:_HASH_CHARS]
    prefix = _INVALID_NAME_CHARS.sub("-", dedup_key)[:MAX_SCHEDULE_NAME - _HASH_CHARS - 1]
    return f"{prefix}-{digest}" if prefix else digest


def at_expression(moment: datetime) -> str:
    """at(yyyy-mm-ddThh:mm:ss) in UTC, rounded up to the second so nothing is delivered early."""
    moment = _utc(moment)
    if moment.microsecond:
        moment = moment.replace(microsecond=0) + timedelta(seconds=1)
    return f"at({moment:%Y-%m-%dT%H:%M:%S})"


class AwsEventPublisher:
    """`dedup_key` applies to scheduled deliveries: it names the schedule, and a second CreateSchedule under that
    name is refused (ConflictException, the no-op). Schedules delete themselves after delivery
    (ActionAfterCompletion DELETE), so a key is free again once its event has been delivered. Immediate events go
    straight to PutEvents, which has no de-duplication: consumers key on the event's natural identity."""

    def __init__(self, event_bus_name: str, event_bus_arn: str, scheduler_role_arn: str,
                 schedule_group: str = "default", events_client: Any = None, scheduler_client: Any = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.event_bus_name = event_bus_name
        self.event_bus_arn = event_bus_arn
        self.scheduler_role_arn = scheduler_role_arn
        self.schedule_group = schedule_group
        self._events = events_client
        self._scheduler = scheduler_client
        self._clock = clock

    @property
    def events(self) -> Any:
        if self._events is None:
            self._events = boto3.client("events")
        return self._events

    @property
    def scheduler(self) -> Any:
        if self._scheduler is None:
            self._scheduler = boto3.client("scheduler")
        return self._scheduler

    def publish(self, event: Envelope, deliver_at: datetime | None = None, dedup_key: str | None = None) -> None:
        if deliver_at is None or _utc(deliver_at) <= _utc(self._clock()):
            self._put(event)
        else:
            self._schedule(event, deliver_at, dedup_key)

    def _put(self, event: Envelope) -> None:
        entry: dict[str, Any] = {"EventBusName": self.event_bus_name, "Source": event.source,
                                 "DetailType": event.detail_type, "Detail": json.dumps(dict(event.detail))}
        if event.resources:
            entry["Resources"] = list(event.resources)
        try:
            response = self.events.put_events(Entries=[entry])
        except ClientError as e:
            raise AdapterError(f"EventBridge PutEvents {event.detail_type} failed: {_code(e)}") from e
        # PutEvents succeeds as a call even when entries fail: check each entry.
        if response.get("FailedEntryCount", 0):
            failed: dict[str, str] = next((r for r in response.get("Entries", []) if r.get("ErrorCode")), {})
            raise AdapterError(f"EventBridge PutEvents {event.detail_type} failed: "
                               f"{failed.get('ErrorCode', 'unknown')}: {failed.get('ErrorMessage', '')}")

    def _schedule(self, event: Envelope, deliver_at: datetime, dedup_key: str | None) -> None:
        name = schedule_name(dedup_key)
        try:
            self.scheduler.create_schedule(
                Name=name,
                GroupName=self.schedule_group,
                ScheduleExpression=at_expression(deliver_at),
                ScheduleExpressionTimezone="UTC",
                FlexibleTimeWindow={"Mode": "OFF"},
                ActionAfterCompletion="DELETE",
                Target={
                    "Arn": self.event_bus_arn,
                    "RoleArn": self.scheduler_role_arn,
                    # The templated EventBridge PutEvents target: Input becomes the event's detail.
                    "EventBridgeParameters": {"DetailType": event.detail_type, "Source": event.source},
                    "Input": json.dumps(dict(event.detail)),
                },
            )
        except ClientError as e:
            if _code(e) == "ConflictException":  # a schedule with that name exists: already scheduled
                return
            raise AdapterError(f"EventBridge Scheduler CreateSchedule {name} failed: {_code(e)}") from e
