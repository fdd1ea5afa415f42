"""ThingRegistry contract: the AWS adapter (moto's IoT registry) and the in-memory double answer alike."""

from __future__ import annotations

import boto3
import pytest

from shared.aws.iot_registry import AwsThingRegistry
from shared.ports import ThingRegistry
from tests.fakes import MemoryThings

Things = dict[str, tuple[str, ...]]


@pytest.fixture(params=["iot", "memory"])
def registry(request: pytest.FixtureRequest) -> tuple[ThingRegistry, Things]:
    """Three things: wt-01 with two certificates, wt-02 with none, wt-03 with one; and what each holds."""
    if request.param == "memory":
        things: Things = {"wt-01": ("f" * 64, "a" * 64), "wt-02": (), "wt-03": ("c" * 64,)}
        return MemoryThings(things), {k: tuple(sorted(v)) for k, v in things.items()}
    request.getfixturevalue("aws")
    iot = boto3.client("iot")
    ids: dict[str, list[str]] = {}
    for thing, count in (("wt-01", 2), ("wt-02", 0), ("wt-03", 1)):
        iot.create_thing(thingName=thing)
        ids[thing] = []
        for _ in range(count):
            cert = iot.create_keys_and_certificate(setAsActive=True)
            iot.attach_thing_principal(thingName=thing, principal=cert["certificateArn"])
            ids[thing].append(cert["certificateId"])
    return AwsThingRegistry(), {k: tuple(sorted(v)) for k, v in ids.items()}


def test_a_thing_lists_its_certificates_sorted_and_a_missing_thing_is_none(
        registry: tuple[ThingRegistry, Things]) -> None:
    things, expected = registry
    for thing in ("wt-01", "wt-02", "wt-03"):
        assert things.thing_certificates(thing) == expected[thing]
    assert len(expected["wt-01"]) == 2 and things.thing_certificates("wt-02") == ()
    assert things.thing_certificates("wt-04") is None
