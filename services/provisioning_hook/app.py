"""provisioning_hook: fleet provisioning's pre-provisioning hook (AWS IoT invokes it synchronously for every
RegisterThing of the stack's provisioning template) -> allow or refuse the requested core device."""

from __future__ import annotations

from functools import cache
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import Field

from shared import settings as defaults
from shared.observability import logger, new_invocation, tracer
from shared.settings import Settings
from shared.usecases.provisioning import (
    ProvisioningDecision,
    ProvisioningDeps,
    ProvisioningPolicy,
    ProvisioningRequest,
    decide,
)


class ProvisioningHookSettings(Settings):
    state_table: str = Field(alias="NACELLE_STATE_TABLE")  # the names' reservations (partition "provisioning")
    canary_group: str = Field(alias="NACELLE_CANARY_GROUP")
    fleet_group: str = Field(alias="NACELLE_FLEET_GROUP")
    device_name_pattern: str = Field(defaults.DEVICE_NAME_PATTERN, alias="NACELLE_DEVICE_NAME_PATTERN")
    device_serial_pattern: str = Field(defaults.DEVICE_SERIAL_PATTERN, alias="NACELLE_DEVICE_SERIAL_PATTERN")

    def policy(self) -> ProvisioningPolicy:
        return ProvisioningPolicy(self.device_name_pattern, self.device_serial_pattern,
                                  frozenset({self.canary_group, self.fleet_group}))


SETTINGS = ProvisioningHookSettings


def handle(event: dict[str, Any], deps: ProvisioningDeps) -> dict[str, Any]:
    """A malformed request is refused (never raised: IoT would only report a failed hook); a registry or table
    that cannot be reached raises, which also refuses, and the device may retry."""
    new_invocation()
    try:
        request = ProvisioningRequest.from_event(event)
    except ValueError as exc:
        decision = ProvisioningDecision(False, f"malformed hook input: {exc}")
    else:
        decision = decide(request, deps)
    logger.info("provisioning_hook done", allowed=decision.allowed, reason=decision.reason,
                thing=decision.thing_name)
    return decision.response()


@cache
def aws_deps() -> ProvisioningDeps:
    from shared.aws.dynamodb import DynamoStateStore
    from shared.aws.iot_registry import AwsThingRegistry

    s = SETTINGS.from_env()
    return ProvisioningDeps(AwsThingRegistry(), DynamoStateStore(s.state_table), s.policy())


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handle(event, aws_deps())
