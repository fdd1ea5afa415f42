"""The local Greengrass's thing deployments and how a device merges them with its group's, as Greengrass v2 does:
a new deployment supersedes only its own target's; a device applies its targets' deployments oldest first and runs
the one it applies plus, per other target, the newest one it applied successfully."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from nacelle.local.adapters.greengrass import LocalGreengrass
from nacelle.local.adapters.greengrass_model import DeviceTarget
from nacelle.local.edge.nucleus import Nucleus
from shared.errors import Conflict, NotFound

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
GROUP = "nacelle-canary"
GROUP_ARN = f"arn:aws:iot:local:000000000000:thinggroup/{GROUP}"
POLICIES = {"failureHandlingPolicy": "ROLLBACK"}
SENSORS = {"nacelle.sensors": {"componentVersion": "1.0.0", "configurationUpdate": {"merge": '{"source": "modbus"}'}}}


def _thing_arn(thing: str) -> str:
    return f"arn:aws:iot:local:000000000000:thing/{thing}"


def _model(version: str) -> dict[str, Any]:
    return {"nacelle.model": {"componentVersion": version}, "nacelle.detector": {"componentVersion": "1.0.0"}}


@pytest.fixture
def gg(tmp_path: Path) -> LocalGreengrass:
    gg = LocalGreengrass(tmp_path / "greengrass.db", clock=lambda: T0)
    gg.ensure_thing_group(GROUP)
    for thing in ("turbine-01", "turbine-02"):
        gg.add_thing(thing, GROUP)
    for name, version in (("nacelle.model", "7.0.0"), ("nacelle.model", "8.0.0"), ("nacelle.detector", "1.0.0"),
                          ("nacelle.sensors", "1.0.0"), ("nacelle.sensors", "2.0.0")):
        gg.create_component_version({"RecipeFormatVersion": "2020-01-25", "ComponentName": name,
                                     "ComponentVersion": version})
    return gg


def _apply(gg: LocalGreengrass, thing: str, status: str = "SUCCEEDED") -> DeviceTarget:
    """What the nucleus does with the target it is handed: report IN_PROGRESS, then the outcome."""
    target = gg.target_for(thing)
    assert target is not None
    gg.report(thing, target.deployment_id, "IN_PROGRESS")
    gg.report(thing, target.deployment_id, status)
    return target


def _sensors(gg: LocalGreengrass, thing: str = "turbine-01", token: str = "s1",
             components: dict[str, Any] | None = None) -> str:
    return gg.create_deployment(_thing_arn(thing), f"{thing}-sensors", components or SENSORS, POLICIES, {}, token)


def _rollout(gg: LocalGreengrass, version: str, token: str) -> str:
    return gg.create_deployment(GROUP_ARN, f"canary-{version}", _model(version), POLICIES, {}, token)


def test_a_group_rollout_keeps_the_thing_deployments_components(gg: LocalGreengrass) -> None:
    thing_dep = _sensors(gg)
    first = _apply(gg, "turbine-01")
    assert (first.deployment_id, first.target_arn, first.others) == (thing_dep, _thing_arn("turbine-01"), {})
    assert first.effective_components() == SENSORS
    assert gg.get_deployment(thing_dep).status == "COMPLETED"  # its one target succeeded

    v7 = _rollout(gg, "7.0.0", "r7")
    second = _apply(gg, "turbine-01")
    assert second.deployment_id == v7
    assert second.components == _model("7.0.0")  # the deployment as created
    assert second.others == {_thing_arn("turbine-01"): SENSORS}
    assert second.effective_components() == {**_model("7.0.0"), **SENSORS}

    v8 = _rollout(gg, "8.0.0", "r8")  # the next rollout supersedes the group's deployment only
    assert gg.get_deployment(v7).status == "INACTIVE"
    assert gg.get_deployment(thing_dep).status == "COMPLETED"
    third = _apply(gg, "turbine-01")
    assert third.deployment_id == v8
    assert third.effective_components() == {**_model("8.0.0"), **SENSORS}
    assert [(e.deployment_id, e.target_arn) for e in gg.list_effective_deployments("turbine-01")] == [
        (v8, GROUP_ARN), (v7, GROUP_ARN), (thing_dep, _thing_arn("turbine-01"))]


def test_a_thing_deployment_after_the_rollout_keeps_the_groups_components(gg: LocalGreengrass) -> None:
    v7 = _rollout(gg, "7.0.0", "r7")
    _apply(gg, "turbine-01")
    thing_dep = _sensors(gg)
    target = _apply(gg, "turbine-01")
    assert target.deployment_id == thing_dep
    assert target.effective_components() == {**_model("7.0.0"), **SENSORS}
    assert gg.get_deployment(v7).status == "ACTIVE"  # turbine-02 has not applied it yet: not superseded either


def test_pending_deployments_are_applied_oldest_first(gg: LocalGreengrass) -> None:
    thing_dep = _sensors(gg)
    v7 = _rollout(gg, "7.0.0", "r7")
    first = gg.target_for("turbine-01")
    assert first is not None and first.deployment_id == thing_dep
    assert gg.target_for("turbine-01") == first  # a poll again (or a restarted nucleus) gets the same one
    gg.report("turbine-01", thing_dep, "SUCCEEDED")
    second = gg.target_for("turbine-01")
    assert second is not None and second.deployment_id == v7
    assert second.others == {_thing_arn("turbine-01"): SENSORS}
    gg.report("turbine-01", v7, "SUCCEEDED")
    newest = gg.target_for("turbine-01")  # nothing left to apply: the newest, already applied
    assert newest is not None and newest.deployment_id == v7


def test_a_failed_deployment_is_not_merged_into_later_ones(gg: LocalGreengrass) -> None:
    """The device rolled it back, so a target's components are those of its newest deployment that succeeded."""
    _sensors(gg, token="s1")
    _apply(gg, "turbine-01", "SUCCEEDED")
    _sensors(gg, token="s2", components={"nacelle.sensors": {"componentVersion": "2.0.0"}})
    _apply(gg, "turbine-01", "FAILED")
    _rollout(gg, "7.0.0", "r7")
    target = gg.target_for("turbine-01")
    assert target is not None
    assert target.effective_components() == {**_model("7.0.0"), **SENSORS}  # 1.0.0, not the failed 2.0.0


