"""MQTT 5 with mutual TLS (awsiotsdk / awscrt): the transport outside Greengrass.

Client id = thing name; the session is rejoined (REJOIN_ALWAYS + session expiry) so the broker keeps
the sensors subscription and queues QoS 1 sensor messages while the detector is away. Subscriptions
are re-sent whenever the broker reports no session, and each is sent once per process even into a rejoined one (an
earlier version of the detector may not have subscribed to it). A publish that times out may still be in the
client's queue (un-acked QoS 1 publishes are retransmitted on reconnect): the next attempt of the
same message waits for that one instead of sending it again, so a retry adds no duplicate.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from awscrt import mqtt5
from awsiot import mqtt5_client_builder

from .transport import ConnectionCallback, MessageCallback, PublishRejected, TransportError

log = logging.getLogger("detector.mqtt")

SESSION_EXPIRY_S = 7 * 24 * 3600


@dataclass(frozen=True)
class MqttSettings:
    endpoint: str
    port: int
    ca: Path
    cert: Path
    key: Path
    client_id: str
    min_reconnect_delay_ms: int = 200
    max_reconnect_delay_ms: int = 2000


class MqttTransport:
    def __init__(self, settings: MqttSettings, client_factory: Any = None) -> None:
        self.settings = settings
        self._subscriptions: dict[str, MessageCallback] = {}
        self._sent: set[str] = set()  # topics subscribed to by this process (a rejoined session may lack a new one)
        self._listeners: list[ConnectionCallback] = []
        self._connected = threading.Event()
        self._failures = 0  # consecutive failed connection attempts (logged once, then every 100th)
        self._stopping = False
        self._lock = threading.Lock()
        self._pending: tuple[str, bytes, concurrent.futures.Future[Any]] | None = None
        factory = client_factory or mqtt5_client_builder.mtls_from_path
        s = settings
        self._client = factory(
            endpoint=s.endpoint, port=s.port, cert_filepath=str(s.cert), pri_key_filepath=str(s.key),
            ca_filepath=str(s.ca), client_id=s.client_id,
            session_behavior=mqtt5.ClientSessionBehaviorType.REJOIN_ALWAYS,
            session_expiry_interval_sec=SESSION_EXPIRY_S,
            min_reconnect_delay_ms=s.min_reconnect_delay_ms, max_reconnect_delay_ms=s.max_reconnect_delay_ms,
            connack_timeout_ms=5000, keep_alive_interval_sec=30,
            on_publish_received=self._on_publish, on_lifecycle_connection_success=self._on_success,
            on_lifecycle_connection_failure=self._on_failure, on_lifecycle_disconnection=self._on_disconnect)

    # -- lifecycle -----------------------------------------------------------------------------------
    def connect(self) -> None:
        self._client.start()

    def stop(self) -> None:
        self._stopping = True
        self._client.stop()
        self._set_connected(False)

    @property
    def is_connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def on_connection_change(self, callback: ConnectionCallback) -> None:
        self._listeners.append(callback)

    def _set_connected(self, up: bool) -> None:
        if up == self._connected.is_set():
            return
        (self._connected.set if up else self._connected.clear)()
        for callback in list(self._listeners):
            try:
                callback(up)
            except Exception:
                log.exception("connection listener failed")

    def _on_success(self, data: Any) -> None:
        present = bool(data.connack_packet and data.connack_packet.session_present)
        log.info("connected to %s:%d as %s (session present: %s)", self.settings.endpoint, self.settings.port,
                 self.settings.client_id, present)
        for topic in list(self._subscriptions):
            if not present or topic not in self._sent:
                self._send_subscribe(topic)
        self._failures = 0
        self._set_connected(True)

    def _on_failure(self, data: Any) -> None:
        self._failures += 1
        level = logging.WARNING if self._failures == 1 or self._failures % 100 == 0 else logging.DEBUG
        log.log(level, "connection to %s:%d failed (attempt %d): %s", self.settings.endpoint, self.settings.port,
                self._failures, data.exception)

    def _on_disconnect(self, data: Any) -> None:
        if self._stopping:  # our own stop: nothing to warn about
            log.info("disconnected (stopping)")
        else:
            log.warning("disconnected: %s", data.exception)
        self._set_connected(False)

    # -- subscribe -----------------------------------------------------------------------------------
    def subscribe(self, topic: str, callback: MessageCallback) -> None:
        self._subscriptions[topic] = callback
        if self.is_connected:
            self._send_subscribe(topic)

    def _send_subscribe(self, topic: str) -> None:
        packet = mqtt5.SubscribePacket(subscriptions=[mqtt5.Subscription(topic_filter=topic,
                                                                         qos=mqtt5.QoS.AT_LEAST_ONCE)])

        def done(future: concurrent.futures.Future[Any]) -> None:
            try:
                codes = future.result().reason_codes
            except Exception as exc:
                log.error("subscribe to %s failed: %s", topic, exc)
                return
            if any(int(c) >= 0x80 for c in codes):
                log.error("subscribe to %s refused: %s", topic, [getattr(c, "name", c) for c in codes])
            else:
                log.info("subscribed to %s", topic)

        self._sent.add(topic)
        self._client.subscribe(packet).add_done_callback(done)

    def _on_publish(self, data: Any) -> None:
        packet = data.publish_packet
        callback = self._subscriptions.get(packet.topic)
        if callback is None:
            log.warning("message on unexpected topic %s ignored", packet.topic)
            return
        callback(bytes(packet.payload or b""))

    # -- publish -------------------------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, timeout: float) -> None:
        with self._lock:
            pending = self._pending
            if pending is not None and pending[0] == topic and pending[1] == payload and not pending[2].done():
                future = pending[2]  # the previous attempt is still queued in the client: wait for it
            else:
                if not self.is_connected:
                    raise TransportError(f"not connected to {self.settings.endpoint}:{self.settings.port}")
                future = self._client.publish(mqtt5.PublishPacket(topic=topic, payload=payload,
                                                                  qos=mqtt5.QoS.AT_LEAST_ONCE))
                self._pending = (topic, payload, future)
        try:
            result = future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TransportError(f"no PUBACK for a message on {topic} within {timeout:g}s") from None
        except Exception as exc:  # awscrt reports a failed operation as its own exception type
            raise TransportError(f"publish on {topic} failed: {exc}") from exc
        puback = getattr(result, "puback", None)
        code = getattr(puback, "reason_code", 0) or 0
        if int(code) >= 0x80:
            name = getattr(code, "name", str(code))
            raise PublishRejected(f"broker refused a message on {topic}: {name}")
