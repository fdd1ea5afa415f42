"""`nacelle up --source modbus`: a device of the local fleet whose sensor stream comes from a simulated Modbus
controller read by the nacelle.sensors component, deployed to the device by a deployment to its thing and run by its
nucleus (Install from the component's wheel artifacts, Run), over the real broker with the sensor source's
certificate and client id; a fault request reaches the controller; a controller killed with SIGKILL gives missing
samples, is restarted by the fleet on its port, and the component reads it again; the component killed with SIGKILL
is restarted by the nucleus without repeating a sample. A detector on the device (in process, the turbine's
certificate, no model) reports the source's health in the device's health message: ok, then down since the kill,
then ok again; its MQTT session is never taken over. The sensors' identity cannot publish for another turbine nor
on the detector's topics.

The component's venv is built once into build/venvs/ (about 15 s) and reused by later runs (the installer keys it
by the requirements' hash and locks it): the devices' shared venvs root points there."""

from __future__ import annotations

import json
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from awscrt import mqtt5
from awsiot import mqtt5_client_builder

from nacelle.components import BUILD_ROOT, SENSORS, read_version
from nacelle.local.adapters.greengrass import LocalGreengrass
from nacelle.local.edge.broker import Broker, find_mosquitto
from nacelle.local.edge.fleet import FLEET_GROUP, Fleet
from nacelle.local.edge.pki import LocalPki
from nacelle.simulator.device import DETECTOR_SRC, SimPaths, request_fault
from shared.components import SENSORS_COMPONENT
from shared.messages import HealthMessage, SensorHealthMessage, SensorMessage, decode
from shared.ml.spec import default_spec
from shared.source_status import source_status

if str(DETECTOR_SRC) not in sys.path:
    sys.path.append(str(DETECTOR_SRC))
from detector.app import DetectorApp
from detector.config import FileConfigSource
from detector.mqtt import MqttSettings, MqttTransport
from detector.spool import Spool

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed (apt-get install -y mosquitto)"),
    pytest.mark.skipif(not any(SENSORS.wheelhouse.glob("*.whl")),
                       reason=f"{SENSORS.wheelhouse} has no wheels: run `make wheelhouse-sensors`"),
]
THING = "turbine-01"
VENV_CACHE = BUILD_ROOT / "venvs"  # the components' venvs, kept across test runs
SENSORS_VERSION = read_version(SENSORS.directory)
KEEPALIVE = "test.keepalive"  # what the group's deployment runs beside nacelle.sensors
COLUMNS = default_spec().input_columns


