"""The local IoT rules engine: template.yaml's AWS::IoT::TopicRule SQL evaluated on the local broker's messages.

One MQTT 5 client with the cloud certificate (client id `nacelle-cloud`, persistent session: QoS 1 messages
published while the engine is down are delivered when it reconnects) subscribes to each rule's topic filter.
Every selected row goes on the bus as `{"source": "nacelle.iot", "detail-type": <rule id>, "detail": row}`
before the PUBACK leaves (the callback returns after the durable put), so delivery is at-least-once.

`clientid()`: an MQTT subscriber never sees the publisher's client id. The broker's ACL lets a client write
only under `turbines/<its certificate CN>/`, and devices connect with client id = thing name (docs/fleet.md),
so the engine reports the topic's thing as the client id.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from awscrt import mqtt5
from awsiot import mqtt5_client_builder

from nacelle.local.pki import CLOUD_CLIENT, DeviceCredentials
from nacelle.local.template import IOT_SOURCE, TopicRule
from shared.errors import ConfigurationError, NacelleError
from shared.iot_sql import IotRule, parse

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
SESSION_EXPIRY_S = 7 * 86400


def publisher_of(topic: str) -> str:
    """The thing a message came from: the broker only lets `turbines/<thing>/...` be written by <thing>."""
    levels = topic.split("/")
    return levels[1] if len(levels) > 1 else ""


class RuleEngine:
    def __init__(self, rules: list[TopicRule], put: Callable[[Mapping[str, Any]], object],
                 endpoint: tuple[str, int], credentials: DeviceCredentials, client_id: str = CLOUD_CLIENT,
                 clock_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        if not rules:
            raise ConfigurationError("the rule engine needs at least one topic rule")
        self.rules: list[tuple[TopicRule, IotRule]] = [(r, parse(r.sql)) for r in rules]
        self.put = put
        self.endpoint = endpoint
        self.credentials = credentials
        self.client_id = client_id
        self.clock_ms = clock_ms
        self.matched = 0  # rows put on the bus
        self.errors = 0  # messages a rule could not evaluate (AWS: the error action)
        self._connected = threading.Event()
        self._stopped = threading.Event()
        self._failure: Any = None
        self._client: mqtt5.Client | None = None

    @property
    def topic_filters(self) -> list[str]:
        return sorted({parsed.topic_filter for _, parsed in self.rules})

    def start(self, timeout_s: float = CONNECT_TIMEOUT_S) -> RuleEngine:
        """Connect, subscribe to every rule's topic filter and wait until the broker granted them."""
        host, port = self.endpoint
        self._client = mqtt5_client_builder.mtls_from_path(
            endpoint=host, port=port, cert_filepath=str(self.credentials.cert_path),
            pri_key_filepath=str(self.credentials.key_path), ca_filepath=str(self.credentials.ca_path),
            client_id=self.client_id, session_behavior=mqtt5.ClientSessionBehaviorType.REJOIN_ALWAYS,
            session_expiry_interval_sec=SESSION_EXPIRY_S, on_publish_received=self._on_publish,
            on_lifecycle_connection_success=lambda _d: self._connected.set(),
            on_lifecycle_connection_failure=self._on_failure,
            on_lifecycle_stopped=lambda _d: self._stopped.set(),
            connack_timeout_ms=5000, min_reconnect_delay_ms=200, max_reconnect_delay_ms=5000)
        self._client.start()
        if not self._connected.wait(timeout_s):
            self.stop()
            raise NacelleError(f"rule engine: no connection to {host}:{port} within {timeout_s:.0f}s "
                               f"({self._failure!r})")
        packet = mqtt5.SubscribePacket(subscriptions=[
            mqtt5.Subscription(topic_filter=f, qos=mqtt5.QoS.AT_LEAST_ONCE) for f in self.topic_filters])
        suback = self._client.subscribe(packet).result(timeout_s)
        refused = [f for f, code in zip(self.topic_filters, suback.reason_codes, strict=True)
                   if code != mqtt5.SubackReasonCode.GRANTED_QOS_1]
        if refused:
            self.stop()
            raise NacelleError(f"rule engine: the broker refused the subscription(s) {refused}")
        log.info("rule engine subscribed filters=%s rules=%s", self.topic_filters, [r.rule for r, _ in self.rules])
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.stop()
            self._stopped.wait(timeout_s)

    def _on_failure(self, data: Any) -> None:
        self._failure = data.exception
        log.warning("rule engine connection failed: %r", data.exception)

    def _on_publish(self, data: Any) -> None:
        packet = data.publish_packet
        self.handle(packet.topic, bytes(packet.payload or b""))

    def handle(self, topic: str, payload: bytes) -> int:
        """Evaluate every rule on one message and put each selected row on the bus; returns how many."""
        put = 0
        for rule, parsed in self.rules:
            try:
                row = parsed.evaluate(topic, payload, publisher_of(topic), self.clock_ms())
            except NacelleError as exc:
                self.errors += 1
                log.warning("rule %s could not evaluate a message on %s: %s", rule.rule, topic, exc)
                continue
            if row is None:
                continue
            try:
                self.put({"source": IOT_SOURCE, "detail-type": rule.rule, "detail": row})
            except Exception:  # the PUBACK goes out regardless (awscrt acks after the callback): make it loud
                self.errors += 1
                log.exception("rule %s could not put its row on the bus (topic %s)", rule.rule, topic)
                continue
            put += 1
        self.matched += put
        return put


class ScheduleTicker:
    """The local EventBridge schedules: every `interval_s`, the `Scheduled Event` of each schedule route."""

    def __init__(self, put: Callable[[Mapping[str, Any]], object], rule_arns: list[str], interval_s: float) -> None:
        if interval_s <= 0:
            raise ConfigurationError(f"the schedule interval must be > 0 s, got {interval_s}")
        self.put = put
        self.rule_arns = rule_arns
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> None:
        for arn in self.rule_arns:
            try:
                self.put({"source": "aws.events", "detail-type": "Scheduled Event", "resources": [arn],
                          "detail": {}})
            except Exception:
                log.exception("could not put the scheduled event of %s", arn)

    def start(self) -> ScheduleTicker:
        def run() -> None:
            while not self._stop.wait(self.interval_s):
                self.tick()

        self._thread = threading.Thread(target=run, name="nacelle-schedules", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
