"""The sensor source's health in the detector's health message: reports from nacelle.sensors (local pub/sub) are
checked, ordered and summarised; bad, foreign, duplicated and reordered reports never replace a newer one; the
detector's health carries the block the cloud accepts, and a state change is reported at once; the MQTT transport
subscribes to the new topic even in a session an earlier detector left."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from detector.app import DetectorApp
from detector.config import FileConfigSource
from detector.mqtt import MqttSettings, MqttTransport
from detector.source_health import CHANGE_HEALTH_MIN_S, SourceHealth
from detector.spool import Spool

from shared.messages import HealthMessage, SensorHealthMessage, decode

THING = "turbine-01"


def report(seq: int = 1, uptime: float = 10.0, state: str = "connected", **over: Any) -> bytes:
    doc = {"v": 2, "turbine_id": THING, "seq": seq, "source": "modbus", "endpoint": "modbus://10.0.0.5:502/1",
           "state": state, "rate_hz": 20.0, "last_sample_age_s": 0.05, "samples": 200, "samples_missing": 3,
           "values_missing": 1, "reads_failed": 2, "reconnects": 1, "dropped": 0, "last_error": None,
           "uptime_s": uptime, "component_version": "1.0.0", "health_interval_s": 60.0, "samples_repeated": 0,
           **over}
    return json.dumps(doc).encode()


class Clocks:
    def __init__(self) -> None:
        self.t = 1_000.0

    def wall(self) -> float:
        return 1_700_000_000.0 + self.t

    def mono(self) -> float:
        return self.t


def make(on_change: Callable[[], None] | None = None) -> tuple[SourceHealth, Clocks]:
    clocks = Clocks()
    return SourceHealth(THING, on_change, wall=clocks.wall, mono=clocks.mono), clocks


def test_the_summary_ages_the_report_and_the_detector_health_accepts_it() -> None:
    health, clocks = make()
    assert health.summary() is None  # nothing reported: no block (e.g. the built-in simulator feeds the topic)
    health.on_message(report(last_error="read from modbus://10.0.0.5:502/1 failed: " + "x" * 500))
    clocks.t += 4.0
    s = health.summary()
    assert s is not None
    assert (s.source, s.state, s.rate_hz, s.report_interval_s) == ("modbus", "connected", 20.0, 60.0)
    assert (s.report_age_s, s.last_sample_age_s) == (4.0, 4.05)  # ages as of the detector's health message
    assert (s.samples, s.samples_missing, s.values_missing, s.reconnects, s.component_version) == (
        200, 3, 1, 1, "1.0.0")
    assert s.last_error is not None and len(s.last_error) == 200
    doc = health.with_summary({"v": 2, "turbine_id": THING, "seq": 4, "inference_rate_hz": 2.0})
    assert decode(HealthMessage, json.dumps(doc).encode()).sensors == s  # what the cloud reads


def test_bad_foreign_duplicated_and_reordered_reports_never_replace_a_newer_one() -> None:
    health, clocks = make()
    health.on_message(report(seq=5, uptime=300.0))
    for bad in (b"not json", b"x" * 200_000, report(seq=6, uptime=301.0, state="up"),
                report(seq=6, uptime=301.0, samples=-1), report(seq=6, uptime=301.0, extra=1),
                report(seq=6, uptime=301.0, turbine_id="turbine-02"),  # another turbine's report
                report(seq=6, uptime=301.0, v=1)):  # v1 has no health_interval_s
        health.on_message(bad)
    assert health.refused == 7
    health.on_message(report(seq=5, uptime=300.0, state="disconnected"))  # a duplicate of seq 5
    health.on_message(report(seq=4, uptime=299.0, state="disconnected"))  # late: older than seq 5
    assert health.summary() is not None and health.summary().state == "connected"  # type: ignore[union-attr]
    clocks.t += 60.0
    health.on_message(report(seq=6, uptime=360.0, state="disconnected"))
    assert health.summary().state == "disconnected"  # type: ignore[union-attr]
    clocks.t += 5.0  # the component restarted: seq starts again at 1
    health.on_message(report(seq=1, uptime=2.0, state="connecting", last_sample_age_s=None))
    s = health.summary()
    assert s is not None and (s.state, s.last_sample_age_s) == ("connecting", None)
    health.on_message(report(seq=7, uptime=361.0, state="connected"))  # a late report of the earlier run
    assert health.summary().state == "connecting"  # type: ignore[union-attr]


class Worker:
    """What the detector's worker does with a SourceHealth: a health message when asked or when a change is due."""

    def __init__(self) -> None:
        self.health, self.clocks = make(self.ask)
        self.asked: list[float] = []
        self.sent: list[str] = []  # the state each health message carried

    def ask(self) -> None:
        self.asked.append(self.clocks.t)
        self.send()

    def send(self) -> None:
        summary = self.health.summary()
        assert summary is not None
        self.sent.append(summary.state)

    def turn(self) -> None:  # polled
        if self.health.ask_due():
            self.send()

    def report(self, seq: int, state: str = "connected", after: float = 0.0) -> None:
        self.clocks.t += after
        self.health.on_message(report(seq=seq, state=state))


