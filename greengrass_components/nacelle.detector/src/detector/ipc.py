"""Greengrass IPC (clientv2): sensors through local SubscribeToTopic, messages out through PublishToIoTCore QoS 1.

The nucleus is local, so the link counts as connected from `connect()` on; IoT Core outages are the
nucleus's business (its own spooler), a publish that does not complete in time raises TransportError.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
from typing import Any

from awsiot.greengrasscoreipc.model import UnauthorizedError

from .transport import ConnectionCallback, MessageCallback, PublishRejected, TransportError

log = logging.getLogger("detector.ipc")

QOS_AT_LEAST_ONCE = "1"  # awsiot.greengrasscoreipc.model.QOS.AT_LEAST_ONCE


class IpcTransport:
    def __init__(self, client: Any) -> None:
        self.client = client  # awsiot.greengrasscoreipc.clientv2.GreengrassCoreIPCClientV2
        self._operations: list[Any] = []
        self._listeners: list[ConnectionCallback] = []
        self._connected = False

    def connect(self) -> None:
        self._connected = True
        for callback in list(self._listeners):
            callback(True)

    def stop(self) -> None:
        for op in self._operations:
            try:
                op.close()
            except Exception as exc:  # closing a dead stream
                log.debug("closing a subscription: %s", exc)
        self._operations.clear()
        self._connected = False

    @property
    def is_connected(self) -> bool:
        return self._connected

    def on_connection_change(self, callback: ConnectionCallback) -> None:
        self._listeners.append(callback)

    def subscribe(self, topic: str, callback: MessageCallback) -> None:
        def on_event(event: Any) -> None:
            if event.binary_message is not None:
                payload = bytes(event.binary_message.message or b"")
            elif event.json_message is not None:
                payload = json.dumps(event.json_message.message).encode()
            else:
                log.warning("empty local message on %s ignored", topic)
                return
            callback(payload)

        def on_error(exc: Exception) -> bool:
            log.error("subscription to %s failed: %s", topic, exc)
            return False  # keep the stream open

        _, operation = self.client.subscribe_to_topic(topic=topic, on_stream_event=on_event, on_stream_error=on_error)
        self._operations.append(operation)
        log.info("subscribed to local topic %s", topic)

    def publish(self, topic: str, payload: bytes, timeout: float) -> None:
        future = self.client.publish_to_iot_core_async(topic_name=topic, qos=QOS_AT_LEAST_ONCE, payload=payload)
        try:
            future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TransportError(f"PublishToIoTCore on {topic} did not complete within {timeout:g}s") from None
        except UnauthorizedError as exc:  # the recipe's accessControl does not allow this topic
            raise PublishRejected(f"PublishToIoTCore on {topic} not authorized: {exc}") from exc
        except Exception as exc:  # IPC service errors (UnauthorizedError, ServiceError...)
            raise TransportError(f"PublishToIoTCore on {topic} failed: {exc}") from exc
