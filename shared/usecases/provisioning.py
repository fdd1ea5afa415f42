"""Fleet provisioning's pre-provisioning hook: may this claim-certificate holder become this core device?

A device holding the shared claim certificate asks (RegisterThing) to become thing `ThingName` with serial
`SerialNumber` in thing group `ThingGroupName`. It is allowed only when

* the name and serial match the stack's patterns (DeviceNamePattern, DeviceSerialPattern);
* the group is the canary or the fleet group (no other group: the claim cannot place a device anywhere else);
* no thing of that name exists yet; or the thing's only certificate is the very one being provisioned (the same
  request retried after its answer was lost); or an operator marked the thing claimable (attribute
  `nacelle_claimable=true`), it has no certificate, and its only group is the requested one (the template keeps an
  existing thing's groups, so the group check must hold for the thing itself). Any other existing thing is refused:
  one created by `provision-device` has no certificate for a moment, one left by an interrupted run or
  decommissioning has none at all, and attaching the claim holder's certificate to it would let it speak as that
  turbine;
* it wins the name's reservation: a conditional write of (RESERVATIONS, thing) -> certificate id in the state
  table. Two devices asking for one new name at once both find no thing in the registry; only the first write
  wins, and the same certificate asking again finds its own reservation. A reservation only has to outlive the
  RegisterThing it admits (after that the registry answers), so an expired one may be taken over.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.devices import ATTRIBUTE_VALUE, THING_NAME
from shared.errors import ConfigurationError
from shared.ports import StateStore, ThingRegistry

THING_NAME_PARAMETER = "ThingName"
GROUP_PARAMETER = "ThingGroupName"
SERIAL_PARAMETER = "SerialNumber"
CLAIMABLE_ATTRIBUTE = "nacelle_claimable"  # set by an operator only (docs/devices.md); provision-device never sets it
RESERVATIONS = "provisioning"  # the state table's partition: sk the thing name, certificate_id the winner
RESERVATION_S = 900.0


@dataclass(frozen=True)
class ProvisioningPolicy:
    name_pattern: str
    serial_pattern: str
    groups: frozenset[str]  # the canary and the fleet group
    reservation_s: float = RESERVATION_S

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


@dataclass(frozen=True)
class ProvisioningDeps:
    registry: ThingRegistry
    reservations: StateStore
    policy: ProvisioningPolicy
    clock: Callable[[], float] = time.time  # epoch seconds, as the table's TTL attribute expires_at


def _checked_parameters(request: ProvisioningRequest, policy: ProvisioningPolicy) -> tuple[str, str]:
    """(thing, group) when the request's parameters are acceptable; ValueError naming the first that is not."""
    thing, group, serial = (_parameter(request, p) for p in (THING_NAME_PARAMETER, GROUP_PARAMETER, SERIAL_PARAMETER))
    if not THING_NAME.fullmatch(thing) or not re.search(policy.name_pattern, thing):
        raise ValueError(f"parameter {THING_NAME_PARAMETER}: {thing[:130]!r} does not match {policy.name_pattern}")
    if not ATTRIBUTE_VALUE.fullmatch(serial) or not re.search(policy.serial_pattern, serial):
        raise ValueError(f"parameter {SERIAL_PARAMETER}: {serial[:70]!r} does not match {policy.serial_pattern}")
    if group not in policy.groups:
        raise ValueError(f"parameter {GROUP_PARAMETER}: {group[:130]!r} is not one of {sorted(policy.groups)}")
    return thing, group


def _registry_verdict(registry: ThingRegistry, thing: str, group: str, certificate: str) -> tuple[bool, str]:
    """(allowed, why) from what the registry holds under that name."""
    certificates = registry.thing_certificates(thing)
    if certificates is None:
        return True, "new device"
    if certificates == (certificate,):
        return True, "the same request again (its certificate is already the thing's)"
    if certificates:
        return False, (f"thing {thing} already exists with another certificate: decommission it before provisioning "
                       f"a replacement")
    attributes = registry.thing_attributes(thing) or {}
    if attributes.get(CLAIMABLE_ATTRIBUTE) != "true":
        return False, (f"thing {thing} already exists without a certificate and is not marked "
                       f"{CLAIMABLE_ATTRIBUTE}=true: finish its provision-device or decommission-device run")
    groups = registry.thing_groups(thing)
    if groups != {group}:
        return False, f"thing {thing} is marked claimable but is in {sorted(groups)}, not in {group} alone"
    return True, "a thing marked claimable"


def _reserve(deps: ProvisioningDeps, thing: str, certificate: str) -> bool:
    """Put-if-absent of the name's reservation; True when this certificate holds it afterwards."""
    now = deps.clock()
    mine = {"certificate_id": certificate, "expires_at": int(now + deps.policy.reservation_s)}
    if deps.reservations.put(RESERVATIONS, thing, mine, if_absent=True):
        return True
    held = deps.reservations.get(RESERVATIONS, thing)
    if held is None:  # expired and removed in between
        return deps.reservations.put(RESERVATIONS, thing, mine, if_absent=True)
    if held.get("certificate_id") == certificate:
        return True
    expires_at = held.get("expires_at")
    if not isinstance(expires_at, int | float) or expires_at > now:
        return False
    # The table's TTL removes expired items late: take it over, conditional on it being the one just read.
    return deps.reservations.update_if(RESERVATIONS, thing, mine, {"certificate_id": held.get("certificate_id"),
                                                                    "expires_at": expires_at})


def decide(request: ProvisioningRequest, deps: ProvisioningDeps) -> ProvisioningDecision:
    thing = request.parameters.get(THING_NAME_PARAMETER)
    named = thing if isinstance(thing, str) and THING_NAME.fullmatch(thing) else None
    try:
        thing, group = _checked_parameters(request, deps.policy)
    except ValueError as exc:
        return ProvisioningDecision(False, str(exc), named)
    allowed, reason = _registry_verdict(deps.registry, thing, group, request.certificate_id)
    if allowed and not _reserve(deps, thing, request.certificate_id):
        allowed, reason = False, f"thing {thing} is being provisioned with another certificate"
    return ProvisioningDecision(allowed, reason, thing)
