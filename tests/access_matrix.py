"""Who may connect as whom and reach which topics: one expected table for both places that enforce it.

tests/unit/test_iot_policy.py checks it against template.yaml's AWS IoT policy (device rows), and
tests/integration/test_broker_identity.py against the real local broker (every row), so the two cannot drift.

Identities are certificate CNs: two devices (thing name = CN) and the cloud rule engine's own certificate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from nacelle.local.edge.pki import CLOUD_CLIENT

DEVICES = ("turbine-01", "turbine-02")
CLOUD = CLOUD_CLIENT
IDENTITIES = (*DEVICES, CLOUD)
OUTSIDE_TOPIC = "plant/status"  # a topic outside turbines/
Action = Literal["publish", "subscribe"]

__all__ = ["CLOUD", "DEVICES", "IDENTITIES", "OUTSIDE_TOPIC", "Access", "CaptureUpload", "Connect", "access_table",
           "capture_table", "connect_table", "other_device"]


def other_device(identity: str) -> str:
    """The device an identity is not: the other turbine for a device, the first turbine for the cloud."""
    return next(d for d in DEVICES if d != identity)


@dataclass(frozen=True)
class Connect:
    identity: str  # the certificate's CN
    client_id: str  # the client id it sends
    allowed: bool  # may it hold the MQTT session of that client id?

    @property
    def id(self) -> str:
        return f"{self.identity}-as-{self.client_id}"


@dataclass(frozen=True)
class Access:
    identity: str
    action: Action
    topic: str  # a topic name to publish to, or a topic filter to subscribe to
    allowed: bool  # subscribe: may it subscribe and receive what others publish there?

    @property
    def device(self) -> bool:
        return self.identity in DEVICES

    @property
    def id(self) -> str:
        return f"{self.identity}-{self.action}-{self.topic}"


def connect_table() -> list[Connect]:
    """{each identity} x {its own CN, another device's CN, the cloud's CN}; only its own CN is allowed."""
    rows = []
    for identity in IDENTITIES:
        other = other_device(identity)
        third = CLOUD if identity in DEVICES else next(d for d in DEVICES if d != other)
        rows += [Connect(identity, identity, True), Connect(identity, other, False), Connect(identity, third, False)]
    return rows


def access_table() -> list[Access]:
    """{each identity} x {its own turbine topic, another turbine's, turbines/#, $SYS/#, a topic outside turbines/}.

    A device: only its own `turbines/<CN>/` subtree. The cloud: reads (subscribes to) every turbine's topics and
    publishes nothing; the `turbines/nacelle-cloud/` subtree is not its own (it is no turbine).
    """
    rows = []
    for identity in IDENTITIES:
        device = identity in DEVICES
        own = f"turbines/{identity}/anomalies"
        other = f"turbines/{other_device(identity)}/anomalies"
        rows += [
            Access(identity, "publish", own, device),
            Access(identity, "publish", other, False),
            Access(identity, "publish", OUTSIDE_TOPIC, False),
            Access(identity, "subscribe", own, device),
            Access(identity, "subscribe", other, not device),
            Access(identity, "subscribe", "turbines/#", not device),
            Access(identity, "subscribe", "$SYS/#", False),
            Access(identity, "subscribe", OUTSIDE_TOPIC, False),
        ]
    return rows


CAPTURE_FILE = "20250101T000000.000Z_20250101T000100.000Z_normal_m1_p1.csv"


@dataclass(frozen=True)
class CaptureUpload:
    identity: str  # the device whose certificate (locally) or credentials (AWS, via its role alias) upload
    key: str
    allowed: bool

    @property
    def id(self) -> str:
        return f"{self.identity}-put-{self.key}"


def capture_table() -> list[CaptureUpload]:
    """Captured data: a device writes under raw/capture/<its thing>/ and nowhere else. Checked against the local
    capture gateway (tests/unit/test_capture_gateway.py) and template.yaml's token exchange role
    (tests/unit/test_capture_policy.py)."""
    rows = []
    for identity in DEVICES:
        other = other_device(identity)
        rows += [
            CaptureUpload(identity, f"raw/capture/{identity}/{CAPTURE_FILE}", True),
            CaptureUpload(identity, f"raw/capture/{other}/{CAPTURE_FILE}", False),
            CaptureUpload(identity, f"raw/capture/{identity}0/{CAPTURE_FILE}", False),  # a longer thing name
            CaptureUpload(identity, f"raw/{identity}/{CAPTURE_FILE}", False),
            CaptureUpload(identity, f"labels/capture/{identity}/x/labels.json", False),
        ]
    return rows
