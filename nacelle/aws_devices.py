"""Core devices on AWS (docs/devices.md): what `nacelle aws provision-device|provision-claim|devices|
decommission-device` do (the commands themselves: nacelle/aws_device_cli.py).

provision-device, one device at a time. The bundle directory `<out>/<thing>/` is the journal: `bundle.json` names
the device's certificate (never a secret) and is rewritten atomically at each step, so a run killed anywhere is
finished by running it again.

1. The thing exists (created if not) in the requested group; a thing in the other group is refused.
2. A certificate is issued only when the bundle has none for the thing, or with `--rotate`: CreateKeysAndCertificate
   (inactive), its key written 0600 into the bundle, the journal updated (state `issued`, the certificates it
   replaces), then CoreDevicePolicy attached, the certificate attached to the thing, and only then activated
   (state `active`).
3. Rotation: only after the new certificate is attached and active are the replaced ones deactivated and detached
   (they stay in the registry, INACTIVE, for the audit trail), and their keys removed from the bundle.
4. config.yaml and install.sh are written for the current certificate.

Re-running without `--rotate` issues nothing: an active certificate of the journal is kept, an `issued` one is
finished. A certificate the journal calls active that is no longer ACTIVE was revoked: only `--rotate` goes on.
An active certificate of the thing that the journal neither names nor replaces is refused, before and after the
certificate steps: only `--rotate` (which replaces it) or decommissioning goes on. provision-device never marks a
thing claimable (docs/devices.md): a thing it created is never the fleet-provisioning hook's to hand out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nacelle import device_bundle as bundle
from nacelle.console import iso, table
from shared.aws.iot_registry import AwsThingRegistry
from shared.devices import certificate_id, check_thing_name
from shared.errors import AdapterError, ConfigurationError
from shared.usecases.provisioning import CLAIMABLE_ATTRIBUTE

JOURNAL = "bundle.json"
CERTIFICATES = "certificates"
ROLES = ("canary", "fleet")
TABLE_WIDTH = 100
NEVER_CONNECTED = "NEVER_CONNECTED"  # a thing of the two groups Greengrass has never heard from


def error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def client_error() -> type[Exception]:
    from botocore.exceptions import ClientError

    return ClientError


# -- the stack -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StackDevices:
    """What a stack's outputs say about its core devices."""

    stack: str
    policy: str
    groups: dict[str, str]  # role (canary | fleet) -> thing group name
    role_alias: str
    name_pattern: str | None = None
    template: str | None = None  # fleet provisioning (FleetProvisioning=enabled)
    claim_policy: str | None = None

    @classmethod
    def from_outputs(cls, stack: str, outputs: Mapping[str, str]) -> StackDevices:
        required = ("CoreDevicePolicyName", "CanaryThingGroupName", "FleetThingGroupName",
                    "GreengrassTokenExchangeRoleAlias")
        missing = [k for k in required if not outputs.get(k)]
        if missing:
            raise ConfigurationError(f"stack {stack} has no output {', '.join(missing)}: it predates device "
                                     f"provisioning; run `make deploy`")
        return cls(stack, outputs["CoreDevicePolicyName"],
                   {"canary": outputs["CanaryThingGroupName"], "fleet": outputs["FleetThingGroupName"]},
                   outputs["GreengrassTokenExchangeRoleAlias"], outputs.get("DeviceNamePattern") or None,
                   outputs.get("ProvisioningTemplateName") or None, outputs.get("ClaimPolicyName") or None)

    def group(self, role: str) -> str:
        if role not in self.groups:
            raise ConfigurationError(f"--group {role!r}: must be one of {', '.join(self.groups)}")
        return self.groups[role]


def endpoints(iot: Any, stack: StackDevices) -> bundle.Endpoints:
    """The account's ATS data endpoint and credentials endpoint (iot:DescribeEndpoint)."""
    try:
        data = iot.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
        credentials = iot.describe_endpoint(endpointType="iot:CredentialProvider")["endpointAddress"]
    except client_error() as exc:
        raise AdapterError(f"IoT DescribeEndpoint failed: {error_code(exc)}") from exc
    return bundle.Endpoints(iot.meta.region_name, str(data), str(credentials), stack.role_alias)


