"""ThingRegistry contract: the AWS adapter (moto's IoT registry) and the in-memory double answer alike."""

from __future__ import annotations

import boto3
import pytest

from shared.aws.iot_registry import AwsThingRegistry
from shared.ports import ThingRegistry
from tests.fakes import MemoryThings

Things = dict[str, tuple[str, ...]]
ATTRIBUTES, GROUP = {"serial": "SN-1", "nacelle_claimable": "true"}, "nacelle-fleet"


@pytest.fixture(params=["iot", "memory"])
def registry(request: pytest.FixtureRequest) -> tuple[ThingRegistry, Things]:
    """Three things: wt-01 with two certificates, wt-02 with none, wt-03 with one; and what each holds. wt-02 has
    attributes and is in one group."""
    if request.param == "memory":
        things: Things = {"wt-01": ("f" * 64, "a" * 64), "wt-02": (), "wt-03": ("c" * 64,)}
        return (MemoryThings(things, {"wt-02": ATTRIBUTES}, {"wt-02": frozenset({GROUP})}),
                {k: tuple(sorted(v)) for k, v in things.items()})
    request.getfixturevalue("aws")
    iot = boto3.client("iot")
    iot.create_thing_group(thingGroupName=GROUP)
    ids: dict[str, list[str]] = {}
    for thing, count in (("wt-01", 2), ("wt-02", 0), ("wt-03", 1)):
        iot.create_thing(thingName=thing)
        ids[thing] = []
        for _ in range(count):
            cert = iot.create_keys_and_certificate(setAsActive=True)
            iot.attach_thing_principal(thingName=thing, principal=cert["certificateArn"])
            ids[thing].append(cert["certificateId"])
    iot.update_thing(thingName="wt-02", attributePayload={"attributes": ATTRIBUTES})
    iot.add_thing_to_thing_group(thingGroupName=GROUP, thingName="wt-02")
    return AwsThingRegistry(), {k: tuple(sorted(v)) for k, v in ids.items()}


def test_a_thing_lists_its_certificates_sorted_and_a_missing_thing_is_none(
        registry: tuple[ThingRegistry, Things]) -> None:
    things, expected = registry
    for thing in ("wt-01", "wt-02", "wt-03"):
        assert things.thing_certificates(thing) == expected[thing]
    assert len(expected["wt-01"]) == 2 and things.thing_certificates("wt-02") == ()
    assert things.thing_certificates("wt-04") is None


def test_a_thing_has_its_attributes_and_groups_and_a_missing_thing_none(
        registry: tuple[ThingRegistry, Things]) -> None:
    things, _ = registry
    assert things.thing_attributes("wt-02") == ATTRIBUTES and things.thing_groups("wt-02") == {GROUP}
    assert things.thing_attributes("wt-01") == {} and things.thing_groups("wt-01") == frozenset()
    assert things.thing_attributes("wt-04") is None and things.thing_groups("wt-04") == frozenset()
