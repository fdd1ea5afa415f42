"""training_completed: `SageMaker Training Job State Change` -> quality gate -> model registry."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import Field

from shared import settings as defaults
from shared.events import TRAINING_STATE_CHANGE, TrainingJobStateChange, parse_event, s3_key_from_uri
from shared.gate import GatePolicy
from shared.observability import logger, new_invocation, tracer
from shared.settings import CommonSettings
from shared.usecases.registration import RegistrationDeps, on_training_finished


class TrainingCompletedSettings(CommonSettings):
    approvals_topic_arn: str = Field(alias="NACELLE_APPROVALS_TOPIC_ARN")
    training_image_uri: str = Field(alias="NACELLE_TRAINING_IMAGE_URI")
    gate_min_event_f1: float = Field(defaults.GATE_MIN_EVENT_F1, alias="NACELLE_GATE_MIN_EVENT_F1")
    gate_min_recall_medium_high: float = Field(defaults.GATE_MIN_RECALL_MEDIUM_HIGH,
                                               alias="NACELLE_GATE_MIN_RECALL_MEDIUM_HIGH")
    gate_max_false_alarms_per_day: float = Field(defaults.GATE_MAX_FALSE_ALARMS_PER_DAY,
                                                 alias="NACELLE_GATE_MAX_FALSE_ALARMS_PER_DAY")
    gate_regression_tolerance: float = Field(defaults.GATE_REGRESSION_TOLERANCE,
                                             alias="NACELLE_GATE_REGRESSION_TOLERANCE")
    gate_min_faults: int = Field(defaults.GATE_MIN_FAULTS, alias="NACELLE_GATE_MIN_FAULTS")
    event_bus_name: str = Field("default", alias="NACELLE_EVENT_BUS_NAME")
    drift_auto_approve_canary: bool = Field(defaults.DRIFT_AUTO_APPROVE_CANARY,
                                            alias="NACELLE_DRIFT_AUTO_APPROVE_CANARY")

    def gate(self) -> GatePolicy:
        return GatePolicy(self.gate_min_event_f1, self.gate_min_recall_medium_high,
                          self.gate_max_false_alarms_per_day, self.gate_regression_tolerance, self.gate_min_faults)


SETTINGS = TrainingCompletedSettings


def handle(event: dict[str, Any], deps: RegistrationDeps) -> dict[str, Any]:
    new_invocation()
    parsed = parse_event(event, {TRAINING_STATE_CHANGE: TrainingJobStateChange})
    assert isinstance(parsed, TrainingJobStateChange)
    d = parsed.detail
    model_key = s3_key_from_uri(d.ModelArtifacts.S3ModelArtifacts, deps.store.bucket) if d.ModelArtifacts else None
    outcome = on_training_finished(d.TrainingJobName, d.TrainingJobStatus, d.FailureReason, model_key, deps)
    logger.info("training_completed done", action=outcome.action, detail=outcome.detail)
    return {"action": outcome.action, "detail": outcome.detail, **outcome.data}


@cache
def aws_deps() -> RegistrationDeps:
    from shared.aws.dynamodb import DynamoStateStore
    from shared.aws.events import AwsEventPublisher
    from shared.aws.registry import SageMakerRegistry
    from shared.aws.s3 import S3ObjectStore
    from shared.aws.sns import SnsNotifier

    s = SETTINGS.from_env()
    return RegistrationDeps(
        store=S3ObjectStore(s.data_bucket),
        state=DynamoStateStore(s.state_table),
        registry=SageMakerRegistry(s.data_bucket, s.training_image_uri),
        notifier=SnsNotifier({"approvals": s.approvals_topic_arn}),
        events=AwsEventPublisher(s.event_bus_name, "", "", "default"),  # immediate events only
        gate=s.gate(),
        group=s.model_package_group,
        clock=lambda: datetime.now(UTC),
        auto_approve_canary=s.drift_auto_approve_canary,
    )


@logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE)
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handle(event, aws_deps())