def test_a_device_reads_its_modbus_controller_through_the_sensors_component(tmp_path: Path) -> None:
    home = tmp_path / "home"
    VENV_CACHE.mkdir(parents=True, exist_ok=True)
    (home / "greengrass").mkdir(parents=True)
    (home / "greengrass" / "venvs").symlink_to(VENV_CACHE)  # the devices' shared venvs root
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
        gg = LocalGreengrass(home / "greengrass.db")
        fleet = Fleet(home, gg, size=1, canary_size=0, source="modbus", nucleus_args=["--poll", "0.5", "--grace", "2"])
        try:
            assert connected.wait(10), "cloud subscriber did not connect"
            client.subscribe(mqtt5.SubscribePacket(subscriptions=[
                mqtt5.Subscription(topic_filter="turbines/+/sensors", qos=mqtt5.QoS.AT_LEAST_ONCE),
                mqtt5.Subscription(topic_filter="turbines/+/sensors/health", qos=mqtt5.QoS.AT_LEAST_ONCE),
                mqtt5.Subscription(topic_filter="turbines/+/health", qos=mqtt5.QoS.AT_LEAST_ONCE)])).result(10)
            fleet.start()
            detector = _detector(tmp_path / "detector", pki, broker.port)
            samples: list[dict[str, Any]] = []
            health: list[SensorHealthMessage] = []
            device: list[tuple[float, HealthMessage]] = []  # the detector's health: (received, message)

            def take(until: Any, timeout: float, what: str) -> None:
                deadline = time.monotonic() + timeout
                while not until():
                    try:
                        topic, payload = received.get(timeout=max(0.01, deadline - time.monotonic()))
                    except queue.Empty:
                        raise AssertionError(f"timed out waiting for {what}; log: {_log(home)}") from None
                    if topic == f"turbines/{THING}/sensors":
                        samples.extend(decode(SensorMessage, payload).samples)
                    elif topic == f"turbines/{THING}/health":
                        device.append((time.time(), decode(HealthMessage, payload)))
                    else:
                        assert topic == f"turbines/{THING}/sensors/health", topic
                        health.append(decode(SensorHealthMessage, payload))

            take(lambda: sum(s["voltage"] is not None for s in samples) >= 20, 90, "samples with values")
            (deployment,) = gg.list_effective_deployments(THING)  # the thing's own deployment, run by its nucleus
            assert deployment.target_arn.endswith(f":thing/{THING}")
            take(lambda: gg.list_effective_deployments(THING)[0].execution_status == "SUCCEEDED", 20,
                 "the sensors' deployment to succeed (its Run survived the nucleus's grace period)")
            sensors_pid = _component_pid(home)
            rollout = _group_rollout(gg)  # applied while the rest goes on: it must leave nacelle.sensors running
            device_file = json.loads((home / "devices" / THING / "config" /
                                      f"{SENSORS_COMPONENT}.device.json").read_text())
            assert device_file["client_id"] == f"{THING}.sensors"  # never the detector's session
            assert Path(device_file["cert"]).name == f"{THING}.sensors.pem"
            take(lambda: any(h.state == "connected" for h in health), 15, "health: connected")
            assert all(set(COLUMNS) <= set(s) for s in samples)
            take(lambda: _source(device) == "ok", 15, "the device's health: source ok")

            request = request_fault(home, THING, "overspeed", "medium", 5)  # `nacelle fleet inject`
            done = SimPaths.of(home, THING).done / request.name
            take(lambda: done.exists(), 10, "the controller to take the fault request")
            label = json.loads(SimPaths.of(home, THING).labels.read_text().splitlines()[-1])
            assert (label["turbine"], label["fault"]) == (THING, "overspeed")

            controller = fleet.procs[f"{THING}/controller"].popen
            assert controller is not None
            killed, before, reported = time.time(), len(samples), len(device)
            controller.kill()  # kill -9 the controller: the fleet restarts it on the same port
            take(lambda: any(s["voltage"] is None for s in samples[before:]), 10, "samples marked missing")
            # the outage may be over, and reported so, before the missing samples' batch arrives
            take(lambda: any(_source([d]) == "down" for d in device[reported:]), 10, "the device's health: source down")
            at, message = next(d for d in device[reported:] if _source([d]) == "down")
            view = source_status(_block(message), at)
            assert view is not None and view["since"] == pytest.approx(killed, abs=2.0)  # its last value
            assert view["last_error"] and "modbus://127.0.0.1" in view["last_error"]
            take(lambda: any(s["voltage"] is not None and s["ts"] > killed + 0.5 for s in samples[before:]), 20,
                 "values again after the restart")
            assert fleet.procs[f"{THING}/controller"].restarts == 1
            take(lambda: _source(device) == "ok", 15, "the device's health: source ok again")
            assert device[-1][1].sensors is not None and device[-1][1].sensors.reconnects >= 1
            take(lambda: _execution(gg, rollout) == "SUCCEEDED", 20, "the group's deployment to succeed")
            assert gg.devices()[0].components == {SENSORS_COMPONENT: SENSORS_VERSION, KEEPALIVE: "1.0.0"}
            pid = _component_pid(home)
            assert pid == sensors_pid  # the group's deployment neither stopped nor restarted it
            killed = time.time()
            os.kill(pid, signal.SIGKILL)  # kill -9 the component: its nucleus restarts it, nothing repeated
            take(lambda: any(s["voltage"] is not None and s["ts"] > killed + 0.5 for s in samples[before:]), 30,
                 "values again after the component's restart")
            assert _component_pid(home) != pid
            assert "component exited; restarting" in (home / "devices" / THING / "logs" / "nucleus.log").read_text()
            after = samples[before:]
            assert all(all(s[c] is None for c in COLUMNS) or all(s[c] is not None for c in COLUMNS) for s in after)
            seqs = [s["seq"] for s in samples]
            assert seqs == sorted(set(seqs))  # nothing repeated, nothing out of order
            row = fleet.status()[0]
            assert row["processes"] == {"nucleus": "running", "controller": "running (restarts 1)"}
            assert row["components"] == {SENSORS_COMPONENT: SENSORS_VERSION, KEEPALIVE: "1.0.0"}
            assert (row["deployment"]["id"], row["deployment"]["status"]) == (rollout, "SUCCEEDED")
            broker_log = broker.log_path.read_text()
            assert f"as {THING}.sensors" in broker_log and f"Client {THING} already connected" not in broker_log
            fleet.stop()  # the probe connects as the sensors' identity: the component must not take its session back
            _assert_sensors_identity_is_confined(broker.port, device_file)
        finally:
            if "detector" in locals():
                detector.stop(drain_s=0)
                detector.spool.close()
            fleet.stop()
            client.stop()
            stopped.wait(5)


