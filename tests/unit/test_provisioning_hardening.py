"""A turbine's thing holds one device's certificate at a time: the pre-provisioning hook hands out no existing thing
but one an operator marked claimable, one name to one device even when two ask at once; provision-device never
finishes over a certificate it did not issue; decommission-device, killed at any step, is finished by a re-run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest

from nacelle.aws_devices import decommission_device, provision_device
from services.provisioning_hook.app import handle
from shared.aws.dynamodb import DynamoStateStore
from shared.aws.iot_registry import AwsThingRegistry
from shared.errors import ConfigurationError
from shared.ports import StateStore, ThingRegistry
from shared.usecases.provisioning import CLAIMABLE_ATTRIBUTE, RESERVATIONS, ProvisioningDeps
from tests.fakes import MemoryState, MemoryThings
from tests.unit import test_device_provisioning as devices
from tests.unit.test_device_provisioning import POLICY as CORE_POLICY
from tests.unit.test_device_provisioning import (
    REGION,
    STACK,
    Killed,
    Recording,
    attached,
    certificates,
    endpoints,
    provision,
    stubbed_greengrass,
)
from tests.unit.test_provisioning_hook import CANARY, FLEET, NEW_CERT, OTHER_CERT, POLICY, hook_input

moto_iot, iot = devices.moto_iot, devices.iot  # moto's IoT registry, reset for each test

T0 = 1_772_323_200.0
CLAIMABLE = {CLAIMABLE_ATTRIBUTE: "true"}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def allowed(event: dict[str, Any], registry: ThingRegistry, state: StateStore | None = None,
            clock: Clock | None = None) -> bool:
    deps = ProvisioningDeps(registry, state if state is not None else MemoryState(), POLICY, clock or Clock())
    return bool(handle(event, deps)["allowProvisioning"])


# ------------------------------------------------------------------ the hook: no existing thing but a marked one


def test_an_existing_thing_without_a_certificate_is_not_claimable() -> None:
    """provision-device creates the thing a moment before its certificate, and a killed run leaves it so."""
    things = MemoryThings({"wt-07": ()}, groups={"wt-07": frozenset({CANARY})})
    assert not allowed(hook_input("wt-07"), things)


def test_a_thing_of_another_group_is_never_claimable() -> None:
    things = MemoryThings({"gw-ops-1": (), "gw-ops-2": (), "wt-12": ()},
                          {"gw-ops-1": {}, "gw-ops-2": CLAIMABLE, "wt-12": CLAIMABLE},
                          {"gw-ops-1": frozenset({"ops-admin"}), "gw-ops-2": frozenset({"ops-admin"}),
                           "wt-12": frozenset({CANARY, "ops-admin"})})
    for thing in ("gw-ops-1", "gw-ops-2", "wt-12"):  # the template would keep ops-admin: refused even if marked
        assert not allowed(hook_input(thing), things), thing


def test_a_thing_an_operator_marked_claimable_is_claimable_into_its_own_group_only() -> None:
    things = MemoryThings({"wt-12": (), "wt-13": ()}, {"wt-12": CLAIMABLE, "wt-13": {CLAIMABLE_ATTRIBUTE: "yes"}},
                          {"wt-12": frozenset({CANARY}), "wt-13": frozenset({CANARY})})
    assert not allowed(hook_input("wt-12", FLEET), things)  # the template would leave it in canary
    assert not allowed(hook_input("wt-13"), things)  # exactly "true"
    assert allowed(hook_input("wt-12"), things)
    marked_with_a_certificate = MemoryThings({"wt-12": (OTHER_CERT,)}, {"wt-12": CLAIMABLE},
                                             {"wt-12": frozenset({CANARY})})
    assert not allowed(hook_input("wt-12"), marked_with_a_certificate)


# ------------------------------------------------------------------ the hook: one name, one device


def test_two_devices_asking_for_one_new_name_at_once_get_one_yes() -> None:
    things, state, clock = MemoryThings(), MemoryState(), Clock()  # neither sees a thing in the registry
    assert allowed(hook_input("wt-20"), things, state, clock)
    assert not allowed(hook_input("wt-20", certificateId=OTHER_CERT), things, state, clock)
    assert allowed(hook_input("wt-20"), things, state, clock)  # the winner's retry
    assert state.get(RESERVATIONS, "wt-20") == {"pk": RESERVATIONS, "sk": "wt-20", "certificate_id": NEW_CERT,
                                                "expires_at": int(T0 + POLICY.reservation_s)}


def test_an_expired_reservation_is_taken_over_once() -> None:
    """Its RegisterThing never ran (the registry has no thing): after the reservation, the name is free again."""
    things, state, clock = MemoryThings(), MemoryState(), Clock()
    assert allowed(hook_input("wt-20"), things, state, clock)
    clock.now += POLICY.reservation_s + 1
    third = "d" * 64
    assert allowed(hook_input("wt-20", certificateId=OTHER_CERT), things, state, clock)
    assert not allowed(hook_input("wt-20"), things, state, clock)
    assert not allowed(hook_input("wt-20", certificateId=third), things, state, clock)


def test_the_race_on_the_aws_adapters(iot: Any) -> None:
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    dynamodb.create_table(TableName="state", BillingMode="PAY_PER_REQUEST", KeySchema=[
        {"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                              {"AttributeName": "sk", "AttributeType": "S"}])
    deps = ProvisioningDeps(AwsThingRegistry(iot), DynamoStateStore("state", dynamodb), POLICY, Clock())
    assert set(POLICY.groups) == set(STACK.groups.values())
    event = hook_input("wt-20")
    assert handle(event, deps)["allowProvisioning"]
    assert not handle({**event, "certificateId": OTHER_CERT}, deps)["allowProvisioning"]
    assert handle(event, deps)["allowProvisioning"]


# ------------------------------------------------------------------ provision-device: no foreign certificate


def foreign_certificate(iot: Any, thing: str) -> str:
    """What a claim holder's RegisterThing leaves: its own certificate, active, on the thing."""
    created = iot.create_keys_and_certificate(setAsActive=True)
    iot.attach_thing_principal(thingName=thing, principal=created["certificateArn"])
    return str(created["certificateId"])


