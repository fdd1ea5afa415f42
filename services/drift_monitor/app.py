"""drift_monitor: a row of the DriftRule (turbines/+/stats) -> the period judged against the training baseline of the
model version the turbine runs; drift alerts, and retraining when drift persists across the fleet."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import Field

from shared import settings as defaults
from shared.messages import StatsRow
from shared.observability import logger, new_invocation, tracer
from shared.settings import CommonSettings
from shared.usecases.alerts import AlertDeps, AlertPolicy
from shared.usecases.drift import DriftDeps, DriftPolicy, on_stats
from shared.usecases.intake import admit
from shared.usecases.outcome import Outcome


class DriftMonitorSettings(CommonSettings):
    alert_table: str = Field(alias="NACELLE_ALERT_TABLE")
    alerts_topic_arn: str = Field(alias="NACELLE_ALERTS_TOPIC_ARN")
    event_bus_name: str = Field("default", alias="NACELLE_EVENT_BUS_NAME")
    event_bus_arn: str = Field(alias="NACELLE_EVENT_BUS_ARN")
    min_windows: int = Field(defaults.DRIFT_MIN_WINDOWS, alias="NACELLE_DRIFT_MIN_WINDOWS")
    fleet_factor: float = Field(defaults.DRIFT_FLEET_FACTOR, alias="NACELLE_DRIFT_FLEET_FACTOR")
    min_distance: float = Field(defaults.DRIFT_MIN_DISTANCE, alias="NACELLE_DRIFT_MIN_DISTANCE")
    score_min_distance: float = Field(defaults.DRIFT_SCORE_MIN_DISTANCE, alias="NACELLE_DRIFT_SCORE_MIN_DISTANCE")
    change_threshold: float = Field(defaults.DRIFT_CHANGE_THRESHOLD, alias="NACELLE_DRIFT_CHANGE_THRESHOLD")
    reference_periods: int = Field(defaults.DRIFT_REFERENCE_PERIODS, alias="NACELLE_DRIFT_REFERENCE_PERIODS")
    alert_periods: int = Field(defaults.DRIFT_ALERT_PERIODS, alias="NACELLE_DRIFT_ALERT_PERIODS")
    retrain_turbines: int = Field(defaults.DRIFT_RETRAIN_TURBINES, alias="NACELLE_DRIFT_RETRAIN_TURBINES")
    retrain_after_s: float = Field(defaults.DRIFT_RETRAIN_AFTER_S, alias="NACELLE_DRIFT_RETRAIN_AFTER_S")
    retrain_min_captured_hours: float = Field(defaults.DRIFT_RETRAIN_MIN_CAPTURED_HOURS,
                                              alias="NACELLE_DRIFT_RETRAIN_MIN_CAPTURED_HOURS")

    def policy(self) -> DriftPolicy:
        return DriftPolicy(min_windows=self.min_windows, fleet_factor=self.fleet_factor,
                           min_distance=self.min_distance, score_min_distance=self.score_min_distance,
                           change_threshold=self.change_threshold,
                           reference_periods=self.reference_periods, alert_periods=self.alert_periods,
                           retrain_turbines=self.retrain_turbines, retrain_after_s=self.retrain_after_s,
                           retrain_min_captured_hours=self.retrain_min_captured_hours)


SETTINGS = DriftMonitorSettings


def handle(event: dict[str, Any], deps: DriftDeps) -> dict[str, Any]:
    """`event` is the IoT rule's row itself (what the Lambda action delivers)."""
    new_invocation()
    row = admit(deps.state, StatsRow, event, deps.clock().timestamp())  # refused rows are counted, never applied
    outcome = Outcome("rejected", "stats row refused") if row is None else on_stats(row, deps)
    logger.info("drift_monitor done", action=outcome.action, detail=outcome.detail, sent=list(outcome.sent))
    return {"action": outcome.action, "detail": outcome.detail, "sent": list(outcome.sent), **outcome.data}


@cache
def aws_deps() -> DriftDeps:
    from shared.aws.dynamodb import DynamoStateStore
    from shared.aws.events import AwsEventPublisher
    from shared.aws.registry import SageMakerRegistry
    from shared.aws.s3 import S3ObjectStore
    from shared.aws.sns import SnsNotifier

    s = SETTINGS.from_env()
    state = DynamoStateStore(s.state_table)
    alerts = AlertDeps(alerts=DynamoStateStore(s.alert_table), devices=state, registry=SageMakerRegistry(s.data_bucket),
                       notifier=SnsNotifier({"alerts": s.alerts_topic_arn}), clock=lambda: datetime.now(UTC),
                       group=s.model_package_group, policy=AlertPolicy())
    # immediate events only (the retrain check): no scheduler role
    events = AwsEventPublisher(s.event_bus_name, s.event_bus_arn, "", "")
    return DriftDeps(alerts=alerts, state=state, store=S3ObjectStore(s.data_bucket), events=events,
                     policy=s.policy())


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handle(event, aws_deps())