def _group_rollout(gg: LocalGreengrass) -> str:
    """A deployment to the device's thing group (as a model rollout is) of a component of its own."""
    gg.create_component_version({"RecipeFormatVersion": "2020-01-25", "ComponentName": KEEPALIVE,
                                 "ComponentVersion": "1.0.0", "Manifests": [
                                     {"Platform": {"os": "linux"}, "Lifecycle": {"Run": "exec sleep 600"}}]})
    return gg.create_deployment(gg.thing_group_arn(FLEET_GROUP), "fleet-keepalive",
                                {KEEPALIVE: {"componentVersion": "1.0.0"}}, {"failureHandlingPolicy": "ROLLBACK"},
                                {}, "fleet-keepalive")


def _execution(gg: LocalGreengrass, deployment_id: str) -> str | None:
    return next((e.status for e in gg.executions(deployment_id) if e.thing == THING), None)


def _component_pid(home: Path) -> int:
    """The running nacelle.sensors process, as its nucleus recorded it."""
    procs = json.loads((home / "devices" / THING / "procs.json").read_text())
    return int(procs[SENSORS_COMPONENT]["pid"])


def _assert_sensors_identity_is_confined(port: int, device_file: dict[str, Any]) -> None:
    """With the credentials the nucleus gave nacelle.sensors: nothing for another turbine, nothing on the
    detector's topics (PUBACK NOT_AUTHORIZED)."""
    connected = threading.Event()
    client = mqtt5_client_builder.mtls_from_path(
        endpoint="127.0.0.1", port=port, cert_filepath=device_file["cert"], pri_key_filepath=device_file["key"],
        ca_filepath=device_file["ca"], client_id=f"{THING}.sensors-probe",
        on_lifecycle_connection_success=lambda _d: connected.set())
    client.start()
    try:
        assert connected.wait(10), "the sensors' identity did not connect"
        for topic in ("turbines/turbine-02/sensors", "turbines/turbine-02/sensors/health", f"turbines/{THING}/health",
                      f"turbines/{THING}/anomalies", f"turbines/{THING}.sensors/x"):
            result = client.publish(mqtt5.PublishPacket(topic=topic, payload=b"{}", qos=mqtt5.QoS.AT_LEAST_ONCE))
            puback = result.result(10).puback
            assert puback.reason_code == mqtt5.PubackReasonCode.NOT_AUTHORIZED, topic
    finally:
        client.stop()


def _detector(work: Path, pki: LocalPki, port: int) -> DetectorApp:
    """The turbine's detector without a model: it scores nothing, but reports health every 2 s (and on a change of
    the sensor source's state)."""
    work.mkdir(parents=True)
    config = work / "nacelle.detector.json"
    config.write_text(json.dumps({"model": {"version": ""}, "healthIntervalSeconds": 2}))
    source = FileConfigSource(config, THING, poll_s=0.5)
    source.start()
    creds = pki.device(THING)
    transport = MqttTransport(MqttSettings("127.0.0.1", port, creds.ca_path, creds.cert_path, creds.key_path, THING))
    return DetectorApp(source, transport, Spool(work / "spool.db", 1000), work, version="test").start()


def _block(message: HealthMessage) -> dict[str, Any] | None:
    return None if message.sensors is None else asdict(message.sensors)


def _source(device: list[tuple[float, HealthMessage]]) -> str | None:
    """What the cloud would show for the newest device health message (shared.source_status)."""
    if not device:
        return None
    received, message = device[-1]
    view = source_status(_block(message), received)
    return None if view is None else view["status"]


def _log(home: Path) -> str:
    logs = home / "devices" / THING / "logs"
    return " | ".join(f"{p.name}: {p.read_text()[-600:]}" for p in sorted(logs.glob("*.log"))) if logs.is_dir() else ""
