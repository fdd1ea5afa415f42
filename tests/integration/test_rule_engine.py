"""Device -> real mosquitto (mutual TLS) -> the local IoT rules engine -> the bus -> anomaly_alert -> the notifier.

The stack's own wiring: bus rules and targets come from template.yaml's AnomalyRule (Stack.targets binds
"AnomalyAlertFunction#iot" to handle(row, deps)).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from awscrt import mqtt5
from awsiot import mqtt5_client_builder

from nacelle.local.edge.broker import Broker
from nacelle.local.edge.pki import LocalPki
from nacelle.local.runtime.bus import Dispatcher
from nacelle.local.runtime.rules import RuleEngine
from nacelle.local.runtime.stack import Stack
from nacelle.local.runtime.template import load_template, topic_rules

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class Device:
    def __init__(self, broker: Broker, thing: str, unthrottled: bool = False) -> None:
        """`unthrottled`: without the SDK's own AWS IoT Core flow control (100 publishes/s), as an attacker's
        client would be."""
        creds = broker.pki.device(thing)
        self.connected = threading.Event()
        flow = mqtt5.ExtendedValidationAndFlowControlOptions
        self.client = mqtt5_client_builder.mtls_from_path(
            endpoint="127.0.0.1", port=broker.port, cert_filepath=str(creds.cert_path),
            pri_key_filepath=str(creds.key_path), ca_filepath=str(creds.ca_path), client_id=thing,
            on_lifecycle_connection_success=lambda _d: self.connected.set(),
            extended_validation_and_flow_control_options=flow.NONE if unthrottled else flow.AWS_IOT_CORE_DEFAULTS)
        self.client.start()
        assert self.connected.wait(5), f"{thing} did not connect"

    def publish(self, topic: str, message: dict[str, Any] | bytes) -> None:
        payload = message if isinstance(message, bytes) else json.dumps(message).encode()
        done = self.client.publish(mqtt5.PublishPacket(topic=topic, payload=payload,
                                                       qos=mqtt5.QoS.AT_LEAST_ONCE)).result(5)
        assert done.puback.reason_code == mqtt5.PubackReasonCode.SUCCESS

    def stop(self) -> None:
        self.client.stop()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Stack, Broker]]:
    home = tmp_path / "home"
    stack = Stack(home)
    dispatcher = Dispatcher(stack.bus, stack.targets(), backoff_base_s=0.05)
    dispatcher.start()
    broker = Broker(home, LocalPki(home / "pki")).start()
    try:
        yield stack, broker
    finally:
        broker.stop()
        dispatcher.stop()


def episode(kind: str, seq: int, thing: str = "turbine-01") -> dict[str, Any]:
    now = time.time()
    return {"v": 2, "kind": kind, "episode_id": f"{thing}-1000", "turbine_id": thing, "features": ["rpm"],
            "score": 3.5, "contributions": {"rpm": 0.93, "voltage": 0.07}, "missing": [], "started_at": now - 30,
            "opened_at": now - 10, "last_flagged_at": now - 10, "ended_at": now if kind == "close" else None,
            "model_version": None, "seq": seq}


def wait_for_notifications(stack: Stack, count: int, timeout_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        entries = list(stack.notifier.tail())
        if len(entries) >= count or time.monotonic() > deadline:
            return entries
        time.sleep(0.005)


def engine_for(stack: Stack, broker: Broker) -> RuleEngine:
    return RuleEngine(topic_rules(load_template()), stack.bus.put_many, broker.endpoint, broker.pki.cloud())


def test_an_episode_open_reaches_the_notifier_within_a_second(stack: tuple[Stack, Broker]) -> None:
    local, broker = stack
    engine = engine_for(local, broker).start()
    device = Device(broker, "turbine-01")
    try:
        device.publish("turbines/turbine-01/anomalies", b"garbage")  # counted, never stops the engine
        started = time.monotonic()
        device.publish("turbines/turbine-01/anomalies", episode("open", 1))
        [entry] = wait_for_notifications(local, 1, 1.0)
        latency = time.monotonic() - started
        assert latency < 1.0, f"{latency:.3f}s"
        assert entry["topic"] == "alerts"
        assert entry["subject"] == "[HIGH] turbine-01: score 3.5x threshold, mostly rpm (93 %)"
        assert entry["attributes"]["turbine_id"] == "turbine-01"
        device.publish("turbines/turbine-01/anomalies", episode("open", 1))  # redelivered
        device.publish("turbines/turbine-01/anomalies", episode("close", 2))
        wait_for_notifications(local, 2, 2.0)
        time.sleep(0.2)  # a duplicate alert would have arrived by now
        assert [e["attributes"]["kind"] for e in local.notifier.tail()] == ["alert", "resolution"]
        assert engine.errors == 1 and engine.matched == 3
        events = [local.bus.event(d.event_id) for d in local.bus.deliveries()]
        iot = [e for e in events if e["source"] == "nacelle.iot"]
        assert iot and all(e["detail-type"] == "AnomalyRule" for e in iot)
        assert iot[0]["detail"]["thing_name"] == "turbine-01" and iot[0]["detail"]["client_id"] == "turbine-01"
        assert isinstance(iot[0]["detail"]["received_at"], int)
        print(f"\nrule engine: device publish -> notification in {latency * 1000:.1f} ms")
    finally:
        device.stop()
        engine.stop()


def test_messages_published_while_the_engine_is_down_arrive_when_it_reconnects(stack: tuple[Stack, Broker]) -> None:
    local, broker = stack
    engine_for(local, broker).start().stop()  # creates the persistent session and its subscription
    device = Device(broker, "turbine-02")
    try:
        device.publish("turbines/turbine-02/anomalies", episode("open", 1, "turbine-02"))
        engine = engine_for(local, broker).start()
        try:
            entries = wait_for_notifications(local, 1, 3.0)
            assert [e["subject"] for e in entries] == ["[HIGH] turbine-02: score 3.5x threshold, mostly rpm (93 %)"]
        finally:
            engine.stop()
    finally:
        device.stop()


def iot_rows(local: Stack, thing: str, rule: str) -> list[dict[str, Any]]:
    events = [local.bus.event(d.event_id) for d in local.bus.deliveries()]
    return [e["detail"] for e in events if e["detail-type"] == rule and e["detail"]["thing_name"] == thing]


def health(thing: str, seq: int) -> dict[str, Any]:
    return {"v": 1, "turbine_id": thing, "model_version": None, "inference_rate_hz": 0.0, "seq": seq}


def wait_until(condition: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_session_the_broker_lost_is_subscribed_again(stack: tuple[Stack, Broker]) -> None:
    local, broker = stack
    engine = engine_for(local, broker).start()
    try:
        broker.stop()
        shutil.rmtree(broker.data_dir)  # the broker comes back without its persistence store
        broker.start()
        assert wait_until(lambda: engine.sessions_rebuilt >= 1, 10.0)
        device = Device(broker, "turbine-03")
        try:
            payload = json.dumps(health("turbine-03", 1)).encode()
            packet = mqtt5.PublishPacket(topic="turbines/turbine-03/health", payload=payload,
                                         qos=mqtt5.QoS.AT_LEAST_ONCE)
            assert wait_until(lambda: device.client.publish(packet).result(5).puback.reason_code
                              == mqtt5.PubackReasonCode.SUCCESS, 10.0)  # someone subscribes again
            assert wait_until(lambda: iot_rows(local, "turbine-03", "HealthRule"), 5.0)
        finally:
            device.stop()
    finally:
        engine.stop()


def test_a_flooding_turbine_is_held_to_its_quota_and_delays_no_other(stack: tuple[Stack, Broker]) -> None:
    local, broker = stack
    refused: list[tuple[str, str, str, int]] = []
    engine = RuleEngine(topic_rules(load_template()), local.bus.put_many, broker.endpoint, broker.pki.cloud(),
                        reject=lambda thing, stream, reason, _detail, count: refused.append((thing, stream, reason,
                                                                                             count)),
                        quota_per_s=50.0, quota_burst=50.0).start()
    flooder, other = Device(broker, "turbine-01", unthrottled=True), Device(broker, "turbine-02")
    try:
        payload = json.dumps(health("turbine-01", 1)).encode()
        packets = [mqtt5.PublishPacket(topic="turbines/turbine-01/health", payload=payload,
                                       qos=mqtt5.QoS.AT_LEAST_ONCE) for _ in range(2000)]
        flood = [flooder.client.publish(p) for p in packets]  # as fast as the client goes
        for seq in range(1, 11):
            other.publish("turbines/turbine-02/health", health("turbine-02", seq))
        for future in flood:
            future.result(10)
        assert wait_until(lambda: len(iot_rows(local, "turbine-02", "HealthRule")) == 10, 5.0)
        # the other turbine's messages may overtake the end of the flood: wait until all of it was judged
        assert wait_until(lambda: sum(engine.refused.values())
                          + len(iot_rows(local, "turbine-01", "HealthRule")) == 2000, 10.0)
        engine.stop()
        by_reason = {(t, s, r): 0 for t, s, r, _ in refused}
        for t, s, r, n in refused:
            by_reason[(t, s, r)] += n
        kept = len(iot_rows(local, "turbine-01", "HealthRule"))
        assert by_reason == {("turbine-01", "health", "quota"): 2000 - kept}
        assert 50 <= kept < 1000  # the burst, plus what the quota refilled while the flood lasted
    finally:
        flooder.stop()
        other.stop()
        engine.stop()


def test_a_burst_larger_than_the_bus_takes_at_once_waits_and_none_is_dropped(stack: tuple[Stack, Broker]) -> None:
    """A fleet flushing its spools after an outage: more arrives within the quota than the bus takes at once;
    every message waits its turn, none the broker acknowledged is dropped."""
    local, broker = stack
    engine = RuleEngine(topic_rules(load_template()), local.bus.put_many, broker.endpoint, broker.pki.cloud(),
                        quota_per_s=1e9, quota_burst=1e9).start()
    device = Device(broker, "turbine-01", unthrottled=True)
    total = 6000
    try:
        payloads = [json.dumps(health("turbine-01", seq)).encode() for seq in range(1, total + 1)]
        burst = [device.client.publish(mqtt5.PublishPacket(topic="turbines/turbine-01/health", payload=p,
                                                           qos=mqtt5.QoS.AT_LEAST_ONCE)) for p in payloads]
        for future in burst:
            future.result(20)
        assert wait_until(lambda: engine.matched + sum(engine.refused.values()) >= total, 30.0)
        assert dict(engine.refused) == {}
        assert sorted(r["seq"] for r in iot_rows(local, "turbine-01", "HealthRule")) == list(range(1, total + 1))
    finally:
        device.stop()
        engine.stop()


def test_an_engine_stopped_with_messages_waiting_loses_nothing(stack: tuple[Stack, Broker]) -> None:
    """A slow bus, messages waiting in the engine's queue, and the engine stops: what it had not put on the bus it
    had not acknowledged either, so the broker delivers it again to the next engine."""
    local, broker = stack

    def slow_bus(events: Sequence[Mapping[str, Any]]) -> None:
        time.sleep(0.3)
        local.bus.put_many(events)

    first = RuleEngine(topic_rules(load_template()), slow_bus, broker.endpoint, broker.pki.cloud(),
                       quota_per_s=1e9, quota_burst=1e9).start()
    device = Device(broker, "turbine-01", unthrottled=True)
    total = 3000
    try:
        burst = [device.client.publish(mqtt5.PublishPacket(
            topic="turbines/turbine-01/health", payload=json.dumps(health("turbine-01", seq)).encode(),
            qos=mqtt5.QoS.AT_LEAST_ONCE)) for seq in range(1, total + 1)]
        assert wait_until(lambda: sum(len(q) for q in first._queues.values()) >= 500, 10.0)
        first.stop()
        for future in burst:
            future.result(20)
        assert dict(first.refused) == {} and first.matched < total
        second = RuleEngine(topic_rules(load_template()), local.bus.put_many, broker.endpoint, broker.pki.cloud(),
                            quota_per_s=1e9, quota_burst=1e9).start()
        try:
            assert wait_until(lambda: {r["seq"] for r in iot_rows(local, "turbine-01", "HealthRule")}
                              == set(range(1, total + 1)), 30.0)
        finally:
            second.stop()
    finally:
        device.stop()
        first.stop()
