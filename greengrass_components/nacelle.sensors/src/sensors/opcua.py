"""OPC UA source (asyncua client): node ids per signal, polled or subscribed; security None, Sign or
SignAndEncrypt with a client certificate.

Polling reads every node's Value in one Read request per tick. Subscription mode monitors the nodes (sampling and
publishing interval = the sample interval, queue size 1) and each tick takes the newest value notified; OPC UA
reports by exception, so a value holds until the server reports a change, as long as the subscription is alive:
a subscription silent for longer than the keep-alive the server granted allows (counted from its creation, so one
that never publishes is caught too), or a lost connection, makes every signal missing until it is back. A value
whose status is not Good, or that is not a number, is a missing reading.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from asyncua import Client, ua
from asyncua.common.subscription import Subscription
from asyncua.crypto import security_policies

from shared.errors import ConfigurationError

from .config import OpcUaSettings
from .sampler import SourceError

logging.getLogger("asyncua").setLevel(logging.CRITICAL)  # it logs every revised parameter and lost socket;
# the sampler reports failed connections and reads itself

POLICIES: dict[str, Any] = {"Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
            "Aes128Sha256RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
            "Aes256Sha256RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss}
MODES = {"Sign": ua.MessageSecurityMode.Sign, "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt}
KEEPALIVE_COUNT = 10  # publishing intervals without data before the server sends a keep-alive
STALE_MARGIN = 2.0  # a subscription silent for this many keep-alive periods (plus STALE_GRACE_S) is dead
STALE_GRACE_S = 1.0
SESSION_TIMEOUT_MS = 30_000
# Requests of a connection attempt, each bounded by timeoutSeconds: socket, hello, secure channel, session,
# activation, the subscription and its monitored items, and the endpoint discovery set_security may make
HANDSHAKE_REQUESTS = 10


class _Latest:
    """Subscription handler: the newest value of each monitored node."""

    def __init__(self, signals: Mapping[Any, str]) -> None:
        self.signals = signals  # node id -> signal
        self.values: dict[str, float | None] = {}
        self.status_bad: str | None = None

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        signal = self.signals.get(node.nodeid)
        if signal is not None:
            self.values[signal] = _number(data.monitored_item.Value)

    def status_change_notification(self, status: Any) -> None:
        self.status_bad = f"subscription status {status.Status}"


class OpcUaSource:
    kind = "opcua"

    def __init__(self, settings: OpcUaSettings, interval_s: float) -> None:
        self.settings = settings
        self.endpoint = settings.endpoint
        self.interval_s = interval_s
        self.node_ids: dict[str, ua.NodeId] = {}
        for signal, text in settings.nodes.items():
            try:
                self.node_ids[signal] = ua.NodeId.from_string(text)
            except Exception as exc:  # asyncua's parsing errors
                raise ConfigurationError(f"opcua.nodes.{signal}: {text!r} is not an OPC UA node id: {exc}") from exc
        sec = settings.security
        if sec.mode != "None":
            for key, path in (("certificate", sec.certificate), ("privateKey", sec.private_key),
                              ("serverCertificate", sec.server_certificate)):
                if path and not Path(path).is_file():
                    raise ConfigurationError(f"opcua.security.{key}: {path} does not exist or is not a file")
        self.connect_timeout_s = max(1.0, HANDSHAKE_REQUESTS * settings.timeout_s)
        self._client: Client | None = None
        self._nodes: list[Any] = []
        self._latest: _Latest | None = None
        self._subscription: Subscription | None = None
        self._subscribed_at = 0.0  # time.monotonic() when the subscription was created
        self._silent_after = 0.0  # seconds without a publish (data or keep-alive) after which it is dead

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def connect(self) -> None:
        client = self._new_client()
        try:
            await self._handshake(client)
            nodes = [client.get_node(node_id) for node_id in self.node_ids.values()]
            latest = _Latest({node_id: signal for signal, node_id in self.node_ids.items()})
            subscription = await self._subscribe(client, nodes, latest) if self.settings.mode == "subscription" \
                else None
        except BaseException:  # a failure, or the runner's timeout cancelling a slow handshake: leave nothing open
            await _quiet_disconnect(client, self.settings.timeout_s)
            raise
        await self.close()
        self._client, self._nodes, self._latest, self._subscription = client, nodes, latest, subscription

    def _new_client(self) -> Client:
        s = self.settings
        client = Client(s.endpoint, timeout=s.timeout_s)
        client.name = client.description = "nacelle.sensors"
        client.session_timeout = SESSION_TIMEOUT_MS  # a session left behind by a dropped connection expires soon
        client.application_uri = s.security.application_uri
        return client

    async def _handshake(self, client: Client) -> None:
        s = self.settings
        try:
            if s.security.mode != "None":
                await client.set_security(POLICIES[s.security.policy], s.security.certificate, s.security.private_key,
                                          server_certificate=s.security.server_certificate or None,
                                          mode=MODES[s.security.mode])
            await client.connect()
        except Exception as exc:  # socket, handshake, security or session errors
            raise SourceError(f"{type(exc).__name__}: {exc}", refused=isinstance(exc, ConnectionRefusedError)) from exc

    async def _subscribe(self, client: Client, nodes: list[Any], latest: _Latest) -> Subscription:
        """A subscription to every node, on the terms the server grants: its silence limit follows the publishing
        interval and keep-alive count the server revised (a server may publish far slower than asked)."""
        period_ms = self.interval_s * 1000
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=period_ms, RequestedLifetimeCount=KEEPALIVE_COUNT * 3,
            RequestedMaxKeepAliveCount=KEEPALIVE_COUNT, MaxNotificationsPerPublish=0, PublishingEnabled=True,
            Priority=0)
        # Created directly, not with client.create_subscription: that one hides the revised parameters and
        # registers the subscription with asyncua's own watchdog, which would recreate it behind the sampler's back
        subscription = Subscription(client.uaclient.session, params, latest)
        revised = await subscription.init()
        self._subscribed_at = time.monotonic()
        self._silent_after = silence_limit(revised.RevisedPublishingInterval or period_ms,
                                           revised.RevisedMaxKeepAliveCount or KEEPALIVE_COUNT)
        results = await subscription.subscribe_data_change(nodes, queuesize=1, sampling_interval=ua.Double(period_ms))
        bad = [signal for signal, r in zip(self.node_ids, results, strict=True) if not isinstance(r, int)]
        if bad:
            raise SourceError(f"the server refused to monitor {', '.join(bad)}", reconnect=True)
        return subscription

    async def read(self) -> Mapping[str, float | None]:
        client = self._client
        if client is None:
            raise SourceError("not connected")
        if self._subscription is not None and self._latest is not None:
            if self._latest.status_bad:
                raise SourceError(self._latest.status_bad)
            last = self._subscription.last_publish_at or self._subscribed_at
            if time.monotonic() - last > self._silent_after:
                raise SourceError(f"subscription silent for more than {self._silent_after:.1f}s")
            return dict(self._latest.values)
        try:
            results = await client.read_attributes(self._nodes)
        except Exception as exc:  # connection lost, timeout, service fault
            raise SourceError(f"{type(exc).__name__}: {exc}") from exc
        return {signal: _number(dv) for signal, dv in zip(self.node_ids, results, strict=True)}

    async def close(self) -> None:
        client, self._client = self._client, None
        self._subscription = self._latest = None
        if client is not None:
            await _quiet_disconnect(client, self.settings.timeout_s)


def silence_limit(publishing_interval_ms: float, keepalive_count: int) -> float:
    """Seconds a live subscription can stay silent: the server publishes at least a keep-alive every
    keep-alive-count publishing intervals; STALE_MARGIN of those periods plus a grace for a slow network."""
    return publishing_interval_ms / 1000 * keepalive_count * STALE_MARGIN + STALE_GRACE_S


def _number(dv: Any) -> float | None:
    """A DataValue's value when it is Good and a finite number, else None (a missing reading)."""
    if dv is None or (dv.StatusCode is not None and not dv.StatusCode.is_good()):
        return None
    value = dv.Value.Value if dv.Value is not None else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


async def _quiet_disconnect(client: Client, timeout_s: float) -> None:
    """Close the session politely when the server answers in time; the socket in any case."""
    try:
        await asyncio.wait_for(client.disconnect(), timeout_s)
    except Exception:  # the connection is already gone, or the server stalls
        pass
    finally:
        client.disconnect_socket()
