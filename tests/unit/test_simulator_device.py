"""The turbine simulator process: fault requests (inbox -> injection -> labels), scheduled faults, the sensor
messages it publishes, and one run against the real mosquitto broker."""

from __future__ import annotations

import itertools
import json
import math
import queue
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from nacelle.simulator.device import (
    DETECTOR_SRC,
    FaultRequest,
    SimPaths,
    Simulator,
    load_schedule,
    request_fault,
)
from shared.errors import ConfigurationError
from shared.ml.spec import default_spec

if str(DETECTOR_SRC) not in sys.path:
    sys.path.append(str(DETECTOR_SRC))
from detector.messages import parse_sensor_message

REPO = Path(__file__).resolve().parents[2]
START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
THING = "turbine-07"


class Recorder:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    def __call__(self, topic: str, payload: bytes) -> None:
        self.messages.append((topic, payload))

    def samples(self) -> list[Any]:
        return [s for _, p in self.messages for s in parse_sensor_message(p, default_spec(), THING)]


def _sim(home: Path, **kwargs: Any) -> tuple[Simulator, Recorder]:
    rec = Recorder()
    return Simulator(THING, home, rec, speed=math.inf, seed=11, start=START, **kwargs), rec


def _labels(home: Path) -> list[dict[str, Any]]:
    path = SimPaths.of(home, THING).labels
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_request_fault_drops_a_complete_file_into_the_inbox(tmp_path: Path) -> None:
    path = request_fault(tmp_path, THING, "overspeed", "high", 30)
    assert path.parent == tmp_path / "devices" / THING / "sim" / "inbox"
    assert path.suffix == ".json" and not list(path.parent.glob(".*"))  # the temp file was renamed
    assert json.loads(path.read_text()) == {"fault": "overspeed", "severity": "high", "duration_s": 30.0}
    later = request_fault(tmp_path, THING, "bearing_wear")
    assert sorted(path.parent.glob("*.json")) == [path, later]  # names sort in request order


