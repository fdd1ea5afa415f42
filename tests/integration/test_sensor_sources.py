"""`nacelle up --source modbus`: a device of the local fleet whose sensor stream comes from a simulated Modbus
controller read by the packaged nacelle.sensors component, over the real broker with the sensor source's
certificate; a fault request reaches the controller; a controller killed with SIGKILL gives missing samples, is
restarted by the fleet on its port, and the component reads it again; the component killed with SIGKILL comes back
without repeating a sample."""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from awscrt import mqtt5
from awsiot import mqtt5_client_builder

from nacelle.local.adapters.greengrass import LocalGreengrass
from nacelle.local.edge.broker import Broker, find_mosquitto
from nacelle.local.edge.fleet import Fleet
from nacelle.local.edge.pki import LocalPki
from nacelle.simulator.device import SimPaths, request_fault
from shared.messages import SensorHealthMessage, SensorMessage, decode
from shared.ml.spec import default_spec

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed (apt-get install -y mosquitto)"),
]
THING = "turbine-01"
COLUMNS = default_spec().input_columns


def test_a_device_reads_its_modbus_controller_through_the_sensors_component(tmp_path: Path) -> None:
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
        fleet = Fleet(home, LocalGreengrass(home / "greengrass.db"), size=1, canary_size=0, source="modbus",
                      nucleus_args=["--poll", "0.5"])
        try:
            assert connected.wait(10), "cloud subscriber did not connect"
            client.subscribe(mqtt5.SubscribePacket(subscriptions=[
                mqtt5.Subscription(topic_filter="turbines/+/sensors", qos=mqtt5.QoS.AT_LEAST_ONCE),
                mqtt5.Subscription(topic_filter="turbines/+/sensors/health", qos=mqtt5.QoS.AT_LEAST_ONCE)])).result(10)
            fleet.start()
            samples: list[dict[str, Any]] = []
            health: list[SensorHealthMessage] = []

            def take(until: Any, timeout: float, what: str) -> None:
                deadline = time.monotonic() + timeout
                while not until():
                    try:
                        topic, payload = received.get(timeout=max(0.01, deadline - time.monotonic()))
                    except queue.Empty:
                        raise AssertionError(f"timed out waiting for {what}; log: {_log(home)}") from None
                    if topic == f"turbines/{THING}/sensors":
                        samples.extend(decode(SensorMessage, payload).samples)
                    else:
                        assert topic == f"turbines/{THING}/sensors/health", topic
                        health.append(decode(SensorHealthMessage, payload))

            take(lambda: sum(s["voltage"] is not None for s in samples) >= 20, 40, "samples with values")
            take(lambda: any(h.state == "connected" for h in health), 15, "health: connected")
            assert all(set(COLUMNS) <= set(s) for s in samples)

            request = request_fault(home, THING, "overspeed", "medium", 5)  # `nacelle fleet inject`
            done = SimPaths.of(home, THING).done / request.name
            take(lambda: done.exists(), 10, "the controller to take the fault request")
            label = json.loads(SimPaths.of(home, THING).labels.read_text().splitlines()[-1])
            assert (label["turbine"], label["fault"]) == (THING, "overspeed")

            controller = fleet.procs[f"{THING}/controller"].popen
            assert controller is not None
            killed, before = time.time(), len(samples)
            controller.kill()  # kill -9 the controller: the fleet restarts it on the same port
            take(lambda: any(s["voltage"] is None for s in samples[before:]), 10, "samples marked missing")
            take(lambda: any(s["voltage"] is not None and s["ts"] > killed + 0.5 for s in samples[before:]), 20,
                 "values again after the restart")
            assert fleet.procs[f"{THING}/controller"].restarts == 1
            component = fleet.procs[f"{THING}/sensors"].popen
            assert component is not None
            killed = time.time()
            component.kill()  # kill -9 the component itself: it comes back on the same tick grid, nothing repeated
            take(lambda: any(s["voltage"] is not None and s["ts"] > killed + 0.5 for s in samples[before:]), 30,
                 "values again after the component's restart")
            assert fleet.procs[f"{THING}/sensors"].restarts == 1
            after = samples[before:]
            assert all(all(s[c] is None for c in COLUMNS) or all(s[c] is not None for c in COLUMNS) for s in after)
            seqs = [s["seq"] for s in samples]
            assert seqs == sorted(set(seqs))  # nothing repeated, nothing out of order
            row = fleet.status()[0]
            assert set(row["processes"]) == {"nucleus", "controller", "sensors"}
            assert row["processes"]["sensors"] == "running (restarts 1)"
        finally:
            fleet.stop()
            client.stop()
            stopped.wait(5)


def _log(home: Path) -> str:
    logs = home / "devices" / THING / "logs"
    return " | ".join(f"{p.name}: {p.read_text()[-600:]}" for p in sorted(logs.glob("*.log"))) if logs.is_dir() else ""
