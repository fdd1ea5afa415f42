"""deployment_status: three inputs, one rollout.

* `Greengrass V2 Effective Deployment Status Change` (EventBridge): a device's execution of a deployment;
* a health row from HealthRule (IoT rule on turbines/+/health; a flat object, not an envelope): the soak;
* `Nacelle Rollout Check` (EventBridge, scheduled by the rollout itself): the watchdog.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import Field, ValidationError

from shared.errors import DataError
from shared.events import (
    DEPLOYMENT_STATUS_CHANGE,
    ROLLOUT_CHECK,
    GreengrassDeploymentStatusChange,
    HealthRow,
    RolloutCheck,
    parse_event,
)
from shared.observability import correlate, logger, new_invocation, tracer
from shared.settings import CommonSettings
from shared.usecases.retraining import Outcome
from shared.usecases.rollout import RolloutDeps, on_deployment_status, on_health
from shared.usecases.rollout_ops import on_rollout_check


class DeploymentStatusSettings(CommonSettings):
    approvals_topic_arn: str = Field(alias="NACELLE_APPROVALS_TOPIC_ARN")
    account_id: str = Field(alias="NACELLE_ACCOUNT_ID")
    detector_version: str = Field(alias="NACELLE_DETECTOR_VERSION")
    canary_group: str = Field(alias="NACELLE_CANARY_GROUP")
    fleet_group: str = Field(alias="NACELLE_FLEET_GROUP")
    soak_s: float = Field(600.0, ge=0, alias="NACELLE_CANARY_SOAK_S")
    canary_timeout_s: float = Field(3600.0, gt=0, alias="NACELLE_CANARY_TIMEOUT_S")
    stuck_timeout_s: float = Field(1800.0, gt=0, alias="NACELLE_STUCK_TIMEOUT_S")
    poll_s: float = Field(60.0, gt=0, alias="NACELLE_ROLLOUT_POLL_S")
    event_bus_name: str = Field("default", alias="NACELLE_EVENT_BUS_NAME")
    event_bus_arn: str = Field(alias="NACELLE_EVENT_BUS_ARN")
    scheduler_role_arn: str = Field(alias="NACELLE_SCHEDULER_ROLE_ARN")
    scheduler_group: str = Field("default", alias="NACELLE_SCHEDULER_GROUP")


SETTINGS = DeploymentStatusSettings
MODELS: dict[str, type[EventBridgeModel]] = {DEPLOYMENT_STATUS_CHANGE: GreengrassDeploymentStatusChange,
                                             ROLLOUT_CHECK: RolloutCheck}


def handle(event: dict[str, Any], deps: RolloutDeps) -> dict[str, Any]:
    new_invocation()
    if "detail-type" in event:
        parsed = parse_event(event, MODELS)
        if isinstance(parsed, GreengrassDeploymentStatusChange):
            d = parsed.detail
            correlate(deployment_id=d.deploymentId, thing_name=parsed.thing_name)
            outcome = on_deployment_status(d.deploymentId, parsed.thing_name, d.coreDeviceExecutionStatus, d.reason,
                                           d.statusDetails.errorStack, deps)
        else:
            assert isinstance(parsed, RolloutCheck)
            outcome = on_rollout_check(parsed.detail.group, parsed.detail.version, deps)
    else:
        outcome = on_health(_health_row(event), deps)
    logger.info("deployment_status done", action=outcome.action, detail=outcome.detail)
    return _result(outcome)


def _health_row(event: dict[str, Any]) -> HealthRow:
    try:
        return HealthRow.model_validate(event)
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) + f": {e['msg']}" for e in exc.errors())
        raise DataError(f"health row from HealthRule (thing {event.get('thing_name')!r}) is invalid: {fields}") from exc


def _result(outcome: Outcome) -> dict[str, Any]:
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
        soak_s=s.soak_s,
        canary_timeout_s=s.canary_timeout_s,
        stuck_timeout_s=s.stuck_timeout_s,
        clock=lambda: datetime.now(UTC),
        poll_s=s.poll_s,
    )


@logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE)
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handle(event, aws_deps())
