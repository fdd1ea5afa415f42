"""Broker outage: two turbines' detectors on the real mosquitto broker (mutual TLS), a fault on
one of them, the broker stopped for 30 s while episodes are being produced, then restarted.

Figures at the cloud subscriber (persistent session, `turbines/#`): outage_lost, outage_duplicated,
outage_out_of_order (anomaly messages, by their `seq`), outage_flush_s (broker restart -> spools empty),
outage_max_spool_depth. Run alone: `.venv/bin/python -m benchmarks.bench_outage` (needs mosquitto).
tests: greengrass_components/nacelle.detector/tests/test_app_broker.py runs the same scenario with 5 s.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from awscrt import mqtt5
from awsiot import mqtt5_client_builder

from nacelle.local.edge.broker import Broker, find_mosquitto
from nacelle.local.edge.pki import DeviceCredentials, LocalPki
from nacelle.simulator.stream import TurbineStream

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "greengrass_components" / "nacelle.detector" / "src"))
from detector.app import DetectorApp
from detector.config import FileConfigSource
from detector.messages import sensor_message
from detector.mqtt import MqttSettings, MqttTransport
from detector.spool import Spool

FAULTY, HEALTHY = "turbine-01", "turbine-02"
SECONDS, FAULT_AT, FAULT_S = 420, 150, 90  # stream seconds (one sensor message each), fault window
BURST = 200  # messages sent before the outage starts (the episode is open by then)
PACE_HZ = 40.0  # sensor messages per second afterwards


class MqttClient:
    """A started awscrt MQTT 5 client (mutual TLS) collecting what it receives."""

    def __init__(self, endpoint: tuple[str, int], creds: DeviceCredentials, client_id: str,
                 persistent: bool = False) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.connected = threading.Event()
        extra: dict[str, Any] = {}
        if persistent:
            extra = {"session_behavior": mqtt5.ClientSessionBehaviorType.REJOIN_ALWAYS,
                     "session_expiry_interval_sec": 3600}
        self.client = mqtt5_client_builder.mtls_from_path(
            endpoint=endpoint[0], port=endpoint[1], cert_filepath=str(creds.cert_path),
            pri_key_filepath=str(creds.key_path), ca_filepath=str(creds.ca_path), client_id=client_id,
            min_reconnect_delay_ms=200, max_reconnect_delay_ms=1000, connack_timeout_ms=3000,
            on_publish_received=lambda d: self.received.append((d.publish_packet.topic,
                                                                bytes(d.publish_packet.payload))),
            on_lifecycle_connection_success=lambda _d: self.connected.set(),
            on_lifecycle_disconnection=lambda _d: self.connected.clear(), **extra)
        self.client.start()
        if not self.connected.wait(10):
            raise RuntimeError(f"{client_id} did not connect")

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(mqtt5.SubscribePacket(subscriptions=[
            mqtt5.Subscription(topic_filter=topic, qos=mqtt5.QoS.AT_LEAST_ONCE)])).result(10)

    def publish(self, topic: str, payload: bytes) -> Any:
        """QoS 1, in order; returns the PUBACK future (across an outage the client queues it and sends it on
        reconnect)."""
        return self.client.publish(mqtt5.PublishPacket(topic=topic, payload=payload, qos=mqtt5.QoS.AT_LEAST_ONCE))

    def stop(self) -> None:
        self.client.stop()


@dataclass
class TurbineReport:
    produced: int  # anomaly messages the detector put in its spool (its last seq)
    received: list[int]  # anomaly seqs at the cloud, in arrival order
    kinds: list[str]
    health: int  # health messages received

    @property
    def lost(self) -> int:
        return len(set(range(1, self.produced + 1)) - set(self.received))

    @property
    def duplicated(self) -> int:
        return len(self.received) - len(set(self.received))

    @property
    def out_of_order(self) -> int:
        seen: set[int] = set()
        top, count = 0, 0
        for seq in self.received:
            if seq < top and seq not in seen:
                count += 1
            seen.add(seq)
            top = max(top, seq)
        return count


@dataclass
class OutageReport:
    turbines: dict[str, TurbineReport]
    flush_s: float
    max_spool_depth: int  # both detectors' spools, sampled during the outage
    spool_depth_at_restart: int
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)


def _detector(home: Path, broker: Broker, thing: str, models_root: Path, health_s: float) -> DetectorApp:
    work = home / "devices" / thing
    work.mkdir(parents=True, exist_ok=True)
    config = work / "nacelle.detector.json"
    config.write_text(json.dumps({"healthIntervalSeconds": health_s, "model": {"version": "1.0.0"}}))
    creds = broker.pki.device(thing)
    source = FileConfigSource(config, thing)
    source.start()
    transport = MqttTransport(MqttSettings("127.0.0.1", broker.port, creds.ca_path, creds.cert_path, creds.key_path,
                                           client_id=thing, max_reconnect_delay_ms=1000))
    return DetectorApp(source, transport, Spool(work / "spool.db", 10000), models_root, version="bench",
                       publish_timeout=2.0).start()


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def run_outage(home: Path, models_root: Path, outage_s: float, *, health_s: float = 0.5,
               echo: Callable[[str], None] = lambda _m: None) -> OutageReport:
    pki = LocalPki(home / "pki").ensure()
    for thing in (FAULTY, HEALTHY):
        pki.sensor_source(thing)  # before the broker starts: its ACL lists them
    broker = Broker(home, pki).start()
    apps: dict[str, DetectorApp] = {}
    clients: list[MqttClient] = []
    try:
        cloud = MqttClient(broker.endpoint, pki.cloud(), f"nacelle-cloud-{uuid.uuid4().hex[:6]}", persistent=True)
        clients.append(cloud)
        cloud.subscribe("turbines/#")
        for thing in (FAULTY, HEALTHY):
            apps[thing] = _detector(home, broker, thing, models_root, health_s)
        _wait(lambda: all(a.transport.is_connected for a in apps.values()), 10, "the detectors to connect")
        time.sleep(0.3)  # their SUBSCRIBEs are acknowledged
        streams = {FAULTY: TurbineStream(FAULTY, 5), HEALTHY: TurbineStream(HEALTHY, 6)}
        streams[FAULTY].inject("rotor_imbalance", "high", FAULT_S, start=streams[FAULTY].now +
                               timedelta(seconds=FAULT_AT))
        sensors = {t: MqttClient(broker.endpoint, pki.sensor_source(t), f"{t}.sensors") for t in streams}
        clients += sensors.values()

        sent = dict.fromkeys(streams, 0)  # samples published per turbine

        def send(n: int, pace: float | None) -> None:
            futures = []
            for _ in range(n):
                for thing, stream in streams.items():
                    batch: list[Mapping[str, Any]] = list(stream.next_batch(1.0))
                    futures.append(sensors[thing].publish(f"turbines/{thing}/sensors", sensor_message(thing, batch)))
                    sent[thing] += len(batch)
                if pace:
                    time.sleep(1 / pace)
            for future in futures:
                future.result(120 + outage_s)

        started = time.monotonic()
        send(BURST, None)
        echo(f"burst sent in {time.monotonic() - started:.1f}s")
        _wait(lambda: apps[FAULTY].anomalies_spooled > 0, 30, "the episode to open")
        feeder = threading.Thread(target=send, args=(SECONDS - BURST, PACE_HZ), daemon=True)
        feeder.start()
        time.sleep(0.3)
        echo(f"stopping the broker for {outage_s:g}s")
        broker.stop()
        depth, deadline = 0, time.monotonic() + outage_s
        while time.monotonic() < deadline:
            depth = max(depth, sum(a.spool.depth() for a in apps.values()))
            time.sleep(0.05)
        at_restart = sum(a.spool.depth() for a in apps.values())
        broker.start()
        restarted = time.monotonic()
        _wait(lambda: sum(a.spool.depth() for a in apps.values()) == 0, 60 + outage_s, "the spools to flush")
        flush_s = time.monotonic() - restarted
        echo(f"spools flushed {flush_s:.2f}s after the restart (max depth {depth})")
        feeder.join(60 + outage_s)
        _wait(lambda: all(a.pipeline is not None and a.pipeline.samples_seen >= sent[t] for t, a in apps.items()),
              60, "the detectors to handle every sample")
        echo(f"stream handled {time.monotonic() - started:.1f}s after the first message")
        for app in apps.values():
            app.stop(drain_s=10)
        echo(f"detectors stopped at {time.monotonic() - started:.1f}s")
        _wait(lambda: len(_anomalies(cloud, FAULTY)) >= apps[FAULTY].spool.seq("anomalies"), 20,
              "the cloud to receive every anomaly message")
        time.sleep(0.3)
        turbines = {}
        for thing, app in apps.items():
            got = _anomalies(cloud, thing)
            turbines[thing] = TurbineReport(app.spool.seq("anomalies"), [m["seq"] for m in got],
                                            [m["kind"] for m in got],
                                            sum(1 for t, _ in cloud.received if t == f"turbines/{thing}/health"))
        return OutageReport(turbines, flush_s, depth, at_restart, {t: a.stats() for t, a in apps.items()})
    finally:
        for app in apps.values():
            app.stop(drain_s=0)
            app.spool.close()
        for client in clients:
            client.stop()
        broker.stop()


def _anomalies(cloud: MqttClient, thing: str) -> list[dict[str, Any]]:
    return [json.loads(p) for t, p in list(cloud.received) if t == f"turbines/{thing}/anomalies"]


def main() -> int:
    if find_mosquitto() is None:
        print("mosquitto is not installed: skipped", file=sys.stderr)
        return 0
    from nacelle.simulator.generate import generate_dataset
    from nacelle.train_runner import run_training_job
    from training_jobs.compile import compile_bundle

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_dataset(root / "data", 2, 1.0, "default", 3)
        job = run_training_job(root / "job", "bench-outage", {"train": root / "data"},
                               {"epochs": "4", "max_train_windows": "6000", "threads": "1"}, echo=None)
        if job.model_archive is None:
            print(f"training failed: {job.failure_reason}", file=sys.stderr)
            return 1
        models = root / "models"
        compile_bundle(job.model_archive, models / "nacelle.model" / "1.0.0" / "bundle", None, 1, warmup=5, runs=20)
        report = run_outage(root / "home", models, 30.0)
    faulty = report.turbines[FAULTY]
    print("outage_s=30")
    print(f"outage_anomalies={faulty.produced}")
    print(f"outage_lost={sum(t.lost for t in report.turbines.values())}")
    print(f"outage_duplicated={sum(t.duplicated for t in report.turbines.values())}")
    print(f"outage_out_of_order={sum(t.out_of_order for t in report.turbines.values())}")
    print(f"outage_healthy_turbine_anomalies={len(report.turbines[HEALTHY].received)}")
    print(f"outage_max_spool_depth={report.max_spool_depth}")
    print(f"outage_flush_s={report.flush_s:.2f}", flush=True)
    ok = faulty.produced > 0 and all(t.lost == 0 and t.out_of_order == 0 for t in report.turbines.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