def test_a_state_change_asks_for_a_health_message_and_a_recovery_cannot_hide_the_next_outage() -> None:
    w = Worker()
    w.report(1)
    w.report(2)  # same state: nothing asked
    w.report(3, "disconnected", after=1.0)  # an outage a second after the start: at once
    w.report(4, "connected", after=1.0)  # a recovery too soon after the last one (the start): waits
    assert w.sent == ["connected", "disconnected"] and not w.health.ask_due()
    w.report(5, "disconnected", after=CHANGE_HEALTH_MIN_S)  # the waiting recovery goes first, then this outage
    w.report(6, "connected")  # its own message although the source is back: its recovery waits for the limit
    assert w.asked == [1_000.0, 1_001.0, 1_002.0 + CHANGE_HEALTH_MIN_S, 1_002.0 + CHANGE_HEALTH_MIN_S]
    assert w.sent == ["connected", "disconnected", "connected", "disconnected"]
    w.turn()
    assert len(w.sent) == 4
    w.clocks.t += CHANGE_HEALTH_MIN_S
    w.turn()
    assert w.sent[4:] == ["connected"] and not w.health.ask_due()


def test_an_outage_shorter_than_the_worker_s_turn_still_reaches_the_cloud_as_an_outage() -> None:
    health, clocks = make()
    health.on_message(report(seq=1))
    assert health.summary().state == "connected"  # type: ignore[union-attr]
    clocks.t += 60.0
    health.on_message(report(seq=2, state="disconnected", last_error="no answer", last_sample_age_s=1.0))
    clocks.t += 0.5
    health.on_message(report(seq=3, state="connected"))  # back before the worker built the message
    clocks.t += 0.1
    first = health.summary()  # the message the outage asked for: the outage's report, aged as of now
    assert first is not None and (first.state, first.last_error, first.report_age_s) == ("disconnected", "no answer",
                                                                                          0.6)
    assert first.last_sample_age_s == 1.6
    assert health.ask_due()  # the recovery next, at once: its direction has sent nothing for 60 s
    assert health.summary().state == "connected" and not health.ask_due()  # type: ignore[union-attr]


def test_a_held_back_change_is_sent_once_the_limit_allows_in_order_even_when_over() -> None:
    w = Worker()
    w.report(1)
    w.report(2, "disconnected", after=1.0)  # sent at once
    w.report(3, "connected", after=1.0)  # too soon after the start: waits
    w.report(4, "disconnected", after=1.0)  # too soon after the first outage: waits behind the recovery
    assert w.asked == [1_000.0, 1_001.0] and not w.health.ask_due()
    w.clocks.t = 1_000.0 + CHANGE_HEALTH_MIN_S
    w.turn()
    w.turn()
    assert w.sent == ["connected", "disconnected", "connected"]  # the recovery as soon as its limit allows...
    w.clocks.t = 1_001.0 + CHANGE_HEALTH_MIN_S
    w.turn()
    assert w.sent[3:] == ["disconnected"] and not w.health.ask_due()  # ...then the second outage, in order
    w.clocks.t = 1_020.0
    w.report(5, "connected")  # at once
    w.report(6, "disconnected", after=1.0)  # at once
    w.report(7, "connected", after=1.0)  # waits...
    w.report(8, "disconnected", after=1.0)  # ...a second outage waits behind it...
    w.report(9, "connected", after=1.0)  # ...and is over: that outage and its recovery wait, in order
    assert w.sent[4:] == ["connected", "disconnected"] and len(w.health._unsent) == 2
    w.clocks.t = 1_021.0 + CHANGE_HEALTH_MIN_S
    w.turn()
    w.turn()
    assert w.sent[6:] == ["disconnected", "connected"] and not w.health.ask_due()
    assert w.asked == [1_000.0, 1_001.0, 1_020.0, 1_021.0]


def test_a_flapping_source_sends_at_most_two_health_messages_every_few_seconds_and_ends_right() -> None:
    w = Worker()
    for seq in range(1, 201):  # flapping every 0.1 s for 20 s
        w.report(seq, "connected" if seq % 2 else "disconnected")
        w.turn()
        w.clocks.t += 0.1
    assert len(w.sent) <= 2 * (20 / CHANGE_HEALTH_MIN_S + 1)
    assert len(w.health._unsent) <= 2  # what waits stays bounded
    for _ in range(3):
        w.clocks.t += CHANGE_HEALTH_MIN_S
        w.turn()
    assert w.sent[-1] == "disconnected" and not w.health.ask_due()  # the last message says how it is now



