"""The detector's link to the world: subscribe to sensors, publish QoS 1 messages (mqtt.py, ipc.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from shared.errors import AdapterError

MessageCallback = Callable[[bytes], None]
ConnectionCallback = Callable[[bool], None]


class TransportError(AdapterError):
    """A publish did not get its acknowledgement (timeout, disconnection): retry later."""


class PublishRejected(TransportError):
    """The broker acknowledged the publish with a failure reason code (e.g. not authorized): retrying won't help."""


class Transport(Protocol):
    def connect(self) -> None:
        """Start the link (it reconnects by itself afterwards); returns without waiting for the connection."""

    def stop(self) -> None: ...

    def subscribe(self, topic: str, callback: MessageCallback) -> None:
        """QoS 1 subscription, kept across reconnects; `callback(payload)` runs on the transport's thread."""

    def publish(self, topic: str, payload: bytes, timeout: float) -> None:
        """QoS 1; returns once acknowledged. Raises TransportError (PublishRejected for a refusal)."""

    @property
    def is_connected(self) -> bool: ...

    def on_connection_change(self, callback: ConnectionCallback) -> None: ...
