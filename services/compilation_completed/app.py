"""compilation_completed: `Object Created` of compiled/<group>/<version>/manifest.json -> the model and detector
component versions and one deployment to the canary thing group."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import Field

from shared.events import OBJECT_CREATED, ObjectCreated, parse_event
from shared.observability import logger, new_invocation, tracer
from shared.settings import CommonSettings
from shared.usecases.rollout import RolloutDeps, on_manifest_created


class CompilationCompletedSettings(CommonSettings):
    approvals_topic_arn: str = Field(alias="NACELLE_APPROVALS_TOPIC_ARN")
    account_id: str = Field(alias="NACELLE_ACCOUNT_ID")
    detector_version: str = Field(alias="NACELLE_DETECTOR_VERSION")
    canary_group: str = Field(alias="NACELLE_CANARY_GROUP")
    fleet_group: str = Field(alias="NACELLE_FLEET_GROUP")
    poll_s: float = Field(60.0, gt=0, alias="NACELLE_ROLLOUT_POLL_S")
    event_bus_name: str = Field("default", alias="NACELLE_EVENT_BUS_NAME")
    event_bus_arn: str = Field(alias="NACELLE_EVENT_BUS_ARN")
    scheduler_role_arn: str = Field(alias="NACELLE_SCHEDULER_ROLE_ARN")
    scheduler_group: str = Field("default", alias="NACELLE_SCHEDULER_GROUP")


SETTINGS = CompilationCompletedSettings
MODELS: dict[str, type[EventBridgeModel]] = {OBJECT_CREATED: ObjectCreated}


def handle(event: dict[str, Any], deps: RolloutDeps) -> dict[str, Any]:
    new_invocation()
    parsed = parse_event(event, MODELS)
    assert isinstance(parsed, ObjectCreated)
    if parsed.bucket != deps.store.bucket:
        return {"action": "ignored", "detail": f"bucket {parsed.bucket} is not the data bucket"}
    outcome = on_manifest_created(parsed.key, deps)
    logger.info("compilation_completed done", action=outcome.action, detail=outcome.detail)
    return {"action": outcome.action, "detail": outcome.detail, **outcome.data}


@cache
def aws_deps() -> RolloutDeps:
    from shared.aws.dynamodb import DynamoStateStore
    from shared.aws.events import AwsEventPublisher
    from shared.aws.greengrass import AwsGreengrass
    from shared.aws.registry import SageMakerRegistry
    from shared.aws.s3 import S3ObjectStore
    from shared.aws.sns import SnsNotifier

    s = SETTINGS.from_env()
    return RolloutDeps(
        store=S3ObjectStore(s.data_bucket),
        state=DynamoStateStore(s.state_table),
        registry=SageMakerRegistry(s.data_bucket, ""),
        notifier=SnsNotifier({"approvals": s.approvals_topic_arn}),
        greengrass=AwsGreengrass(account=s.account_id),
        events=AwsEventPublisher(s.event_bus_name, s.event_bus_arn, s.scheduler_role_arn, s.scheduler_group),
        group=s.model_package_group,
        detector_version=s.detector_version,
        canary_group=s.canary_group,
        fleet_group=s.fleet_group,
        soak_s=0.0,  # promotion and timeouts are deployment_status's; this function only starts the canary
        canary_timeout_s=0.0,
        stuck_timeout_s=0.0,
        clock=lambda: datetime.now(UTC),
        poll_s=s.poll_s,
    )


@logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE)
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handle(event, aws_deps())
