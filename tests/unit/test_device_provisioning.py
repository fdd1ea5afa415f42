"""`nacelle aws provision-device|provision-claim|devices|decommission-device` on moto's IoT registry (greengrassv2 on
botocore's Stubber: moto has no Greengrass): the install bundle, idempotency, rotation order, crashes between steps,
hostile names, and what the claim bundle's install.sh renders."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import boto3
import pytest
import yaml
from botocore.stub import Stubber
from moto import mock_aws

from nacelle import device_bundle as bundle
from nacelle.aws_devices import (
    StackDevices,
    decommission_device,
    devices_table,
    endpoints,
    list_devices,
    provision_claim,
    provision_device,
)
from nacelle.cli import main
from shared import settings as defaults
from shared.errors import ConfigurationError

REGION = "eu-west-1"
POLICY, CLAIM_POLICY, TEMPLATE = "nacelle-CoreDevicePolicy-X", "nacelle-ClaimCertificatePolicy-X", "nacelle-greengrass"
OUTPUTS = {"CoreDevicePolicyName": POLICY, "CanaryThingGroupName": "nacelle-canary",
           "FleetThingGroupName": "nacelle-fleet", "GreengrassTokenExchangeRoleAlias": "nacelle-greengrass-tes",
           "DeviceNamePattern": defaults.DEVICE_NAME_PATTERN, "ProvisioningTemplateName": TEMPLATE,
           "ClaimPolicyName": CLAIM_POLICY}
STACK = StackDevices.from_outputs("nacelle", OUTPUTS)


class Killed(BaseException):
    """The process dying at a step (nothing after it runs, nothing is cleaned up)."""


class Recording:
    """An IoT client that records its calls and can die just before the n-th call of one method."""

    def __init__(self, client: Any, die_before: tuple[str, int] | None = None) -> None:
        self._client, self._die, self.calls = client, die_before, []  # type: ignore[var-annotated]

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name in ("meta", "get_paginator") or not callable(attr):
            return attr

        def call(**kwargs: Any) -> Any:
            if self._die and self._die[0] == name and sum(c[0] == name for c in self.calls) + 1 == self._die[1]:
                raise Killed(name)
            self.calls.append((name, kwargs))
            return attr(**kwargs)
        return call


class PinnedEndpoints(Recording):
    """moto makes up new endpoint addresses at every DescribeEndpoint: these are the account's, once and for all."""

    ENDPOINTS: ClassVar[dict[str, str]] = {
        "iot:Data-ATS": f"a1b2c3d4e5f6g7-ats.iot.{REGION}.amazonaws.com",
        "iot:CredentialProvider": f"c1d2e3f4g5h6i7.credentials.iot.{REGION}.amazonaws.com"}

    def describe_endpoint(self, endpointType: str) -> dict[str, str]:
        self.calls.append(("describe_endpoint", {"endpointType": endpointType}))
        return {"endpointAddress": self.ENDPOINTS[endpointType]}


