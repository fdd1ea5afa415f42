"""Typed events at the boundary: EventBridge envelopes with our own `detail` models.

The same shapes arrive from AWS and from the local bus.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools.utilities.parser.models import EventBridgeModel, S3EventNotificationEventBridgeModel
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.errors import ConfigurationError, DataError

OBJECT_CREATED = "Object Created"
RETRAIN_CHECK = "Nacelle Retrain Check"
TRAINING_STATE_CHANGE = "SageMaker Training Job State Change"
MODEL_PACKAGE_STATE_CHANGE = "SageMaker Model Package State Change"
NACELLE_SOURCE = "nacelle"


class ObjectCreated(S3EventNotificationEventBridgeModel):
    @property
    def key(self) -> str:
        """The object key, URL-decoded (S3 notifications encode it)."""
        return unquote_plus(self.detail.object.key)

    @property
    def bucket(self) -> str:
        return self.detail.bucket.name


class RetrainCheckDetail(BaseModel):
    group: str
    requested_at: datetime
    reason: str = "data arrived"
    correlation: dict[str, str] = Field(default_factory=dict)


class RetrainCheck(EventBridgeModel):
    detail: RetrainCheckDetail


class TrainingArtifacts(BaseModel):
    S3ModelArtifacts: str


class TrainingJobDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    TrainingJobName: str
    TrainingJobStatus: str
    TrainingJobArn: str | None = None
    FailureReason: str | None = None
    SecondaryStatus: str | None = None
    ModelArtifacts: TrainingArtifacts | None = None


class TrainingJobStateChange(EventBridgeModel):
    detail: TrainingJobDetail


def parse_event(event: dict[str, Any], models: dict[str, type[EventBridgeModel]]) -> EventBridgeModel:
    """Pick the model by detail-type; an unexpected type is a routing error, not data."""
    detail_type = event.get("detail-type")
    model = models.get(str(detail_type))
    if model is None:
        raise ConfigurationError(f"unexpected event detail-type {detail_type!r}; expected one of {sorted(models)}")
    try:
        return model.model_validate(event)
    except ValidationError as exc:
        fields = "; ".join(".".join(str(p) for p in e["loc"]) + f": {e['msg']}" for e in exc.errors())
        raise DataError(f"{detail_type} event {event.get('id')!r} does not match its documented shape: "
                        f"{fields}") from exc


def s3_key_from_uri(uri: str, bucket: str) -> str:
    prefix = f"s3://{bucket}/"
    if not uri.startswith(prefix):
        raise ConfigurationError(f"{uri} is not in the data bucket {bucket}")
    return uri[len(prefix):]


class ModelPackageDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    ModelPackageGroupName: str
    ModelPackageVersion: int
    ModelApprovalStatus: str
    ModelPackageArn: str | None = None


class ModelPackageStateChange(EventBridgeModel):
    detail: ModelPackageDetail


PROCESSING_STATE_CHANGE = "SageMaker Processing Job State Change"


class ProcessingJobDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    ProcessingJobName: str
    ProcessingJobStatus: str
    FailureReason: str | None = None
    ExitMessage: str | None = None


class ProcessingJobStateChange(EventBridgeModel):
    detail: ProcessingJobDetail


# -- rollout (Greengrass deployment status, device health, the rollout watchdog) ---------------
GREENGRASS_SOURCE = "aws.greengrass"
DEPLOYMENT_STATUS_CHANGE = "Greengrass V2 Effective Deployment Status Change"
ROLLOUT_CHECK = "Nacelle Rollout Check"


def _none_as_default(value: Any, default: Any) -> Any:
    return default if value is None else value


class DeploymentStatusDetails(BaseModel):
    """Null in success states, as AWS sends them."""

    model_config = ConfigDict(extra="allow")

    errorStack: list[str] = Field(default_factory=list)
    errorTypes: list[str] = Field(default_factory=list)

    @field_validator("errorStack", "errorTypes", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return _none_as_default(value, [])


class DeploymentStatusDetail(BaseModel):
    """AWS's documentation spells the id `deploymentId` and, in an older version, `deployment-id`."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    deploymentId: str = Field(validation_alias=AliasChoices("deploymentId", "deployment-id"))
    coreDeviceExecutionStatus: str
    statusDetails: DeploymentStatusDetails = Field(default_factory=DeploymentStatusDetails)
    reason: str = ""

    @field_validator("statusDetails", mode="before")
    @classmethod
    def _null_details(cls, value: Any) -> Any:
        return _none_as_default(value, {})

    @field_validator("reason", mode="before")
    @classmethod
    def _null_reason(cls, value: Any) -> Any:
        return _none_as_default(value, "")


class GreengrassDeploymentStatusChange(EventBridgeModel):
    detail: DeploymentStatusDetail

    @property
    def thing_name(self) -> str:
        """The core device: the last segment of resources[0] (arn:aws:greengrass:<r>:<a>:coreDevices:<thing>)."""
        for arn in self.resources:
            if ":coreDevices:" in arn:
                return arn.rsplit(":coreDevices:", 1)[1]
        raise ConfigurationError(f"deployment status event {self.id}: no coreDevices ARN in resources {self.resources}")


class RolloutCheckDetail(BaseModel):
    group: str
    version: int
    requested_at: datetime


class RolloutCheck(EventBridgeModel):
    detail: RolloutCheckDetail