# -- the journal -----------------------------------------------------------------------------------------
@dataclass
class Journal:
    thing: str
    group: str
    certificate_id: str
    certificate_arn: str
    state: str  # issued | active
    replaces: list[str]

    @classmethod
    def read(cls, directory: Path, thing: str) -> Journal | None:
        path = directory / JOURNAL
        if not path.exists():
            return None
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            journal = cls(str(doc["thing"]), str(doc["group"]), str(doc["certificate_id"]),
                          str(doc["certificate_arn"]), str(doc["state"]), [str(r) for r in doc["replaces"]])
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigurationError(f"{path}: not a device bundle journal ({exc}); move it away to start over"
                                     ) from exc
        if journal.thing != thing:
            raise ConfigurationError(f"{path}: the bundle of thing {journal.thing!r}, not {thing!r}")
        if journal.state not in ("issued", "active"):
            raise ConfigurationError(f"{path}: field state {journal.state!r} is not issued or active")
        return journal

    def write(self, directory: Path, **extra: Any) -> None:
        doc = {"thing": self.thing, "group": self.group, "certificate_id": self.certificate_id,
               "certificate_arn": self.certificate_arn, "state": self.state, "replaces": self.replaces, **extra}
        bundle.write_public(directory / JOURNAL, json.dumps(doc, indent=2) + "\n", 0o600)


def _certificate_files(directory: Path, cert_id: str) -> tuple[Path, Path]:
    return (directory / CERTIFICATES / f"{cert_id}.pem.crt", directory / CERTIFICATES / f"{cert_id}.private.pem.key")


# -- IoT registry steps (each idempotent) -----------------------------------------------------------------
def _ensure_thing(iot: Any, thing: str) -> None:
    try:
        iot.describe_thing(thingName=thing)
        return
    except client_error() as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise AdapterError(f"IoT DescribeThing {thing} failed: {error_code(exc)}") from exc
    try:
        iot.create_thing(thingName=thing)
    except client_error() as exc:
        if error_code(exc) != "ResourceAlreadyExistsException":
            raise AdapterError(f"IoT CreateThing {thing} failed: {error_code(exc)}") from exc


def _thing_groups(iot: Any, thing: str) -> set[str]:
    names: set[str] = set()
    for page in iot.get_paginator("list_thing_groups_for_thing").paginate(thingName=thing):
        names |= {g["groupName"] for g in page.get("thingGroups", [])}
    return names


def _ensure_group(iot: Any, stack: StackDevices, thing: str, role: str) -> None:
    """The canary and fleet groups are disjoint: a device in the other one is not moved behind the operator's back."""
    wanted = stack.group(role)
    current = _thing_groups(iot, thing)
    other = next((g for r, g in stack.groups.items() if r != role and g in current), None)
    if other is not None:
        raise ConfigurationError(f"thing {thing} is in {other}, not {wanted}: the two groups are disjoint; to move it, "
                                 f"`aws iot remove-thing-from-thing-group --thing-group-name {other} --thing-name "
                                 f"{thing}`, then run this again")
    if wanted not in current:
        iot.add_thing_to_thing_group(thingGroupName=wanted, thingName=thing)


def _principals(iot: Any, thing: str) -> dict[str, str]:
    """certificate id -> its ARN, of every certificate attached to the thing."""
    out: dict[str, str] = {}
    for page in iot.get_paginator("list_thing_principals").paginate(thingName=thing):
        for arn in page.get("principals", []):
            if (cert := certificate_id(arn)) is not None:
                out[cert] = arn
    return out