@pytest.mark.parametrize(("fault", "severity", "duration", "match"), [
    ("melting", "low", 10, "fault: unknown fault 'melting'"),
    ("overspeed", "extreme", 10, "severity: unknown 'extreme'"),
    ("overspeed", "low", 0, "duration_s: must be a positive number"),
    ("overspeed", "low", float("nan"), "duration_s: must be a positive number"),
])
def test_request_fault_refuses_bad_requests(tmp_path: Path, fault: str, severity: str, duration: float,
                                            match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        request_fault(tmp_path, THING, fault, severity, duration)
    assert not (tmp_path / "devices" / THING / "sim" / "inbox").exists()
    with pytest.raises(ConfigurationError, match="invalid thing name"):
        request_fault(tmp_path, "wt/01", "overspeed")


def test_inbox_requests_are_injected_labelled_and_moved(tmp_path: Path) -> None:
    sim, rec = _sim(tmp_path)
    assert sim.run(max_batches=3) == 3
    first = request_fault(tmp_path, THING, "sensor_dropout", "high", 4)
    bad = first.parent / "0-bad.json"
    bad.write_text('{"fault": "overspeed", "severity": "low", "duration_s": 5, "extra": 1}')
    at = sim.stream.now
    [episode] = sim.poll_inbox()
    assert (episode.fault, episode.severity, episode.start, episode.end) == (
        "sensor_dropout", "high", at, at + timedelta(seconds=4))
    assert _labels(tmp_path) == [{"turbine": THING, "fault": "sensor_dropout", "severity": "high",
                                  "start": at.timestamp(), "end": at.timestamp() + 4}]
    paths = SimPaths.of(tmp_path, THING)
    assert list(paths.inbox.iterdir()) == []
    assert [p.name for p in paths.done.iterdir()] == [first.name]
    assert sorted(p.name for p in paths.rejected.iterdir()) == ["0-bad.json", "0-bad.json.error"]
    assert "unknown keys ['extra']" in (paths.rejected / "0-bad.json.error").read_text()
    assert sim.poll_inbox() == []  # handled once

    sim.run(max_batches=6)
    samples = rec.samples()
    assert [s.seq for s in samples] == list(range(len(samples)))
    assert all(b.ts > a.ts for a, b in itertools.pairwise(samples))
    assert {topic for topic, _ in rec.messages} == {f"turbines/{THING}/sensors"}
    during = [s for s in samples if at.timestamp() <= s.ts < at.timestamp() + 4]
    before = [s for s in samples if s.ts < at.timestamp()]
    # a full dropout empties a channel for the whole episode, which never happens before it
    empty_during = {i for i in range(len(samples[0].values)) if all(math.isnan(s.values[i]) for s in during)}
    assert during and empty_during
    assert not any(all(math.isnan(s.values[i]) for s in before) for i in empty_during)


def test_scheduled_faults_start_at_their_exact_stream_time(tmp_path: Path) -> None:
    schedule_file = tmp_path / "schedule.json"
    schedule_file.write_text(json.dumps([{"fault": "overspeed", "severity": "high", "duration_s": 3, "at_s": 2.5}]))
    schedule = load_schedule(schedule_file)
    assert schedule == [FaultRequest("overspeed", "high", 3.0, 2.5)]
    sim, rec = _sim(tmp_path / "faulty", schedule=schedule)
    clean, clean_rec = _sim(tmp_path / "clean")
    sim.run(max_batches=1)
    assert _labels(tmp_path / "faulty") == []  # not injected before the batch that holds its start
    sim.run(max_batches=8)
    clean.run(max_batches=8)
    start = (START + timedelta(seconds=2.5)).timestamp()
    assert _labels(tmp_path / "faulty") == [{"turbine": THING, "fault": "overspeed", "severity": "high",
                                             "start": start, "end": start + 3}]
    faulty, normal = rec.samples(), clean_rec.samples()
    assert [s.ts for s in faulty] == [s.ts for s in normal]
    assert [s.values for s in faulty if s.ts < start] == [s.values for s in normal if s.ts < start]
    assert [s.values for s in faulty if s.ts >= start] != [s.values for s in normal if s.ts >= start]


def test_schedule_file_errors_name_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "schedule.json"
    path.write_text(json.dumps([{"fault": "overspeed", "duration_s": 3, "at_s": -1}]))
    with pytest.raises(ConfigurationError, match=r"schedule\.json\[0\]: at_s: must be a non-negative"):
        load_schedule(path)
    path.write_text("{}")
    with pytest.raises(ConfigurationError, match="must be a JSON list"):
        load_schedule(path)


# ------------------------------------------------------------------ against the real broker
@pytest.mark.integration
def test_simulator_process_publishes_to_the_broker_and_takes_faults(tmp_path: Path) -> None:
    from awscrt import mqtt5
    from awsiot import mqtt5_client_builder

    from nacelle.local.edge.broker import Broker, find_mosquitto
    from nacelle.local.edge.pki import LocalPki

    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    home = tmp_path / "home"
    pki = LocalPki(home / "pki")
    pki.sensor_source(THING)  # before the broker starts: its ACL lists it
    received: queue.Queue[tuple[str, bytes]] = queue.Queue()
    connected, stopped = threading.Event(), threading.Event()
    with Broker(home, pki) as broker:
        cloud = pki.cloud()
        client = mqtt5_client_builder.mtls_from_path(
            endpoint="127.0.0.1", port=broker.port, cert_filepath=str(cloud.cert_path),
            pri_key_filepath=str(cloud.key_path), ca_filepath=str(cloud.ca_path), client_id="test-cloud",
            on_publish_received=lambda d: received.put((d.publish_packet.topic, bytes(d.publish_packet.payload))),
            on_lifecycle_connection_success=lambda _d: connected.set(),
            on_lifecycle_stopped=lambda _d: stopped.set())
        client.start()
        proc = None
        try:
            assert connected.wait(10), "cloud subscriber did not connect"
            client.subscribe(mqtt5.SubscribePacket(subscriptions=[mqtt5.Subscription(
                topic_filter="turbines/+/sensors", qos=mqtt5.QoS.AT_LEAST_ONCE)])).result(10)
            proc = subprocess.Popen([sys.executable, "-m", "nacelle.simulator.device", "--thing", THING,
                                     "--home", str(home), "--speed", "4", "--seed", "5"], cwd=REPO,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            got: list[Any] = []
            while len(got) < 4:
                topic, payload = received.get(timeout=20)
                assert topic == f"turbines/{THING}/sensors"
                got.extend(parse_sensor_message(payload, default_spec(), THING))
            assert [s.seq for s in got] == list(range(len(got)))
            assert abs(got[0].ts - time.time()) < 30  # the stream starts at the wall clock

            request = request_fault(home, THING, "overspeed", "medium", 5)
            done = SimPaths.of(home, THING).done / request.name
            deadline = time.monotonic() + 10
            while not done.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert done.exists(), "the simulator did not take the fault request"
            [label] = _labels(home)
            assert (label["fault"], label["severity"], label["end"] - label["start"]) == ("overspeed", "medium", 5)

            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=15)
            assert proc.returncode == 0, out
            assert "stopped after" in out
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(5)
            client.stop()
            stopped.wait(5)
