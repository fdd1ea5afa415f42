"""The local IoT rules engine: template.yaml's AWS::IoT::TopicRule SQL evaluated on the local broker's messages.

One MQTT 5 client with the cloud certificate (client id `nacelle-cloud`, persistent session: QoS 1 messages
published while the engine is down are delivered when it reconnects) subscribes to each rule's topic filter,
and subscribes again on every connection (a session the broker lost is rebuilt, and said so in the log).
Every selected row goes on the bus as `{"source": "nacelle.iot", "detail-type": <rule id>, "detail": row}`;
the PUBACK of a message leaves only after its rows are committed, so delivery is at-least-once.

Fairness: messages wait in one queue per turbine, and a worker takes them round-robin across
turbines, up to BATCH_MAX at a time, in one bus transaction (one commit per batch). A turbine over its
quota (QUOTA_PER_S sustained, QUOTA_BURST at once: AWS IoT Core's inbound limit of 100 publishes per second
per connection) has the excess refused; so is a message over AWS IoT Core's 128 KB or one a rule cannot read
(not JSON). Refused messages are acknowledged (the broker would otherwise resend them) and counted per turbine
and reason (`reject`, the IoT rule's error action on AWS); one turbine's flood neither delays nor drops another
turbine's messages. A message within its quota is never refused for want of room: when more arrives than the
bus takes (a fleet flushing its spools after an outage) it waits in its queue, unacknowledged, for its turn
(20,000 messages published at once by one client without a quota peaked at about 10,000 waiting).

`clientid()`: an MQTT subscriber never sees the publisher's client id. The broker's ACL lets a client write
only under `turbines/<its certificate CN>/` and fixes its client id to that CN, so the engine reports the
topic's thing as the client id.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from awscrt import mqtt5
from awsiot import mqtt5_client_builder

from nacelle.local.edge.pki import CLOUD_CLIENT, DeviceCredentials
from nacelle.local.runtime.template import IOT_SOURCE, TopicRule
from shared.errors import ConfigurationError, NacelleError
from shared.iot_sql import IotRule, parse
from shared.messages import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
SESSION_EXPIRY_S = 7 * 86400
QUOTA_PER_S = 100.0  # publishes per second per turbine, sustained (AWS IoT Core: per connection)
QUOTA_BURST = 200.0
BATCH_MAX = 500  # messages per bus transaction

Reject = Callable[[str, str, str, str, int], object]  # (thing, stream, reason, detail, count)


def publisher_of(topic: str) -> str:
    """The thing a message came from: the broker only lets `turbines/<thing>/...` be written by <thing>."""
    levels = topic.split("/")
    return levels[1] if len(levels) > 1 else ""


def stream_of(topic: str) -> str:
    return topic.rsplit("/", 1)[-1]


@dataclass
class _Message:
    topic: str
    payload: bytes
    ack: Any  # the PUBACK control handle (QoS 1), or None
    client: Any  # the connection that received it


class _Quota:
    """A token bucket per turbine."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, thing: str) -> bool:
        now = self.clock()
        tokens, at = self._buckets.get(thing, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[thing] = (tokens, now)
            return False
        self._buckets[thing] = (tokens - 1.0, now)
        return True


class RuleEngine:
    def __init__(self, rules: list[TopicRule], put_many: Callable[[Sequence[Mapping[str, Any]]], object],
                 endpoint: tuple[str, int], credentials: DeviceCredentials, client_id: str = CLOUD_CLIENT,
                 clock_ms: Callable[[], int] = lambda: int(time.time() * 1000), reject: Reject | None = None,
                 quota_per_s: float = QUOTA_PER_S, quota_burst: float = QUOTA_BURST) -> None:
        if not rules:
            raise ConfigurationError("the rule engine needs at least one topic rule")
        self.rules: list[tuple[TopicRule, IotRule]] = [(r, parse(r.sql)) for r in rules]
        self.put_many = put_many
        self.endpoint = endpoint
        self.credentials = credentials
        self.client_id = client_id
        self.clock_ms = clock_ms
        self.reject = reject
        self.matched = 0  # rows put on the bus
        self.errors = 0  # messages refused (AWS: the error action), see `refused`
        self.refused: Counter[str] = Counter()  # reason -> messages
        self.sessions_rebuilt = 0  # reconnections on which the broker had lost our session
        self._quota = _Quota(quota_per_s, quota_burst, time.monotonic)
        self._unrecorded: dict[tuple[str, str, str], tuple[int, str]] = {}  # refusals not yet given to `reject`
        self._queues: dict[str, deque[_Message]] = {}
        self._ready: deque[str] = deque()  # turbines with queued messages, in turn
        self._busy = False  # the worker holds a batch
        self._wakeup = threading.Condition()
        self._worker: threading.Thread | None = None
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._failure: Any = None
        self._client: mqtt5.Client | None = None

    @property
    def topic_filters(self) -> list[str]:
        return sorted({parsed.topic_filter for _, parsed in self.rules})

    # ------------------------------------------------------------------ connection
    def start(self, timeout_s: float = CONNECT_TIMEOUT_S) -> RuleEngine:
        """Connect, subscribe to every rule's topic filter and wait until the broker granted them."""
        host, port = self.endpoint
        self._stopping.clear()
        self._worker = threading.Thread(target=self._work, name="nacelle-rule-engine", daemon=True)
        self._worker.start()
        self._client = mqtt5_client_builder.mtls_from_path(
            endpoint=host, port=port, cert_filepath=str(self.credentials.cert_path),
            pri_key_filepath=str(self.credentials.key_path), ca_filepath=str(self.credentials.ca_path),
            client_id=self.client_id, session_behavior=mqtt5.ClientSessionBehaviorType.REJOIN_ALWAYS,
            session_expiry_interval_sec=SESSION_EXPIRY_S, on_publish_received=self._on_publish,
            on_lifecycle_connection_success=self._on_connected,
            on_lifecycle_connection_failure=self._on_failure,
            on_lifecycle_disconnection=self._on_disconnected,
            on_lifecycle_stopped=lambda _d: self._stopped.set(),
            connack_timeout_ms=5000, min_reconnect_delay_ms=200, max_reconnect_delay_ms=5000)
        self._client.start()
        if not self._subscribed.wait(timeout_s):
            self.stop()
            raise NacelleError(f"rule engine: not connected and subscribed to {host}:{port} within {timeout_s:.0f}s "
                               f"({self._failure!r})")
        log.info("rule engine subscribed filters=%s rules=%s", self.topic_filters, [r.rule for r, _ in self.rules])
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        client, self._client = self._client, None
        self._stopping.set()
        with self._wakeup:
            self._wakeup.notify_all()
        if self._worker is not None:
            self._worker.join(timeout_s)
        self._record_refusals()
        if client is not None:
            client.stop()
            self._stopped.wait(timeout_s)

    def _on_disconnected(self, data: Any) -> None:
        if self._stopping.is_set():  # our own stop: nothing to warn about
            log.info("rule engine disconnected (stopping)")
        else:
            log.warning("rule engine disconnected: %r", data.exception)

    def _on_connected(self, data: Any) -> None:
        """Subscribe on every connection: a resumed session keeps its subscriptions (a no-op then), a lost
        one (broker restarted without its store, a takeover) gets them back."""
        if not data.connack_packet.session_present and self._subscribed.is_set():
            self.sessions_rebuilt += 1
            log.warning("rule engine: the broker lost the session of %s; subscribing anew", self.client_id)
        self._connected.set()
        client = self._client
        if client is None:
            return
        packet = mqtt5.SubscribePacket(subscriptions=[
            mqtt5.Subscription(topic_filter=f, qos=mqtt5.QoS.AT_LEAST_ONCE) for f in self.topic_filters])
        client.subscribe(packet).add_done_callback(self._on_suback)

    def _on_suback(self, future: Any) -> None:
        try:
            codes = future.result().reason_codes
        except Exception as exc:  # the connection dropped meanwhile: the next connection subscribes again
            log.warning("rule engine: subscribe failed: %r", exc)
            return
        refused = [f for f, code in zip(self.topic_filters, codes, strict=True)
                   if code != mqtt5.SubackReasonCode.GRANTED_QOS_1]
        if refused:
            log.error("rule engine: the broker refused the subscription(s) %s", refused)
            return
        self._subscribed.set()

    def _on_failure(self, data: Any) -> None:
        self._failure = data.exception
        log.warning("rule engine connection failed: %r", data.exception)

    # ------------------------------------------------------------------ intake (the MQTT thread)
    def _on_publish(self, data: Any) -> None:
        packet = data.publish_packet
        topic, payload = packet.topic, bytes(packet.payload or b"")
        thing = publisher_of(topic)
        if len(payload) > MAX_MESSAGE_BYTES:
            self._refuse(thing, topic, "oversize", f"{len(payload)} bytes (limit {MAX_MESSAGE_BYTES})")
            return
        if not self._quota.take(thing):
            self._refuse(thing, topic, "quota", f"over {QUOTA_PER_S:.0f} messages/s")
            return
        with self._wakeup:
            queue = self._queues.setdefault(thing, deque())
            ack = data.acquire_publish_acknowledgement_control() if packet.qos == mqtt5.QoS.AT_LEAST_ONCE else None
            if not queue:
                self._ready.append(thing)
            queue.append(_Message(topic, payload, ack, self._client))
            self._wakeup.notify()

    def _refuse(self, thing: str, topic: str, reason: str, detail: str, count: int = 1) -> None:
        """Count now; the worker records the counts (once a second, not once per message of a flood)."""
        with self._wakeup:
            self.errors += count
            self.refused[reason] += count
            key = (thing, stream_of(topic), reason)
            self._unrecorded[key] = (self._unrecorded.get(key, (0, ""))[0] + count, detail)

    def _record_refusals(self) -> None:
        with self._wakeup:
            pending, self._unrecorded = self._unrecorded, {}
        for (thing, stream, reason), (count, detail) in pending.items():
            if self.reject is None:
                log.warning("rule engine refused %d message(s) of %s on %s: %s (%s)", count, thing, stream, reason,
                            detail)
                continue
            try:
                self.reject(thing, stream, reason, detail, count)
            except Exception:
                log.exception("could not record %d refused message(s) of %s", count, thing)

    # ------------------------------------------------------------------ the worker
    def _next_batch(self) -> list[_Message]:
        """Up to BATCH_MAX messages, one turbine after the other (round-robin); waits up to 0.5 s for one."""
        with self._wakeup:
            if not self._ready and not self._stopping.is_set():
                self._wakeup.wait(0.5)
            batch: list[_Message] = []
            self._busy = bool(self._ready)  # set under the lock: drain() never sees a batch in between
            while self._ready and len(batch) < BATCH_MAX:
                thing = self._ready.popleft()
                queue = self._queues[thing]
                batch.append(queue.popleft())
                if queue:
                    self._ready.append(thing)
            return batch

    def _work(self) -> None:
        recorded_at = time.monotonic()
        while not self._stopping.is_set():
            batch = self._next_batch()
            if time.monotonic() - recorded_at >= 1.0 or not batch:
                self._record_refusals()
                recorded_at = time.monotonic()
            while batch and not self._stopping.is_set():
                try:
                    self.process(batch)
                    break
                except Exception:  # the bus: nothing acknowledged, so nothing lost; try again
                    log.exception("rule engine could not put %d message(s) on the bus; retrying", len(batch))
                    self._stopping.wait(1.0)
            self._busy = False

    def process(self, batch: Sequence[_Message]) -> int:
        """Evaluate every rule on each message, put all rows on the bus in one transaction, then PUBACK."""
        events: list[Mapping[str, Any]] = []
        refused: Counter[tuple[str, str, str]] = Counter()
        for message in batch:
            for rule, parsed in self.rules:
                try:
                    row = parsed.evaluate(message.topic, message.payload, publisher_of(message.topic),
                                          self.clock_ms())
                except NacelleError as exc:
                    refused[(publisher_of(message.topic), message.topic, str(exc))] += 1
                    break
                if row is not None:
                    events.append({"source": IOT_SOURCE, "detail-type": rule.rule, "detail": row})
        if events:
            self.put_many(events)
        self.matched += len(events)
        for message in batch:
            if message.ack is not None and message.client is not None:
                message.client.invoke_publish_acknowledgement(message.ack)
        for (thing, topic, detail), count in refused.items():
            self._refuse(thing, topic, "json", detail, count)
        return len(events)

    def drain(self, timeout_s: float) -> bool:
        """Wait until every queued message is on the bus (or `timeout_s` passed); True when drained."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._wakeup:
                if not self._ready and not self._busy:
                    return True
            time.sleep(0.01)
        return False

    def handle(self, topic: str, payload: bytes) -> int:
        """One message, at once (no queue, no PUBACK): how many rows went on the bus."""
        put = self.process([_Message(topic, payload, None, None)])
        self._record_refusals()
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
