"""In-memory fakes of the ports, for use-case tests (the contract suites cover the real adapters)."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.errors import JobAlreadyExists, JobNotFound, ModelVersionNotFound, ObjectNotFound
from shared.ports import ApprovalStatus, Envelope, ModelVersion, ObjectInfo, Topic, TrainingJob, TrainingRequest


class MemoryStore:
    def __init__(self, bucket: str = "data") -> None:
        self.bucket = bucket
        self.objects: dict[str, bytes] = {}

    def get(self, key: str) -> bytes:
        if key not in self.objects:
            raise ObjectNotFound(key)
        return self.objects[key]

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
    def __init__(self) -> None:
        self.items: dict[tuple[str, str], dict[str, Any]] = {}

    def get(self, pk: str, sk: str) -> dict[str, Any] | None:
        item = self.items.get((pk, sk))
        return copy.deepcopy(item) if item is not None else None

    def put(self, pk: str, sk: str, item: Mapping[str, Any], if_absent: bool = False) -> bool:
        if if_absent and (pk, sk) in self.items:
            return False
        self.items[(pk, sk)] = copy.deepcopy(dict(item))
        return True

    def update_if(self, pk: str, sk: str, changes: Mapping[str, Any], expected: Mapping[str, Any]) -> bool:
        item = self.items.setdefault((pk, sk), {}) if (pk, sk) in self.items else {}
        for key, value in expected.items():
            if (value is None and key in item) or (value is not None and item.get(key) != value):
                return False
        item.update(copy.deepcopy(dict(changes)))
        self.items[(pk, sk)] = item  # like the real stores: a missing item is created when the condition holds
        return True

    def query(self, pk: str, sk_prefix: str = "") -> list[dict[str, Any]]:
        return [copy.deepcopy(v) for (p, s), v in sorted(self.items.items()) if p == pk and s.startswith(sk_prefix)]


@dataclass
class Published:
    topic: str
    subject: str
    message: str
    attributes: dict[str, str]


class RecordingNotifier:
    def __init__(self) -> None:
        self.messages: list[Published] = []

    def publish(self, topic: Topic, subject: str, message: str, attributes: Mapping[str, str]) -> str:
        self.messages.append(Published(topic, subject, message, dict(attributes)))
        return str(len(self.messages))


@dataclass
class RecordingEvents:
    published: list[tuple[Envelope, datetime | None, str | None]] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)

    def publish(self, event: Envelope, deliver_at: datetime | None = None, dedup_key: str | None = None) -> None:
        if dedup_key is not None and deliver_at is not None:  # only a schedule is named (de-duplicated)
            if dedup_key in self.keys:
                return
            self.keys.add(dedup_key)
        self.published.append((event, deliver_at, dedup_key))


class FakeTraining:
    def __init__(self) -> None:
        self.started: list[TrainingRequest] = []
        self.jobs: dict[str, TrainingJob] = {}

    def start(self, request: TrainingRequest) -> None:
        if request.job_name in self.jobs:
            raise JobAlreadyExists(request.job_name)
        self.started.append(request)
        self.jobs[request.job_name] = TrainingJob(request.job_name, "InProgress")

    def describe(self, job_name: str) -> TrainingJob:
        if job_name not in self.jobs:
            raise JobNotFound(job_name)
        return self.jobs[job_name]


class MemoryRegistry:
    def __init__(self) -> None:
        self.versions: dict[str, list[ModelVersion]] = {}
        self.tokens: dict[str, int] = {}

    def ensure_group(self, group: str, description: str = "") -> None:
        self.versions.setdefault(group, [])

    def register(self, group: str, model_data_key: str, status: ApprovalStatus, description: str,
                 metadata: Mapping[str, str], idempotency_token: str) -> ModelVersion:
        if idempotency_token in self.tokens:
            return self.get(group, self.tokens[idempotency_token])
        versions = self.versions.setdefault(group, [])
        number = len(versions) + 1
        version = ModelVersion(group, number, status, model_data_key, dict(metadata), description,
                               datetime.now(UTC), f"arn:aws:sagemaker:local:0:model-package/{group}/{number}")
        versions.append(version)
        self.tokens[idempotency_token] = version.version
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
        return self._replace(group, version, metadata={**self.get(group, version).metadata, **metadata})

    def _replace(self, group: str, version: int, **changes: Any) -> ModelVersion:
        new = replace(self.get(group, version), **changes)
        self.versions[group][version - 1] = new
        return new


class Clock:
    def __init__(self, start: datetime = datetime(2026, 3, 1, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
