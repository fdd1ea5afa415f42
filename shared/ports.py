"""The ports the use cases need. AWS adapters (shared/aws/) and local adapters (nacelle/local/adapters/, and the
event bus of nacelle/local/runtime/bus.py) implement them; one behavioural contract suite per port (tests/contract/)
runs against every implementation, the in-memory doubles of tests/fakes.py included."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

ApprovalStatus = Literal["PendingManualApproval", "Approved", "Rejected"]
TrainingStatus = Literal["InProgress", "Completed", "Failed", "Stopped", "Stopping"]
Topic = Literal["alerts", "approvals", "data_quality"]


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str  # quoted-less hex, as S3 reports it for single-part uploads (content md5)


class ObjectStore(Protocol):
    """One bucket. Keys are '/'-separated and never start with '/'."""

    bucket: str

    def get(self, key: str) -> bytes: ...  # raises ObjectNotFound

    def size(self, key: str) -> int: ...  # the object's size in bytes, without reading it; raises ObjectNotFound

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...

    def put_if_absent(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> bool:
        """Write an immutable object; False (and no write) when the key already exists."""
        ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str) -> list[ObjectInfo]: ...  # every object under the prefix, sorted by key

    def uri(self, key: str) -> str: ...  # s3://bucket/key (also locally: the training contract speaks S3)


@dataclass(frozen=True)
class TrainingRequest:
    job_name: str
    dataset_manifest_key: str  # datasets/<group>/<hash>.json, an S3 ManifestFile
    hyperparameters: Mapping[str, str]
    spec_key: str | None = None  # specs/<group>/<file>, the `spec` channel
    champion_model_key: str | None = None  # model.tar.gz of the champion, the `champion` channel
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingJob:
    job_name: str
    status: TrainingStatus
    failure_reason: str | None = None
    model_artifact_key: str | None = None  # jobs/<job>/output/model.tar.gz


class TrainingService(Protocol):
    def start(self, request: TrainingRequest) -> None:
        """Start the job; raises JobAlreadyExists when the name is taken (the idempotency key)."""
        ...

    def describe(self, job_name: str) -> TrainingJob: ...  # raises JobNotFound


@dataclass(frozen=True)
class ModelVersion:
    group: str
    version: int
    status: ApprovalStatus
    model_data_key: str  # key of model.tar.gz in the data bucket
    metadata: Mapping[str, str]  # CustomerMetadataProperties: metrics, lineage, failed flag
    description: str = ""
    created_at: datetime | None = None
    arn: str = ""

    @property
    def failed(self) -> bool:
        """Marked failed by a deployment (never the champion again)."""
        return self.metadata.get("nacelle:failed", "") == "true"


class ModelRegistry(Protocol):
    def ensure_group(self, group: str, description: str = "") -> None: ...

    def register(self, group: str, model_data_key: str, status: ApprovalStatus, description: str,
                 metadata: Mapping[str, str], idempotency_token: str) -> ModelVersion:
        """Create a model package; the same token returns the existing version."""
        ...

    def get(self, group: str, version: int) -> ModelVersion: ...  # raises ModelVersionNotFound

    def list(self, group: str, status: ApprovalStatus | None = None) -> list[ModelVersion]: ...  # oldest first

    def set_status(self, group: str, version: int, status: ApprovalStatus, reason: str, actor: str) -> ModelVersion:
        ...

    def update_metadata(self, group: str, version: int, metadata: Mapping[str, str]) -> ModelVersion: ...


class Notifier(Protocol):
    def publish(self, topic: Topic, subject: str, message: str, attributes: Mapping[str, str]) -> str:
        """Publish a message; returns its id."""
        ...


@dataclass(frozen=True)
class Envelope:
    """An EventBridge event as delivered to targets."""

    source: str
    detail_type: str
    detail: Mapping[str, Any]
    id: str = ""
    time: str = ""
    resources: tuple[str, ...] = ()

    def to_dict(self, region: str = "local", account: str = "000000000000") -> dict[str, Any]:
        return {"version": "0", "id": self.id, "detail-type": self.detail_type, "source": self.source,
                "account": account, "time": self.time, "region": region, "resources": list(self.resources),
                "detail": dict(self.detail)}


class EventPublisher(Protocol):
    def publish(self, event: Envelope, deliver_at: datetime | None = None, dedup_key: str | None = None) -> None:
        """Put an event on the bus, now or at `deliver_at` (a one-time schedule on AWS).

        With `dedup_key`, a second publish under the same key while the first is still scheduled is a no-op
        (the schedule name on AWS); an event due now is put at once and is not de-duplicated.
        """
        ...


class StateStore(Protocol):
    """A small key-value table with conditional writes (DynamoDB on AWS, SQLite locally)."""

    def get(self, pk: str, sk: str) -> dict[str, Any] | None: ...

    def put(self, pk: str, sk: str, item: Mapping[str, Any], if_absent: bool = False) -> bool:
        """Write the item; with if_absent, False and no write when (pk, sk) exists."""
        ...

    def update_if(self, pk: str, sk: str, changes: Mapping[str, Any], expected: Mapping[str, Any]) -> bool:
        """Apply changes only when every expected attribute currently has the given value (None: absent)."""
        ...

    def query(self, pk: str, sk_prefix: str = "") -> list[dict[str, Any]]: ...  # sorted by sk

    def delete(self, pk: str, sk: str) -> bool:
        """Remove the item; False when there was none."""
        ...


@dataclass(frozen=True)
class CompileRequest:
    """The edge compile step for one approved model version (a Processing job on AWS)."""

    job_name: str  # nacelle-compile-<group>-<version>-<attempt>
    group: str
    version: int
    model_data_key: str  # the version's model.tar.gz
    output_prefix: str  # compiled/<group>/<version>/
    validation_manifest_key: str | None = None  # the training dataset's ManifestFile, for the equivalence check


class CompileService(Protocol):
    def start(self, request: CompileRequest) -> None:
        """Start the compile job; raises JobAlreadyExists when the name is taken."""
        ...

    def describe(self, job_name: str) -> TrainingJob: ...  # same status vocabulary as training


@dataclass(frozen=True)
class NeoRequest:
    job_name: str
    model_data_key: str
    output_prefix: str  # the Neo artifact lands beside model.onnx, under compiled/<group>/<version>/neo/
    target_device: str  # e.g. "ml_c5" or a TargetPlatform string "LINUX/ARM64"
    input_shape: tuple[int, ...]  # [1, features, window length]


class NeoCompiler(Protocol):
    def start(self, request: NeoRequest) -> None: ...  # JobAlreadyExists when the name is taken


# -- Greengrass v2: component store, deployments, thing groups --------------------------
DeploymentStatus = Literal["ACTIVE", "COMPLETED", "CANCELED", "FAILED", "INACTIVE"]
# A core device's execution of a deployment (ListEffectiveDeployments' coreDeviceExecutionStatus).
ExecutionStatus = Literal["IN_PROGRESS", "QUEUED", "FAILED", "COMPLETED", "TIMED_OUT", "CANCELED", "REJECTED",
                          "SUCCEEDED"]
TERMINAL_EXECUTION: frozenset[str] = frozenset({"FAILED", "COMPLETED", "TIMED_OUT", "CANCELED", "REJECTED",
                                                "SUCCEEDED"})


@dataclass(frozen=True)
class ComponentVersion:
    name: str
    version: str  # semantic version, e.g. "7.0.0"
    arn: str  # arn:aws:greengrass:<region>:<account>:components:<name>:versions:<version>
    recipe: Mapping[str, Any]  # the recipe as stored (JSON object)


@dataclass(frozen=True)
class Deployment:
    deployment_id: str
    name: str
    target_arn: str  # a thing group ARN (arn:aws:iot:<region>:<account>:thinggroup/<name>)
    status: DeploymentStatus
    components: Mapping[str, Mapping[str, Any]]  # CreateDeployment's `components`
    created_at: datetime | None = None
    revision: str = ""


@dataclass(frozen=True)
class EffectiveDeployment:
    deployment_id: str
    name: str
    target_arn: str
    execution_status: ExecutionStatus
    reason: str = ""
    modified_at: datetime | None = None


class Greengrass(Protocol):
    """greengrassv2 (+ the IoT thing-group calls it needs). Component versions are immutable."""

    def get_component(self, name: str, version: str) -> ComponentVersion | None:
        """The stored recipe of name@version, None when that version does not exist."""
        ...

    def create_component_version(self, recipe: Mapping[str, Any]) -> ComponentVersion:
        """CreateComponentVersion(inlineRecipe); raises Conflict when name@version already exists."""
        ...

    def create_deployment(self, target_arn: str, name: str, components: Mapping[str, Mapping[str, Any]],
                          deployment_policies: Mapping[str, Any], iot_job_configuration: Mapping[str, Any],
                          client_token: str) -> str:
        """CreateDeployment; returns the deployment id. The same client token returns the same deployment.
        A new deployment to a target supersedes the target's previous one (which becomes INACTIVE)."""
        ...

    def get_deployment(self, deployment_id: str) -> Deployment: ...  # raises NotFound

    def cancel_deployment(self, deployment_id: str) -> None: ...

    def list_effective_deployments(self, thing_name: str) -> list[EffectiveDeployment]: ...  # newest first

    def thing_group_arn(self, group_name: str) -> str: ...  # raises NotFound

    def things_in_group(self, group_name: str) -> list[str]: ...  # thing names, sorted


class ThingRegistry(Protocol):
    """The AWS IoT registry, read only: what the pre-provisioning hook needs to know about a requested thing."""

    def thing_certificates(self, thing_name: str) -> tuple[str, ...] | None:
        """The ids of the certificates attached to the thing (sorted); None when no such thing exists."""
        ...

    def thing_attributes(self, thing_name: str) -> dict[str, str] | None:
        """The thing's attributes; None when no such thing exists."""
        ...

    def thing_groups(self, thing_name: str) -> frozenset[str]:
        """The names of the thing groups the thing is in; empty when no such thing exists."""
        ...