def _certificate(iot: Any, cert_id: str) -> dict[str, Any] | None:
    """The certificate's description (status, certificateArn, ...); None when it was deleted."""
    try:
        return dict(iot.describe_certificate(certificateId=cert_id)["certificateDescription"])
    except client_error() as exc:
        if error_code(exc) == "ResourceNotFoundException":
            return None
        raise AdapterError(f"IoT DescribeCertificate {cert_id[:12]}... failed: {error_code(exc)}") from exc


def _status(iot: Any, cert_id: str) -> str | None:
    described = _certificate(iot, cert_id)
    return None if described is None else str(described["status"])


def _active(iot: Any, attached: Mapping[str, str]) -> dict[str, str]:
    return {c: arn for c, arn in attached.items() if _status(iot, c) == "ACTIVE"}


def _refuse_foreign(thing: str, active: Mapping[str, str], journal: Journal) -> None:
    """An active certificate of the thing that this bundle neither issued nor replaces: someone else can speak as
    the turbine (another --out, a claim, a hand-made one). Never finished over silently."""
    foreign = sorted(set(active) - {journal.certificate_id} - set(journal.replaces))
    if foreign:
        raise ConfigurationError(f"thing {thing} also holds active certificate(s) {', '.join(foreign)}, which this "
                                 f"bundle did not issue: `nacelle aws decommission-device {thing}` retires the thing "
                                 f"and every certificate of it; --rotate issues a new certificate and deactivates "
                                 f"them")


def _attach(iot: Any, stack: StackDevices, thing: str, arn: str) -> None:
    iot.attach_policy(policyName=stack.policy, target=arn)  # attaching again is a no-op
    iot.attach_thing_principal(thingName=thing, principal=arn)


def _retire(iot: Any, stack: StackDevices, thing: str, cert_id: str, arn: str) -> None:
    """Deactivate, then detach from the thing and the policy; kept INACTIVE in the registry."""
    iot.update_certificate(certificateId=cert_id, newStatus="INACTIVE")
    for detach in (lambda: iot.detach_thing_principal(thingName=thing, principal=arn),
                   lambda: iot.detach_policy(policyName=stack.policy, target=arn)):
        try:
            detach()
        except client_error() as exc:  # already detached by an earlier, interrupted run
            if error_code(exc) != "ResourceNotFoundException":
                raise


@dataclass(frozen=True)
class Provisioned:
    thing: str
    directory: Path
    certificate_id: str
    issued: bool  # a new certificate in this run
    retired: tuple[str, ...]  # certificates deactivated in this run


def _issue(iot: Any, directory: Path, thing: str, role: str, replaces: list[str]) -> Journal:
    created = iot.create_keys_and_certificate(setAsActive=False)
    cert_file, key_file = _certificate_files(directory, created["certificateId"])
    bundle.write_private(key_file, created["keyPair"]["PrivateKey"])  # first, before anything refers to it
    bundle.write_public(cert_file, created["certificatePem"])
    journal = Journal(thing, role, created["certificateId"], created["certificateArn"], "issued", replaces)
    journal.write(directory)
    return journal


