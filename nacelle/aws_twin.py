"""The digital-twin fleet (deploy/twin-fleet.yaml; docs/devices.md): `nacelle aws twin-up` / `twin-down`.

twin-up, each step idempotent (running it again resumes or changes only the counts):

1. The main stack's outputs and the account's IoT endpoints; the nacelle.sensors component version must exist.
2. The twin stack `<main>-twins`, first without instances (its claim policy and provisioning template must exist
   before any claim can be attached).
3. The claim certificate: created inactive, its key stored as an SSM SecureString under
   /nacelle/<main>/twin-claim/ (never in the template, its parameters or user data), then the twin claim policy
   attached, then activated. An existing active claim with that policy is kept.
4. The stack again with the canary and fleet counts; the instances provision themselves (a few minutes).

twin-down: the stack (instances, network, template, policies) goes, then every thing it provisioned (found by its
`twin` attribute) is decommissioned, then the claim certificate and its parameters.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nacelle import device_bundle as bundle
from nacelle.aws_device_cli import aws_errors, aws_session
from nacelle.aws_devices import StackDevices, client_error, decommission_device, endpoints, error_code
from shared.errors import ConfigurationError

REPO = Path(__file__).resolve().parents[1]
TWIN_TEMPLATE = REPO / "deploy" / "twin-fleet.yaml"
SENSORS_COMPONENT = "nacelle.sensors"
SENSORS_DIR = REPO / "greengrass_components" / SENSORS_COMPONENT
MAX_CANARY, MAX_FLEET = 10, 50  # the template's limits
# On-demand USD per hour in us-east-1 (docs/devices.md): instance, its public IPv4 address, 8 GB of gp3.
HOURLY_USD = {"t3.small": 0.0208, "t4g.small": 0.0168}
IPV4_USD, EBS_USD = 0.005, 8 * 0.08 / 730


def twin_stack_name(main: str) -> str:
    return f"{main}-twins"


def claim_path(main: str) -> str:
    return f"/nacelle/{main}/twin-claim"


def hourly_cost(devices: int, instance_type: str) -> float:
    return devices * (HOURLY_USD[instance_type] + IPV4_USD + EBS_USD)


@dataclass(frozen=True)
class TwinCounts:
    canary: int
    fleet: int

    @classmethod
    def of(cls, devices: int, canary: int) -> TwinCounts:
        if devices < 1:
            raise ConfigurationError(f"--devices {devices}: at least 1")
        if not 0 <= canary <= min(devices, MAX_CANARY):
            raise ConfigurationError(f"--canary {canary}: between 0 and {min(devices, MAX_CANARY)}")
        if devices - canary > MAX_FLEET:
            raise ConfigurationError(f"--devices {devices}: at most {MAX_FLEET} in the fleet group")
        return cls(canary, devices - canary)


def sensors_version(explicit: str | None) -> str:
    if explicit:
        return explicit
    path = SENSORS_DIR / "VERSION"
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read the nacelle.sensors version ({exc.strerror}); pass "
                                 f"--sensors-version") from exc


def ensure_sensors_component(greengrass: Any, s3: Any, bucket: str, account: str, version: str) -> str:
    """The nacelle.sensors component version exists in the region: "exists", or "created" from the recipe published
    under components/nacelle.sensors/<version>/ in the data bucket (whose artifacts it names)."""
    region = greengrass.meta.region_name
    arn = f"arn:aws:greengrass:{region}:{account}:components:{SENSORS_COMPONENT}:versions:{version}"
    try:
        greengrass.describe_component(arn=arn)
        return "exists"
    except client_error() as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise
    key = f"components/{SENSORS_COMPONENT}/{version}/recipe.json"
    try:
        recipe = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except client_error() as exc:
        if error_code(exc) not in ("NoSuchKey", "404"):
            raise
        raise ConfigurationError(f"{SENSORS_COMPONENT} {version} is neither a component version in {region} nor "
                                 f"published at s3://{bucket}/{key}: build and publish it first (docs/sensors.md)"
                                 ) from exc
    greengrass.create_component_version(inlineRecipe=recipe)
    return "created"


def twin_parameters(stack: StackDevices, points: bundle.Endpoints, hook_arn: str, counts: TwinCounts,
                    instance_type: str, sensors: str, nucleus_version: str) -> dict[str, str]:
    return {"CanaryCount": str(counts.canary), "FleetCount": str(counts.fleet), "InstanceType": instance_type,
            "CanaryThingGroupName": stack.groups["canary"], "FleetThingGroupName": stack.groups["fleet"],
            "CoreDevicePolicyName": stack.policy, "RoleAlias": stack.role_alias,
            "ProvisioningHookFunctionArn": hook_arn, "IotDataEndpoint": points.data,
            "IotCredentialEndpoint": points.credentials, "ClaimParameterPath": claim_path(stack.stack),
            "SensorsComponentVersion": sensors, "NucleusVersion": nucleus_version}


# -- CloudFormation ------------------------------------------------------------------------------------------
def _stack_status(cfn: Any, name: str) -> str | None:
    try:
        return str(cfn.describe_stacks(StackName=name)["Stacks"][0]["StackStatus"])
    except client_error() as exc:
        if "does not exist" in str(exc):  # CloudFormation's only signal for a missing stack (ValidationError)
            return None
        raise


def deploy_stack(cfn: Any, name: str, parameters: Mapping[str, str]) -> str:
    """Create or update the twin stack and wait; "unchanged" when there was nothing to update."""
    params = [{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()]
    body = TWIN_TEMPLATE.read_text(encoding="utf-8")
    status = _stack_status(cfn, name)
    if status == "ROLLBACK_COMPLETE":  # a first create that failed: it can only be deleted
        cfn.delete_stack(StackName=name)
        cfn.get_waiter("stack_delete_complete").wait(StackName=name)
        status = None
    try:
        if status is None:
            cfn.create_stack(StackName=name, TemplateBody=body, Parameters=params, Capabilities=["CAPABILITY_IAM"])
            waiter, action = "stack_create_complete", "created"
        else:
            try:
                cfn.update_stack(StackName=name, TemplateBody=body, Parameters=params, Capabilities=["CAPABILITY_IAM"])
            except client_error() as exc:
                if "No updates are to be performed" in str(exc):  # also only told in the message
                    return "unchanged"
                raise
            waiter, action = "stack_update_complete", "updated"
        cfn.get_waiter(waiter).wait(StackName=name, WaiterConfig={"Delay": 10, "MaxAttempts": 120})
    except Exception as exc:
        if isinstance(exc, client_error()):
            raise
        raise ConfigurationError(f"stack {name} did not complete ({exc}); its events say why: aws cloudformation "
                                 f"describe-stack-events --stack-name {name}") from exc
    return action


def stack_outputs_of(cfn: Any, name: str) -> dict[str, str]:
    stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


# -- the claim -------------------------------------------------------------------------------------------
def _get_parameter(ssm: Any, name: str) -> str | None:
    try:
        return str(ssm.get_parameter(Name=name, WithDecryption=False)["Parameter"]["Value"])
    except client_error() as exc:
        if error_code(exc) == "ParameterNotFound":
            return None
        raise


def _delete_certificate(iot: Any, cert_id: str) -> bool:
    """Deactivate, detach every policy, delete; False when it was gone already."""
    try:
        arn = iot.describe_certificate(certificateId=cert_id)["certificateDescription"]["certificateArn"]
        iot.update_certificate(certificateId=cert_id, newStatus="INACTIVE")
        for p in iot.list_attached_policies(target=arn).get("policies", []):
            iot.detach_policy(policyName=p["policyName"], target=arn)
        iot.delete_certificate(certificateId=cert_id)
        return True
    except client_error() as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise
        return False


def ensure_claim(iot: Any, ssm: Any, path: str, policy: str) -> tuple[str, bool]:
    """(certificate id, created now). An active claim with the policy is kept; one that is not (revoked, or its
    policy detached) is deleted and replaced. The new key is in SSM before the certificate can do anything."""
    current = _get_parameter(ssm, f"{path}/certificate-id")
    if current is not None:
        try:
            description = iot.describe_certificate(certificateId=current)["certificateDescription"]
            policies = {p["policyName"] for p in iot.list_attached_policies(target=description["certificateArn"])
                        .get("policies", [])}
            if description["status"] == "ACTIVE" and policy in policies:
                return current, False
        except client_error() as exc:
            if error_code(exc) != "ResourceNotFoundException":
                raise
        _delete_certificate(iot, current)
    created = iot.create_keys_and_certificate(setAsActive=False)
    ssm.put_parameter(Name=f"{path}/private-key", Value=created["keyPair"]["PrivateKey"], Type="SecureString",
                      Overwrite=True, Description="Nacelle twin fleet: claim certificate key")
    ssm.put_parameter(Name=f"{path}/certificate", Value=created["certificatePem"], Type="SecureString",
                      Overwrite=True, Description="Nacelle twin fleet: claim certificate")
    ssm.put_parameter(Name=f"{path}/certificate-id", Value=created["certificateId"], Type="String", Overwrite=True)
    iot.attach_policy(policyName=policy, target=created["certificateArn"])
    iot.update_certificate(certificateId=created["certificateId"], newStatus="ACTIVE")
    return str(created["certificateId"]), True


def remove_claim(iot: Any, ssm: Any, path: str) -> list[str]:
    done = []
    current = _get_parameter(ssm, f"{path}/certificate-id")
    if current is not None and _delete_certificate(iot, current):
        done.append(f"claim certificate {current[:12]}... deleted")
    for name in ("certificate-id", "certificate", "private-key"):
        try:
            ssm.delete_parameter(Name=f"{path}/{name}")
            done.append(f"parameter {path}/{name} deleted")
        except client_error() as exc:
            if error_code(exc) != "ParameterNotFound":
                raise
    return done


def twin_things(iot: Any, twin_stack: str) -> list[str]:
    things: list[str] = []
    for page in iot.get_paginator("list_things").paginate(attributeName="twin", attributeValue=twin_stack):
        things += [t["thingName"] for t in page.get("things", [])]
    return sorted(things)


# -- commands ---------------------------------------------------------------------------------------------
def _main(args: argparse.Namespace) -> tuple[Any, StackDevices, dict[str, str]]:
    from nacelle.aws_tools import DEFAULT_STACK_NAME, samconfig_stack_name, stack_outputs

    session = aws_session(args)
    name = args.stack_name or samconfig_stack_name(Path(args.samconfig)) or DEFAULT_STACK_NAME
    outputs = stack_outputs(name, session.region_name, client=session.client("cloudformation"))
    return session, StackDevices.from_outputs(name, outputs), outputs


def cmd_twin_up(args: argparse.Namespace) -> int:
    counts = TwinCounts.of(args.devices, args.canary)
    session, stack, outputs = _main(args)
    hook = outputs.get("ProvisioningHookFunctionArn")
    if not hook:
        raise ConfigurationError(f"stack {stack.stack} has no fleet provisioning (FleetProvisioning=disabled): the "
                                 f"twins provision through its hook; enable it and run `make deploy`")
    iot, gg, cfn, ssm = (session.client(s) for s in ("iot", "greengrassv2", "cloudformation", "ssm"))
    version = sensors_version(args.sensors_version)
    account = session.client("sts").get_caller_identity()["Account"]
    if ensure_sensors_component(gg, session.client("s3"), outputs["DataBucketName"], account, version) == "created":
        print(f"{SENSORS_COMPONENT} {version}: component version created from its published recipe", flush=True)
    points = endpoints(iot, stack)
    name = twin_stack_name(stack.stack)
    parameters = twin_parameters(stack, points, hook, counts, args.instance_type, version, args.nucleus_version)
    if _stack_status(cfn, name) in (None, "ROLLBACK_COMPLETE"):
        print(f"{name}: creating the network, roles and provisioning template (no instances yet)...", flush=True)
        deploy_stack(cfn, name, {**parameters, "CanaryCount": "0", "FleetCount": "0"})
    twin = stack_outputs_of(cfn, name)
    claim, created = ensure_claim(iot, ssm, claim_path(stack.stack), twin["ClaimPolicyName"])
    print(f"claim certificate {claim[:12]}... {'created' if created else 'kept'} (key: SSM SecureString "
          f"{claim_path(stack.stack)}/private-key)", flush=True)
    print(f"{name}: {counts.canary} canary + {counts.fleet} fleet {args.instance_type} instance(s)...", flush=True)
    action = deploy_stack(cfn, name, parameters)
    devices = counts.canary + counts.fleet
    print(f"{name} {action}: about {hourly_cost(devices, args.instance_type):.2f} USD/h (us-east-1 on-demand); "
          f"each instance provisions itself in a few minutes as twin-<instance id>")
    print("watch them arrive: nacelle aws devices (or the console's Fleet page); stop: make twin-down")
    return 0


def cmd_twin_down(args: argparse.Namespace) -> int:
    session, stack, _ = _main(args)
    iot, gg, cfn, ssm = (session.client(s) for s in ("iot", "greengrassv2", "cloudformation", "ssm"))
    name = twin_stack_name(stack.stack)
    things = twin_things(iot, name)
    if _stack_status(cfn, name) is not None:
        print(f"{name}: deleting (instances, network, provisioning template, policies)...", flush=True)
        cfn.delete_stack(StackName=name)
        cfn.get_waiter("stack_delete_complete").wait(StackName=name, WaiterConfig={"Delay": 10, "MaxAttempts": 120})
    for thing in things:
        for line in decommission_device(iot, gg, thing):
            print(f"  {line}")
    for line in remove_claim(iot, ssm, claim_path(stack.stack)):
        print(f"  {line}")
    print(f"{name} is gone; {len(things)} twin device(s) decommissioned")
    return 0


def add_twin_commands(aws: Any, common: argparse.ArgumentParser) -> None:
    def stack_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--stack-name", help="the main stack (default: samconfig.toml's stack_name, else nacelle)")
        p.add_argument("--region", help="default: the region of samconfig.toml's TrainingImageUri, else the "
                                        "AWS configuration's")
        p.add_argument("--samconfig", default="samconfig.toml", help="SAM config file (default samconfig.toml)")

    p = aws.add_parser("twin-up", parents=[common], help="start (or resize) the digital-twin fleet on EC2",
                       description="Deploy deploy/twin-fleet.yaml as <stack>-twins: N instances provisioning "
                                   "themselves into the canary (the first --canary) and fleet groups, running "
                                   "nacelle.sensors with its simulator. Costs money while it runs (docs/devices.md).")
    p.add_argument("--devices", type=int, default=3, help="number of twin turbines (default 3)")
    p.add_argument("--canary", type=int, default=1, help="how many of them in the canary group (default 1)")
    p.add_argument("--instance-type", choices=sorted(HOURLY_USD), default="t3.small", help="default t3.small")
    p.add_argument("--sensors-version", help=f"the {SENSORS_COMPONENT} component version (default: its VERSION file)")
    p.add_argument("--nucleus-version", default=bundle.NUCLEUS_VERSION,
                   help=f"default {bundle.NUCLEUS_VERSION}")
    stack_options(p)
    p.set_defaults(func=aws_errors(cmd_twin_up))

    p = aws.add_parser("twin-down", parents=[common], help="delete the digital-twin fleet and its devices",
                       description="Delete <stack>-twins, decommission every device it provisioned and the claim.")
    stack_options(p)
    p.set_defaults(func=aws_errors(cmd_twin_down))