def test_a_rerun_refuses_a_certificate_it_did_not_issue_and_rotate_replaces_it(iot: Any, tmp_path: Path) -> None:
    mine = provision(iot, tmp_path).certificate_id
    other = foreign_certificate(iot, "wt-07")
    with pytest.raises(ConfigurationError, match=rf"thing wt-07 .*{other}.*decommission-device wt-07.*--rotate"):
        provision(iot, tmp_path)
    done = provision(iot, tmp_path, rotate=True)
    assert set(done.retired) == {mine, other}
    assert certificates(iot) == {mine: "INACTIVE", other: "INACTIVE", done.certificate_id: "ACTIVE"}
    assert CLAIMABLE_ATTRIBUTE not in iot.describe_thing(thingName="wt-07")["attributes"]


def test_an_interrupted_run_is_not_finished_over_another_bundles_certificate(iot: Any, tmp_path: Path) -> None:
    with pytest.raises(Killed):
        provision_device(Recording(iot, ("attach_policy", 1)), STACK, endpoints(iot, STACK), "wt-08", "canary",
                         tmp_path / "a")
    (pending,) = certificates(iot)
    other = provision(iot, tmp_path / "b", thing="wt-08").certificate_id
    with pytest.raises(ConfigurationError, match=other):
        provision(iot, tmp_path / "a", thing="wt-08")
    assert certificates(iot) == {pending: "INACTIVE", other: "ACTIVE"} and attached(iot, "wt-08") == [other]


class AttachesMeanwhile(Recording):
    """A claim holder's certificate appears on the thing while this run holds it without an active one."""

    def update_certificate(self, **kwargs: Any) -> Any:
        if kwargs["newStatus"] == "ACTIVE":
            foreign_certificate(self._client, "wt-07")
        return self._client.update_certificate(**kwargs)


def test_a_certificate_attached_during_the_run_is_refused_at_its_end(iot: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="also holds active certificate"):
        provision_device(AttachesMeanwhile(iot), STACK, endpoints(iot, STACK), "wt-07", "canary", tmp_path)
    assert not (tmp_path / "wt-07" / "config.yaml").exists()


# ------------------------------------------------------------------ decommission-device, killed anywhere


class DiesBefore(Recording):
    """Recording that also dies before a paginated call (ListAttachedPolicies is one)."""

    def __getattr__(self, name: str) -> Any:
        if name == "get_paginator" and self._die:
            die = self._die[0]

            def paginator(operation: str) -> Any:
                if operation == die:
                    raise Killed(operation)
                return self._client.get_paginator(operation)
            return paginator
        return super().__getattr__(name)


STEPS = ["update_thing", "update_certificate", "list_attached_policies", "detach_policy", "detach_thing_principal",
         "delete_certificate", "delete_thing"]


@pytest.mark.parametrize("step", STEPS)
def test_a_decommissioning_killed_at_any_step_is_finished_by_running_it_again(iot: Any, tmp_path: Path,
                                                                            step: str) -> None:
    cert = provision(iot, tmp_path).certificate_id
    iot.update_thing(thingName="wt-07", attributePayload={"attributes": CLAIMABLE, "merge": True})
    gg, stub = stubbed_greengrass()
    for _ in range(2):
        stub.add_client_error("delete_core_device", "ResourceNotFoundException")
    with stub:
        with pytest.raises(Killed):
            decommission_device(DiesBefore(iot, (step, 1)), gg, "wt-07")
        assert not allowed(hook_input("wt-07"), AwsThingRegistry(iot))  # meanwhile claimable by no one
        done = decommission_device(iot, gg, "wt-07")
    assert "thing wt-07 deleted" in done
    assert iot.list_things()["things"] == [] and certificates(iot) == {}, cert
    arn = f"arn:aws:iot:{REGION}:123456789012:cert/{cert}"
    assert iot.list_attached_policies(target=arn)["policies"] == []


def test_decommissioning_records_the_certificates_first_and_deletes_the_thing_last(iot: Any,
                                                                                  tmp_path: Path) -> None:
    cert = provision(iot, tmp_path).certificate_id
    extra = [foreign_certificate(iot, "wt-07") for _ in range(13)]  # more than one attribute value holds
    for c in extra:
        arn = iot.describe_certificate(certificateId=c)["certificateDescription"]["certificateArn"]
        iot.attach_policy(policyName=CORE_POLICY, target=arn)
    recording = Recording(iot)
    gg, stub = stubbed_greengrass()
    stub.add_client_error("delete_core_device", "ResourceNotFoundException")
    with stub:
        decommission_device(recording, gg, "wt-07")
    assert iot.list_things()["things"] == [] and certificates(iot) == {}
    order = [(name, kw.get("certificateId") or kw.get("principal", kw.get("target", ""))[-64:])
             for name, kw in recording.calls]
    first = [o for o in order if o[1] == cert or o[0] in ("update_thing", "delete_thing")]
    names = [n for n, _ in first]
    assert names.index("update_thing") < names.index("update_certificate") < names.index("detach_policy") < \
        names.index("detach_thing_principal") < names.index("delete_certificate") < names.index("delete_thing")
    assert names[-1] == "delete_thing"
