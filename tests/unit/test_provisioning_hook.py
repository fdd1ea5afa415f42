"""Fleet provisioning's pre-provisioning hook: only well-named devices, only into the canary or fleet group, and never
a second certificate for an existing turbine; and the provisioning template it guards (template.yaml)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from services.provisioning_hook.app import ProvisioningHookSettings, handle
from shared import settings as defaults
from shared.errors import ConfigurationError
from shared.usecases.provisioning import (
    GROUP_PARAMETER,
    SERIAL_PARAMETER,
    THING_NAME_PARAMETER,
    ProvisioningDeps,
    ProvisioningPolicy,
    ProvisioningRequest,
    decide,
)
from tests.fakes import MemoryState, MemoryThings
from tests.unit.test_template import load_template, resources

CANARY, FLEET = "nacelle-canary", "nacelle-fleet"
POLICY = ProvisioningPolicy(defaults.DEVICE_NAME_PATTERN, defaults.DEVICE_SERIAL_PATTERN, frozenset({CANARY, FLEET}))
NEW_CERT, OTHER_CERT = "a" * 64, "b" * 64


def hook_input(thing: Any = "wt-07", group: Any = CANARY, serial: Any = "SN-0042", **extra: Any) -> dict[str, Any]:
    parameters = {THING_NAME_PARAMETER: thing, GROUP_PARAMETER: group, SERIAL_PARAMETER: serial}
    return {"claimCertificateId": "c" * 64, "certificateId": NEW_CERT, "certificatePem": "-----BEGIN CERTIFICATE-----",
            "templateArn": "arn:aws:iot:eu-west-1:123456789012:provisioningtemplate/nacelle-greengrass",
            "clientId": "provision-wt-07", "parameters": {k: v for k, v in parameters.items() if v is not None},
            **extra}


def hook_deps(registry: MemoryThings | None = None) -> ProvisioningDeps:
    return ProvisioningDeps(registry or MemoryThings(), MemoryState(), POLICY)


def allowed(event: dict[str, Any], registry: MemoryThings | None = None) -> bool:
    response = handle(event, hook_deps(registry))
    assert set(response) == {"allowProvisioning"}  # no parameter overrides: the device's checked values stand
    return bool(response["allowProvisioning"])


def test_a_new_well_named_device_joins_the_canary_or_the_fleet() -> None:
    assert allowed(hook_input()) and allowed(hook_input("turbine-01", FLEET, "0b6f.3c_9"))
    assert allowed(hook_input("twin-i-0a1b2c3d4e5f60718", FLEET, "i-0a1b2c3d4e5f60718"))


@pytest.mark.parametrize("thing", [
    "WT-07",  # upper case: `WT-07` and `wt-07` would be two turbines
    "wt:07", "wt/07", "../wt-07", "wt 07", "wt-07\n", "-wt", "", "x" * 65, "wt-07#", "tür-1", 7, None,
], ids=repr)
def test_a_bad_thing_name_is_refused(thing: Any) -> None:
    assert not allowed(hook_input(thing=thing))


@pytest.mark.parametrize("serial", ["", "a b", "SN\n1", "-lead", "x" * 65, "sn;rm -rf", 42, None], ids=repr)
def test_a_bad_serial_is_refused(serial: Any) -> None:
    assert not allowed(hook_input(serial=serial))


@pytest.mark.parametrize("group", ["nacelle-admin", "", " nacelle-canary", "nacelle-canary ", "NACELLE-CANARY",
                                   "nacelle-twins-sensors-sim", ["nacelle-canary"], None], ids=repr)
def test_a_foreign_group_is_refused(group: Any) -> None:
    assert not allowed(hook_input(group=group))


def test_an_existing_turbine_is_never_given_another_certificate() -> None:
    """The claim is shared by every device; it must not let one become a turbine that already exists."""
    registry = MemoryThings({"wt-07": (OTHER_CERT,), "wt-08": (OTHER_CERT, NEW_CERT)})
    assert not allowed(hook_input("wt-07"), registry)
    assert not allowed(hook_input("wt-08"), registry)  # its own certificate among others: still not only its own
    assert registry.reads == ["wt-07", "wt-08"]


def test_the_same_request_again_gets_the_same_yes() -> None:
    """RegisterThing retried after its answer was lost: the thing exists with exactly this certificate."""
    registry = MemoryThings({"wt-07": (NEW_CERT,)})
    assert allowed(hook_input("wt-07"), registry) and allowed(hook_input("wt-07"), registry)


@pytest.mark.parametrize("event", [
    None, [], "x", {}, {"parameters": {}},
    {**hook_input(), "parameters": "ThingName=wt-07"},
    {k: v for k, v in hook_input().items() if k != "certificateId"},
    {**hook_input(), "certificateId": ""},
    hook_input(thing=None), hook_input(group=None), hook_input(serial=None),
], ids=lambda e: json.dumps(e)[:40])
def test_malformed_input_is_refused_not_raised(event: Any) -> None:
    assert handle(event, hook_deps()) == {"allowProvisioning": False}


def test_a_refusal_names_the_parameter_and_the_reason() -> None:
    request = ProvisioningRequest.from_event(hook_input(group="nacelle-admin"))
    decision = decide(request, hook_deps())
    assert not decision.allowed and GROUP_PARAMETER in decision.reason and "nacelle-admin" in decision.reason
    decision = decide(ProvisioningRequest.from_event(hook_input("wt-07")), hook_deps(MemoryThings({"wt-07": ("d",)})))
    assert "already exists" in decision.reason and "decommission" in decision.reason


def test_the_settings_build_the_policy_and_refuse_a_broken_pattern() -> None:
    env = {"NACELLE_CANARY_GROUP": CANARY, "NACELLE_FLEET_GROUP": FLEET, "NACELLE_STATE_TABLE": "state"}
    assert ProvisioningHookSettings.from_env(env).policy() == POLICY
    with pytest.raises(ConfigurationError, match="not a regular expression"):
        ProvisioningHookSettings.from_env({**env, "NACELLE_DEVICE_NAME_PATTERN": "^[a-z"}).policy()


# ------------------------------------------------------------------ the template around it


def template_body(name: str = "GreengrassProvisioningTemplate") -> dict[str, Any]:
    """The provisioning template's body as deployed (stack `nacelle`)."""
    text = resources("AWS::IoT::ProvisioningTemplate")[name]["Properties"]["TemplateBody"]["Fn::Sub"]
    refs = {"CoreDevicePolicy": "nacelle-CoreDevicePolicy-X"}
    return json.loads(re.sub(r"\$\{([^}]+)\}", lambda m: refs[m.group(1)], text))