def test_a_thing_deployment_reaches_its_thing_only(gg: LocalGreengrass) -> None:
    thing_dep = _sensors(gg)
    assert gg.target_for("turbine-02") is None
    with pytest.raises(NotFound, match="turbine-02 is not a target"):
        gg.report("turbine-02", thing_dep, "SUCCEEDED")
    assert [e.thing for e in gg.executions(thing_dep)] == []
    _rollout(gg, "7.0.0", "r7")
    other = gg.target_for("turbine-02")
    assert other is not None and other.others == {} and other.effective_components() == _model("7.0.0")


def test_thing_deployments_are_idempotent_and_supersede_their_own_target_only(gg: LocalGreengrass) -> None:
    first = _sensors(gg, token="s1")
    assert _sensors(gg, token="s1") == first  # the same client token and request
    with pytest.raises(Conflict, match="clientToken s1"):
        _sensors(gg, token="s1", components={"nacelle.sensors": {"componentVersion": "2.0.0"}})
    v7 = _rollout(gg, "7.0.0", "r7")
    other = _sensors(gg, "turbine-02", token="s-02")
    second = _sensors(gg, token="s2", components={"nacelle.sensors": {"componentVersion": "2.0.0"}})
    assert (gg.get_deployment(first).status, gg.get_deployment(second).revision) == ("INACTIVE", "2")
    assert {gg.get_deployment(d).status for d in (v7, other, second)} == {"ACTIVE"}
    with pytest.raises(NotFound, match="no thing turbine-99"):
        _sensors(gg, "turbine-99", token="s-99")


def test_one_component_two_versions_from_two_targets_is_a_conflict(gg: LocalGreengrass) -> None:
    _sensors(gg)
    _apply(gg, "turbine-01")
    gg.create_deployment(GROUP_ARN, "group-sensors", {"nacelle.sensors": {"componentVersion": "2.0.0"}}, POLICIES,
                         {}, "g2")
    target = gg.target_for("turbine-01")
    assert target is not None
    with pytest.raises(Conflict, match=r"nacelle.sensors: .*thing/turbine-01 deploys version 1.0.0 and "
                                       r".*thinggroup/nacelle-canary version 2.0.0"):
        target.effective_components()
    same = gg.create_deployment(GROUP_ARN, "group-sensors-1", {"nacelle.sensors": {"componentVersion": "1.0.0"}},
                                POLICIES, {}, "g1")
    target = gg.target_for("turbine-01")
    assert target is not None and target.deployment_id == same
    assert target.effective_components() == {"nacelle.sensors": {"componentVersion": "1.0.0"}}  # its own update


def test_a_device_fails_a_deployment_its_targets_cannot_both_have(gg: LocalGreengrass, tmp_path: Path) -> None:
    """The nucleus reports FAILED (as Greengrass: the version requirements cannot be met), naming both targets, and
    starts nothing."""
    _sensors(gg)
    _apply(gg, "turbine-01")  # as if applied: nacelle.sensors 1.0.0 from the thing's deployment
    clash = gg.create_deployment(GROUP_ARN, "group-sensors", {"nacelle.sensors": {"componentVersion": "2.0.0"}},
                                 POLICIES, {}, "g2")
    nucleus = Nucleus("turbine-01", tmp_path / "home", gg)
    target = gg.target_for("turbine-01")
    assert target is not None and target.deployment_id == clash
    assert nucleus.apply(target) == "FAILED"
    (execution,) = gg.executions(clash)
    assert execution.status == "FAILED"
    assert "thing/turbine-01 deploys version 1.0.0" in execution.reason and "version 2.0.0" in execution.reason
    assert execution.error_stack == ("DEPLOYMENT_FAILURE", "COMPONENT_VERSION_REQUIREMENTS_NOT_MET")
    assert nucleus.procs == {} and nucleus.handled == {clash: "FAILED"}  # nothing started; never retried
