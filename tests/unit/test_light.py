"""Light devices without a broker: the batched deployment poll, a deployment a light turbine cannot apply
(reported FAILED once with Greengrass's error codes, never applied twice, not even by a restarted host with a
damaged state file), the rollout rate setting and the split between full and light devices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nacelle.local.adapters.greengrass import LocalGreengrass
from nacelle.local.edge.fleet import Fleet, host_ids
from nacelle.local.edge.light import LightHost
from shared.errors import ConfigurationError
from shared.usecases.rollout_components import IOT_JOB_CONFIGURATION, job_configuration

GROUP = "nacelle-fleet"
ARN = f"arn:aws:iot:local:000000000000:thinggroup/{GROUP}"
THINGS = [f"turbine-{i:02d}" for i in range(1, 6)]
MODEL = {"RecipeFormatVersion": "2020-01-25", "ComponentName": "nacelle.model", "ComponentVersion": "1.0.0"}
DETECTOR = {"RecipeFormatVersion": "2020-01-25", "ComponentName": "nacelle.detector", "ComponentVersion": "1.1.0",
            "ComponentDependencies": {"nacelle.model": {"VersionRequirement": ">=2.0.0", "DependencyType": "SOFT"}},
            "ComponentConfiguration": {"DefaultConfiguration": {"model": {"component": "nacelle.model"}}}}


@pytest.fixture
def world(tmp_path: Path) -> tuple[LocalGreengrass, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    gg = LocalGreengrass(tmp_path / "greengrass.db", on_status_event=events.append)
    gg.ensure_thing_group(GROUP)
    for thing in THINGS:
        gg.add_thing(thing, GROUP)
    gg.create_component_version(MODEL)
    gg.create_component_version(DETECTOR)
    return gg, events


def test_targets_for_polls_many_things_at_once_and_keeps_the_rollout_rate(world: Any) -> None:
    gg, _ = world
    assert gg.targets_for(THINGS) == dict.fromkeys(THINGS)
    dep = gg.create_deployment(ARN, "d", {"nacelle.model": {"componentVersion": "1.0.0"}}, {},
                               {"jobExecutionsRolloutConfig": {"maximumPerMinute": 2}}, "t1")
    targets = gg.targets_for(THINGS)
    assert [t for t, target in targets.items() if target is not None] == THINGS[:2]  # two per minute
    assert targets[THINGS[0]].deployment_id == dep
    assert {e.thing: e.status for e in gg.executions(dep)} == dict.fromkeys(THINGS[:2], "QUEUED")
    assert all(d.last_seen is not None for d in gg.devices())  # the poll is every thing's heartbeat
    assert gg.target_for(THINGS[0]) is not None and gg.target_for(THINGS[4]) is None  # one thing, same rules


def test_host_ids_split_the_light_turbines_in_hosts() -> None:
    assert host_ids(THINGS, 2) == {"light-1": THINGS[:2], "light-2": THINGS[2:4], "light-3": THINGS[4:]}
    with pytest.raises(ConfigurationError, match="at least 1"):
        host_ids(THINGS, 0)


def test_a_deployment_a_light_turbine_cannot_resolve_is_failed_once(tmp_path: Path, world: Any) -> None:
    gg, events = world
    home = tmp_path / "home"
    # nacelle.detector 1.1.0 needs nacelle.model >= 2.0.0; the deployment pins 1.0.0
    dep = gg.create_deployment(ARN, "d", {"nacelle.detector": {"componentVersion": "1.1.0"},
                                          "nacelle.model": {"componentVersion": "1.0.0"}}, {}, {}, "t1")
    host = LightHost("light-1", home, THINGS[:2], gg, poll_s=0.05)
    host.poll()
    host._pool.shutdown(wait=True)  # the applies have finished
    failed = {e.thing: e for e in gg.executions(dep)}
    assert {t: e.status for t, e in failed.items()} == dict.fromkeys(THINGS[:2], "FAILED")
    assert "COMPONENT_VERSION_REQUIREMENTS_NOT_MET" in failed[THINGS[0]].error_stack
    assert ">=2.0.0" in failed[THINGS[0]].reason
    assert all(d.app is None for d in host.devices.values())  # nothing started, nothing changed

    (home / "devices" / THINGS[1] / "light.json").write_text("{not json")  # one turbine's state file is damaged
    restarted = LightHost("light-1", home, THINGS[:2], gg, poll_s=0.05)  # a restart reads devices/<t>/light.json
    restarted.restore()
    assert restarted.devices[THINGS[0]].handled == {dep: "FAILED"} and restarted.devices[THINGS[1]].handled == {}
    restarted.poll()
    restarted._pool.shutdown(wait=True)
    # reported once each: the damaged turbine applied it again, and its FAILED execution stayed as it was
    assert [e["detail"]["coreDeviceExecutionStatus"] for e in events] == ["FAILED", "FAILED"]
    assert {e.thing: e.status for e in gg.executions(dep)} == dict.fromkeys(THINGS[:2], "FAILED")


def test_the_rollout_rate_and_the_full_device_count_are_checked(tmp_path: Path, world: Any) -> None:
    gg, _ = world
    assert job_configuration(200)["jobExecutionsRolloutConfig"] == {"maximumPerMinute": 200}
    assert job_configuration()["abortConfig"] == IOT_JOB_CONFIGURATION["abortConfig"]  # only the rate changes
    for bad in (0, 1001, True, 2.5):
        with pytest.raises(ConfigurationError, match="maximumPerMinute"):
            job_configuration(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="full_devices must be between 0 and the fleet size 5, got 9"):
        Fleet(tmp_path / "home", gg, size=5, full_devices=9)
    fleet = Fleet(tmp_path / "home", gg, size=200)
    assert (len(fleet.full_things), len(fleet.light_things)) == (3, 197)
    assert len(Fleet(tmp_path / "home", gg, size=10).light_things) == 0  # small fleets stay full
    assert len(Fleet(tmp_path / "home", gg, size=200, source="modbus").light_things) == 0  # light needs the simulator
