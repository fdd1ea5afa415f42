"""The settings and AWS wiring of the two rollout functions (compilation_completed, deployment_status): they run the
same use case family on the same resources, so they read one settings object. It lives in shared/ (the Lambda layer)
because each function's package holds only its own app.py; it is the one shared module that imports both the use
cases and the AWS adapters (tool.importlinter in pyproject.toml)."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import Field

from shared import settings as defaults
from shared.settings import CommonSettings
from shared.usecases.rollout_state import RolloutDeps


class RolloutSettings(CommonSettings):
    approvals_topic_arn: str = Field(alias="NACELLE_APPROVALS_TOPIC_ARN")
    account_id: str = Field(alias="NACELLE_ACCOUNT_ID")
    detector_version: str = Field(alias="NACELLE_DETECTOR_VERSION")
    canary_group: str = Field(alias="NACELLE_CANARY_GROUP")
    fleet_group: str = Field(alias="NACELLE_FLEET_GROUP")
    soak_s: float = Field(defaults.CANARY_SOAK_S, ge=0, alias="NACELLE_CANARY_SOAK_S")
    canary_timeout_s: float = Field(defaults.CANARY_TIMEOUT_S, gt=0, alias="NACELLE_CANARY_TIMEOUT_S")
    stuck_timeout_s: float = Field(defaults.STUCK_TIMEOUT_S, gt=0, alias="NACELLE_STUCK_TIMEOUT_S")
    poll_s: float = Field(defaults.ROLLOUT_POLL_S, gt=0, alias="NACELLE_ROLLOUT_POLL_S")
    event_bus_name: str = Field("default", alias="NACELLE_EVENT_BUS_NAME")
    event_bus_arn: str = Field(alias="NACELLE_EVENT_BUS_ARN")
    scheduler_role_arn: str = Field(alias="NACELLE_SCHEDULER_ROLE_ARN")
    scheduler_group: str = Field("default", alias="NACELLE_SCHEDULER_GROUP")


def rollout_deps(s: RolloutSettings) -> RolloutDeps:
    from shared.aws.dynamodb import DynamoStateStore
    from shared.aws.events import AwsEventPublisher
    from shared.aws.greengrass import AwsGreengrass
    from shared.aws.registry import SageMakerRegistry
    from shared.aws.s3 import S3ObjectStore
    from shared.aws.sns import SnsNotifier

    return RolloutDeps(
        store=S3ObjectStore(s.data_bucket),
        state=DynamoStateStore(s.state_table),
        registry=SageMakerRegistry(s.data_bucket),  # no image: the rollout never registers
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
        detector_configuration={"capture": {"bucket": s.data_bucket}},  # where devices upload captured data
    )
