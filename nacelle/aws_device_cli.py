"""The core-device commands (docs/devices.md): `nacelle aws provision-device|provision-claim|devices|
decommission-device`, over nacelle/aws_devices.py; the AWS session and error handling they share with the twin fleet's
commands (nacelle/aws_twin.py)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nacelle import device_bundle as bundle
from nacelle.aws_devices import (
    NEVER_CONNECTED,
    ROLES,
    StackDevices,
    client_error,
    decommission_device,
    devices_table,
    endpoints,
    error_code,
    list_devices,
    provision_claim,
    provision_device,
)
from nacelle.console import print_json
from shared.devices import check_thing_name
from shared.errors import AdapterError, ConfigurationError


# -- commands ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Clients:
    iot: Any
    greengrass: Any
    stack: StackDevices


def aws_session(args: argparse.Namespace) -> Any:
    """A boto3 session in the deploy region (--region, else samconfig.toml's image region, else the AWS
    configuration's) with credentials, or a ConfigurationError saying how to configure them."""
    import boto3

    from nacelle.aws_tools import image_region, read_parameter_overrides

    region = args.region
    samconfig = Path(args.samconfig)
    if region is None and samconfig.is_file():
        uri = read_parameter_overrides(samconfig).get("TrainingImageUri")
        region = image_region(uri) if uri else None
    session = boto3.Session(region_name=region)
    if session.region_name is None:
        raise ConfigurationError("no AWS region: pass --region, run `nacelle aws images --region R` (samconfig.toml), "
                                 "or set AWS_DEFAULT_REGION")
    if session.get_credentials() is None:
        raise ConfigurationError("no AWS credentials configured: set AWS_PROFILE (or AWS_ACCESS_KEY_ID and "
                                 "AWS_SECRET_ACCESS_KEY), or run `aws configure` (docs/aws.md, Prerequisites)")
    return session


def clients(args: argparse.Namespace) -> Clients:
    """The stack (its outputs, read with the deploy helpers) and boto3 clients in its region."""
    from nacelle.aws_tools import DEFAULT_STACK_NAME, samconfig_stack_name, stack_outputs

    session = aws_session(args)
    stack = args.stack_name or samconfig_stack_name(Path(args.samconfig)) or DEFAULT_STACK_NAME
    outputs = stack_outputs(stack, session.region_name, client=session.client("cloudformation"))
    return Clients(session.client("iot"), session.client("greengrassv2"), StackDevices.from_outputs(stack, outputs))


def aws_errors(command: Any) -> Any:
    """An AWS error the steps did not expect ends the command with its operation and code (exit 2), not a trace."""
    def run(args: argparse.Namespace) -> int:
        try:
            return int(command(args))
        except client_error() as exc:
            operation = getattr(exc, "operation_name", "an AWS call")
            raise AdapterError(f"{operation} failed: {error_code(exc)}: {exc}") from exc

    run.__doc__ = command.__doc__
    return run


def cmd_provision_device(args: argparse.Namespace) -> int:
    check_thing_name(args.name, field="NAME")  # before any AWS call
    c = clients(args)
    done = provision_device(c.iot, c.stack, endpoints(c.iot, c.stack), args.name, args.group, Path(args.out),
                            args.rotate, args.nucleus_version)
    what = "new certificate" if done.issued else "certificate unchanged"
    print(f"{done.thing}: {c.stack.group(args.group)}, {what} {done.certificate_id[:12]}..., "
          f"policy {c.stack.policy}, bundle {done.directory}")
    for old in done.retired:
        print(f"  certificate {old[:12]}... deactivated and detached (the device needs the new one: "
              f"`sudo ./install.sh --certificate-only` on it)")
    print(f"on the device, as root, with {bundle.NUCLEUS_URL.format(version=args.nucleus_version)} unzipped to "
          f"./GreengrassInstaller and {done.directory} copied there:")
    print(f"  sudo {done.thing}/install.sh ./GreengrassInstaller")
    print(f"which checks {bundle.ROOT_CA} (fetch {bundle.ROOT_CA_URL}, or have {bundle.SYSTEM_ROOT_CA}) and Java "
          f"{bundle.JAVA_MIN}+, installs the certificate and runs:")
    print(f"  {bundle.install_command(f'{done.thing}/config.yaml', './GreengrassInstaller')}")
    return 0


def cmd_provision_claim(args: argparse.Namespace) -> int:
    from shared import settings

    c = clients(args)
    claim = provision_claim(c.iot, c.stack, endpoints(c.iot, c.stack), Path(args.out),
                            args.serial_pattern or settings.DEVICE_SERIAL_PATTERN, args.nucleus_version)
    print(f"claim certificate {claim.certificate_id[:12]}... (policy {c.stack.claim_policy}, template "
          f"{c.stack.template}) in {args.out}")
    print(f"on each device, as root, with {bundle.NUCLEUS_URL.format(version=args.nucleus_version)} unzipped to "
          f"./GreengrassInstaller and {bundle.FLEET_PLUGIN_URL} saved as "
          f"./GreengrassInstaller/{bundle.FLEET_PLUGIN}.jar:")
    print(f"  sudo {Path(args.out).name}/install.sh --thing <name> --group canary|fleet --serial <serial> "
          f"./GreengrassInstaller")
    print("revoke the claim when the devices are in: `aws iot update-certificate --new-status INACTIVE "
          f"--certificate-id {claim.certificate_id}`")
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    c = clients(args)
    rows = list_devices(c.iot, c.greengrass, c.stack)
    if args.json:
        print_json(rows)
    elif not rows:
        print(f"no core devices and nothing in {', '.join(c.stack.groups.values())} yet "
              f"(`nacelle aws provision-device NAME --group canary`)")
    else:
        print(devices_table(rows))
        if any(r["status"] == NEVER_CONNECTED for r in rows):
            print("(status -: provisioned, never connected; --json lists every component)")
    return 0


def cmd_decommission_device(args: argparse.Namespace) -> int:
    check_thing_name(args.name, field="NAME")
    session = aws_session(args)  # no stack needed: also after `make undeploy`
    done = decommission_device(session.client("iot"), session.client("greengrassv2"), args.name)
    for line in done or [f"nothing left of {args.name}"]:
        print(line)
    return 0


def add_device_commands(aws: Any, common: argparse.ArgumentParser) -> None:
    """`nacelle aws provision-device|provision-claim|devices|decommission-device` (docs/devices.md)."""
    def stack_options(p: argparse.ArgumentParser, stack: bool = True) -> None:
        if stack:
            p.add_argument("--stack-name", help="default: samconfig.toml's stack_name, else nacelle")
        p.add_argument("--region", help="default: the region of samconfig.toml's TrainingImageUri, else the "
                                        "AWS configuration's")
        p.add_argument("--samconfig", default="samconfig.toml", help="SAM config file (default samconfig.toml)")

    p = aws.add_parser("provision-device", parents=[common], help="create a core device and its install bundle",
                       description="Create the thing, a certificate with the stack's core-device policy and the "
                                   "nucleus install bundle <out>/<NAME>/ (key 0600). Running it again issues no "
                                   "second certificate unless --rotate.")
    p.add_argument("name", metavar="NAME", help="thing name (letters, digits, '-', '_'; the stack's "
                                                "DeviceNamePattern)")
    p.add_argument("--group", required=True, choices=ROLES, help="the rollout group")
    p.add_argument("--out", default="devices", help="bundle parent directory (default devices)")
    p.add_argument("--rotate", action="store_true", help="issue a new certificate; the old one is deactivated "
                                                         "once the new one is attached and active")
    p.add_argument("--nucleus-version", default=bundle.NUCLEUS_VERSION,
                   help=f"the Greengrass nucleus installer version (default {bundle.NUCLEUS_VERSION})")
    stack_options(p)
    p.set_defaults(func=aws_errors(cmd_provision_device))

    p = aws.add_parser("provision-claim", parents=[common], help="a claim certificate bundle for fleet provisioning",
                       description="Create a claim certificate with the stack's claim policy and write the claim "
                                   "bundle: certificate, key (0600) and install.sh, which writes the fleet-"
                                   "provisioning plugin's config.yaml for a device and installs the nucleus.")
    p.add_argument("--out", required=True, help="bundle directory (refused when it already holds a claim key)")
    p.add_argument("--serial-pattern", help="the stack's DeviceSerialPattern, when not the default")
    p.add_argument("--nucleus-version", default=bundle.NUCLEUS_VERSION,
                   help=f"the Greengrass nucleus installer version (default {bundle.NUCLEUS_VERSION})")
    stack_options(p)
    p.set_defaults(func=aws_errors(cmd_provision_claim))

    p = aws.add_parser("devices", parents=[common], help="core devices: group, status, last update, components",
                       description="Every Greengrass core device and every thing of the canary and fleet groups.")
    p.add_argument("--json", action="store_true", help="print JSON (every installed component)")
    stack_options(p)
    p.set_defaults(func=aws_errors(cmd_devices))

    p = aws.add_parser("decommission-device", parents=[common], help="retire a core device for good",
                       description="Deactivate and delete its certificates, delete the thing and the Greengrass core "
                                   "device. Its data, alerts and history stay. An interrupted run is finished by "
                                   "running it again.")
    p.add_argument("name", metavar="NAME", help="the thing name of the core device to retire")
    stack_options(p, stack=False)
    p.set_defaults(func=aws_errors(cmd_decommission_device))

