"""Every event fixture in tests/events parses with the model its function reads, and names the AWS page
(or our own rule) whose shape it follows in tests/events/SOURCES.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from shared.events import (
    GreengrassDeploymentStatusChange,
    ObjectCreated,
    TrainingJobStateChange,
)
from shared.messages import EpisodeRow, validate

EVENTS = Path(__file__).parents[1] / "events"
FIXTURES = sorted(p.name for p in EVENTS.glob("*.json"))
MODELS: dict[str, type[BaseModel]] = {
    "Object Created": ObjectCreated, "SageMaker Training Job State Change": TrainingJobStateChange,
    "Greengrass V2 Effective Deployment Status Change": GreengrassDeploymentStatusChange}


@pytest.mark.parametrize("name", FIXTURES)
def test_every_fixture_parses_with_the_model_its_function_reads(name: str) -> None:
    event = json.loads((EVENTS / name).read_text())
    if "detail-type" not in event:  # an IoT rule row, not an EventBridge envelope
        validate(EpisodeRow, event)
    elif event["detail-type"] == "Scheduled Event":
        assert event["source"] == "aws.events" and event["detail"] == {}
    else:
        MODELS[event["detail-type"]].model_validate(event)


def test_every_fixture_names_its_source() -> None:
    sources = (EVENTS / "SOURCES.md").read_text()
    assert [n for n in FIXTURES if f"`{n}`" not in sources] == []
