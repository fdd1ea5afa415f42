"""Who a device may be: the naming rules every path that creates a core device applies (`nacelle aws
provision-device`, the pre-provisioning hook of fleet provisioning), and the IoT names both speak of."""

from __future__ import annotations

import re

from shared.errors import ConfigurationError

# AWS IoT thing names are [a-zA-Z0-9:_-]{1,128}; ':' is left out because alert ids use it as their separator
# (episode:<thing>:<episode>), so a thing named `a:b` would make them ambiguous.
THING_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}")
# Thing attribute values (the serial is stored as one): [a-zA-Z0-9_.,@/:#-]{0,800}
ATTRIBUTE_VALUE = re.compile(r"[A-Za-z0-9_.,@/:#-]{0,800}")
SERIAL_ATTRIBUTE = "serial"
# The fleet-provisioning plugin connects with this client id (its `deviceId`): the claim policy admits no other,
# so a claim certificate can never take over a turbine's MQTT session.
PROVISIONING_CLIENT_PREFIX = "provision-"
CERTIFICATE_ARN = re.compile(r"arn:aws[a-z-]*:iot:[a-z0-9-]+:[0-9]{12}:cert/(?P<id>[0-9a-f]{64})")


def check_thing_name(name: str, pattern: str | None = None, field: str = "thing name") -> str:
    """`name` when it is a valid thing name (and matches the stack's DeviceNamePattern, when given)."""
    if not isinstance(name, str) or not THING_NAME.fullmatch(name):
        raise ConfigurationError(f"{field} {name!r} is not a thing name: 1-128 characters of letters, digits, "
                                 f"'-' and '_'")
    if pattern is not None and not re.search(pattern, name):
        raise ConfigurationError(f"{field} {name!r} does not match the stack's DeviceNamePattern {pattern}")
    return name


def certificate_id(arn: str) -> str | None:
    """The certificate id of an IoT certificate ARN; None for any other principal (e.g. a Cognito identity)."""
    match = CERTIFICATE_ARN.fullmatch(arn)
    return match["id"] if match else None
