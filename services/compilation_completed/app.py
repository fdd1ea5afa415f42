"""compilation_completed: `Object Created` of compiled/<group>/<version>/manifest.json -> the model and detector
component versions and one deployment to the canary thing group."""

from __future__ import annotations

from functools import cache
from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from aws_lambda_powertools.utilities.typing import LambdaContext

from shared.events import OBJECT_CREATED, ObjectCreated, parse_event
from shared.observability import logger, new_invocation, tracer
from shared.rollout_wiring import RolloutSettings, rollout_deps
from shared.usecases.rollout import on_manifest_created
from shared.usecases.rollout_state import RolloutDeps

SETTINGS = RolloutSettings  # shared with the other rollout function
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
    return rollout_deps(SETTINGS.from_env())


@logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE)
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handle(event, aws_deps())