def test_the_provisioning_template_creates_a_hooked_core_device_with_the_core_device_policy() -> None:
    props = resources("AWS::IoT::ProvisioningTemplate")["GreengrassProvisioningTemplate"]["Properties"]
    assert props["PreProvisioningHook"] == {"TargetArn": {"Fn::GetAtt": ["ProvisioningHookFunction", "Arn"]},
                                            "PayloadVersion": "2020-04-01"}
    body = template_body()
    assert set(body["Parameters"]) == {THING_NAME_PARAMETER, GROUP_PARAMETER, SERIAL_PARAMETER,
                                       "AWS::IoT::Certificate::Id"}
    thing = body["Resources"]["thing"]
    assert thing["Properties"]["ThingName"] == {"Ref": THING_NAME_PARAMETER}
    assert thing["Properties"]["ThingGroups"] == [{"Ref": GROUP_PARAMETER}]  # the one group the hook checked
    assert thing["OverrideSettings"]["ThingGroups"] == "DO_NOTHING"
    assert body["Resources"]["policy"]["Properties"] == {"PolicyName": "nacelle-CoreDevicePolicy-X"}
    assert body["Resources"]["certificate"]["Properties"]["CertificateId"] == {"Ref": "AWS::IoT::Certificate::Id"}
    # the hook may be invoked by AWS IoT of this account only, and is optional with the whole feature
    permission = resources("AWS::Lambda::Permission")["ProvisioningHookPermission"]
    assert permission["Properties"]["SourceAccount"] == {"Ref": "AWS::AccountId"}
    parameters = load_template()["Parameters"]
    assert parameters["FleetProvisioning"]["Default"] == "enabled"
    for name in ("ProvisioningHookFunction", "ProvisioningRole", "GreengrassProvisioningTemplate",
                 "ClaimCertificatePolicy", "ProvisioningHookPermission"):
        assert load_template()["Resources"][name]["Condition"] == "HasFleetProvisioning", name


def test_the_provisioning_role_reaches_only_the_rollout_groups_and_the_core_device_policy() -> None:
    role = resources("AWS::IAM::Role")["ProvisioningRole"]["Properties"]
    statements = [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]
    groups = [r for s in statements if "iot:AddThingToThingGroup" in s["Action"] for r in s["Resource"]]
    for group in ("CanaryThingGroup", "FleetThingGroup"):
        assert {"Fn::GetAtt": [group, "Arn"]} in groups
    assert not [r for r in groups if "thinggroup/" in json.dumps(r)]  # no other group, no group wildcard
    policies = [s["Resource"] for s in statements if "iot:GetPolicy" in s["Action"]]
    assert policies == [{"Fn::Sub": "arn:${AWS::Partition}:iot:${AWS::Region}:${AWS::AccountId}:policy/"
                                    "${CoreDevicePolicy}"}]
    actions = {a for s in statements for a in s["Action"]}
    assert not actions & {"iot:CreatePolicy", "iot:DeleteThing", "iot:CreateKeysAndCertificate", "iot:Publish"}