def provision_device(iot: Any, stack: StackDevices, points: bundle.Endpoints, thing: str, role: str, out: Path,
                     rotate: bool = False, nucleus_version: str = bundle.NUCLEUS_VERSION) -> Provisioned:
    check_thing_name(thing, stack.name_pattern, field="NAME")
    stack.group(role)
    directory = bundle.private_directory(Path(out) / thing)
    journal = Journal.read(directory, thing)
    _ensure_thing(iot, thing)
    _ensure_group(iot, stack, thing, role)
    attached = _principals(iot, thing)
    active = _active(iot, attached)

    issued = False
    if journal is not None and journal.state == "issued":  # a run killed before the certificate was active: finish it
        if rotate:  # and, asked to, replace whatever else became active meanwhile
            journal.replaces = sorted((set(journal.replaces) | set(active)) - {journal.certificate_id})
            journal.write(directory)
    elif rotate or (journal is None and not active):
        journal = _issue(iot, directory, thing, role, sorted(active))
        issued = True
    elif journal is None:
        raise ConfigurationError(f"thing {thing} already has active certificate(s) "
                                 f"{', '.join(c[:12] + '...' for c in sorted(active))}; their private key is only in "
                                 f"the bundle written when they were issued (its --out). --rotate issues a new one "
                                 f"and deactivates them")
    elif journal.certificate_id not in active:
        status = _status(iot, journal.certificate_id) or "deleted"
        attached_text = "" if journal.certificate_id in attached else ", not attached to the thing"
        raise ConfigurationError(f"certificate {journal.certificate_id[:12]}... of {directory} is {status}"
                                 f"{attached_text} (revoked or rotated elsewhere): --rotate issues a new one")
    _refuse_foreign(thing, active, journal)

    if journal.state == "issued":  # attach first, activate last: never an active certificate without its policy
        _attach(iot, stack, thing, journal.certificate_arn)
        iot.update_certificate(certificateId=journal.certificate_id, newStatus="ACTIVE")
        journal.state = "active"
        journal.write(directory)
    else:
        iot.attach_policy(policyName=stack.policy, target=journal.certificate_arn)  # still there (a no-op if so)
    # Again now: one attached while this run held the thing without an active certificate is caught here.
    _refuse_foreign(thing, _active(iot, _principals(iot, thing)), journal)
    retired = []
    for old in journal.replaces:
        if old != journal.certificate_id:
            _retire(iot, stack, thing, old, attached.get(old) or _arn_like(journal.certificate_arn, old))
            for path in _certificate_files(directory, old):
                path.unlink(missing_ok=True)
            retired.append(old)
    journal.replaces = []
    journal.group = role
    journal.write(directory, stack=stack.stack, region=points.region, nucleus_version=nucleus_version)
    _render(directory, thing, journal.certificate_id, points, nucleus_version)
    return Provisioned(thing, directory, journal.certificate_id, issued, tuple(retired))


def _arn_like(arn: str, cert_id: str) -> str:
    return arn.rsplit("/", 1)[0] + "/" + cert_id


def _render(directory: Path, thing: str, cert_id: str, points: bundle.Endpoints, nucleus_version: str) -> None:
    bundle.write_public(directory / "config.yaml",
                        bundle.config_text(bundle.nucleus_config(thing, points, nucleus_version)))
    bundle.write_public(directory / "install.sh", bundle.device_install_script(thing, cert_id, nucleus_version),
                        0o700)


# -- claims ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Claim:
    certificate_id: str
    certificate_arn: str
    certificate_pem: str
    private_key: str


def create_claim(iot: Any, policy: str) -> Claim:
    """A claim certificate with ClaimCertificatePolicy: created inactive, activated once the policy is on it."""
    created = iot.create_keys_and_certificate(setAsActive=False)
    iot.attach_policy(policyName=policy, target=created["certificateArn"])
    iot.update_certificate(certificateId=created["certificateId"], newStatus="ACTIVE")
    return Claim(created["certificateId"], created["certificateArn"], created["certificatePem"],
                 created["keyPair"]["PrivateKey"])


def provision_claim(iot: Any, stack: StackDevices, points: bundle.Endpoints, out: Path, serial_pattern: str,
                    nucleus_version: str = bundle.NUCLEUS_VERSION) -> Claim:
    if not stack.template or not stack.claim_policy:
        raise ConfigurationError(f"stack {stack.stack} has no fleet provisioning (FleetProvisioning=disabled): set "
                                 f"it to enabled in samconfig.toml's parameter_overrides and run `make deploy`")
    directory = bundle.private_directory(Path(out))
    if (directory / bundle.CLAIM_KEY_FILE).exists():
        raise ConfigurationError(f"{directory} already holds a claim key: use another --out (or revoke that claim "
                                 f"and remove the directory)")
    claim = create_claim(iot, stack.claim_policy)
    bundle.write_private(directory / bundle.CLAIM_KEY_FILE, claim.private_key)
    bundle.write_public(directory / bundle.CLAIM_CERT_FILE, claim.certificate_pem)
    bundle.write_public(directory / "claim.json", json.dumps(
        {"certificate_id": claim.certificate_id, "certificate_arn": claim.certificate_arn, "stack": stack.stack,
         "template": stack.template, "region": points.region}, indent=2) + "\n")
    bundle.write_public(directory / "install.sh", bundle.claim_install_script(
        points, stack.template, stack.name_pattern or "^[A-Za-z0-9_-]{1,128}$", serial_pattern, stack.groups,
        nucleus_version), 0o700)
    return claim