class Link:
    """An in-memory Transport."""

    is_connected = True

    def __init__(self) -> None:
        self.subscriptions: dict[str, Callable[[bytes], None]] = {}
        self.sent: list[tuple[str, bytes]] = []

    def connect(self) -> None: ...
    def stop(self) -> None: ...
    def on_connection_change(self, callback: Callable[[bool], None]) -> None: ...

    def subscribe(self, topic: str, callback: Callable[[bytes], None]) -> None:
        self.subscriptions[topic] = callback

    def publish(self, topic: str, payload: bytes, timeout: float) -> None:
        self.sent.append((topic, payload))

    def health(self) -> list[HealthMessage]:
        return [decode(HealthMessage, p) for t, p in list(self.sent) if t == f"turbines/{THING}/health"]


def test_the_detector_reports_its_sensor_source_in_its_health_message(tmp_path: Path) -> None:
    config = tmp_path / "nacelle.detector.json"
    config.write_text(json.dumps({"model": {"version": ""}, "healthIntervalSeconds": 3600}))
    source = FileConfigSource(config, THING, poll_s=0.05)
    source.start()
    link = Link()
    app = DetectorApp(source, link, Spool(tmp_path / "spool.db", 100), tmp_path, version="test").start()
    try:
        deliver = link.subscriptions[f"turbines/{THING}/sensors/health"]
        assert f"turbines/{THING}/sensors" in link.subscriptions
        app.request_health()
        _wait(lambda: len(link.health()) == 1)
        assert link.health()[0].sensors is None  # no report yet: no block
        deliver(report(seq=1))  # the first report is a change: health at once
        _wait(lambda: len(link.health()) == 2)
        deliver(report(seq=2, uptime=11.0, last_error="x"))
        deliver(b'{"v": 2, "turbine_id": "turbine-01"}')  # refused, counted, the detector goes on
        app.request_health()
        _wait(lambda: len(link.health()) == 3)
    finally:
        app.stop(drain_s=1)
        app.spool.close()
    first, second = link.health()[1:3]
    assert first.v == 2 and first.sensors is not None and first.sensors.state == "connected"
    assert second.sensors is not None and second.sensors.last_error == "x"
    assert app.source_health.refused == 1
    assert decode(SensorHealthMessage, report()).v == 2


def _wait(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


class FakeMqttClient:
    """The SDK client surface MqttTransport uses: its callbacks kept, subscriptions recorded, and its own stop
    reported as a disconnection, as the SDK does."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.subscribed: list[str] = []

    def subscribe(self, packet: Any) -> Future[Any]:
        self.subscribed.extend(s.topic_filter for s in packet.subscriptions)
        done: Future[Any] = Future()
        done.set_result(SimpleNamespace(reason_codes=[1]))
        return done

    def stop(self) -> None:
        self.kwargs["on_lifecycle_disconnection"](SimpleNamespace(exception="USER_REQUESTED_STOP"))


def fake_transport(tmp_path: Path) -> tuple[MqttTransport, FakeMqttClient]:
    made: list[FakeMqttClient] = []

    def factory(**kwargs: Any) -> FakeMqttClient:
        made.append(FakeMqttClient(**kwargs))
        return made[-1]

    transport = MqttTransport(MqttSettings("127.0.0.1", 8883, tmp_path / "ca", tmp_path / "c", tmp_path / "k", THING),
                              client_factory=factory)
    return transport, made[0]


def test_a_rejoined_session_still_gets_a_subscription_this_detector_adds(tmp_path: Path) -> None:
    """An earlier detector's persistent session has no `sensors/health` subscription: each topic is subscribed once
    per process even when the broker says the session is present, and not again on later reconnections."""
    transport, client = fake_transport(tmp_path)
    sent = client.subscribed
    transport.subscribe(f"turbines/{THING}/sensors/health", lambda _p: None)
    transport.subscribe(f"turbines/{THING}/sensors", lambda _p: None)
    on_success = client.kwargs["on_lifecycle_connection_success"]
    rejoined = SimpleNamespace(connack_packet=SimpleNamespace(session_present=True))
    on_success(rejoined)
    assert sorted(sent) == [f"turbines/{THING}/sensors", f"turbines/{THING}/sensors/health"]
    on_success(rejoined)  # a later reconnection into the same session: the broker keeps them
    assert len(sent) == 2
    on_success(SimpleNamespace(connack_packet=SimpleNamespace(session_present=False)))  # a lost session: again
    assert len(sent) == 4


def test_its_own_stop_is_no_warning_but_a_lost_connection_is(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    transport, client = fake_transport(tmp_path)
    with caplog.at_level(logging.INFO, logger="detector.mqtt"):
        client.kwargs["on_lifecycle_disconnection"](SimpleNamespace(exception="CONNECTION_RESET"))
        transport.stop()
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "disconnected: CONNECTION_RESET"), (logging.INFO, "disconnected (stopping)")]
