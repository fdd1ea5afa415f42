"""EventPublisher contract: the local EventBus, AwsEventPublisher and the RecordingEvents double behave alike.

How each backend shows what happened, with the same rule (PATTERN) routing the events to one target:
* AWS, on moto (`mock_aws`): an EventBridge rule on the default bus with an SQS target, read back for what is
  delivered now; EventBridge Scheduler (ListSchedules/GetSchedule) for what is delivered later. moto never fires
  schedules, so "delivered later" is "a one-time schedule at() that time, putting the detail on the bus";
* local: the bus's SQLite deliveries. What is delivered now is what a dispatcher would claim now (`claim` at the
  bus clock, then settled done, as reading the SQS queue consumes it); what is delivered later is a pending
  delivery whose available_at is in the future;
* the double: what it recorded, split by its clock into delivered now and scheduled.
Every backend runs on the same fixed clock (NOW), so "now", "past" and "future" are exact.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

import boto3
import pytest

from nacelle.local.runtime.bus import EventBus, Rule
from shared.aws.events import AwsEventPublisher
from shared.ports import Envelope, EventPublisher
from tests.fakes import RecordingEvents

REGION = "eu-west-1"
ACCOUNT = "123456789012"
SCHEDULER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/nacelle-scheduler"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SOURCE = "nacelle.contract"
PATTERN = {"source": [SOURCE]}
EVENT = Envelope(SOURCE, "Retrain Check Due", {"group": "nacelle-turbine", "attempt": 2, "nested": {"ok": True}},
                 resources=(f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model-package/nacelle-turbine/3",))
OTHER = Envelope(SOURCE, "Deployment Check Due", {"deployment_id": "d-1"})
# EventBridge's event time format (the local bus writes the same)
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class Scheduled:
    """An event waiting to be put on the bus at `at`."""

    at: datetime
    source: str
    detail_type: str
    detail: dict[str, Any]


class Harness(Protocol):
    publisher: EventPublisher

    def delivered(self) -> list[dict[str, Any]]:
        """Events delivered to the rule's target since the last call, as the target receives them."""
        ...

    def scheduled(self) -> list[Scheduled]: ...  # waiting for a later time, by time


class LocalHarness:
    def __init__(self, db_path: Path) -> None:
        self.bus = EventBus(db_path, [Rule("contract", "sink", PATTERN)], region=REGION, account=ACCOUNT,
                            clock=NOW.timestamp)
        self.publisher: EventPublisher = self.bus

    def delivered(self) -> list[dict[str, Any]]:
        now = self.bus.clock()
        claims = self.bus.claim(now, 100)
        for claim in claims:
            self.bus.settle(claim.id, "done", now)
        assert {claim.target for claim in claims} <= {"sink"}
        return [json.loads(claim.body) for claim in claims]

    def scheduled(self) -> list[Scheduled]:
        now = self.bus.clock()
        waiting = []
        for delivery in self.bus.deliveries("pending"):
            if delivery.available_at > now:
                event = self.bus.event(delivery.event_id)
                waiting.append(Scheduled(datetime.fromtimestamp(delivery.available_at, UTC), event["source"],
                                         event["detail-type"], event["detail"]))
        return sorted(waiting, key=lambda s: s.at)


_AT = re.compile(r"at\((\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\)")


