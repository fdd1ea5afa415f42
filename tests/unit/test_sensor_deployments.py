"""How the local stack deploys nacelle.sensors to each device (nacelle/local/edge/sensor_sources.py): one deployment
to the thing itself, idempotent across restarts, replaced when the configuration changes (also back to an earlier
one), withdrawn when the stack runs the device with its simulator again."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from nacelle.local.adapters.greengrass import LocalGreengrass
from nacelle.local.edge.sensor_sources import (
    check_deployable,
    controller_port,
    deploy_sensors,
    sensors_configuration,
    withdraw_sensors,
)
from shared.components import SENSORS_COMPONENT
from shared.errors import ConfigurationError

GROUP = "nacelle-fleet"
THING = "turbine-01"


@pytest.fixture
def gg(tmp_path: Path) -> LocalGreengrass:
    gg = LocalGreengrass(tmp_path / "greengrass.db")
    gg.ensure_thing_group(GROUP)
    for thing in (THING, "turbine-02"):
        gg.add_thing(thing, GROUP)
    for name in (SENSORS_COMPONENT, "nacelle.detector"):
        gg.create_component_version({"RecipeFormatVersion": "2020-01-25", "ComponentName": name,
                                     "ComponentVersion": "1.0.0"})
    return gg


def _effective(gg: LocalGreengrass, thing: str = THING) -> dict[str, object]:
    """What the device runs once it applied everything handed to it."""
    while (target := gg.target_for(thing)) is not None and target.deployment_id not in {
            e.deployment_id for e in gg.list_effective_deployments(thing) if e.execution_status == "SUCCEEDED"}:
        gg.report(thing, target.deployment_id, "SUCCEEDED")
    return {} if target is None else dict(target.effective_components())


def test_the_same_configuration_is_the_same_deployment(gg: LocalGreengrass) -> None:
    a, b = sensors_configuration(THING, "modbus", 5020), sensors_configuration(THING, "modbus", 5021)
    first = deploy_sensors(gg, THING, "1.0.0", a)
    assert deploy_sensors(gg, THING, "1.0.0", a) == first  # a restarted stack (or a retry) redeploys nothing
    (deployment,) = gg.list_deployments(thing=THING)
    assert deployment.target_arn.endswith(f":thing/{THING}")
    update = deployment.components[SENSORS_COMPONENT]["configurationUpdate"]
    assert update["reset"] == [""] and json.loads(update["merge"]) == a  # exactly this configuration, on defaults
    _effective(gg)
    second = deploy_sensors(gg, THING, "1.0.0", b)
    back = deploy_sensors(gg, THING, "1.0.0", a)  # back to the first: a new deployment, not the superseded one
    assert len({first, second, back}) == 3
    assert [d.status for d in gg.list_deployments(thing=THING)] == ["ACTIVE", "INACTIVE", "INACTIVE"]
    merge = _effective(gg)[SENSORS_COMPONENT]["configurationUpdate"]  # type: ignore[index]
    assert json.loads(merge["merge"])["modbus"]["port"] == 5020
    assert gg.list_deployments(thing="turbine-02") == []  # another device gets nothing


def test_the_sim_source_withdraws_the_sensors_and_leaves_the_rollout(gg: LocalGreengrass) -> None:
    assert withdraw_sensors(gg, THING) is None  # never deployed: nothing created (the default path)
    assert withdraw_sensors(gg, "turbine-99") is None  # not even known
    group = gg.create_deployment(gg.thing_group_arn(GROUP), "rollout", {"nacelle.detector": {
        "componentVersion": "1.0.0"}}, {}, {}, "rollout")
    deploy_sensors(gg, THING, "1.0.0", sensors_configuration(THING, "opcua", 4840))
    assert set(_effective(gg)) == {"nacelle.detector", SENSORS_COMPONENT}
    empty = withdraw_sensors(gg, THING)
    assert empty is not None and gg.get_deployment(empty).components == {}
    assert _effective(gg) == {"nacelle.detector": {"componentVersion": "1.0.0"}}  # the rollout's stays
    assert withdraw_sensors(gg, THING) is None  # already withdrawn
    assert gg.get_deployment(group).status == "ACTIVE"  # turbine-02 has not applied it: the group's is untouched


def test_the_controller_keeps_its_port_while_it_is_free(tmp_path: Path) -> None:
    port = controller_port(tmp_path, THING)
    assert controller_port(tmp_path, THING) == port
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        assert controller_port(tmp_path, THING) != port  # something else listens there now: another one
    (tmp_path / "devices" / THING / "sensors" / "controller-port").write_text("not a port\n")
    assert 0 < controller_port(tmp_path, THING) < 65536


def test_a_protocol_source_needs_the_sensors_wheels(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from nacelle import components

    monkeypatch.setattr(components, "SENSORS", components.SENSORS.__class__(
        **{**components.SENSORS.__dict__, "wheelhouse": tmp_path / "empty"}))
    with pytest.raises(ConfigurationError, match=r"--source modbus: .*empty has no wheels.*make wheelhouse-sensors"):
        check_deployable("modbus")
    check_deployable("sim")  # the default needs none
    with pytest.raises(ConfigurationError, match="--source must be one of"):
        check_deployable("canbus")
