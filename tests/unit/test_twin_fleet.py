"""deploy/twin-fleet.yaml, the optional digital-twin fleet: lint-clean, nothing inbound, no secret in the template or
user data, least-privilege roles, the same fleet-provisioning config as a claim bundle; and twin-up's claim handling
on moto (IoT and SSM)."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
import yaml
from botocore.exceptions import ClientError
from botocore.validate import validate_parameters
from moto import mock_aws

from nacelle import device_bundle as bundle
from nacelle.aws_twin import TWIN_TEMPLATE, TwinCounts, ensure_claim, hourly_cost, remove_claim, twin_things
from shared.errors import ConfigurationError
from tests.unit.test_iot_policy import IotPolicy
from tests.unit.test_template import CfnLoader, as_list, is_wildcard_resource, resource_strings

REGION = "eu-west-1"
SESSION_MANAGER = {"ssm:UpdateInstanceInformation", "ssmmessages:CreateControlChannel",
                   "ssmmessages:CreateDataChannel", "ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel"}


@cache
def twin() -> dict[str, Any]:
    return yaml.load(TWIN_TEMPLATE.read_text(encoding="utf-8"), Loader=CfnLoader)  # a SafeLoader subclass


def of_type(type_: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in twin()["Resources"].items() if r["Type"] == type_}


def user_data() -> str:
    data = twin()["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]
    return str(data["Fn::Base64"]["Fn::Sub"])


def test_cfn_lint_runs_on_it() -> None:
    """tests/unit/test_template.py's cfn-lint run lints this template too (one process for both)."""
    from tests.unit import test_template

    source = inspect.getsource(test_template.test_cfn_lint_is_clean)
    assert test_template.TWIN_TEMPLATE == TWIN_TEMPLATE and "str(TWIN_TEMPLATE)" in source


