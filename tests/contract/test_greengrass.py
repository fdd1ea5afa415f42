"""Greengrass contract: AwsGreengrass and LocalGreengrass behave alike.

moto 5.2 does not implement greengrassv2 (every call answers 404 "Not yet implemented"), so the AWS adapter runs on
botocore's Stubber: each test queues the responses AWS gives for the scenario (`h.stub`, a no-op locally), the
Stubber checks every request against them and both request and response against the service model, and the same
assertions then run against both adapters. Device reports (`h.device_reports`) happen on the device side of the
local stand-in; on AWS the ListEffectiveDeployments stub carries them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from nacelle.local.adapters.greengrass import LocalGreengrass
from shared.aws.greengrass import AwsGreengrass
from shared.errors import AdapterError, ConfigurationError, Conflict, NotFound
from shared.ports import Greengrass

REGION = "eu-west-1"
ACCOUNT = "123456789012"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
CANARY = "nacelle-canary"
RECIPE = {"RecipeFormatVersion": "2020-01-25", "ComponentName": "nacelle.model", "ComponentVersion": "7.0.0",
          "Manifests": [{"Platform": {"os": "linux"}, "Artifacts": [
              {"URI": "s3://bucket/components/nacelle.model/7.0.0/bundle.zip", "Unarchive": "ZIP",
               "Digest": "AAAA", "Algorithm": "SHA-256"}]}]}
COMPONENTS = {"nacelle.model": {"componentVersion": "7.0.0"}}
POLICIES = {"failureHandlingPolicy": "ROLLBACK",
            "componentUpdatePolicy": {"action": "NOTIFY_COMPONENTS", "timeoutInSeconds": 60},
            "configurationValidationPolicy": {"timeoutInSeconds": 30}}
JOB = {"jobExecutionsRolloutConfig": {"maximumPerMinute": 50},
       "abortConfig": {"criteriaList": [{"failureType": "FAILED", "action": "CANCEL", "thresholdPercentage": 10,
                                         "minNumberOfExecutedThings": 1}]},
       "timeoutConfig": {"inProgressTimeoutInMinutes": 10}}


class AwsHarness:
    def __init__(self) -> None:
        keys = {"region_name": REGION, "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        gg, iot = boto3.client("greengrassv2", **keys), boto3.client("iot", **keys)
        self.stubbers = {"greengrassv2": Stubber(gg), "iot": Stubber(iot)}
        for stubber in self.stubbers.values():
            stubber.activate()
        self.gg: Greengrass = AwsGreengrass(gg, iot, account=ACCOUNT)
        self.region, self.account = REGION, ACCOUNT

    def _stubber(self, method: str) -> Stubber:
        return self.stubbers["iot" if "thing" in method else "greengrassv2"]

    def stub(self, method: str, params: Mapping[str, Any], response: Mapping[str, Any]) -> None:
        self._stubber(method).add_response(method, dict(response), dict(params))

    def stub_error(self, method: str, code: str, params: Mapping[str, Any], status: int = 400) -> None:
        self._stubber(method).add_client_error(method, code, http_status_code=status, expected_params=dict(params))

    def make_group(self, name: str, things: list[str]) -> None:
        pass  # exists on AWS

    def device_reports(self, thing: str, deployment_id: str, status: str) -> None:
        pass  # the stubbed ListEffectiveDeployments carries it

    def done(self) -> None:
        for stubber in self.stubbers.values():
            stubber.assert_no_pending_responses()


class LocalHarness:
    def __init__(self, path: Path) -> None:
        self.local = LocalGreengrass(path, clock=lambda: T0)
        self.gg: Greengrass = self.local
        self.region, self.account = "local", "000000000000"

    def stub(self, method: str, params: Mapping[str, Any], response: Mapping[str, Any]) -> None:
        pass

    def stub_error(self, method: str, code: str, params: Mapping[str, Any], status: int = 400) -> None:
        pass

    def make_group(self, name: str, things: list[str]) -> None:
        self.local.ensure_thing_group(name)
        for thing in things:
            self.local.add_thing(thing, name)

    def device_reports(self, thing: str, deployment_id: str, status: str) -> None:
        assert self.local.target_for(thing) is not None
        self.local.report(thing, deployment_id, status)

    def done(self) -> None:
        pass


Harness = AwsHarness | LocalHarness


@pytest.fixture(params=["aws", "local"])
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    harness: Harness = AwsHarness() if request.param == "aws" else LocalHarness(tmp_path / "greengrass.db")
    yield harness
    harness.done()


def _component_arn(h: Harness, name: str = "nacelle.model", version: str = "7.0.0") -> str:
    return f"arn:aws:greengrass:{h.region}:{h.account}:components:{name}:versions:{version}"


def _group_arn(h: Harness, name: str = CANARY) -> str:
    arn = f"arn:aws:iot:{h.region}:{h.account}:thinggroup/{name}"
    h.stub("describe_thing_group", {"thingGroupName": name}, {"thingGroupName": name, "thingGroupArn": arn})
    return h.gg.thing_group_arn(name)


def _create_component(h: Harness, recipe: Mapping[str, Any] = RECIPE) -> Any:
    blob = json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()
    arn = _component_arn(h, recipe["ComponentName"], recipe["ComponentVersion"])
    h.stub("create_component_version", {"inlineRecipe": blob},
           {"arn": arn, "componentName": recipe["ComponentName"], "componentVersion": recipe["ComponentVersion"],
            "creationTimestamp": T0, "status": {"componentState": "DEPLOYABLE"}})
    return h.gg.create_component_version(recipe)


def _deploy(h: Harness, target: str, token: str, deployment_id: str, name: str = "nacelle-canary-v7-canary") -> str:
    h.stub("create_deployment", {"targetArn": target, "deploymentName": name, "components": COMPONENTS,
                                 "deploymentPolicies": POLICIES, "iotJobConfiguration": JOB, "clientToken": token},
           {"deploymentId": deployment_id, "iotJobId": "job-" + deployment_id})
    return h.gg.create_deployment(target, name, COMPONENTS, POLICIES, JOB, token)


def _stub_get(h: Harness, deployment_id: str, target: str, status: str, revision: str,
              name: str = "nacelle-canary-v7-canary") -> None:
    h.stub("get_deployment", {"deploymentId": deployment_id},
           {"targetArn": target, "revisionId": revision, "deploymentId": deployment_id, "deploymentName": name,
            "deploymentStatus": status, "components": COMPONENTS, "deploymentPolicies": POLICIES,
            "iotJobConfiguration": JOB, "creationTimestamp": T0, "isLatestForTarget": status == "ACTIVE"})


# -- components -----------------------------------------------------------------------------------------------------


def test_component_version_round_trip(h: Harness) -> None:
    created = _create_component(h)
    assert (created.name, created.version, created.arn) == ("nacelle.model", "7.0.0", _component_arn(h))
    assert created.recipe == RECIPE
    h.stub("get_component", {"arn": _component_arn(h), "recipeOutputFormat": "JSON"},
           {"recipeOutputFormat": "JSON", "recipe": json.dumps(RECIPE).encode()})
    assert h.gg.get_component("nacelle.model", "7.0.0") == created


def test_missing_component_version_is_none(h: Harness) -> None:
    h.stub_error("get_component", "ResourceNotFoundException", {"arn": _component_arn(h, version="8.0.0"),
                                                                "recipeOutputFormat": "JSON"}, 404)
    assert h.gg.get_component("nacelle.model", "8.0.0") is None


def test_component_versions_are_immutable(h: Harness) -> None:
    _create_component(h)
    h.stub_error("create_component_version", "ConflictException", {"inlineRecipe": json.dumps(
        {**RECIPE, "Manifests": []}, sort_keys=True, separators=(",", ":")).encode()}, 409)
    with pytest.raises(Conflict, match=r"nacelle.model@7.0.0"):
        h.gg.create_component_version({**RECIPE, "Manifests": []})


@pytest.mark.parametrize("field", ["ComponentName", "ComponentVersion"])
def test_recipe_without_identity_is_refused(h: Harness, field: str) -> None:
    recipe = {k: v for k, v in RECIPE.items() if k != field}
    with pytest.raises(ConfigurationError, match=field):
        h.gg.create_component_version(recipe)


# -- thing groups ---------------------------------------------------------------------------------------------------


def test_thing_groups(h: Harness) -> None:
    h.make_group(CANARY, ["turbine-02", "turbine-01"])
    assert _group_arn(h) == f"arn:aws:iot:{h.region}:{h.account}:thinggroup/{CANARY}"
    h.stub("list_things_in_thing_group", {"thingGroupName": CANARY}, {"things": ["turbine-02", "turbine-01"]})
    assert h.gg.things_in_group(CANARY) == ["turbine-01", "turbine-02"]


def test_missing_thing_group_is_not_found(h: Harness) -> None:
    h.stub_error("describe_thing_group", "ResourceNotFoundException", {"thingGroupName": "nope"}, 404)
    with pytest.raises(NotFound, match="nope"):
        h.gg.thing_group_arn("nope")
    h.stub_error("list_things_in_thing_group", "ResourceNotFoundException", {"thingGroupName": "nope"}, 404)
    with pytest.raises(NotFound, match="nope"):
        h.gg.things_in_group("nope")


# -- deployments ----------------------------------------------------------------------------------------------------


def _ready(h: Harness) -> str:
    h.make_group(CANARY, ["turbine-01"])
    _create_component(h)
    return _group_arn(h)


def test_create_and_get_deployment(h: Harness) -> None:
    target = _ready(h)
    dep = _deploy(h, target, "a" * 64, "0b0e7a52-3c0e-4c8e-9d55-0f6c2b7a1d10")
    _stub_get(h, dep, target, "ACTIVE", "1")
    got = h.gg.get_deployment(dep)
    assert (got.deployment_id, got.name, got.target_arn, got.status) == (
        dep, "nacelle-canary-v7-canary", target, "ACTIVE")
    assert got.components == COMPONENTS
    assert got.created_at == T0
    assert got.revision == "1"


def test_same_client_token_gives_the_same_deployment(h: Harness) -> None:
    target = _ready(h)
    first = _deploy(h, target, "b" * 64, "1b0e7a52-3c0e-4c8e-9d55-0f6c2b7a1d10")
    assert _deploy(h, target, "b" * 64, first) == first
    _stub_get(h, first, target, "ACTIVE", "1")
    assert h.gg.get_deployment(first).revision == "1"  # no second revision


def test_a_new_deployment_supersedes_the_previous(h: Harness) -> None:
    target = _ready(h)
    first = _deploy(h, target, "c" * 64, "2b0e7a52-3c0e-4c8e-9d55-0f6c2b7a1d10")
    second = _deploy(h, target, "d" * 64, "3b0e7a52-3c0e-4c8e-9d55-0f6c2b7a1d10", name="nacelle-canary-v8-canary")
    assert second != first
    _stub_get(h, first, target, "INACTIVE", "1")
    _stub_get(h, second, target, "ACTIVE", "2", name="nacelle-canary-v8-canary")
    assert h.gg.get_deployment(first).status == "INACTIVE"
    assert h.gg.get_deployment(second).status == "ACTIVE"


def test_cancel_deployment(h: Harness) -> None:
    target = _ready(h)
    dep = _deploy(h, target, "e" * 64, "4b0e7a52-3c0e-4c8e-9d55-0f6c2b7a1d10")
    h.stub("cancel_deployment", {"deploymentId": dep}, {"message": "canceled"})
    h.gg.cancel_deployment(dep)
    _stub_get(h, dep, target, "CANCELED", "1")
    assert h.gg.get_deployment(dep).status == "CANCELED"


def test_unknown_deployment_is_not_found(h: Harness) -> None:
    missing = "9b0e7a52-3c0e-4c8e-9d55-0f6c2b7a1d10"
    h.stub_error("get_deployment", "ResourceNotFoundException", {"deploymentId": missing}, 404)
    with pytest.raises(NotFound, match=missing):
        h.gg.get_deployment(missing)
    h.stub_error("cancel_deployment", "ResourceNotFoundException", {"deploymentId": missing}, 404)
    with pytest.raises(NotFound, match=missing):
        h.gg.cancel_deployment(missing)


@pytest.mark.parametrize(("token", "job"), [("x" * 65, JOB), ("not a token!", JOB),
                                            ("f" * 64, {"jobExecutionsRolloutConfig": {"maximumPerMinute": 0}}),
                                            ("f" * 64, {"abortConfig": {"criteriaList": [
                                                {"failureType": "FAILED", "action": "CANCEL",
                                                 "thresholdPercentage": 101, "minNumberOfExecutedThings": 1}]}})])
def test_bad_deployment_requests_are_refused_before_any_call(h: Harness, token: str, job: Any) -> None:
    target = f"arn:aws:iot:{h.region}:{h.account}:thinggroup/{CANARY}"
    with pytest.raises(ConfigurationError):
        h.gg.create_deployment(target, "n", COMPONENTS, POLICIES, job, token)


def test_effective_deployments_newest_first(h: Harness) -> None:
    target = _ready(h)
    first = _deploy(h, target, "1" * 64, "5b0e7a52-3c0e-4c8e-9d55-0f6c2b7a1d10")
    h.device_reports("turbine-01", first, "IN_PROGRESS")
    h.device_reports("turbine-01", first, "SUCCEEDED")
    second = _deploy(h, target, "2" * 64, "6b0e7a52-3c0e-4c8e-9d55-0f6c2b7a1d10", name="nacelle-canary-v8-canary")
    h.device_reports("turbine-01", second, "IN_PROGRESS")
    entry = {"targetArn": target, "modifiedTimestamp": T0}
    h.stub("list_effective_deployments", {"coreDeviceThingName": "turbine-01"}, {"effectiveDeployments": [
        {**entry, "deploymentId": first, "deploymentName": "nacelle-canary-v7-canary", "creationTimestamp": T0,
         "coreDeviceExecutionStatus": "SUCCEEDED"},
        {**entry, "deploymentId": second, "deploymentName": "nacelle-canary-v8-canary",
         "creationTimestamp": T0.replace(minute=5), "coreDeviceExecutionStatus": "IN_PROGRESS"}]})
    got = h.gg.list_effective_deployments("turbine-01")
    assert [(e.deployment_id, e.execution_status, e.target_arn) for e in got] == [
        (second, "IN_PROGRESS", target), (first, "SUCCEEDED", target)]
    assert got[1].name == "nacelle-canary-v7-canary"
    assert got[1].modified_at == T0


def test_a_thing_deployment_lives_beside_its_groups(h: Harness) -> None:
    """A deployment to the core device itself (its sensors) is superseded by the next one to the thing only: the
    group's rollouts leave it in force, and the device's effective deployments list both targets."""
    group = _ready(h)
    thing = f"arn:aws:iot:{h.region}:{h.account}:thing/turbine-01"
    sensors = _deploy(h, thing, "3" * 64, "7b0e7a52-3c0e-4c8e-9d55-0f6c2b7a1d10", name="turbine-01-sensors")
    h.device_reports("turbine-01", sensors, "SUCCEEDED")
    first = _deploy(h, group, "4" * 64, "8b0e7a52-3c0e-4c8e-9d55-0f6c2b7a1d10")
    second = _deploy(h, group, "5" * 64, "9c0e7a52-3c0e-4c8e-9d55-0f6c2b7a1d10", name="nacelle-canary-v8-canary")
    _stub_get(h, sensors, thing, "COMPLETED", "1", name="turbine-01-sensors")
    _stub_get(h, first, group, "INACTIVE", "1")
    got = h.gg.get_deployment(sensors)
    assert (got.target_arn, got.status, got.name) == (thing, "COMPLETED", "turbine-01-sensors")
    assert h.gg.get_deployment(first).status == "INACTIVE"
    h.device_reports("turbine-01", second, "IN_PROGRESS")
    h.stub("list_effective_deployments", {"coreDeviceThingName": "turbine-01"}, {"effectiveDeployments": [
        {"deploymentId": sensors, "deploymentName": "turbine-01-sensors", "targetArn": thing,
         "coreDeviceExecutionStatus": "SUCCEEDED", "creationTimestamp": T0, "modifiedTimestamp": T0},
        {"deploymentId": second, "deploymentName": "nacelle-canary-v8-canary", "targetArn": group,
         "coreDeviceExecutionStatus": "IN_PROGRESS", "creationTimestamp": T0.replace(minute=5),
         "modifiedTimestamp": T0}]})
    got_effective = h.gg.list_effective_deployments("turbine-01")
    assert [(e.deployment_id, e.target_arn, e.execution_status) for e in got_effective] == [
        (second, group, "IN_PROGRESS"), (sensors, thing, "SUCCEEDED")]


def test_effective_deployments_of_an_unknown_device(h: Harness) -> None:
    h.stub_error("list_effective_deployments", "ResourceNotFoundException",
                 {"coreDeviceThingName": "turbine-99"}, 404)
    with pytest.raises(NotFound, match="turbine-99"):
        h.gg.list_effective_deployments("turbine-99")


# -- AWS adapter only: paging, errors, the account ------------------------------------------------------------------


@pytest.fixture
def aws() -> Iterator[AwsHarness]:
    harness = AwsHarness()
    yield harness
    harness.done()


def test_aws_pages_through_effective_deployments_and_group_members(aws: AwsHarness) -> None:
    entry = {"deploymentName": "d", "targetArn": f"arn:aws:iot:{REGION}:{ACCOUNT}:thinggroup/{CANARY}",
             "coreDeviceExecutionStatus": "SUCCEEDED", "modifiedTimestamp": T0}
    aws.stub("list_effective_deployments", {"coreDeviceThingName": "t"}, {
        "effectiveDeployments": [{**entry, "deploymentId": "old", "creationTimestamp": T0}], "nextToken": "p2"})
    aws.stub("list_effective_deployments", {"coreDeviceThingName": "t", "nextToken": "p2"}, {
        "effectiveDeployments": [{**entry, "deploymentId": "new", "creationTimestamp": T0.replace(hour=13)}]})
    assert [e.deployment_id for e in aws.gg.list_effective_deployments("t")] == ["new", "old"]
    aws.stub("list_things_in_thing_group", {"thingGroupName": CANARY}, {"things": ["b"], "nextToken": "p2"})
    aws.stub("list_things_in_thing_group", {"thingGroupName": CANARY, "nextToken": "p2"}, {"things": ["a"]})
    assert aws.gg.things_in_group(CANARY) == ["a", "b"]


def test_aws_translates_service_errors(aws: AwsHarness) -> None:
    aws.stub_error("get_deployment", "ThrottlingException", {"deploymentId": "d"}, 429)
    with pytest.raises(AdapterError, match="ThrottlingException"):
        aws.gg.get_deployment("d")
    target = f"arn:aws:iot:{REGION}:{ACCOUNT}:thinggroup/{CANARY}"
    aws.stub_error("create_deployment", "ConflictException", {
        "targetArn": target, "deploymentName": "n", "components": COMPONENTS, "deploymentPolicies": POLICIES,
        "iotJobConfiguration": JOB, "clientToken": "t"}, 409)
    with pytest.raises(Conflict):
        aws.gg.create_deployment(target, "n", COMPONENTS, POLICIES, JOB, "t")
    blob = json.dumps(RECIPE, sort_keys=True, separators=(",", ":")).encode()
    aws.stub("create_component_version", {"inlineRecipe": blob}, {
        "componentName": "nacelle.model", "componentVersion": "7.0.0", "creationTimestamp": T0,
        "status": {"componentState": "FAILED", "message": "artifact digest mismatch"}})
    with pytest.raises(AdapterError, match="artifact digest mismatch"):
        aws.gg.create_component_version(RECIPE)


def test_aws_reads_the_account_from_sts_when_not_given() -> None:
    keys = {"region_name": REGION, "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    gg, sts = boto3.client("greengrassv2", **keys), boto3.client("sts", **keys)
    with Stubber(gg) as gg_stub, Stubber(sts) as sts_stub:
        sts_stub.add_response("get_caller_identity", {"Account": "210987654321"})
        arn = "arn:aws:greengrass:eu-west-1:210987654321:components:c:versions:1.0.0"
        gg_stub.add_client_error("get_component", "ResourceNotFoundException", http_status_code=404,
                                 expected_params={"arn": arn, "recipeOutputFormat": "JSON"})
        assert AwsGreengrass(gg, sts_client=sts).get_component("c", "1.0.0") is None
        gg_stub.assert_no_pending_responses()


def test_component_arns_follow_the_clients_partition() -> None:
    """In China and GovCloud regions a component's ARN starts arn:aws-cn / arn:aws-us-gov, not arn:aws."""
    client = boto3.client("greengrassv2", region_name="cn-north-1", aws_access_key_id="x", aws_secret_access_key="x")
    arn = f"arn:aws-cn:greengrass:cn-north-1:{ACCOUNT}:components:nacelle.model:versions:7.0.0"
    with Stubber(client) as stub:
        stub.add_response("get_component", {"recipeOutputFormat": "JSON", "recipe": json.dumps(RECIPE).encode()},
                          {"arn": arn, "recipeOutputFormat": "JSON"})
        found = AwsGreengrass(client=client, account=ACCOUNT).get_component("nacelle.model", "7.0.0")
    assert found is not None and found.arn == arn
