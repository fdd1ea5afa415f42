"""The local Greengrass's device side and its IoT Jobs rules (rollout rate, timeout, abort, supersede, cancel)."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from nacelle.local.adapters.greengrass import LocalGreengrass
from nacelle.local.adapters.paths import StackPaths
from nacelle.local.runtime.devicerunner import open_greengrass
from shared.errors import ConfigurationError, Conflict, NotFound

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
GROUP = "nacelle-canary"
ARN = f"arn:aws:iot:local:000000000000:thinggroup/{GROUP}"
RECIPE = {"RecipeFormatVersion": "2020-01-25", "ComponentName": "nacelle.model", "ComponentVersion": "7.0.0"}
COMPONENTS = {"nacelle.model": {"componentVersion": "7.0.0"}}
POLICIES = {"failureHandlingPolicy": "ROLLBACK"}


def _abort(failure_type: str = "FAILED", pct: float = 10, least: int = 1) -> dict[str, Any]:
    return {"abortConfig": {"criteriaList": [{"failureType": failure_type, "action": "CANCEL",
                                              "thresholdPercentage": pct, "minNumberOfExecutedThings": least}]}}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class World:
    """A LocalGreengrass with a controllable clock, one group of things and the events it emitted."""

    def __init__(self, path: Path, things: list[str]) -> None:
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []
        self.gg = LocalGreengrass(path, on_status_event=self.events.append, clock=self.clock)
        self.gg.ensure_thing_group(GROUP)
        for thing in things:
            self.gg.add_thing(thing, GROUP)
        self.gg.create_component_version(RECIPE)

    def deploy(self, job: dict[str, Any] | None = None, token: str = "t1", name: str = "dep") -> str:
        return self.gg.create_deployment(ARN, name, COMPONENTS, POLICIES, job or {}, token)

    def statuses(self, dep: str) -> dict[str, str]:
        return {e.thing: e.status for e in self.gg.executions(dep)}

    def emitted(self) -> list[tuple[str, str]]:
        return [(e["resources"][0].rsplit(":", 1)[1], e["detail"]["coreDeviceExecutionStatus"]) for e in self.events]


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path / "greengrass.db", ["turbine-01", "turbine-02", "turbine-03"])


def test_target_for_hands_out_the_newest_deployment_of_the_things_groups(world: World) -> None:
    assert world.gg.target_for("turbine-01") is None
    assert world.gg.target_for("stranger") is None
    dep = world.deploy({"timeoutConfig": {"inProgressTimeoutInMinutes": 10}})
    target = world.gg.target_for("turbine-01")
    assert target is not None
    assert (target.deployment_id, target.name, target.target_arn, target.created_at) == (dep, "dep", ARN, T0)
    assert target.components == COMPONENTS
    assert target.deployment_policies == POLICIES
    assert target.iot_job_configuration == {"timeoutConfig": {"inProgressTimeoutInMinutes": 10}}
    assert world.statuses(dep) == {"turbine-01": "QUEUED"}
    assert world.gg.groups_of("turbine-01") == [GROUP]


def test_report_emits_the_aws_status_change_event_once(world: World) -> None:
    dep = world.deploy()
    world.gg.target_for("turbine-01")
    world.gg.report("turbine-01", dep, "IN_PROGRESS")
    assert world.events == []
    for _ in range(2):  # a retried report changes nothing
        world.gg.report("turbine-01", dep, "FAILED", reason="broken", error_stack=["DEPLOYMENT_FAILURE"],
                        error_types=["USER_COMPONENT_ERROR"], components={"nacelle.model": "6.0.0"})
    assert len(world.events) == 1
    event = world.events[0]
    assert (event["source"], event["detail-type"]) == ("aws.greengrass",
                                                       "Greengrass V2 Effective Deployment Status Change")
    assert event["resources"] == ["arn:aws:greengrass:local:000000000000:coreDevices:turbine-01"]
    assert event["detail"] == {"deploymentId": dep, "coreDeviceExecutionStatus": "FAILED", "reason": "broken",
                               "statusDetails": {"errorStack": ["DEPLOYMENT_FAILURE"],
                                                 "errorTypes": ["USER_COMPONENT_ERROR"]}}
    json.dumps(event)  # goes on the bus as JSON


def test_devices_show_groups_components_executions_and_last_seen(world: World) -> None:
    dep = world.deploy()
    world.gg.target_for("turbine-01")
    world.clock.advance(5)
    world.gg.report("turbine-01", dep, "SUCCEEDED", components={"nacelle.model": "7.0.0"})
    world.clock.advance(5)
    world.gg.heartbeat("turbine-02")
    devices = {d.thing: d for d in world.gg.devices()}
    assert sorted(devices) == ["turbine-01", "turbine-02", "turbine-03"]
    one = devices["turbine-01"]
    assert (one.groups, one.components) == ((GROUP,), {"nacelle.model": "7.0.0"})
    assert one.last_seen == T0 + timedelta(seconds=5)
    assert [(e.deployment_id, e.status, e.modified_at) for e in one.executions] == [
        (dep, "SUCCEEDED", T0 + timedelta(seconds=5))]
    assert devices["turbine-02"].last_seen == T0 + timedelta(seconds=10)
    assert (devices["turbine-03"].last_seen, devices["turbine-03"].executions) == (None, ())


def test_deployment_completes_when_every_current_member_succeeded(world: World) -> None:
    dep = world.deploy()
    for thing in ("turbine-01", "turbine-02", "turbine-03"):
        assert world.gg.get_deployment(dep).status == "ACTIVE"
        world.gg.target_for(thing)
        world.gg.report(thing, dep, "SUCCEEDED")
    assert world.gg.get_deployment(dep).status == "COMPLETED"
    world.gg.add_thing("turbine-04", GROUP)  # continuous deployment: a new member gets it too
    assert world.gg.get_deployment(dep).status == "ACTIVE"
    target = world.gg.target_for("turbine-04")
    assert target is not None and target.deployment_id == dep


def test_abort_criteria_cancel_the_deployment_and_its_unfinished_executions(world: World) -> None:
    dep = world.deploy(_abort("FAILED", 10, 1))
    for thing in ("turbine-01", "turbine-02"):
        world.gg.target_for(thing)
    world.gg.report("turbine-02", dep, "IN_PROGRESS")
    world.gg.report("turbine-01", dep, "FAILED", reason="broken")
    assert world.gg.get_deployment(dep).status == "CANCELED"
    assert world.statuses(dep) == {"turbine-01": "FAILED", "turbine-02": "CANCELED"}
    assert world.emitted() == [("turbine-01", "FAILED"), ("turbine-02", "CANCELED")]
    assert world.gg.target_for("turbine-03") is None
    world.gg.report("turbine-02", dep, "SUCCEEDED", components={"nacelle.model": "7.0.0"})  # too late: ignored
    assert world.statuses(dep)["turbine-02"] == "CANCELED"
    assert {d.thing: d.components for d in world.gg.devices()}["turbine-02"] == {"nacelle.model": "7.0.0"}


@pytest.mark.parametrize(("criterion", "reports", "aborted"), [
    (_abort("FAILED", 50, 2), ["FAILED"], False),  # fewer executed things than the minimum
    (_abort("FAILED", 50, 2), ["FAILED", "SUCCEEDED"], True),  # 1 of 2 = 50 %
    (_abort("FAILED", 60, 2), ["FAILED", "SUCCEEDED"], False),
    (_abort("REJECTED", 10, 1), ["FAILED"], False),  # another failure type
    (_abort("ALL", 10, 1), ["REJECTED"], True),
])
def test_abort_thresholds(world: World, criterion: dict[str, Any], reports: list[str], aborted: bool) -> None:
    dep = world.deploy(criterion)
    for thing, status in zip(("turbine-01", "turbine-02"), reports, strict=False):
        world.gg.target_for(thing)
        world.gg.report(thing, dep, status)
    assert (world.gg.get_deployment(dep).status == "CANCELED") is aborted


def test_in_progress_executions_time_out_when_checked(world: World) -> None:
    dep = world.deploy({"timeoutConfig": {"inProgressTimeoutInMinutes": 10}})
    world.gg.target_for("turbine-01")
    world.gg.target_for("turbine-02")  # stays QUEUED: the timer starts at IN_PROGRESS
    world.gg.report("turbine-01", dep, "IN_PROGRESS")
    world.clock.advance(599)
    assert world.statuses(dep)["turbine-01"] == "IN_PROGRESS"
    world.gg.sweep(T0 + timedelta(minutes=10))
    assert world.statuses(dep) == {"turbine-01": "TIMED_OUT", "turbine-02": "QUEUED"}
    assert world.emitted() == [("turbine-01", "TIMED_OUT")]
    world.gg.report("turbine-01", dep, "SUCCEEDED")  # the device finished late: the execution stays TIMED_OUT
    assert world.statuses(dep)["turbine-01"] == "TIMED_OUT"


def test_timeout_counts_as_failure_for_an_all_abort(world: World) -> None:
    dep = world.deploy({**_abort("ALL", 10, 1), "timeoutConfig": {"inProgressTimeoutInMinutes": 1}})
    world.gg.target_for("turbine-01")
    world.gg.report("turbine-01", dep, "IN_PROGRESS")
    world.clock.advance(61)
    assert world.gg.get_deployment(dep).status == "CANCELED"


def test_rollout_rate_limits_new_executions_per_minute(world: World) -> None:
    dep = world.deploy({"jobExecutionsRolloutConfig": {"maximumPerMinute": 2}})
    assert world.gg.target_for("turbine-01") is not None
    world.clock.advance(30)
    assert world.gg.target_for("turbine-02") is not None
    assert world.gg.target_for("turbine-03") is None  # two started in the last 60 s
    assert world.gg.target_for("turbine-01") is not None  # already started: not held back
    world.clock.advance(31)
    assert world.gg.target_for("turbine-03") is not None  # the first start left the window
    assert sorted(world.statuses(dep)) == ["turbine-01", "turbine-02", "turbine-03"]


def test_a_new_deployment_supersedes_and_cancels_unfinished_executions(world: World) -> None:
    first = world.deploy(token="t1")
    world.gg.target_for("turbine-01")
    world.gg.target_for("turbine-02")
    world.gg.report("turbine-01", first, "SUCCEEDED")
    second = world.deploy(token="t2", name="dep2")
    assert world.gg.get_deployment(first).status == "INACTIVE"
    assert world.statuses(first) == {"turbine-01": "SUCCEEDED", "turbine-02": "CANCELED"}
    target = world.gg.target_for("turbine-02")
    assert target is not None and target.deployment_id == second
    assert world.gg.get_deployment(second).revision == "2"
    assert [e.deployment_id for e in world.gg.list_effective_deployments("turbine-02")] == [second, first]
    with pytest.raises(Conflict, match="INACTIVE"):
        world.gg.cancel_deployment(first)


def test_cancel_deployment_cancels_unfinished_executions_only(world: World) -> None:
    dep = world.deploy()
    for thing in ("turbine-01", "turbine-02"):
        world.gg.target_for(thing)
    world.gg.report("turbine-01", dep, "SUCCEEDED")
    world.gg.cancel_deployment(dep)
    world.gg.cancel_deployment(dep)  # idempotent
    assert world.gg.get_deployment(dep).status == "CANCELED"
    assert world.statuses(dep) == {"turbine-01": "SUCCEEDED", "turbine-02": "CANCELED"}
    assert world.emitted() == [("turbine-01", "SUCCEEDED"), ("turbine-02", "CANCELED")]
    assert world.gg.target_for("turbine-03") is None


def test_bad_requests(world: World) -> None:
    dep = world.deploy(token="t1")
    with pytest.raises(Conflict, match="clientToken t1"):
        world.gg.create_deployment(ARN, "other", COMPONENTS, POLICIES, {}, "t1")
    with pytest.raises(NotFound, match=r"nacelle\.detector@1\.0\.0"):
        world.gg.create_deployment(ARN, "d", {"nacelle.detector": {"componentVersion": "1.0.0"}}, POLICIES, {}, "t3")
    for target in ("arn:aws:iot:local:000000000000:thing/", "arn:aws:iot:local:000000000000:thinggroup/a/b",
                   "arn:aws:iot:local:000000000000:role/turbine-01", "turbine-01"):
        with pytest.raises(ConfigurationError, match=r"deploys to thing groups .* and things"):
            world.gg.create_deployment(target, "d", COMPONENTS, POLICIES, {}, "t4")
    with pytest.raises(NotFound, match="no thing turbine-99"):
        world.gg.create_deployment("arn:aws:iot:local:000000000000:thing/turbine-99", "d", COMPONENTS, POLICIES,
                                   {}, "t4")
    with pytest.raises(NotFound, match="no thing group nope"):
        world.gg.create_deployment(ARN.replace(GROUP, "nope"), "d", COMPONENTS, POLICIES, {}, "t5")
    with pytest.raises(NotFound, match="no thing group nope"):
        world.gg.add_thing("turbine-01", "nope")
    with pytest.raises(ConfigurationError, match="DONE"):
        world.gg.report("turbine-01", dep, "DONE")
    with pytest.raises(NotFound, match="no-such-id"):
        world.gg.report("turbine-01", "no-such-id", "SUCCEEDED")


def test_a_failing_event_consumer_rolls_the_report_back(tmp_path: Path) -> None:
    world = World(tmp_path / "greengrass.db", ["turbine-01"])
    dep = world.deploy()
    world.gg.target_for("turbine-01")
    world.gg.on_status_event = lambda event: (_ for _ in ()).throw(OSError("bus down"))
    with pytest.raises(OSError, match="bus down"):
        world.gg.report("turbine-01", dep, "SUCCEEDED")
    assert world.statuses(dep) == {"turbine-01": "QUEUED"}
    world.gg.on_status_event = world.events.append
    world.gg.report("turbine-01", dep, "SUCCEEDED")  # the device's retry delivers it
    assert world.emitted() == [("turbine-01", "SUCCEEDED")]


def test_open_puts_status_events_on_the_stacks_bus(tmp_path: Path) -> None:
    paths = StackPaths(tmp_path / "home")
    cloud = LocalGreengrass(paths.greengrass_db)
    cloud.ensure_thing_group(GROUP)
    cloud.add_thing("turbine-01", GROUP)
    cloud.create_component_version(RECIPE)
    dep = cloud.create_deployment(ARN, "dep", COMPONENTS, POLICIES, {}, "t1")
    device = open_greengrass(paths.home)  # as a simulated device process does
    device.target_for("turbine-01")
    device.report("turbine-01", dep, "SUCCEEDED")
    with sqlite3.connect(paths.bus_db) as db:
        bodies = [json.loads(b) for (b,) in db.execute("SELECT body FROM events")]
    assert [(b["source"], b["detail"]["deploymentId"]) for b in bodies] == [("aws.greengrass", dep)]