# -- listing ---------------------------------------------------------------------------------------------
def _paginate(client: Any, method: str, key: str, **kwargs: Any) -> list[Any]:
    items: list[Any] = []
    for page in client.get_paginator(method).paginate(**kwargs):
        items += page.get(key, [])
    return items


def list_devices(iot: Any, greengrass: Any, stack: StackDevices) -> list[dict[str, Any]]:
    """Every core device of the account and every thing of the two groups, with its group, status, last status
    update and installed component versions."""
    role_of: dict[str, str] = {}
    for role, group in stack.groups.items():
        for thing in _paginate(iot, "list_things_in_thing_group", "things", thingGroupName=group):
            role_of[thing] = role
    cores = {d["coreDeviceThingName"]: d for d in _paginate(greengrass, "list_core_devices", "coreDevices")}
    rows = []
    for thing in sorted(role_of.keys() | cores.keys()):
        core = cores.get(thing)
        components = {} if core is None else {
            c["componentName"]: c["componentVersion"]
            for c in _paginate(greengrass, "list_installed_components", "installedComponents",
                               coreDeviceThingName=thing)}
        rows.append({"thing": thing, "group": role_of.get(thing), "status": core["status"] if core else
                     NEVER_CONNECTED, "last_status_update_at": core.get("lastStatusUpdateTimestamp") if core
                     else None, "components": dict(sorted(components.items()))})
    return rows


def _model(components: Mapping[str, str]) -> str:
    """The model version as operators say it (nacelle.model 7.0.0 -> v7)."""
    version = components.get("nacelle.model")
    return f"v{version.split('.')[0]}" if version else "-"


def _short(components: Mapping[str, str]) -> str:
    names = {"aws.greengrass.Nucleus": "nucleus"}
    ours = sorted((n not in names, names.get(n, n.removeprefix("nacelle.")), v) for n, v in components.items()
                  if n != "nacelle.model" and (n.startswith("nacelle.") or n in names))
    return "  ".join(f"{name} {version}" for _, name, version in sorted(ours, key=lambda o: not o[0])) or "-"


def devices_table(rows: list[dict[str, Any]], width: int = TABLE_WIDTH) -> str:
    """One line per device within `width` columns; the components cell is cut with "..." (--json has them all)."""
    cells = [[r["thing"], r["group"] or "-", "-" if r["status"] == NEVER_CONNECTED else r["status"],
              iso(r["last_status_update_at"]) or "-", _model(r["components"]), _short(r["components"])] for r in rows]
    headers = ["device", "group", "status", "last status update", "model", "components"]
    last = len(headers) - 1
    widths = [max(len(headers[i]), *(len(c[i]) for c in cells)) + 2 for i in range(last)]
    room = {last: max(12, width - sum(widths))}
    room[0] = widths[0] - 2 - max(0, sum(widths) + room[last] - width)  # very long names give way too
    for c in cells:
        for i, limit in room.items():
            if len(c[i]) > limit:
                c[i] = c[i][:max(limit, 6) - 3] + "..."
    return table(headers, cells)


