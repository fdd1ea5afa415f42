"""In-memory doubles of the ports, for use-case tests. They keep the real adapters' rules (the contract suites in
tests/contract/ run them next to the AWS and local adapters) and expose what they recorded for assertions."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar, get_args

from nacelle.local.adapters.state import KEYS, check_key, plain, same_value
from shared.aws.registry import TOKEN_KEY, validate_metadata
from shared.aws.sns import check_message, sns_subject
from shared.errors import (
    ConfigurationError,
    JobAlreadyExists,
    JobNotFound,
    ModelVersionNotFound,
    ObjectNotFound,
)
from shared.ports import (
    ApprovalStatus,
    CompileRequest,
    Envelope,
    ModelVersion,
    ObjectInfo,
    Topic,
    TrainingJob,
    TrainingRequest,
    TrainingStatus,
)

TOPICS: frozenset[str] = frozenset(get_args(Topic))


def utc(moment: datetime) -> datetime:
    """Naive is UTC, as for the real publishers."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class MemoryStore:
    def __init__(self, bucket: str = "data") -> None:
        self.bucket = bucket
        self.objects: dict[str, bytes] = {}

    def get(self, key: str) -> bytes:
        if key not in self.objects:
            raise ObjectNotFound(key)
        return self.objects[key]

    def size(self, key: str) -> int:
        if key not in self.objects:
            raise ObjectNotFound(key)
        return len(self.objects[key])

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.objects[key] = bytes(data)

    def put_if_absent(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> bool:
        if key in self.objects:
            return False
        self.objects[key] = bytes(data)
        return True

    def exists(self, key: str) -> bool:
        return key in self.objects

    def list(self, prefix: str) -> list[ObjectInfo]:
        return [ObjectInfo(k, len(v), hashlib.md5(v).hexdigest()) for k, v in sorted(self.objects.items())
                if k.startswith(prefix)]

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


class MemoryState:
    """Items are kept as the plain JSON the real stores keep (so values are checked and copied the same way)."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], dict[str, Any]] = {}

    def get(self, pk: str, sk: str) -> dict[str, Any] | None:
        item = self.items.get((pk, sk))
        return None if item is None else {**plain(item, "item"), "pk": pk, "sk": sk}

    def put(self, pk: str, sk: str, item: Mapping[str, Any], if_absent: bool = False) -> bool:
        check_key(pk, sk, item)
        attributes = plain({k: v for k, v in item.items() if k not in KEYS}, "item")
        if if_absent and (pk, sk) in self.items:
            return False
        self.items[(pk, sk)] = attributes
        return True

    def update_if(self, pk: str, sk: str, changes: Mapping[str, Any], expected: Mapping[str, Any]) -> bool:
        if not changes:
            raise ConfigurationError("update_if needs at least one change")
        if any(name in KEYS for name in changes):
            raise ConfigurationError("update_if cannot change pk or sk")
        new = plain(dict(changes), "changes")
        current = self.items.get((pk, sk), {})
        if not all(_holds(current, name, value) for name, value in expected.items()):
            return False
        self.items[(pk, sk)] = {**current, **new}  # an upsert, as on DynamoDB
        return True

    def query(self, pk: str, sk_prefix: str = "") -> list[dict[str, Any]]:
        return [self.get(p, s) or {} for (p, s) in sorted(self.items) if p == pk and s.startswith(sk_prefix)]

    def delete(self, pk: str, sk: str) -> bool:
        return self.items.pop((pk, sk), None) is not None


def _holds(item: Mapping[str, Any], name: str, value: Any) -> bool:
    """An expected None matches an absent attribute or a stored null; other values compare typed (True is not 1)."""
    return item.get(name) is None if value is None else name in item and same_value(item[name], value)


@dataclass
class Published:
    topic: str
    subject: str
    message: str
    attributes: dict[str, str]
    id: str = ""


class RecordingNotifier:
    """Refuses what SNS refuses and records what a subscriber would receive (the subject cut to SNS's rules)."""

    def __init__(self) -> None:
        self.messages: list[Published] = []
        self.refusals = 0  # publishes still to refuse, as SNS does when it throttles

    def publish(self, topic: Topic, subject: str, message: str, attributes: Mapping[str, str]) -> str:
        if self.refusals:
            self.refusals -= 1
            raise ConnectionError("Throttling: Rate exceeded")
        if topic not in TOPICS:
            raise ConfigurationError(f"unknown topic {topic!r}")
        check_message(message, attributes)
        message_id = str(uuid.uuid4())
        self.messages.append(Published(topic, sns_subject(subject), message, dict(attributes), message_id))
        return message_id


@dataclass(frozen=True)
class PublishedEvent:
    event: Envelope  # as given
    deliver_at: datetime | None  # None: put on the bus at once; else scheduled (UTC)
    dedup_key: str | None
    body: dict[str, Any]  # what a target receives: the EventBridge envelope with id and time


class RecordingEvents:
    """Due now (by `clock`): put at once, never de-duplicated. Later: scheduled once per `dedup_key`."""

    def __init__(self, clock: Callable[[], datetime], region: str = "local", account: str = "000000000000") -> None:
        self.clock = clock
        self.region, self.account = region, account
        self.published: list[PublishedEvent] = []
        self.keys: set[str] = set()

    def publish(self, event: Envelope, deliver_at: datetime | None = None, dedup_key: str | None = None) -> None:
        now = utc(self.clock())
        at = None if deliver_at is None or utc(deliver_at) <= now else utc(deliver_at)
        if at is None:
            dedup_key = None
        elif dedup_key is not None:
            if dedup_key in self.keys:
                return
            self.keys.add(dedup_key)
        stamped = replace(event, id=event.id or str(uuid.uuid4()),
                          time=event.time or f"{at or now:%Y-%m-%dT%H:%M:%SZ}")
        body = json.loads(json.dumps(stamped.to_dict(self.region, self.account)))  # refuses a non-JSON detail
        self.published.append(PublishedEvent(event, at, dedup_key, body))


R = TypeVar("R", TrainingRequest, CompileRequest)


class _Jobs(Generic[R]):
    """Jobs by name: a taken name is refused, an unknown one not found; they stay InProgress."""

    def __init__(self) -> None:
        self.started: list[R] = []
        self.jobs: dict[str, TrainingJob] = {}

    def start(self, request: R) -> None:
        if request.job_name in self.jobs:
            raise JobAlreadyExists(request.job_name)
        self.started.append(request)
        self.jobs[request.job_name] = TrainingJob(request.job_name, "InProgress")

    def describe(self, job_name: str) -> TrainingJob:
        if job_name not in self.jobs:
            raise JobNotFound(job_name)
        return self.jobs[job_name]


class FakeTraining(_Jobs[TrainingRequest]):
    """Jobs stay InProgress."""


class FakeCompile(_Jobs[CompileRequest]):
    """Jobs stay InProgress until `finish`; a completed job's artifact is its manifest.json, as on AWS."""

    def finish(self, job_name: str, status: TrainingStatus, failure_reason: str | None = None) -> TrainingJob:
        request = next(r for r in self.started if r.job_name == job_name)
        manifest = f"{request.output_prefix.rstrip('/')}/manifest.json" if status == "Completed" else None
        self.jobs[job_name] = TrainingJob(job_name, status, failure_reason, manifest)
        return self.jobs[job_name]


class MemoryRegistry:
    """Groups must exist (ensure_group); metadata within SageMaker's limits and carrying the token, as stored."""

    def __init__(self) -> None:
        self.versions: dict[str, list[ModelVersion]] = {}
        self.tokens: dict[tuple[str, str], int] = {}

    def ensure_group(self, group: str, description: str = "") -> None:
        self.versions.setdefault(group, [])

    def register(self, group: str, model_data_key: str, status: ApprovalStatus, description: str,
                 metadata: Mapping[str, str], idempotency_token: str) -> ModelVersion:
        properties = validate_metadata({**metadata, TOKEN_KEY: idempotency_token})
        if (group, idempotency_token) in self.tokens:
            return self.get(group, self.tokens[(group, idempotency_token)])
        if group not in self.versions:
            raise ConfigurationError(f"model package group {group} does not exist; call ensure_group first")
        versions = self.versions[group]
        number = len(versions) + 1
        version = ModelVersion(group, number, status, model_data_key, properties, description, datetime.now(UTC),
                               f"arn:aws:sagemaker:local:000000000000:model-package/{group}/{number}")
        versions.append(version)
        self.tokens[(group, idempotency_token)] = number
        return version

    def get(self, group: str, version: int) -> ModelVersion:
        for v in self.versions.get(group, []):
            if v.version == version:
                return v
        raise ModelVersionNotFound(f"{group}/{version}")

    def list(self, group: str, status: ApprovalStatus | None = None) -> list[ModelVersion]:
        return [v for v in self.versions.get(group, []) if status is None or v.status == status]

    def set_status(self, group: str, version: int, status: ApprovalStatus, reason: str, actor: str) -> ModelVersion:
        return self._replace(group, version, status=status)

    def update_metadata(self, group: str, version: int, metadata: Mapping[str, str]) -> ModelVersion:
        merged = validate_metadata({**self.get(group, version).metadata, **metadata})
        return self._replace(group, version, metadata=merged)

    def _replace(self, group: str, version: int, **changes: Any) -> ModelVersion:
        current = self.get(group, version)
        new = replace(current, **changes)
        versions = self.versions[group]
        versions[versions.index(current)] = new
        return new


class Clock:
    def __init__(self, start: datetime = datetime(2026, 3, 1, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)



class MemoryThings:
    """ThingRegistry: thing name -> the ids of the certificates attached to it; and, of some of those things,
    their attributes and groups."""

    def __init__(self, things: Mapping[str, tuple[str, ...]] | None = None,
                 attributes: Mapping[str, Mapping[str, str]] | None = None,
                 groups: Mapping[str, frozenset[str]] | None = None) -> None:
        self.things = dict(things or {})
        self.attributes = {k: dict(v) for k, v in (attributes or {}).items()}
        self.groups = dict(groups or {})
        self.reads: list[str] = []

    def thing_certificates(self, thing_name: str) -> tuple[str, ...] | None:
        self.reads.append(thing_name)
        certificates = self.things.get(thing_name)
        return None if certificates is None else tuple(sorted(certificates))

    def thing_attributes(self, thing_name: str) -> dict[str, str] | None:
        return None if thing_name not in self.things else dict(self.attributes.get(thing_name, {}))

    def thing_groups(self, thing_name: str) -> frozenset[str]:
        return frozenset(self.groups.get(thing_name, ())) if thing_name in self.things else frozenset()
