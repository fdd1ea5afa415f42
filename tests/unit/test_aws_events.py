"""AwsEventPublisher: PutEvents and CreateSchedule requests (Stubber checks them against the service models) and a
round trip on moto, which implements both EventBridge (rules, SQS targets) and EventBridge Scheduler."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from shared.aws.events import AwsEventPublisher, at_expression, schedule_name
from shared.errors import AdapterError
from shared.ports import Envelope

REGION = "eu-west-1"
BUS = "nacelle"
BUS_ARN = f"arn:aws:events:{REGION}:123456789012:event-bus/{BUS}"
ROLE = "arn:aws:iam::123456789012:role/nacelle-scheduler"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
EVENT = Envelope(source="nacelle.deploy", detail_type="Deployment Check Due",
                 detail={"deployment_id": "d-1", "attempt": 2})


def _stubbed(group: str = "default") -> tuple[AwsEventPublisher, Stubber, Stubber]:
    creds: dict[str, Any] = {"region_name": REGION, "aws_access_key_id": "x", "aws_secret_access_key": "x"}
    events, scheduler = boto3.client("events", **creds), boto3.client("scheduler", **creds)
    publisher = AwsEventPublisher(BUS, BUS_ARN, ROLE, group, events_client=events, scheduler_client=scheduler,
                                  clock=lambda: NOW)
    return publisher, Stubber(events), Stubber(scheduler)


def _entry(event: Envelope = EVENT) -> dict[str, Any]:
    return {"EventBusName": BUS, "Source": event.source, "DetailType": event.detail_type,
            "Detail": json.dumps(dict(event.detail))}


def _schedule(name: str, expression: str, group: str = "default") -> dict[str, Any]:
    return {"Name": name, "GroupName": group, "ScheduleExpression": expression, "ScheduleExpressionTimezone": "UTC",
            "FlexibleTimeWindow": {"Mode": "OFF"}, "ActionAfterCompletion": "DELETE",
            "Target": {"Arn": BUS_ARN, "RoleArn": ROLE,
                       "EventBridgeParameters": {"DetailType": EVENT.detail_type, "Source": EVENT.source},
                       "Input": json.dumps(dict(EVENT.detail))}}


def test_publish_now_puts_the_event_on_the_bus() -> None:
    publisher, events, _ = _stubbed()
    event = Envelope(source="nacelle.registry", detail_type="Model Registered", detail={"version": 3},
                     resources=("arn:aws:sagemaker:eu-west-1:123456789012:model-package/g/3",))
    events.add_response("put_events", {"FailedEntryCount": 0, "Entries": [{"EventId": "e-1"}]},
                        {"Entries": [{**_entry(event), "Resources": list(event.resources)}]})
    with events:
        publisher.publish(event)
    events.assert_no_pending_responses()


def test_a_failed_entry_raises_with_its_error() -> None:
    publisher, events, _ = _stubbed()
    events.add_response("put_events", {"FailedEntryCount": 1, "Entries": [
        {"ErrorCode": "InternalFailure", "ErrorMessage": "try again"}]}, {"Entries": [_entry()]})
    with events, pytest.raises(AdapterError, match="InternalFailure: try again"):
        publisher.publish(EVENT)


def test_a_client_error_is_an_adapter_error() -> None:
    publisher, events, _ = _stubbed()
    events.add_client_error("put_events", "ResourceNotFoundException", "no bus")
    with events, pytest.raises(AdapterError):
        publisher.publish(EVENT)


def test_deliver_at_in_the_past_publishes_now() -> None:
    publisher, events, _ = _stubbed()
    events.add_response("put_events", {"FailedEntryCount": 0, "Entries": [{"EventId": "e-1"}]},
                        {"Entries": [_entry()]})
    with events:
        publisher.publish(EVENT, deliver_at=NOW - timedelta(seconds=1), dedup_key="check-d-1")
    events.assert_no_pending_responses()


def test_deliver_at_creates_a_one_time_schedule() -> None:
    publisher, _, scheduler = _stubbed("nacelle")
    cet = timezone(timedelta(hours=1))
    deliver_at = datetime(2026, 1, 2, 4, 34, 5, 250_000, tzinfo=cet)  # 03:34:05.25 UTC: rounded up, never early
    scheduler.add_response("create_schedule", {"ScheduleArn": "arn:aws:scheduler:x"},
                           _schedule("check-d-1.attempt_2", "at(2026-01-02T03:34:06)", "nacelle"))
    with scheduler:
        publisher.publish(EVENT, deliver_at=deliver_at, dedup_key="check-d-1.attempt_2")
    scheduler.assert_no_pending_responses()


def test_an_existing_schedule_name_is_the_dedup_no_op() -> None:
    publisher, _, scheduler = _stubbed()
    scheduler.add_client_error("create_schedule", "ConflictException", "Schedule check-d-1 already exists.")
    with scheduler:
        publisher.publish(EVENT, deliver_at=NOW + timedelta(minutes=30), dedup_key="check-d-1")
    scheduler.assert_no_pending_responses()


def test_other_scheduler_errors_raise() -> None:
    publisher, _, scheduler = _stubbed()
    scheduler.add_client_error("create_schedule", "ValidationException", "bad role")
    with scheduler, pytest.raises(AdapterError):
        publisher.publish(EVENT, deliver_at=NOW + timedelta(minutes=30))


def test_schedule_names_are_valid_and_distinct() -> None:
    valid = set("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_.")
    assert schedule_name("deploy-check.d-1_2") == "deploy-check.d-1_2"
    long_key = "deployment:" + "x" * 200
    names = [schedule_name(k) for k in (long_key, long_key + "y", "a/b", "a:b", "a" * 64, "a" * 65, "ü")]
    assert all(1 <= len(n) <= 64 and set(n) <= valid for n in names)
    assert len(set(names)) == len(names)
    assert schedule_name("a/b").startswith("a-b-")
    assert schedule_name(long_key) == schedule_name(long_key)  # deterministic: the same key, the same schedule
    generated = schedule_name(None)
    assert len(generated) == 36 and generated != schedule_name(None)


def test_at_expression_is_utc() -> None:
    assert at_expression(datetime(2026, 7, 1, 12, 0, 0)) == "at(2026-07-01T12:00:00)"  # naive: UTC
    assert at_expression(datetime(2026, 7, 1, 14, 0, 0, tzinfo=timezone(timedelta(hours=2)))) == (
        "at(2026-07-01T12:00:00)")


def test_round_trip_on_moto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        eb, sqs = boto3.client("events", region_name=REGION), boto3.client("sqs", region_name=REGION)
        bus_arn = eb.create_event_bus(Name=BUS)["EventBusArn"]
        queue = sqs.create_queue(QueueName="sink")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        eb.put_rule(Name="all", EventBusName=BUS, EventPattern=json.dumps({"source": ["nacelle.deploy"]}))
        eb.put_targets(Rule="all", EventBusName=BUS, Targets=[{"Id": "q", "Arn": queue_arn}])
        scheduler = boto3.client("scheduler", region_name=REGION)
        publisher = AwsEventPublisher(BUS, bus_arn, ROLE, events_client=eb, scheduler_client=scheduler,
                                      clock=lambda: NOW)

        publisher.publish(EVENT)
        body = json.loads(sqs.receive_message(QueueUrl=queue)["Messages"][0]["Body"])
        assert (body["source"], body["detail-type"], body["detail"]) == (
            "nacelle.deploy", "Deployment Check Due", {"deployment_id": "d-1", "attempt": 2})

        later = NOW + timedelta(hours=1)
        publisher.publish(EVENT, deliver_at=later, dedup_key="check-d-1")
        publisher.publish(EVENT, deliver_at=later + timedelta(hours=1), dedup_key="check-d-1")  # no-op
        schedule = scheduler.get_schedule(Name="check-d-1")
        assert schedule["ScheduleExpression"] == "at(2026-01-02T04:04:05)"
        assert schedule["Target"]["Arn"] == bus_arn
        assert json.loads(schedule["Target"]["Input"]) == dict(EVENT.detail)
        assert [s["Name"] for s in scheduler.list_schedules()["Schedules"]] == ["check-d-1"]