# -- decommissioning ------------------------------------------------------------------------------------
# The certificate ids a run works through are written on the thing before anything is detached from it: once a
# certificate is detached, ListThingPrincipals no longer finds it, and a run killed there would leave it behind.
# Each certificate then goes inactive, loses its policies, leaves the thing and is deleted, every step a no-op when
# already done; the thing goes last, so whatever a killed run left, the next run still finds through it.
DECOMMISSION_ATTRIBUTE = "nacelle_decommission"
RECORDED_IDS = 12  # an attribute value holds 800 characters: 12 ids of 64 and their commas


def _record(iot: Any, thing: str, cert_ids: list[str]) -> None:
    # "" removes an attribute: the claimable mark goes too, so a thing being emptied is never claimed.
    attributes = {DECOMMISSION_ATTRIBUTE: ",".join(cert_ids), CLAIMABLE_ATTRIBUTE: ""}
    iot.update_thing(thingName=thing, attributePayload={"attributes": attributes, "merge": True})


def _next_batch(iot: Any, thing: str) -> list[str]:
    """The certificate ids an earlier run recorded, or else (recorded now) up to RECORDED_IDS of those still
    attached; [] when the thing is gone or has none left."""
    attributes = AwsThingRegistry(iot).thing_attributes(thing)
    if attributes is None:
        return []
    recorded = [c for c in attributes.get(DECOMMISSION_ATTRIBUTE, "").split(",") if c]
    if recorded:
        return recorded
    batch = sorted(_principals(iot, thing))[:RECORDED_IDS]
    if batch:
        _record(iot, thing, batch)
    return batch


def _ignore_not_found(call: Any, **kwargs: Any) -> None:
    try:
        call(**kwargs)
    except client_error() as exc:  # already done by an earlier, interrupted run
        if error_code(exc) != "ResourceNotFoundException":
            raise


def _remove_certificate(iot: Any, thing: str, cert_id: str) -> str | None:
    """Deactivate, detach its policies, detach it from the thing, delete it (kept, inactive, when another thing
    still holds it). None when an earlier run already deleted it."""
    described = _certificate(iot, cert_id)
    if described is None:
        return None
    arn = str(described["certificateArn"])
    if described["status"] not in ("INACTIVE", "REVOKED"):
        iot.update_certificate(certificateId=cert_id, newStatus="INACTIVE")
    for policy in _paginate(iot, "list_attached_policies", "policies", target=arn):
        _ignore_not_found(iot.detach_policy, policyName=policy["policyName"], target=arn)
    _ignore_not_found(iot.detach_thing_principal, thingName=thing, principal=arn)
    if _paginate(iot, "list_principal_things", "things", principal=arn):  # shared with another thing
        return f"certificate {cert_id[:12]}... deactivated (attached to other things too)"
    _ignore_not_found(iot.delete_certificate, certificateId=cert_id, forceDelete=False)
    return f"certificate {cert_id[:12]}... deleted"


def decommission_device(iot: Any, greengrass: Any, thing: str) -> list[str]:
    """Deactivate and delete every certificate of the thing, delete the thing and its Greengrass core device.
    Idempotent: what is already gone is skipped, and a run killed anywhere is finished by the next. Returns what
    was done."""
    done: list[str] = []
    finished: set[str] = set()
    while batch := _next_batch(iot, thing):
        if finished.issuperset(batch):
            raise AdapterError(f"thing {thing} still holds certificate(s) {', '.join(batch)} after they were "
                               f"detached: run decommission-device again")
        done += [line for c in batch if (line := _remove_certificate(iot, thing, c)) is not None]
        finished |= set(batch)
        _record(iot, thing, [])
    try:
        iot.delete_thing(thingName=thing)
        done.append(f"thing {thing} deleted")
    except client_error() as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise AdapterError(f"IoT DeleteThing {thing} failed: {error_code(exc)}") from exc
    try:
        greengrass.delete_core_device(coreDeviceThingName=thing)
        done.append(f"Greengrass core device {thing} deleted")
    except client_error() as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise AdapterError(f"Greengrass DeleteCoreDevice {thing} failed: {error_code(exc)}") from exc
    return done
