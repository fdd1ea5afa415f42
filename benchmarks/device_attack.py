"""A scripted attack with one turbine's certificate against the real local broker, rule engine, bus and
cloud functions, while honest turbines keep publishing. Used by bench_attack (long) and tests/chaos (short).

The attacker holds `turbine-01`'s certificate and key. It tries, in order: the cloud's client id and another
turbine's client id (session takeover), another turbine's topics, another turbine's episode ids and
turbine id on its own topic, an id another turbine will use later, oversize / NaN / non-JSON / foreign
payloads and a health message naming a model version never deployed, then a flood. Honest turbines
publish numbered health messages throughout, and each opens one anomaly episode before the attack.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from awscrt import mqtt5
from awsiot import mqtt5_client_builder

from nacelle.local.edge.broker import Broker
from nacelle.local.edge.pki import CLOUD_CLIENT, LocalPki
from nacelle.local.runtime.bus import Dispatcher
from nacelle.local.runtime.rules import RuleEngine
from nacelle.local.runtime.stack import Stack
from nacelle.local.runtime.template import load_template, topic_rules
from nacelle.local.runtime.up import _record_refused
from shared.usecases.alerts import list_alerts

ATTACKER = "turbine-01"
QOS1 = mqtt5.QoS.AT_LEAST_ONCE
DELIVERED = ("SUCCESS", "NO_MATCHING_SUBSCRIBERS")  # the PUBACKs below 0x80


def connect(broker: Broker, thing: str, client_id: str | None = None, unthrottled: bool = False,
            timeout_s: float = 5.0) -> mqtt5.Client:
    """An MQTT 5 client with `thing`'s certificate (clean start); `unthrottled` drops the SDK's own
    AWS IoT Core flow control, as an attacker's client would."""
    creds = broker.pki.device(thing)
    connected = threading.Event()
    flow = mqtt5.ExtendedValidationAndFlowControlOptions
    client = mqtt5_client_builder.mtls_from_path(
        endpoint="127.0.0.1", port=broker.port, cert_filepath=str(creds.cert_path),
        pri_key_filepath=str(creds.key_path), ca_filepath=str(creds.ca_path), client_id=client_id or thing,
        session_behavior=mqtt5.ClientSessionBehaviorType.CLEAN,
        on_lifecycle_connection_success=lambda _d: connected.set(),
        extended_validation_and_flow_control_options=flow.NONE if unthrottled else flow.AWS_IOT_CORE_DEFAULTS,
        min_reconnect_delay_ms=100, max_reconnect_delay_ms=1000)
    client.start()
    if not connected.wait(timeout_s):
        client.stop()
        raise TimeoutError(f"{thing} (client id {client_id or thing}) did not connect")
    return client


def health(thing: str, seq: int, model_version: Any = None) -> bytes:
    return json.dumps({"v": 1, "turbine_id": thing, "model_version": model_version, "inference_rate_hz": 0.0,
                       "seq": seq}).encode()


def episode(thing: str, kind: str, episode_id: str, seq: int, turbine_id: str | None = None) -> bytes:
    now = time.time()
    return json.dumps({"v": 2, "kind": kind, "episode_id": episode_id, "turbine_id": turbine_id or thing,
                       "features": ["rpm"], "score": 3.5, "contributions": {"rpm": 1.0}, "missing": [],
                       "started_at": now - 30, "opened_at": now - 10, "last_flagged_at": now - 10,
                       "ended_at": now if kind == "close" else None, "model_version": None, "seq": seq}).encode()


def publish(client: mqtt5.Client, topic: str, payload: bytes, timeout_s: float = 10.0) -> str:
    """The PUBACK's reason code name (SUCCESS, NOT_AUTHORIZED, ...) or the error's name."""
    try:
        done = client.publish(mqtt5.PublishPacket(topic=topic, payload=payload, qos=QOS1)).result(timeout_s)
    except Exception as exc:
        return type(exc).__name__
    return str(done.puback.reason_code.name)


