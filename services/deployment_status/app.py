"""deployment_status: three inputs, one rollout.

* `Greengrass V2 Effective Deployment Status Change` (EventBridge): a device's execution of a deployment;
* a health row from HealthRule (IoT rule on turbines/+/health; a flat object, not an envelope,
  shared.messages.HealthRow): the soak;
* `Nacelle Rollout Check` (EventBridge, scheduled by the rollout itself): the watchdog.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from aws_lambda_powertools.utilities.typing import LambdaContext

from shared.events import (
    DEPLOYMENT_STATUS_CHANGE,
    ROLLOUT_CHECK,
    GreengrassDeploymentStatusChange,
    RolloutCheck,
    parse_event,
)
from shared.messages import HealthRow
from shared.observability import correlate, logger, new_invocation, tracer
from shared.rollout_wiring import RolloutSettings, rollout_deps
from shared.usecases.intake import admit
from shared.usecases.outcome import Outcome
from shared.usecases.rollout import on_deployment_status, on_health
from shared.usecases.rollout_ops import on_rollout_check
from shared.usecases.rollout_state import RolloutDeps

SETTINGS = RolloutSettings  # shared with the other rollout function
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
                                           d.statusDetails.errorStack, deps, event_time=parsed.time)
        else:
            assert isinstance(parsed, RolloutCheck)
            outcome = on_rollout_check(parsed.detail.group, parsed.detail.version, deps)
    else:  # refused rows are counted (shared.usecases.intake), never retried and never applied
        row = admit(deps.state, HealthRow, event, deps.clock().timestamp())
        outcome = Outcome("rejected", "health row refused") if row is None else on_health(row, deps)
    logger.info("deployment_status done", action=outcome.action, detail=outcome.detail)
    return _result(outcome)


def _result(outcome: Outcome) -> dict[str, Any]:
    return {"action": outcome.action, "detail": outcome.detail, **outcome.data}


@cache
def aws_deps() -> RolloutDeps:
    return rollout_deps(SETTINGS.from_env())


@logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE)
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handle(event, aws_deps())
