"""Fleet provisioning's pre-provisioning hook: may this claim-certificate holder become this core device?

A device holding the shared claim certificate asks (RegisterThing) to become thing `ThingName` with serial
`SerialNumber` in thing group `ThingGroupName`. It is allowed only when

* the name and serial match the stack's patterns (DeviceNamePattern, DeviceSerialPattern);
* the group is the canary or the fleet group (no other group: the claim cannot place a device anywhere else);
* no thing of that name exists yet, or it exists without any certificate (created ahead of its device), or the
  thing's only certificate is the very one being provisioned (the same request retried after its answer was
  lost). Anything else would attach a new certificate to an existing turbine and let the claim holder speak as
  it: replacing a device goes through decommissioning first (docs/devices.md), which deletes the thing, so an
  interrupted decommissioning must be run to its end before the name is free again.

The decision depends only on the request and the registry, so a redelivered request gets the same answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from shared.devices import ATTRIBUTE_VALUE, THING_NAME
from shared.errors import ConfigurationError
from shared.ports import ThingRegistry

THING_NAME_PARAMETER = "ThingName"
GROUP_PARAMETER = "ThingGroupName"
SERIAL_PARAMETER = "SerialNumber"


@dataclass(frozen=True)
class ProvisioningPolicy:
    name_pattern: str
    serial_pattern: str
    groups: frozenset[str]  # the canary and the fleet group

    def __post_init__(self) -> None:
        for field in ("name_pattern", "serial_pattern"):
            try:
                re.compile(getattr(self, field))
            except re.error as exc:
                raise ConfigurationError(f"{field} {getattr(self, field)!r} is not a regular expression: {exc}"
                                         ) from exc


@dataclass(frozen=True)
class ProvisioningRequest:
    """The hook's input (payload version 2020-04-01); `parameters` as the device sent them."""

    certificate_id: str
    claim_certificate_id: str
    template_arn: str
    parameters: dict[str, Any]

    @classmethod
    def from_event(cls, event: Any) -> ProvisioningRequest:
        if not isinstance(event, dict):
            raise ValueError(f"the hook's input must be an object, got {type(event).__name__}")
        parameters = event.get("parameters")
        if not isinstance(parameters, dict):
            raise ValueError("field parameters: must be an object")
        strings = {}
        for field in ("certificateId", "claimCertificateId", "templateArn"):
            value = event.get(field)
            if not isinstance(value, str) or not value:
                raise ValueError(f"field {field}: must be a non-empty string")
            strings[field] = value
        return cls(strings["certificateId"], strings["claimCertificateId"], strings["templateArn"], parameters)


@dataclass(frozen=True)
class ProvisioningDecision:
    allowed: bool
    reason: str
    thing_name: str | None = None

    def response(self) -> dict[str, Any]:
        """The hook's return value: no parameter overrides, the device's values stand as checked."""
        return {"allowProvisioning": self.allowed}


def _parameter(request: ProvisioningRequest, name: str) -> str:
    value = request.parameters.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"parameter {name}: missing or not a non-empty string")
    return value


def decide(request: ProvisioningRequest, policy: ProvisioningPolicy, registry: ThingRegistry) -> ProvisioningDecision:
    def refuse(reason: str, thing: str | None = None) -> ProvisioningDecision:
        return ProvisioningDecision(False, reason, thing)

    try:
        thing, group, serial = (_parameter(request, p) for p in (THING_NAME_PARAMETER, GROUP_PARAMETER,
                                                                  SERIAL_PARAMETER))
    except ValueError as exc:
        return refuse(str(exc))
    if not THING_NAME.fullmatch(thing) or not re.search(policy.name_pattern, thing):
        return refuse(f"parameter {THING_NAME_PARAMETER}: {thing[:130]!r} does not match {policy.name_pattern}")
    if not ATTRIBUTE_VALUE.fullmatch(serial) or not re.search(policy.serial_pattern, serial):
        return refuse(f"parameter {SERIAL_PARAMETER}: {serial[:70]!r} does not match {policy.serial_pattern}", thing)
    if group not in policy.groups:
        return refuse(f"parameter {GROUP_PARAMETER}: {group[:130]!r} is not one of {sorted(policy.groups)}", thing)
    certificates = registry.thing_certificates(thing)
    if certificates is None or certificates == ():
        return ProvisioningDecision(True, "new device", thing)
    if certificates == (request.certificate_id,):
        return ProvisioningDecision(True, "the same request again (its certificate is already the thing's)", thing)
    return refuse(f"thing {thing} already exists with another certificate: decommission it before provisioning "
                  f"a replacement", thing)