@dataclass
class Honest:
    """A turbine publishing numbered health messages every `period_s`, like a detector's spool: a message
    is retried until the broker acknowledges it, and any PUBACK that is not an error counts (no matching
    subscribers too: the device cannot know whether the cloud listens)."""

    thing: str
    client: mqtt5.Client
    period_s: float
    acked: dict[int, float] = field(default_factory=dict)  # seq -> time of its first publish
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        seq = 0
        while not self.stop.wait(self.period_s):
            seq += 1
            first = time.time()
            while publish(self.client, f"turbines/{self.thing}/health", health(self.thing, seq)) not in DELIVERED:
                if self.stop.wait(0.2):
                    return
            self.acked[seq] = first


class Rig:
    """Broker + rule engine + bus + dispatcher + the cloud functions, on one data directory."""

    def __init__(self, home: Path, honest: list[str], period_s: float = 0.1) -> None:
        self.stack = Stack(home)
        self.dispatcher = Dispatcher(self.stack.bus, self.stack.targets(), backoff_base_s=0.05)
        self.broker = Broker(home, LocalPki(home / "pki"))
        self.engine: RuleEngine | None = None
        self.honest_things = honest
        self.period_s = period_s
        self.honest: list[Honest] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> Rig:
        self.dispatcher.start()
        self.broker.start()
        self.engine = RuleEngine(topic_rules(load_template()), self.stack.bus.put_many, self.broker.endpoint,
                                 self.broker.pki.cloud(), reject=partial(_record_refused, self.stack.state)).start()
        for thing in self.honest_things:
            h = Honest(thing, connect(self.broker, thing), self.period_s)
            self.honest.append(h)
            self._threads.append(threading.Thread(target=h.run, daemon=True))
            self._threads[-1].start()
        return self

    def stop_honest(self) -> None:
        for h in self.honest:
            h.stop.set()
        for t in self._threads:
            t.join(15)

    def stop(self) -> None:
        self.stop_honest()
        for h in self.honest:
            h.client.stop()
        if self.engine is not None:
            self.engine.stop()
        self.broker.stop()
        self.dispatcher.stop()

    # ------------------------------------------------------------------ what the cloud got
    def received(self, thing: str, rule: str = "HealthRule") -> dict[int, float]:
        """seq -> when its row reached the bus, for `thing`'s messages on `rule`."""
        out: dict[int, float] = {}
        for event, put_at in self.stack.bus.events(rule):
            detail = event["detail"]
            if detail.get("thing_name") == thing and isinstance(detail.get("seq"), int):
                out.setdefault(detail["seq"], put_at)
        return out

    def alerts_of(self, thing: str) -> list[dict[str, Any]]:
        keep = ("alert_id", "turbine_id", "episode_id", "status", "score", "features", "alert")
        return sorted(({k: a.get(k) for k in keep} for a in list_alerts(self.stack.alert_deps())
                       if a.get("turbine_id") == thing), key=lambda a: str(a["alert_id"]))

    def wait_quiet(self, timeout_s: float = 30.0) -> None:
        """Until the bus has delivered everything it holds."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            stats = self.stack.bus.stats()
            if stats["pending"] == 0 and stats["delivering"] == 0:
                return
            time.sleep(0.05)


@dataclass
class Findings:
    takeover_lost: int = 0
    foreign_alert_changes: int = 0
    refused_by_reason: dict[str, int] = field(default_factory=dict)
    flood_msgs_per_s: float = 0.0
    flood_messages: int = 0
    other_lost_during_flood: int = 0
    other_delay_p99_s: float = 0.0
    refused_topics: list[str] = field(default_factory=list)


@contextmanager
def rig(home: Path, honest: list[str]) -> Iterator[Rig]:
    r = Rig(home, honest).start()
    try:
        yield r
    finally:
        r.stop()


def attack(r: Rig, flood_s: float, flood_rate: float) -> Findings:
    found = Findings()
    victims = r.honest_things
    # each honest turbine has an open alert before the attack
    for h in r.honest:
        assert publish(h.client, f"turbines/{h.thing}/anomalies", episode(h.thing, "open", f"{h.thing}-1", 1)) \
            == "SUCCESS"
    time.sleep(1.0)
    r.wait_quiet()
    before = {v: r.alerts_of(v) for v in victims}

    # 1. session takeover: the cloud's client id, then a victim's
    for client_id in (CLOUD_CLIENT, victims[0]):
        thief = connect(r.broker, ATTACKER, client_id=client_id)
        time.sleep(1.0)
        thief.stop()
    time.sleep(1.0)
    # what the broker acknowledged by now must reach the bus; counted once the pipeline is drained (below), as a
    # message still on its way is late, not lost
    acked_by_takeovers = {h.thing: set(dict(h.acked)) for h in r.honest}

    # 2. foreign topics, ids and payloads, all with the attacker's certificate
    me = connect(r.broker, ATTACKER)
    try:
        for v in victims:
            for stream, payload in (("anomalies", episode(v, "close", f"{v}-1", 2)), ("health", health(v, 10_000))):
                if publish(me, f"turbines/{v}/{stream}", payload) != "SUCCESS":
                    found.refused_topics.append(f"turbines/{v}/{stream}")
            own = f"turbines/{ATTACKER}/anomalies"
            publish(me, own, episode(ATTACKER, "close", f"{v}-1", 2, turbine_id=v))  # claims to be the victim
            publish(me, own, episode(ATTACKER, "close", f"{v}-1", 3))  # the victim's episode id, its own topic
            publish(me, own, episode(ATTACKER, "open", f"{v}-2", 4))  # an id the victim will use next
        own_health = f"turbines/{ATTACKER}/health"
        for payload in (b"x" * 1_000_000, b'{"v": 1, "seq": NaN}', b"not json", b"{}", b'{"hello": "world"}',
                        health(ATTACKER, 1, model_version=999)):
            publish(me, own_health, payload)

        # 3. the flood: QoS 1 anomaly updates on its own topic, as fast as asked
        flood = connect(r.broker, ATTACKER, client_id=ATTACKER, unthrottled=True)
        try:
            body = episode(ATTACKER, "update", f"{ATTACKER}-flood", 5)
            marks = {h.thing: max(h.acked, default=0) for h in r.honest}
            started, sent, futures = time.monotonic(), 0, []
            while (elapsed := time.monotonic() - started) < flood_s:
                due = int(elapsed * flood_rate) - sent
                futures += [flood.publish(mqtt5.PublishPacket(topic=f"turbines/{ATTACKER}/anomalies", payload=body,
                                                              qos=QOS1)) for _ in range(max(0, due))]
                sent += max(0, due)
                time.sleep(0.002)
            for f in futures:
                f.result(30)
            found.flood_messages = sent
            found.flood_msgs_per_s = sent / (time.monotonic() - started)
        finally:
            flood.stop()
    finally:
        me.stop()

    # the victims go on: the next episode id (pre-claimed by the attacker) is theirs
    for h in r.honest:
        publish(h.client, f"turbines/{h.thing}/anomalies", episode(h.thing, "open", f"{h.thing}-2", 2))
    time.sleep(1.0)
    r.stop_honest()
    assert r.engine is not None
    r.engine.drain(30)
    r.wait_quiet(60)
    delays = []
    for h in r.honest:
        got = r.received(h.thing)
        found.takeover_lost += len(acked_by_takeovers[h.thing] - set(got))
        during = {seq: at for seq, at in h.acked.items() if seq > marks[h.thing]}
        found.other_lost_during_flood += len(set(during) - set(got))
        delays += sorted(got[seq] - at for seq, at in during.items() if seq in got)
    delays.sort()
    found.other_delay_p99_s = delays[int(0.99 * (len(delays) - 1))] if delays else 0.0
    after = {v: r.alerts_of(v) for v in victims}
    for v in victims:
        kept = [a for a in after[v] if a["episode_id"] != f"{v}-2"]
        mine = [a for a in after[v] if a["episode_id"] == f"{v}-2"]
        found.foreign_alert_changes += sum(a != b for a, b in zip(before[v], kept, strict=False))
        found.foreign_alert_changes += abs(len(before[v]) - len(kept)) + (0 if len(mine) == 1 else 1)
    found.refused_by_reason = dict(r.engine.refused)
    return found

