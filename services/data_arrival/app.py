"""data_arrival: S3 `Object Created` under raw/ and the debounced `Nacelle Retrain Check`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cache
from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import Field

from shared import settings as defaults
from shared.events import OBJECT_CREATED, RETRAIN_CHECK, ObjectCreated, RetrainCheck, parse_event
from shared.observability import correlate, logger, new_invocation, tracer
from shared.settings import CommonSettings
from shared.usecases.retraining import (
    ArrivalDeps,
    RetrainPolicy,
    max_file_bytes,
    on_object_created,
    on_retrain_check,
)


class DataArrivalSettings(CommonSettings):
    data_quality_topic_arn: str = Field(alias="NACELLE_DATA_QUALITY_TOPIC_ARN")
    min_new_turbine_hours: float = Field(defaults.MIN_NEW_TURBINE_HOURS, alias="NACELLE_MIN_NEW_TURBINE_HOURS")
    quiet_period_s: float = Field(defaults.QUIET_PERIOD_S, alias="NACELLE_QUIET_PERIOD_S")
    training_image_uri: str = Field(alias="NACELLE_TRAINING_IMAGE_URI")
    training_role_arn: str = Field(alias="NACELLE_TRAINING_ROLE_ARN")
    training_instance_type: str = Field(defaults.TRAINING_INSTANCE_TYPE,
                                        alias="NACELLE_TRAINING_INSTANCE_TYPE")
    training_source_key: str = Field("artifacts/sourcedir.tar.gz", alias="NACELLE_TRAINING_SOURCE_KEY")
    event_bus_name: str = Field("default", alias="NACELLE_EVENT_BUS_NAME")
    event_bus_arn: str = Field(alias="NACELLE_EVENT_BUS_ARN")
    scheduler_role_arn: str = Field(alias="NACELLE_SCHEDULER_ROLE_ARN")
    scheduler_group: str = Field("default", alias="NACELLE_SCHEDULER_GROUP")
    hyperparameters: str = Field("{}", alias="NACELLE_HYPERPARAMETERS")
    memory_mb: int | None = Field(None, alias="AWS_LAMBDA_FUNCTION_MEMORY_SIZE")  # set by Lambda itself

    def policy(self) -> RetrainPolicy:
        return RetrainPolicy(self.model_package_group, self.min_new_turbine_hours, self.quiet_period_s,
                             {str(k): str(v) for k, v in json.loads(self.hyperparameters).items()},
                             max_file_bytes=max_file_bytes(self.memory_mb))


SETTINGS = DataArrivalSettings
MODELS: dict[str, type[EventBridgeModel]] = {OBJECT_CREATED: ObjectCreated, RETRAIN_CHECK: RetrainCheck}


def handle(event: dict[str, Any], deps: ArrivalDeps) -> dict[str, Any]:
    new_invocation()
    parsed = parse_event(event, MODELS)
    if isinstance(parsed, ObjectCreated):
        if parsed.bucket != deps.store.bucket:
            return {"action": "ignored", "detail": f"bucket {parsed.bucket} is not the data bucket"}
        outcome = on_object_created(parsed.key, deps)
    else:
        assert isinstance(parsed, RetrainCheck)
        correlate(**parsed.detail.correlation)  # ids of the job whose end asked for this check
        outcome = on_retrain_check(deps, parsed.detail.requested_at, parsed.detail.reason)
    logger.info("data_arrival done", action=outcome.action, detail=outcome.detail)
    return {"action": outcome.action, "detail": outcome.detail, **outcome.data}


@cache
def aws_deps() -> ArrivalDeps:
    """The AWS composition root, built once per container."""
    import boto3

    from shared.aws.dynamodb import DynamoStateStore
    from shared.aws.events import AwsEventPublisher
    from shared.aws.registry import SageMakerRegistry
    from shared.aws.s3 import S3ObjectStore
    from shared.aws.sns import SnsNotifier
    from shared.aws.training import SageMakerTraining

    s = SETTINGS.from_env()
    region = boto3.session.Session().region_name or "us-east-1"
    return ArrivalDeps(
        store=S3ObjectStore(s.data_bucket),
        state=DynamoStateStore(s.state_table),
        notifier=SnsNotifier({"data_quality": s.data_quality_topic_arn}),
        events=AwsEventPublisher(s.event_bus_name, s.event_bus_arn, s.scheduler_role_arn, s.scheduler_group),
        training=SageMakerTraining(s.data_bucket, s.training_image_uri, s.training_role_arn,
                                   s.training_instance_type, s.training_source_key, region),
        registry=SageMakerRegistry(s.data_bucket, s.training_image_uri),
        policy=s.policy(),
        clock=lambda: datetime.now(UTC),
    )


@logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE)
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handle(event, aws_deps())
