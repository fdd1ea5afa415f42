"""anomaly_alert: a row of the AnomalyRule (turbines/+/anomalies) -> an alert per episode; the scheduled
`Scheduled Event` -> offline / back-online per device. Both then escalate what is overdue."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import Field

from shared import settings as defaults
from shared.messages import EpisodeRow
from shared.observability import logger, new_invocation, tracer
from shared.settings import CommonSettings
from shared.usecases.alerts import AlertDeps, AlertPolicy, on_anomaly, on_scheduled_check
from shared.usecases.intake import admit
from shared.usecases.outcome import Outcome

SCHEDULED_EVENT = "Scheduled Event"


class AnomalyAlertSettings(CommonSettings):
    alert_table: str = Field(alias="NACELLE_ALERT_TABLE")
    alerts_topic_arn: str = Field(alias="NACELLE_ALERTS_TOPIC_ARN")
    escalate_after_s: float = Field(defaults.ALERT_ESCALATE_AFTER_S, alias="NACELLE_ALERT_ESCALATE_AFTER_S")
    repeat_episodes: int = Field(defaults.ALERT_REPEAT_EPISODES, alias="NACELLE_ALERT_REPEAT_EPISODES")
    repeat_window_s: float = Field(defaults.ALERT_REPEAT_WINDOW_S, alias="NACELLE_ALERT_REPEAT_WINDOW_S")
    rate_limit: int = Field(defaults.ALERT_RATE_LIMIT, alias="NACELLE_ALERT_RATE_LIMIT")
    rate_window_s: float = Field(defaults.ALERT_RATE_WINDOW_S, alias="NACELLE_ALERT_RATE_WINDOW_S")
    offline_after_s: float = Field(defaults.OFFLINE_AFTER_S, alias="NACELLE_OFFLINE_AFTER_S")

    def policy(self) -> AlertPolicy:
        return AlertPolicy(escalate_after_s=self.escalate_after_s, repeat_episodes=self.repeat_episodes,
                           repeat_window_s=self.repeat_window_s, rate_limit=self.rate_limit,
                           rate_window_s=self.rate_window_s, offline_after_s=self.offline_after_s)


SETTINGS = AnomalyAlertSettings


def handle(event: dict[str, Any], deps: AlertDeps) -> dict[str, Any]:
    """`event` is the IoT rule's row itself (what the Lambda action delivers) or the EventBridge schedule."""
    new_invocation()
    if event.get("source") == "aws.events" and event.get("detail-type") == SCHEDULED_EVENT:
        outcome = on_scheduled_check(deps)
    else:  # refused rows are counted (shared.usecases.intake), never retried and never applied
        row = admit(deps.devices, EpisodeRow, event, deps.clock().timestamp())
        outcome = Outcome("rejected", "anomaly row refused") if row is None else on_anomaly(row, deps)
    logger.info("anomaly_alert done", action=outcome.action, detail=outcome.detail, sent=list(outcome.sent))
    return {"action": outcome.action, "detail": outcome.detail, "sent": list(outcome.sent)}


@cache
def aws_deps() -> AlertDeps:
    from shared.aws.dynamodb import DynamoStateStore
    from shared.aws.registry import SageMakerRegistry
    from shared.aws.sns import SnsNotifier

    s = SETTINGS.from_env()
    return AlertDeps(
        alerts=DynamoStateStore(s.alert_table),
        devices=DynamoStateStore(s.state_table),
        registry=SageMakerRegistry(s.data_bucket),  # reads only: no image to register with
        notifier=SnsNotifier({"alerts": s.alerts_topic_arn}),
        clock=lambda: datetime.now(UTC),
        group=s.model_package_group,
        policy=s.policy(),
    )


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handle(event, aws_deps())