class AwsHarness:
    """The default bus with a rule sending PATTERN to an SQS queue; schedules in the default group."""

    def __init__(self) -> None:
        events, self.sqs, self.scheduler = boto3.client("events"), boto3.client("sqs"), boto3.client("scheduler")
        self.bus_arn = events.describe_event_bus()["Arn"]  # the default bus
        self.queue = self.sqs.create_queue(QueueName="nacelle-contract-sink")["QueueUrl"]
        queue_arn = self.sqs.get_queue_attributes(QueueUrl=self.queue,
                                                  AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        events.put_rule(Name="contract", EventPattern=json.dumps(PATTERN))
        events.put_targets(Rule="contract", Targets=[{"Id": "sink", "Arn": queue_arn}])
        # clients built lazily from the environment, as in a Lambda
        self.publisher: EventPublisher = AwsEventPublisher("default", self.bus_arn, SCHEDULER_ROLE, clock=lambda: NOW)

    def delivered(self) -> list[dict[str, Any]]:
        bodies = []
        while messages := self.sqs.receive_message(QueueUrl=self.queue, MaxNumberOfMessages=10).get("Messages"):
            for message in messages:
                bodies.append(json.loads(message["Body"]))
                self.sqs.delete_message(QueueUrl=self.queue, ReceiptHandle=message["ReceiptHandle"])
        return bodies

    def scheduled(self) -> list[Scheduled]:
        waiting = []
        for summary in self.scheduler.list_schedules(GroupName="default")["Schedules"]:
            schedule = self.scheduler.get_schedule(Name=summary["Name"], GroupName="default")
            match = _AT.fullmatch(schedule["ScheduleExpression"])
            assert match, schedule["ScheduleExpression"]  # one-time schedules only
            assert schedule["ScheduleExpressionTimezone"] == "UTC"
            target = schedule["Target"]
            assert (target["Arn"], target["RoleArn"]) == (self.bus_arn, SCHEDULER_ROLE)  # PutEvents on our bus
            parameters = target["EventBridgeParameters"]
            waiting.append(Scheduled(datetime.fromisoformat(match.group(1)).replace(tzinfo=UTC),
                                     parameters["Source"], parameters["DetailType"], json.loads(target["Input"])))
        return sorted(waiting, key=lambda s: s.at)


class FakeHarness:
    def __init__(self) -> None:
        self.recording = RecordingEvents(clock=lambda: NOW, region=REGION, account=ACCOUNT)
        self.publisher: EventPublisher = self.recording
        self._read = 0

    def delivered(self) -> list[dict[str, Any]]:
        bodies = [r.body for r in self.recording.published[self._read:] if r.deliver_at is None]
        self._read = len(self.recording.published)
        return bodies

    def scheduled(self) -> list[Scheduled]:
        waiting = [Scheduled(r.deliver_at, r.event.source, r.event.detail_type, r.body["detail"])
                   for r in self.recording.published if r.deliver_at is not None]
        return sorted(waiting, key=lambda s: s.at)


@pytest.fixture(params=["local", "aws", "fake"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    if request.param == "fake":
        yield FakeHarness()
        return
    if request.param == "aws":
        request.getfixturevalue("aws")  # fake credentials and region, moto
        yield AwsHarness()
        return
    local = LocalHarness(tmp_path / "bus.db")
    yield local
    local.bus.close()


def _assert_scheduled(waiting: Scheduled, event: Envelope, deliver_at: datetime) -> None:
    # never early; at most one second late (Scheduler's at() has whole seconds: the adapter rounds up)
    assert deliver_at <= waiting.at < deliver_at + timedelta(seconds=1), (waiting.at, deliver_at)
    assert (waiting.source, waiting.detail_type, waiting.detail) == (event.source, event.detail_type,
                                                                     dict(event.detail))


# -- contract ---------------------------------------------------------------------------------------------------


def test_immediate_publish_arrives_in_the_eventbridge_envelope(harness: Harness) -> None:
    harness.publisher.publish(EVENT)
    [body] = harness.delivered()
    assert body["source"] == SOURCE
    assert body["detail-type"] == "Retrain Check Due"
    assert body["detail"] == {"group": "nacelle-turbine", "attempt": 2, "nested": {"ok": True}}
    assert body["resources"] == list(EVENT.resources)
    assert body["version"] == "0"
    assert body["region"] == REGION
    assert body["id"]
    datetime.strptime(body["time"], TIME_FORMAT)
    assert harness.scheduled() == []
    assert harness.delivered() == []  # delivered once


def test_immediate_publishes_are_delivered_in_order_each_with_its_own_id(harness: Harness) -> None:
    harness.publisher.publish(EVENT)
    harness.publisher.publish(OTHER)
    bodies = harness.delivered()
    assert sorted(b["detail-type"] for b in bodies) == ["Deployment Check Due", "Retrain Check Due"]
    assert len({b["id"] for b in bodies}) == 2


@pytest.mark.parametrize("deliver_at", [
    NOW + timedelta(minutes=30, microseconds=250_000),  # not on a whole second
    NOW + timedelta(minutes=30),
    (NOW + timedelta(hours=2)).astimezone(timezone(timedelta(hours=1))),  # another offset, the same instant
    (NOW + timedelta(hours=2)).replace(tzinfo=None),  # naive: UTC
], ids=["fraction", "whole-second", "utc+1", "naive-utc"])
def test_delayed_publish_is_scheduled_not_delivered(harness: Harness, deliver_at: datetime) -> None:
    harness.publisher.publish(EVENT, deliver_at=deliver_at, dedup_key="retrain-nacelle-turbine-1")
    assert harness.delivered() == []
    [waiting] = harness.scheduled()
    instant = deliver_at if deliver_at.tzinfo else deliver_at.replace(tzinfo=UTC)
    _assert_scheduled(waiting, EVENT, instant)


def test_the_same_dedup_key_twice_schedules_once(harness: Harness) -> None:
    first_at, second_at = NOW + timedelta(minutes=5), NOW + timedelta(minutes=10)
    harness.publisher.publish(EVENT, deliver_at=first_at, dedup_key="retrain-nacelle-turbine-1")
    harness.publisher.publish(OTHER, deliver_at=second_at, dedup_key="retrain-nacelle-turbine-1")  # no-op
    [waiting] = harness.scheduled()
    _assert_scheduled(waiting, EVENT, first_at)  # the first one stands, unchanged
    assert harness.delivered() == []


def test_other_keys_and_no_key_are_not_deduplicated(harness: Harness) -> None:
    at = NOW + timedelta(minutes=5)
    harness.publisher.publish(EVENT, deliver_at=at, dedup_key="retrain-nacelle-turbine-1")
    harness.publisher.publish(EVENT, deliver_at=at, dedup_key="retrain-nacelle-turbine-2")
    harness.publisher.publish(OTHER, deliver_at=at + timedelta(minutes=1))
    harness.publisher.publish(OTHER, deliver_at=at + timedelta(minutes=1))
    assert [s.detail_type for s in harness.scheduled()] == ["Retrain Check Due"] * 2 + ["Deployment Check Due"] * 2


@pytest.mark.parametrize("deliver_at", [NOW - timedelta(minutes=5), NOW, (NOW - timedelta(seconds=1)).replace(
    tzinfo=None)], ids=["past", "now", "naive-past"])
def test_deliver_at_not_in_the_future_is_delivered_at_once(harness: Harness, deliver_at: datetime) -> None:
    """AwsEventPublisher puts an event whose deliver_at is now or past with PutEvents (no schedule)."""
    harness.publisher.publish(EVENT, deliver_at=deliver_at, dedup_key="retrain-nacelle-turbine-1")
    [body] = harness.delivered()
    assert (body["source"], body["detail-type"], body["detail"]) == (SOURCE, EVENT.detail_type, dict(EVENT.detail))
    assert harness.scheduled() == []


@pytest.mark.parametrize("first_at", [NOW - timedelta(minutes=5), NOW + timedelta(minutes=5)],
                         ids=["first-due-now", "first-scheduled"])
def test_a_dedup_key_never_holds_back_an_event_due_now(harness: Harness, first_at: datetime) -> None:
    """`dedup_key` names a schedule: an event due now goes straight onto the bus (PutEvents has no de-duplication,
    so AwsEventPublisher ignores the key then), whatever was published under that key before."""
    harness.publisher.publish(OTHER, deliver_at=first_at, dedup_key="retrain-nacelle-turbine-1")
    harness.publisher.publish(EVENT, deliver_at=NOW - timedelta(minutes=1), dedup_key="retrain-nacelle-turbine-1")
    assert EVENT.detail_type in [b["detail-type"] for b in harness.delivered()]
