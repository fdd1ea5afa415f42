"""model_approved: `SageMaker Model Package State Change` (Approved only) -> the edge compile job;
`SageMaker Processing Job State Change` of a compile job -> recorded, failures reported."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import Field

from shared import settings as defaults
from shared.events import (
    MODEL_PACKAGE_STATE_CHANGE,
    OBJECT_CREATED,
    PROCESSING_STATE_CHANGE,
    ModelPackageStateChange,
    ObjectCreated,
    ProcessingJobStateChange,
    parse_event,
)
from shared.observability import logger, new_invocation, tracer
from shared.settings import CommonSettings
from shared.usecases.compilation import CompileDeps, on_compile_finished, on_model_package_change, on_neo_output


class ModelApprovedSettings(CommonSettings):
    approvals_topic_arn: str = Field(alias="NACELLE_APPROVALS_TOPIC_ARN")
    compile_image_uri: str = Field(alias="NACELLE_COMPILE_IMAGE_URI")
    compile_role_arn: str = Field(alias="NACELLE_COMPILE_ROLE_ARN")
    compile_instance_type: str = Field(defaults.COMPILE_INSTANCE_TYPE, alias="NACELLE_COMPILE_INSTANCE_TYPE")
    source_key: str = Field("artifacts/sourcedir.tar.gz", alias="NACELLE_TRAINING_SOURCE_KEY")
    neo_target: str = Field("", alias="NACELLE_NEO_TARGET")


SETTINGS = ModelApprovedSettings
MODELS: dict[str, type[EventBridgeModel]] = {MODEL_PACKAGE_STATE_CHANGE: ModelPackageStateChange,
                                             PROCESSING_STATE_CHANGE: ProcessingJobStateChange,
                                             OBJECT_CREATED: ObjectCreated}


def handle(event: dict[str, Any], deps: CompileDeps) -> dict[str, Any]:
    new_invocation()
    parsed = parse_event(event, MODELS)
    if isinstance(parsed, ModelPackageStateChange):
        d = parsed.detail
        outcome = on_model_package_change(d.ModelPackageGroupName, d.ModelPackageVersion, d.ModelApprovalStatus, deps)
    elif isinstance(parsed, ObjectCreated):  # a Neo artifact appeared
        if parsed.bucket != deps.store.bucket:
            return {"action": "ignored", "detail": f"bucket {parsed.bucket} is not the data bucket"}
        outcome = on_neo_output(parsed.key, deps)
    else:
        assert isinstance(parsed, ProcessingJobStateChange)
        p = parsed.detail
        # ExitMessage carries the compile step's own reason; FailureReason is mostly a generic "AlgorithmError"
        outcome = on_compile_finished(p.ProcessingJobName, p.ProcessingJobStatus, p.ExitMessage or p.FailureReason,
                                      deps)
    logger.info("model_approved done", action=outcome.action, detail=outcome.detail)
    return {"action": outcome.action, "detail": outcome.detail, **outcome.data}


@cache
def aws_deps() -> CompileDeps:
    import boto3

    from shared.aws.compile import SageMakerCompile
    from shared.aws.dynamodb import DynamoStateStore
    from shared.aws.neo import SageMakerNeo
    from shared.aws.registry import SageMakerRegistry
    from shared.aws.s3 import S3ObjectStore
    from shared.aws.sns import SnsNotifier

    s = SETTINGS.from_env()
    region = boto3.session.Session().region_name or "us-east-1"
    return CompileDeps(
        store=S3ObjectStore(s.data_bucket),
        state=DynamoStateStore(s.state_table),
        registry=SageMakerRegistry(s.data_bucket, s.compile_image_uri),
        notifier=SnsNotifier({"approvals": s.approvals_topic_arn}),
        compiler=SageMakerCompile(s.data_bucket, s.compile_image_uri, s.compile_role_arn, s.compile_instance_type,
                                  s.source_key, region),
        group=s.model_package_group,
        clock=lambda: datetime.now(UTC),
        neo=SageMakerNeo(s.data_bucket, s.compile_role_arn) if s.neo_target else None,
        neo_target=s.neo_target,
    )


@logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE)
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handle(event, aws_deps())
