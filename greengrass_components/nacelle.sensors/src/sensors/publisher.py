"""Out of the component: sensor messages on the local sensor topic, and its health beside them for the detector.

Publishing never blocks the sampling loop: each publish is handed to the client, which completes it in the
background; at most MAX_IN_FLIGHT stay unacknowledged (the broker or the nucleus is away), beyond that a message is
dropped and counted (`dropped`, reported in health). Two clients:

* IpcPublisher (under Greengrass): local pub/sub `PublishToTopic`, through an injected GreengrassCoreIPCClientV2;
* MqttPublisher (outside Greengrass, the local stack): MQTT 5 with mutual TLS (awsiotsdk), QoS 1.

Nothing goes to AWS IoT Core directly: the detector reports the source's health in the device's health message.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from shared.messages import SensorMessage

from .sampler import Sample

log = logging.getLogger("sensors.publisher")

MAX_IN_FLIGHT = 2000  # unacknowledged messages (100 s of a 20 Hz stream published sample by sample)


class Publisher(Protocol):
    dropped: int
    failed: int

    def publish(self, topic: str, payload: bytes) -> None:
        """Hand a message over without waiting (on the device's local pub/sub)."""

    def close(self) -> None: ...


def encode_samples(turbine_id: str, samples: Sequence[Sample]) -> list[bytes]:
    """shared.messages.SensorMessage payloads (split in halves until each fits its size limit)."""
    message = SensorMessage(v=SensorMessage.VERSION, turbine_id=turbine_id, samples=list(samples))  # checks seq, ts
    payload = json.dumps({"v": message.v, "turbine_id": turbine_id, "samples": message.samples},
                         separators=(",", ":"), allow_nan=False).encode()
    if len(payload) <= SensorMessage.MAX_BYTES or len(samples) == 1:
        return [payload]
    half = len(samples) // 2
    return encode_samples(turbine_id, samples[:half]) + encode_samples(turbine_id, samples[half:])


class Batcher:
    """Collects samples and publishes `batch` of them per sensor message."""

    def __init__(self, turbine_id: str, topic: str, batch: int, publisher: Publisher) -> None:
        self.turbine_id, self.topic, self.batch = turbine_id, topic, batch
        self.publisher = publisher
        self.pending: list[Sample] = []
        self.messages = 0

    def add(self, sample: Sample) -> None:
        self.pending.append(sample)
        if len(self.pending) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        samples, self.pending = self.pending, []
        for payload in encode_samples(self.turbine_id, samples):
            self.publisher.publish(self.topic, payload)
            self.messages += 1


class _InFlight:
    """Counts unacknowledged publishes; refuses beyond the bound."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = self.dropped = self.failed = self.acked = 0

    def take(self) -> bool:
        with self._lock:
            if self.in_flight >= MAX_IN_FLIGHT:
                self.dropped += 1
                if self.dropped % 100 == 1:
                    log.warning("%d messages unacknowledged: dropping (%d so far)", MAX_IN_FLIGHT, self.dropped)
                return False
            self.in_flight += 1
            return True

    def done(self, ok: bool, what: str = "") -> None:
        with self._lock:
            self.in_flight -= 1
            self.acked += ok
            self.failed += not ok
            failed = self.failed
        if not ok and failed % 100 == 1:
            log.warning("publish failed (%d so far): %s", failed, what)


class MqttPublisher:
    def __init__(self, endpoint: str, port: int, ca: Path, cert: Path, key: Path, client_id: str,
                 client_factory: Callable[..., Any] | None = None) -> None:
        from awscrt import mqtt5
        from awsiot import mqtt5_client_builder

        self._mqtt5 = mqtt5
        self._flight = _InFlight()
        self.connected = threading.Event()
        self._stopped = threading.Event()
        factory = client_factory or mqtt5_client_builder.mtls_from_path
        self._client = factory(
            endpoint=endpoint, port=port, cert_filepath=str(cert), pri_key_filepath=str(key), ca_filepath=str(ca),
            client_id=client_id, min_reconnect_delay_ms=200, max_reconnect_delay_ms=5000, connack_timeout_ms=5000,
            on_lifecycle_connection_success=lambda _d: self._set(True),
            on_lifecycle_disconnection=lambda d: self._set(False, getattr(d, "exception", None)),
            on_lifecycle_connection_failure=lambda d: log.debug("MQTT connection failed: %s", d.exception),
            on_lifecycle_stopped=lambda _d: self._stopped.set())
        self._client.start()

    def _set(self, up: bool, why: Any = None) -> None:
        if up and not self.connected.is_set():
            log.info("connected to the MQTT broker")
        elif not up and self.connected.is_set():
            log.warning("disconnected from the MQTT broker: %s", why)
        (self.connected.set if up else self.connected.clear)()

    @property
    def dropped(self) -> int:
        return self._flight.dropped

    @property
    def failed(self) -> int:
        return self._flight.failed

    def publish(self, topic: str, payload: bytes) -> None:
        if not self._flight.take():
            return
        packet = self._mqtt5.PublishPacket(topic=topic, payload=payload, qos=self._mqtt5.QoS.AT_LEAST_ONCE)
        self._client.publish(packet).add_done_callback(lambda f: self._done(f, topic))

    def _done(self, future: Any, topic: str) -> None:
        try:
            code = future.result().puback.reason_code
            ok = code == self._mqtt5.PubackReasonCode.SUCCESS or \
                code == self._mqtt5.PubackReasonCode.NO_MATCHING_SUBSCRIBERS
            why = f"{topic}: {getattr(code, 'name', code)}"
        except Exception as exc:  # the client reports a lost connection as the future's exception
            ok, why = False, f"{topic}: {exc!r}"
        self._flight.done(ok, why)

    def close(self, timeout: float = 5.0) -> None:
        self._client.stop()
        self._stopped.wait(timeout)


class IpcPublisher:
    def __init__(self, client: Any) -> None:
        from awsiot.greengrasscoreipc.model import BinaryMessage, PublishMessage

        self.client = client  # awsiot.greengrasscoreipc.clientv2.GreengrassCoreIPCClientV2
        self._message = lambda payload: PublishMessage(binary_message=BinaryMessage(message=payload))
        self._flight = _InFlight()

    @property
    def dropped(self) -> int:
        return self._flight.dropped

    @property
    def failed(self) -> int:
        return self._flight.failed

    def publish(self, topic: str, payload: bytes) -> None:
        if not self._flight.take():
            return
        try:
            future = self.client.publish_to_topic_async(topic=topic, publish_message=self._message(payload))
        except Exception as exc:  # the IPC connection is gone
            self._flight.done(False, f"{topic}: {exc!r}")
            return
        future.add_done_callback(lambda f: self._done(f, topic))

    def _done(self, future: Any, topic: str) -> None:
        try:
            future.result()
            ok, why = True, ""
        except Exception as exc:  # UnauthorizedError (accessControl), ServiceError...
            ok, why = False, f"{topic}: {exc!r}"
        self._flight.done(ok, why)

    def close(self) -> None:
        return None