@pytest.fixture(scope="module")
def moto_iot() -> Iterator[tuple[Any, Any]]:
    """moto and one IoT client for the module (clients are slow to build); each test starts from a reset."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
            patch.delenv(name, raising=False)
        for name, value in {"AWS_DEFAULT_REGION": REGION, "AWS_ACCESS_KEY_ID": "testing",
                            "AWS_SECRET_ACCESS_KEY": "testing"}.items():
            patch.setenv(name, value)
        with mock_aws() as mock:
            yield mock, boto3.client("iot", region_name=REGION)


@pytest.fixture
def iot(moto_iot: tuple[Any, Any]) -> Any:
    mock, client = moto_iot
    mock.reset()
    for group in ("nacelle-canary", "nacelle-fleet"):
        client.create_thing_group(thingGroupName=group)
    for policy in (POLICY, CLAIM_POLICY):
        client.create_policy(policyName=policy, policyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}))
    return PinnedEndpoints(client)


def provision(iot: Any, out: Path, thing: str = "wt-07", group: str = "canary", rotate: bool = False) -> Any:
    return provision_device(iot, STACK, endpoints(iot, STACK), thing, group, out, rotate)


def certificates(iot: Any) -> dict[str, str]:
    return {c["certificateId"]: c["status"] for c in iot.list_certificates()["certificates"]}


def attached(iot: Any, thing: str) -> list[str]:
    return [p.rsplit("/", 1)[1] for p in iot.list_thing_principals(thingName=thing)["principals"]]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------------ one device


def test_a_device_gets_a_thing_a_certificate_with_the_core_device_policy_and_an_install_bundle(iot: Any,
                                                                                               tmp_path: Path) -> None:
    done = provision(iot, tmp_path)
    assert done.issued and done.directory == tmp_path / "wt-07"
    assert attached(iot, "wt-07") == [done.certificate_id]
    assert certificates(iot) == {done.certificate_id: "ACTIVE"}
    arn = iot.describe_certificate(certificateId=done.certificate_id)["certificateDescription"]["certificateArn"]
    assert [p["policyName"] for p in iot.list_attached_policies(target=arn)["policies"]] == [POLICY]  # that one only
    assert [g["groupName"] for g in iot.list_thing_groups_for_thing(thingName="wt-07")["thingGroups"]] == [
        "nacelle-canary"]

    config = yaml.safe_load((done.directory / "config.yaml").read_text())
    nucleus = config["services"]["aws.greengrass.Nucleus"]["configuration"]
    assert config["system"]["thingName"] == "wt-07"
    assert config["system"]["rootCaPath"] == "/greengrass/v2/AmazonRootCA1.pem"
    assert nucleus == {"awsRegion": REGION, "iotRoleAlias": "nacelle-greengrass-tes",
                       "iotDataEndpoint": PinnedEndpoints.ENDPOINTS["iot:Data-ATS"],
                       "iotCredEndpoint": PinnedEndpoints.ENDPOINTS["iot:CredentialProvider"]}
    assert {kw["endpointType"] for name, kw in iot.calls if name == "describe_endpoint"} == set(
        PinnedEndpoints.ENDPOINTS)

    key = done.directory / "certificates" / f"{done.certificate_id}.private.pem.key"
    assert "PRIVATE KEY" in key.read_text() and mode(key) == 0o600 and mode(done.directory) == 0o700
    script = (done.directory / "install.sh").read_text()
    assert mode(done.directory / "install.sh") == 0o700
    assert ('java -Droot="/greengrass/v2" -Dlog.store=FILE -jar "$installer/lib/Greengrass.jar" --init-config '
            '"$here/config.yaml" --component-default-user ggc_user:ggc_group --setup-system-service true') in script
    assert bundle.ROOT_CA_URL in script and "BEGIN CERTIFICATE" in script  # checked, never downloaded
    assert f"certificates/{done.certificate_id}.private.pem.key" in script
    journal = json.loads((done.directory / "bundle.json").read_text())
    assert journal["state"] == "active" and "PRIVATE" not in json.dumps(journal)


def test_running_it_again_issues_no_second_certificate(iot: Any, tmp_path: Path) -> None:
    first = provision(iot, tmp_path)
    again = provision(iot, tmp_path)
    assert not again.issued and again.certificate_id == first.certificate_id
    assert list(certificates(iot)) == [first.certificate_id]
    # another bundle directory cannot silently mint one either: it needs --rotate
    with pytest.raises(ConfigurationError, match="--rotate"):
        provision(iot, tmp_path / "elsewhere")
    assert list(certificates(iot)) == [first.certificate_id]


def test_the_canary_and_fleet_groups_stay_disjoint(iot: Any, tmp_path: Path) -> None:
    provision(iot, tmp_path)
    with pytest.raises(ConfigurationError, match="disjoint"):
        provision(iot, tmp_path, group="fleet")
    assert [g["groupName"] for g in iot.list_thing_groups_for_thing(thingName="wt-07")["thingGroups"]] == [
        "nacelle-canary"]


def test_rotate_deactivates_the_old_certificate_only_after_the_new_one_is_attached_and_active(iot: Any,
                                                                                           tmp_path: Path) -> None:
    old = provision(iot, tmp_path).certificate_id
    recording = Recording(iot)
    new = provision_device(recording, STACK, endpoints(iot, STACK), "wt-07", "canary", tmp_path, rotate=True)
    assert new.issued and new.retired == (old,) and new.certificate_id != old
    assert certificates(iot) == {old: "INACTIVE", new.certificate_id: "ACTIVE"}
    assert attached(iot, "wt-07") == [new.certificate_id]
    names = [(name, kw.get("certificateId"), kw.get("newStatus")) for name, kw in recording.calls]
    order = [n[0] for n in names]
    new_active = names.index(("update_certificate", new.certificate_id, "ACTIVE"))
    old_inactive = names.index(("update_certificate", old, "INACTIVE"))
    assert order.index("attach_thing_principal") < new_active < old_inactive < order.index("detach_thing_principal")
    assert order.index("attach_policy") < new_active
    files = sorted(p.name for p in (tmp_path / "wt-07" / "certificates").iterdir())
    assert files == [f"{new.certificate_id}.pem.crt", f"{new.certificate_id}.private.pem.key"]  # the old key is gone


@pytest.mark.parametrize("die_before", [("attach_policy", 1), ("attach_thing_principal", 1),
                                        ("update_certificate", 1)], ids=lambda d: d[0])
def test_a_run_killed_between_steps_is_finished_by_running_it_again(iot: Any, tmp_path: Path,
                                                                    die_before: tuple[str, int]) -> None:
    with pytest.raises(Killed):
        provision_device(Recording(iot, die_before), STACK, endpoints(iot, STACK), "wt-07", "canary", tmp_path)
    (pending,) = certificates(iot)
    assert certificates(iot)[pending] == "INACTIVE"  # never an active certificate without its policy and thing
    done = provision(iot, tmp_path)
    assert not done.issued and done.certificate_id == pending
    assert certificates(iot) == {pending: "ACTIVE"} and attached(iot, "wt-07") == [pending]


def test_a_rotation_killed_before_retiring_the_old_certificate_completes_on_the_next_run(iot: Any,
                                                                                        tmp_path: Path) -> None:
    old = provision(iot, tmp_path).certificate_id
    with pytest.raises(Killed):  # the new one is active; the old one not yet deactivated
        provision_device(Recording(iot, ("update_certificate", 2)), STACK, endpoints(iot, STACK), "wt-07", "canary",
                         tmp_path, rotate=True)
    assert sorted(certificates(iot).values()) == ["ACTIVE", "ACTIVE"]
    done = provision(iot, tmp_path)  # no --rotate: it finishes the rotation it finds in the journal
    assert not done.issued and done.retired == (old,)
    assert certificates(iot) == {old: "INACTIVE", done.certificate_id: "ACTIVE"}


def test_a_revoked_certificate_is_not_brought_back(iot: Any, tmp_path: Path) -> None:
    cert = provision(iot, tmp_path).certificate_id
    iot.update_certificate(certificateId=cert, newStatus="INACTIVE")  # revoked by an operator
    with pytest.raises(ConfigurationError, match=r"INACTIVE.*--rotate"):
        provision(iot, tmp_path)
    assert certificates(iot) == {cert: "INACTIVE"}


def test_a_bad_name_is_refused_before_anything_is_created(iot: Any, tmp_path: Path) -> None:
    for name in ("WT-07", "wt:07", "../wt-07", "wt/07", "", "wt 07", "a" * 129, "wt-07\n", "wt-07\x00"):
        with pytest.raises(ConfigurationError, match="NAME"):
            provision(iot, tmp_path, thing=name)
    assert iot.list_things()["things"] == [] and certificates(iot) == {} and list(tmp_path.iterdir()) == []


def test_a_bundle_of_another_thing_or_a_corrupt_journal_is_refused(iot: Any, tmp_path: Path) -> None:
    provision(iot, tmp_path)
    (tmp_path / "wt-08").mkdir()
    (tmp_path / "wt-08" / "bundle.json").write_text((tmp_path / "wt-07" / "bundle.json").read_text())
    with pytest.raises(ConfigurationError, match="bundle of thing 'wt-07'"):
        provision(iot, tmp_path, thing="wt-08")
    (tmp_path / "wt-07" / "bundle.json").write_text("{not json")
    with pytest.raises(ConfigurationError, match=r"bundle\.json: not a device bundle journal"):
        provision(iot, tmp_path)


def test_a_stack_without_the_device_outputs_says_to_redeploy() -> None:
    with pytest.raises(ConfigurationError, match=r"CanaryThingGroupName.*make deploy"):
        StackDevices.from_outputs("nacelle", {k: v for k, v in OUTPUTS.items() if k != "CanaryThingGroupName"})


# ------------------------------------------------------------------ listing and decommissioning


def stubbed_greengrass() -> tuple[Any, Stubber]:
    client = boto3.client("greengrassv2", region_name=REGION)
    return client, Stubber(client)


def test_devices_lists_every_core_device_and_provisioned_thing(iot: Any, tmp_path: Path) -> None:
    provision(iot, tmp_path)
    provision(iot, tmp_path, thing="wt-08", group="fleet")
    gg, stub = stubbed_greengrass()
    stub.add_response("list_core_devices", {"coreDevices": [
        {"coreDeviceThingName": "wt-07", "status": "HEALTHY", "lastStatusUpdateTimestamp": "2026-03-01T12:00:00Z"},
        {"coreDeviceThingName": "lab-pc", "status": "UNHEALTHY", "lastStatusUpdateTimestamp": "2026-03-01T11:00:00Z"},
    ]}, {})
    stub.add_response("list_installed_components", {"installedComponents": []},
                      {"coreDeviceThingName": "lab-pc"})
    stub.add_response("list_installed_components", {"installedComponents": [
        {"componentName": "aws.greengrass.Nucleus", "componentVersion": "2.16.1", "lifecycleState": "FINISHED"},
        {"componentName": "nacelle.detector", "componentVersion": "1.0.0", "lifecycleState": "RUNNING"},
        {"componentName": "nacelle.model", "componentVersion": "7.0.0", "lifecycleState": "FINISHED"},
        {"componentName": "nacelle.sensors", "componentVersion": "0.1.0", "lifecycleState": "RUNNING"},
    ]}, {"coreDeviceThingName": "wt-07"})
    with stub:
        rows = list_devices(iot, gg, STACK)
    stub.assert_no_pending_responses()
    assert [(r["thing"], r["group"], r["status"]) for r in rows] == [
        ("lab-pc", None, "UNHEALTHY"), ("wt-07", "canary", "HEALTHY"), ("wt-08", "fleet", "NEVER_CONNECTED")]
    assert rows[1]["components"]["nacelle.model"] == "7.0.0"
    text = devices_table(rows)
    assert max(map(len, text.splitlines())) <= 100
    assert "2026-03-01T12:00:00Z" in text and "wt-08   fleet   -" in text
    assert "  v7  " in text and "detector 1.0.0  sensors 0.1.0" in text
    wide = devices_table([{**rows[1], "thing": "t" * 60}])
    assert max(map(len, wide.splitlines())) <= 100 and "..." in wide


def test_decommissioning_removes_certificates_thing_and_core_device_and_is_idempotent(iot: Any,
                                                                                      tmp_path: Path) -> None:
    cert = provision(iot, tmp_path).certificate_id
    gg, stub = stubbed_greengrass()
    stub.add_response("delete_core_device", {}, {"coreDeviceThingName": "wt-07"})
    stub.add_client_error("delete_core_device", "ResourceNotFoundException", expected_params={
        "coreDeviceThingName": "wt-07"})
    with stub:
        done = decommission_device(iot, gg, "wt-07")
        assert done == [f"certificate {cert[:12]}... deleted", "thing wt-07 deleted",
                        "Greengrass core device wt-07 deleted"]
        assert decommission_device(iot, gg, "wt-07") == []  # again: nothing left, nothing fails
    assert iot.list_things()["things"] == [] and certificates(iot) == {}


# ------------------------------------------------------------------ the claim bundle


def test_the_claim_bundle_renders_the_fleet_provisioning_config_and_refuses_what_the_hook_would(
        iot: Any, tmp_path: Path) -> None:
    points = endpoints(iot, STACK)
    serials = "^[A-Za-z0-9][A-Za-z0-9._:#@-]{0,63}$"  # a stack's wider DeviceSerialPattern: YAML indicators inside
    claim = provision_claim(iot, STACK, points, tmp_path / "claim", serials)
    assert certificates(iot) == {claim.certificate_id: "ACTIVE"}
    assert [p["policyName"] for p in iot.list_attached_policies(target=claim.certificate_arn)["policies"]] == [
        CLAIM_POLICY]
    key = tmp_path / "claim" / bundle.CLAIM_KEY_FILE
    assert mode(key) == 0o600 and "PRIVATE KEY" in key.read_text()
    with pytest.raises(ConfigurationError, match="already holds a claim key"):
        provision_claim(iot, STACK, points, tmp_path / "claim", serials)

    script = tmp_path / "claim" / "install.sh"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=30, check=False,
                              env={"PATH": os.environ["PATH"]})

    out = run("--thing", "wt-09", "--group", "fleet", "--serial", "SN:12#a@b", "--print-config")
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout) == bundle.fleet_provisioning_config(points, TEMPLATE, "wt-09", "nacelle-fleet",
                                                                          "SN:12#a@b")
    for bad in (["--thing", "WT-09", "--group", "fleet", "--serial", "1"], ["--thing", "wt-09\nx", "--group", "fleet",
                "--serial", "1"], ["--thing", "wt-09", "--group", "admin", "--serial", "1"],
                ["--thing", "wt-09", "--group", "fleet", "--serial", 'a"b'], ["--thing", "wt-09", "--group", "fleet"]):
        result = run(*bad, "--print-config")
        assert result.returncode == 2 and not result.stdout, (bad, result.stdout)


# ------------------------------------------------------------------ the command line


@pytest.fixture
def stack(iot: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deployed stack `nacelle` with the device outputs (reading outputs itself: tests/unit/test_packaging.py)."""
    from nacelle import aws_tools

    def outputs(name: str, region: str | None = None, client: Any = None) -> dict[str, str]:
        assert (name, region) == ("nacelle", REGION)
        return dict(OUTPUTS)

    monkeypatch.setattr(aws_tools, "stack_outputs", outputs)


def test_the_command_prints_the_install_steps_and_never_the_key(stack: None, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["aws", "provision-device", "wt-07", "--group", "canary", "--out", str(tmp_path),
            "--samconfig", str(tmp_path / "none.toml")]
    assert main(argv) == 0
    out = capsys.readouterr()
    (key,) = (tmp_path / "wt-07" / "certificates").glob("*.key")
    secret = "".join(key.read_text().splitlines()[1:3])
    assert secret not in (out.out + out.err).replace("\n", "")
    assert "sudo wt-07/install.sh ./GreengrassInstaller" in out.out and "--setup-system-service true" in out.out
    assert main([*argv[:2], "WT-07", *argv[3:]]) == 2
    assert "NAME 'WT-07' does not match the stack's DeviceNamePattern" in capsys.readouterr().err


def test_no_credentials_is_a_clear_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance metadata lookup (no network)
    for argv in (["aws", "devices"], ["aws", "twin-up", "--devices", "3"], ["aws", "twin-down"]):
        assert main([*argv, "--region", REGION, "--samconfig", str(tmp_path / "none.toml")]) == 2
        assert "no AWS credentials configured" in capsys.readouterr().err