def test_nothing_reaches_the_instances_from_outside() -> None:
    assert not of_type("AWS::EC2::SecurityGroupIngress")
    for name, group in of_type("AWS::EC2::SecurityGroup").items():
        assert "SecurityGroupIngress" not in group["Properties"], name
        ports = {(r["IpProtocol"], r["FromPort"], r["ToPort"]) for r in group["Properties"]["SecurityGroupEgress"]}
        assert ports == {("tcp", 443, 443), ("tcp", 8883, 8883)}, name
    data = twin()["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"  # IMDSv2 only
    assert all(d["Ebs"]["Encrypted"] is True for d in data["BlockDeviceMappings"])
    assert "KeyName" not in data  # no SSH key: Session Manager only


def test_no_secret_in_the_template_or_its_user_data() -> None:
    text = TWIN_TEMPLATE.read_text(encoding="utf-8")
    for marker in ("BEGIN", "PRIVATE KEY", "AKIA", "aws_secret_access_key"):
        assert marker not in text, marker
    script = user_data()
    # the claim comes from SSM at boot, decrypted there, written 0600 (umask 077), and is shredded afterwards
    assert re.search(r'aws ssm get-parameter .*--name "\$\{ClaimParameterPath\}/private-key" \\\n\s+--with-decryption',
                     script)
    assert "umask 077" in script and 'shred -u "$root/claim-certs/claim.private.pem.key"' in script
    parameters = twin()["Parameters"]
    assert not [p for p in parameters if re.search(r"(?i)key|secret|password|pem", p)]
    assert all(not p.get("NoEcho") for p in parameters.values())  # nothing that would need hiding


def test_the_user_data_is_a_valid_bash_script(tmp_path: Path) -> None:
    def sub(m: re.Match[str]) -> str:
        return "${" + m.group(1)[1:] + "}" if m.group(1).startswith("!") else f"X{m.group(1).replace(':', '')}"

    script = tmp_path / "user-data.sh"
    script.write_text(re.sub(r"\$\{([^}]+)\}", sub, user_data()))
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr


def test_the_roles_are_least_privilege() -> None:
    problems = []
    for name, role in of_type("AWS::IAM::Role").items():
        for policy in role["Properties"]["Policies"]:
            for statement in as_list(policy["PolicyDocument"]["Statement"]):
                actions = set(as_list(statement["Action"]))
                assert not [a for a in actions if "*" in a], (name, actions)
                wild = [r for r in resource_strings(statement["Resource"]) if is_wildcard_resource(r)]
                if wild and not actions <= SESSION_MANAGER:
                    problems.append(f"{name}/{statement.get('Sid')}: {sorted(actions)} on {wild}")
        assert "ManagedPolicyArns" not in role["Properties"], name  # not AmazonSSMManagedInstanceCore: it reads
        # every parameter of the account
    assert not problems, problems
    instance = of_type("AWS::IAM::Role")["InstanceRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    reads = [s for s in instance if "ssm:GetParameter" in as_list(s["Action"])]
    assert [s["Resource"] for s in reads] == [{"Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:"
                                                          "${AWS::AccountId}:parameter${ClaimParameterPath}/*"}]
    assert {a for s in instance for a in as_list(s["Action"])} == SESSION_MANAGER | {"ssm:GetParameter"}


def test_the_twin_config_is_the_one_a_claim_bundle_writes() -> None:
    """The user data's config.yaml, as an instance renders it, equals device_bundle.fleet_provisioning_config."""
    script = user_data()
    heredoc = script.split('cat > "$installer/config.yaml" <<EOF\n', 1)[1].split("\nEOF\n", 1)[0]
    subs = {"NucleusVersion": "2.16.1", "AWS::Region": REGION, "RoleAlias": "nacelle-greengrass-tes",
            "IotDataEndpoint": "a1-ats.iot.eu-west-1.amazonaws.com",
            "IotCredentialEndpoint": "c1.credentials.iot.eu-west-1.amazonaws.com",
            "TwinProvisioningTemplate": "nacelle-twins-greengrass"}
    shell = {"thing": "twin-i-0a1b2c3d4e5f60718", "group": "nacelle-fleet", "instance": "i-0a1b2c3d4e5f60718"}
    text = re.sub(r"\$\{([^}]+)\}", lambda m: subs[m.group(1)], heredoc)
    text = re.sub(r"\$(thing|group|instance)\b", lambda m: shell[m.group(1)], text)
    points = bundle.Endpoints(REGION, subs["IotDataEndpoint"], subs["IotCredentialEndpoint"], subs["RoleAlias"])
    assert yaml.safe_load(text) == bundle.fleet_provisioning_config(points, "nacelle-twins-greengrass", shell["thing"],
                                                                    shell["group"], shell["instance"], "2.16.1")
    assert 'thing="${ThingNamePrefix}-$instance"' in script and "tags/instance/NacelleGroup" in script


def test_twins_join_their_rollout_group_and_the_simulated_sensors_group_only() -> None:
    body = twin()["Resources"]["TwinProvisioningTemplate"]["Properties"]["TemplateBody"]["Fn::Sub"]
    thing = json.loads(re.sub(r"\$\{[^}]+\}", "X", body))["Resources"]["thing"]["Properties"]
    assert thing["ThingGroups"] == [{"Ref": "ThingGroupName"}, "X"]  # X: SimulatedSensorsGroup
    assert "${SimulatedSensorsGroup}" in body and '"twin": "${AWS::StackName}"' in body
    hook = twin()["Resources"]["TwinProvisioningTemplate"]["Properties"]["PreProvisioningHook"]
    assert hook["TargetArn"] == {"Ref": "ProvisioningHookFunctionArn"}  # the main stack's checks, for twins too
    deployment = of_type("AWS::GreengrassV2::Deployment")["SensorsDeployment"]["Properties"]
    assert deployment["TargetArn"] == {"Fn::GetAtt": ["SimulatedSensorsGroup", "Arn"]}
    (name, spec), = deployment["Components"].items()
    assert name == "nacelle.sensors" and json.loads(spec["ConfigurationUpdate"]["Merge"]) == {"source": "simulator"}
    doc = of_type("AWS::IoT::Policy")["ClaimCertificatePolicy"]["Properties"]["PolicyDocument"]
    text = json.dumps(doc).replace("${TwinProvisioningTemplate}", "nacelle-twins-greengrass")
    for pseudo, value in {"AWS::Partition": "aws", "AWS::Region": REGION, "AWS::AccountId": "123456789012"}.items():
        text = text.replace("${" + pseudo + "}", value)
    claim = IotPolicy([json.loads(re.sub(r'\{"Fn::Sub": ("[^"]*")\}', r"\1", text))], "")
    arn = f"arn:aws:iot:{REGION}:123456789012"
    assert claim.allows("iot:Connect", f"{arn}:client/provision-twin-i-0a") and not claim.allows(
        "iot:Connect", f"{arn}:client/twin-i-0a")
    templates = f"{arn}:topic/$aws/provisioning-templates"
    assert claim.allows("iot:Publish", f"{templates}/nacelle-twins-greengrass/provision/json")
    assert not claim.allows("iot:Publish", f"{templates}/nacelle-greengrass/provision/json")
    assert not claim.allows("iot:Publish", f"{arn}:topic/turbines/twin-i-0a/health")


def test_the_sensors_component_accepts_the_deployed_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """The twins' configuration, merged over the component's defaults, is one nacelle.sensors runs with."""
    from nacelle.aws_twin import SENSORS_DIR

    monkeypatch.syspath_prepend(str(SENSORS_DIR / "src"))
    from sensors.config import SensorsConfig

    merge = of_type("AWS::GreengrassV2::Deployment")["SensorsDeployment"]["Properties"]["Components"][
        "nacelle.sensors"]["ConfigurationUpdate"]["Merge"]
    config = SensorsConfig.from_dict(json.loads(merge), "twin-i-0a1b2c3d4e5f60718")
    assert config.source == "simulator" and config.sensors_topic == "turbines/twin-i-0a1b2c3d4e5f60718/sensors"


def test_counts_and_cost() -> None:
    assert TwinCounts.of(3, 1) == TwinCounts(1, 2) and TwinCounts.of(1, 1) == TwinCounts(1, 0)
    for devices, canary in ((0, 0), (3, 4), (3, -1), (61, 1)):
        with pytest.raises(ConfigurationError):
            TwinCounts.of(devices, canary)
    assert round(hourly_cost(3, "t3.small"), 3) == 0.080  # the figure docs/devices.md quotes


# ------------------------------------------------------------------ twin-up's claim, on moto


class ParameterStore:
    """SSM Parameter Store, in memory, every request checked against the SSM service model (moto's SSM spends
    seconds loading AWS's public parameters)."""

    def __init__(self) -> None:
        self.model = botocore.session.get_session().get_service_model("ssm")
        self.items: dict[str, dict[str, str]] = {}

    def _call(self, operation: str, params: dict[str, Any]) -> None:
        validate_parameters(params, self.model.operation_model(operation).input_shape)

    def _missing(self, operation: str, name: str) -> ClientError:
        return ClientError({"Error": {"Code": "ParameterNotFound", "Message": name}}, operation)

    def put_parameter(self, **params: Any) -> dict[str, Any]:
        self._call("PutParameter", params)
        if params["Name"] in self.items and not params.get("Overwrite"):
            raise ClientError({"Error": {"Code": "ParameterAlreadyExists", "Message": ""}}, "PutParameter")
        self.items[params["Name"]] = {"Type": params["Type"], "Value": params["Value"]}
        return {"Version": 1}

    def get_parameter(self, **params: Any) -> dict[str, Any]:
        self._call("GetParameter", params)
        if params["Name"] not in self.items:
            raise self._missing("GetParameter", params["Name"])
        return {"Parameter": {"Name": params["Name"], **self.items[params["Name"]]}}

    def delete_parameter(self, **params: Any) -> dict[str, Any]:
        self._call("DeleteParameter", params)
        if self.items.pop(params["Name"], None) is None:
            raise self._missing("DeleteParameter", params["Name"])
        return {}


@pytest.fixture(scope="module")
def moto_clients() -> Iterator[tuple[Any, dict[str, Any]]]:
    """moto and one client per service for the module (clients are slow to build); tests start from a reset."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {"AWS_DEFAULT_REGION": REGION, "AWS_ACCESS_KEY_ID": "testing",
                            "AWS_SECRET_ACCESS_KEY": "testing"}.items():
            patch.setenv(name, value)
        with mock_aws() as mock:
            yield mock, {s: boto3.client(s, region_name=REGION) for s in ("iot", "s3")}


@pytest.fixture
def clients(moto_clients: tuple[Any, dict[str, Any]]) -> dict[str, Any]:
    mock, by_service = moto_clients
    mock.reset()
    by_service["iot"].create_policy(policyName="twin-claim", policyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": []}))
    return {**by_service, "ssm": ParameterStore()}


def test_twin_up_creates_the_sensors_component_from_its_published_recipe(clients: dict[str, Any]) -> None:
    from botocore.stub import Stubber

    from nacelle.aws_twin import SENSORS_COMPONENT, ensure_sensors_component

    s3 = clients["s3"]
    s3.create_bucket(Bucket="data", CreateBucketConfiguration={"LocationConstraint": REGION})
    gg = boto3.client("greengrassv2", region_name=REGION)
    arn = f"arn:aws:greengrass:{REGION}:123456789012:components:{SENSORS_COMPONENT}:versions:1.0.0"
    recipe = json.dumps({"ComponentName": SENSORS_COMPONENT, "ComponentVersion": "1.0.0"}).encode()
    with Stubber(gg) as stub:
        stub.add_client_error("describe_component", "ResourceNotFoundException", expected_params={"arn": arn})
        with pytest.raises(ConfigurationError, match="build and publish it first"):
            ensure_sensors_component(gg, s3, "data", "123456789012", "1.0.0")
        s3.put_object(Bucket="data", Key=f"components/{SENSORS_COMPONENT}/1.0.0/recipe.json", Body=recipe)
        stub.add_client_error("describe_component", "ResourceNotFoundException", expected_params={"arn": arn})
        stub.add_response("create_component_version", {"componentName": SENSORS_COMPONENT, "componentVersion": "1.0.0",
                                                       "creationTimestamp": "2026-03-01T00:00:00Z", "status": {}},
                          {"inlineRecipe": recipe})
        assert ensure_sensors_component(gg, s3, "data", "123456789012", "1.0.0") == "created"
        stub.add_response("describe_component", {"arn": arn}, {"arn": arn})
        assert ensure_sensors_component(gg, s3, "data", "123456789012", "1.0.0") == "exists"
        stub.assert_no_pending_responses()


def test_the_claim_is_created_once_its_key_only_in_a_secure_string_and_removed_with_the_fleet(
        clients: dict[str, Any]) -> None:
    iot, ssm = clients["iot"], clients["ssm"]
    path = "/nacelle/nacelle/twin-claim"
    cert, created = ensure_claim(iot, ssm, path, "twin-claim")
    assert created and ensure_claim(iot, ssm, path, "twin-claim") == (cert, False)  # twin-up again: kept
    assert {n.rsplit("/", 1)[1]: p["Type"] for n, p in ssm.items.items()} == {
        "private-key": "SecureString", "certificate": "SecureString", "certificate-id": "String"}
    assert "PRIVATE KEY" in ssm.items[f"{path}/private-key"]["Value"]
    arn = iot.describe_certificate(certificateId=cert)["certificateDescription"]["certificateArn"]
    assert [p["policyName"] for p in iot.list_attached_policies(target=arn)["policies"]] == ["twin-claim"]
    iot.update_certificate(certificateId=cert, newStatus="INACTIVE")  # revoked: the next twin-up issues a new one
    replaced, created = ensure_claim(iot, ssm, path, "twin-claim")
    assert created and replaced != cert
    assert [c["certificateId"] for c in iot.list_certificates()["certificates"]] == [replaced]  # the old one deleted
    iot.create_thing(thingName="twin-i-1", attributePayload={"attributes": {"twin": "nacelle-twins"}})
    iot.create_thing(thingName="wt-07")
    assert twin_things(iot, "nacelle-twins") == ["twin-i-1"]  # what twin-down decommissions: never a real turbine
    done = remove_claim(iot, ssm, path)
    assert done[0].startswith("claim certificate") and len(done) == 4
    assert ssm.items == {} and remove_claim(iot, ssm, path) == []


def test_the_twins_sensors_configuration_is_the_components_simulator_source() -> None:
    """The twins' deployment merges {"source": "simulator"} onto the recipe's defaults, as Greengrass does: the
    component itself accepts it (its simulator source, seeded from the thing name, at the spec's rate)."""
    import sys

    from nacelle.components import SENSORS, load_template

    src = str(SENSORS.directory / "src")
    if src not in sys.path:
        sys.path.append(src)
    from sensors.config import SensorsConfig

    deployment = of_type("AWS::GreengrassV2::Deployment")["SensorsDeployment"]["Properties"]
    merge = json.loads(deployment["Components"]["nacelle.sensors"]["ConfigurationUpdate"]["Merge"])
    defaults = load_template(SENSORS.directory, SENSORS.name)["ComponentConfiguration"]["DefaultConfiguration"]
    config = SensorsConfig.from_dict({**defaults, **merge}, "twin-i-0a1b2c3d4e5f60718")
    assert (config.source, config.endpoint, config.rate_hz) == ("simulator", "simulator", 20.0)
    assert config.simulator is not None and config.simulator.seed is None  # derived from the thing name
