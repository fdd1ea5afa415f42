"""Fixtures giving each port's implementations: AWS adapters on moto (in-process), local ones in tmp_path, and the
in-memory doubles of tests/fakes.py that the use-case tests rely on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, get_args

import boto3
import pytest
from moto import mock_aws

from nacelle.local.adapters.notifier import LocalNotifier
from nacelle.local.adapters.objectstore import FsObjectStore
from nacelle.local.adapters.state import SqliteStateStore
from shared.aws.dynamodb import DynamoStateStore
from shared.aws.s3 import S3ObjectStore
from shared.aws.sns import SnsNotifier
from shared.ports import Notifier, ObjectStore, StateStore, Topic
from tests.fakes import MemoryState, MemoryStore, RecordingNotifier

REGION = "eu-west-1"
BUCKET = "nacelle-contract-data"
TABLE = "nacelle-contract-state"
TOPICS: tuple[Topic, ...] = get_args(Topic)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fake credentials and region, then moto for the duration of the test."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"AWS_DEFAULT_REGION": REGION, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing"}.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield


@pytest.fixture(params=["s3", "fs", "memory"])
def object_store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "memory":
        return MemoryStore(BUCKET)
    if request.param == "s3":
        request.getfixturevalue("aws")
        boto3.client("s3").create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        return S3ObjectStore(BUCKET)  # client built lazily from the environment
    return FsObjectStore(tmp_path / "objects", BUCKET)


@pytest.fixture(params=["dynamodb", "sqlite", "memory"])
def state_store(request: pytest.FixtureRequest, tmp_path: Path) -> StateStore:
    if request.param == "memory":
        return MemoryState()
    if request.param == "dynamodb":
        request.getfixturevalue("aws")
        client = boto3.client("dynamodb")
        client.create_table(
            TableName=TABLE, BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                  {"AttributeName": "sk", "AttributeType": "S"}])
        return DynamoStateStore(TABLE, client)
    return SqliteStateStore(tmp_path / "state.db")


@dataclass(frozen=True)
class Delivered:
    """A message as a subscriber received it."""

    id: str
    topic: str
    subject: str
    message: str
    attributes: dict[str, str]


class NotifierHarness(Protocol):
    notifier: Notifier

    def delivered(self) -> list[Delivered]: ...  # in publish order


class SnsHarness:
    """One SNS topic per Topic, each subscribed by an SQS queue from which the messages are read back."""

    def __init__(self) -> None:
        sns, self._sqs = boto3.client("sns"), boto3.client("sqs")
        arns: dict[Topic, str] = {}
        self._queues: dict[str, str] = {}
        for topic in TOPICS:
            arn = sns.create_topic(Name=f"nacelle-{topic.replace('_', '-')}")["TopicArn"]
            queue_url = self._sqs.create_queue(QueueName=f"nacelle-{topic}")["QueueUrl"]
            queue_arn = self._sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
            sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=queue_arn["Attributes"]["QueueArn"])
            arns[topic], self._queues[topic] = arn, queue_url
        self.notifier: Notifier = SnsNotifier(arns, sns)
        self._received: list[tuple[str, dict[str, Any]]] = []

    def delivered(self) -> list[Delivered]:
        for topic, url in self._queues.items():
            while messages := self._sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages"):
                for m in messages:
                    self._received.append((topic, json.loads(m["Body"])))
                    self._sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        envelopes = sorted(self._received, key=lambda te: te[1]["Timestamp"])
        return [Delivered(id=e["MessageId"], topic=topic, subject=e.get("Subject", ""), message=e["Message"],
                          attributes={k: v["Value"] for k, v in e.get("MessageAttributes", {}).items()})
                for topic, e in envelopes]


class LocalHarness:
    """The local notifier without subscribers; what it delivered is its log file."""

    def __init__(self, log_path: Path) -> None:
        self.local = LocalNotifier(None, log_path)
        self.notifier: Notifier = self.local

    def delivered(self) -> list[Delivered]:
        return [Delivered(id=e["id"], topic=e["topic"], subject=e["subject"], message=e["message"],
                          attributes=e["attributes"]) for e in self.local.tail(follow=False)]


class FakeHarness:
    """The recording double: what it delivered is what it recorded."""

    def __init__(self) -> None:
        self.recording = RecordingNotifier()
        self.notifier: Notifier = self.recording

    def delivered(self) -> list[Delivered]:
        return [Delivered(id=m.id, topic=m.topic, subject=m.subject, message=m.message, attributes=m.attributes)
                for m in self.recording.messages]


@pytest.fixture(params=["sns", "local", "fake"])
def notifier_harness(request: pytest.FixtureRequest, tmp_path: Path) -> NotifierHarness:
    if request.param == "fake":
        return FakeHarness()
    if request.param == "sns":
        request.getfixturevalue("aws")
        return SnsHarness()
    return LocalHarness(tmp_path / "notifications.jsonl")
