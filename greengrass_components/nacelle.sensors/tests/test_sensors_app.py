"""SensorsApp end to end with an in-memory publisher (the detector's parser accepts every message, health follows
its definition, configuration changes swap the source), the IPC publisher's topics, and the packaged component
(its archive holds what it imports; main.py --check from the unpacked archive; the recipe's access control)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sensors.app import SensorsApp
from sensors.config import SensorsConfig
from sensors.publisher import IpcPublisher
from sensors.sampler import PollingRunner

from nacelle.components import SENSORS, component_entries, load_template
from nacelle.simulator.controller import Controller, ModbusEndpoint
from shared.components import deterministic_zip
from shared.messages import SensorHealthMessage, SensorMessage, decode
from shared.ml.spec import default_spec
from shared.sensor_map import default_register_map, parse_register_map

THING = "turbine-01"
COLUMNS = default_spec().input_columns


class Recorder:
    """The Publisher protocol in memory."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.dropped = self.failed = 0
        self.lock = threading.Lock()

    def publish(self, topic: str, payload: bytes) -> None:
        with self.lock:
            self.sent.append((topic, payload))

    def close(self) -> None:
        pass

    def on(self, suffix: str) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(p) for t, p in self.sent if t == f"turbines/{THING}/{suffix}"]


@pytest.fixture
def controllers() -> Iterator[list[Controller]]:
    made = []
    for value in (1.0, 2.0):
        c = Controller(ModbusEndpoint(parse_register_map(default_register_map(COLUMNS), "test")))
        c.start()
        c.set(dict.fromkeys(COLUMNS, value))
        made.append(c)
    yield made
    for c in made:
        c.close()


def config_for(port: int, **over: Any) -> SensorsConfig:
    return SensorsConfig.from_dict({"source": "modbus", "rateHz": 50, "batchSamples": 5, "healthIntervalSeconds": 1,
                                    "modbus": {"host": "127.0.0.1", "port": port, "timeoutSeconds": 0.1,
                                               "registers": default_register_map(COLUMNS)}, **over}, THING)


def wait(condition: Any, timeout: float = 20.0) -> None:  # an upper bound: two busy test workers share the cores
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_app_publishes_what_the_detector_accepts_and_swaps_sources(controllers: list[Controller],
                                                                        tmp_path: Path) -> None:
    from detector.messages import parse_sensor_batch

    recorder = Recorder()
    app = SensorsApp(config_for(controllers[0].port), recorder, version="9.9.9").start()
    try:
        wait(lambda: any(s["rps"] == 1.0 for m in recorder.on("sensors") for s in m["samples"]))
        app.reconfigure(SensorsConfig.from_dict({"source": "replay", "replay": {"file": str(tmp_path / "no.csv")}},
                                                THING))  # unusable: ignored, the Modbus source keeps running
        app.reconfigure(config_for(controllers[1].port))
        wait(lambda: any(s["rps"] == 2.0 for m in recorder.on("sensors") for s in m["samples"]))
        wait(lambda: len(recorder.on("sensors/health")) >= 3)
    finally:
        app.stop()
    messages = [p for t, p in recorder.sent if t.endswith("/sensors")]
    spec = default_spec()
    seqs = []
    for payload in messages:
        decode(SensorMessage, payload)  # the one definition
        batch = parse_sensor_batch(payload, spec, THING)  # and the detector's fast parser
        assert 1 <= len(batch) <= 5
        seqs += batch.seq.tolist()
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # every tick, in order, across the swap
    rps = [s["rps"] for m in recorder.on("sensors") for s in m["samples"] if s["rps"] is not None]
    assert rps.index(2.0) > rps.index(1.0) and 1.0 not in rps[rps.index(2.0):]
    health = [decode(SensorHealthMessage, p) for t, p in recorder.sent if t.endswith("/sensors/health")]
    last = health[-1]
    assert (last.source, last.state, last.component_version) == ("modbus", "connected", "9.9.9") or \
        last.state == "disconnected"  # the final report, sent as the source closes
    assert last.endpoint == f"modbus://127.0.0.1:{controllers[1].port}/1"
    assert last.samples == len(seqs) and last.samples_missing <= 5 and last.dropped == 0
    assert (last.v, last.health_interval_s, last.samples_repeated) == (2, 1.0, 0)
    assert [h.seq for h in health] == list(range(1, len(health) + 1))


def test_a_configuration_change_replaces_a_source_whose_runner_loses_a_cancellation(
        controllers: list[Controller], monkeypatch: pytest.MonkeyPatch) -> None:
    """Python 3.11's asyncio.wait_for can lose a cancellation that meets a finishing read; the old source then went on
    sampling and the new one never started (one run in ten). The runner is told to stop, not only cancelled."""
    original = PollingRunner.run

    async def loses_cancellations(self: PollingRunner, stop: asyncio.Event, resume_from: int | None = None) -> None:
        while True:
            try:
                return await original(self, stop, resume_from)
            except asyncio.CancelledError:
                asyncio.current_task().uncancel()  # type: ignore[union-attr]

    monkeypatch.setattr(PollingRunner, "run", loses_cancellations)
    recorder = Recorder()
    app = SensorsApp(config_for(controllers[0].port), recorder, version="9.9.9").start()
    try:
        wait(lambda: any(s["rps"] == 1.0 for m in recorder.on("sensors") for s in m["samples"]))
        app.reconfigure(config_for(controllers[1].port))
        wait(lambda: any(s["rps"] == 2.0 for m in recorder.on("sensors") for s in m["samples"]))
    finally:
        app.stop()
    assert not app.alive


def test_a_change_reverted_before_its_swap_keeps_the_running_source(controllers: list[Controller]) -> None:
    """A -> B -> A faster than a tick (a deployment and its rollback): the newest configuration wins, and the running
    source goes on without a gap; a change back to the running configuration cancels the pending one."""
    first, second = config_for(controllers[0].port, rateHz=2), config_for(controllers[1].port, rateHz=2)
    recorder = Recorder()
    app = SensorsApp(first, recorder, version="9.9.9").start()

    def samples() -> list[dict[str, Any]]:
        return [s for m in recorder.on("sensors") for s in m["samples"]]

    try:
        wait(lambda: any(s["rps"] == 1.0 for s in samples()))
        app.reconfigure(second)
        app.reconfigure(first)
        seen = len(samples())
        wait(lambda: len(samples()) >= seen + 4)
    finally:
        app.stop()
    assert app.config == first
    assert all(s["rps"] != 2.0 for s in samples())  # B never ran
    seqs = [s["seq"] for s in samples()]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_a_change_is_compared_with_the_pending_one() -> None:
    """Before the loop runs: B is pending, B again changes nothing, A (the running one) cancels it, B again is
    pending again."""
    first, second = config_for(1502), config_for(1503)
    app = SensorsApp(first, Recorder(), version="9.9.9")
    app.reconfigure(second)
    pending = app._pending
    app.reconfigure(second)
    assert app._pending is pending is not None
    app.reconfigure(first)
    assert app._pending is None
    app.reconfigure(second)
    assert app._pending is not None and app._pending[0] == second


def test_ipc_publisher_uses_local_pubsub_for_samples_and_health() -> None:
    from concurrent.futures import Future

    from awsiot.greengrasscoreipc.model import UnauthorizedError

    calls: list[tuple[str, dict[str, Any]]] = []

    def done(error: Exception | None = None) -> Future[Any]:
        future: Future[Any] = Future()
        if error is None:
            future.set_result(SimpleNamespace())
        else:
            future.set_exception(error)
        return future

    class Client:
        def publish_to_topic_async(self, **kw: Any) -> Future[Any]:
            calls.append(("local", kw))
            other = kw["topic"].startswith("turbines/turbine-02/")
            return done(UnauthorizedError(message="not in accessControl") if other else None)

    publisher = IpcPublisher(Client())
    publisher.publish(f"turbines/{THING}/sensors", b"{}")
    publisher.publish(f"turbines/{THING}/sensors/health", b"{}")
    publisher.publish("turbines/turbine-02/sensors/health", b"{}")
    assert [(kind, kw["topic"]) for kind, kw in calls] == [
        ("local", f"turbines/{THING}/sensors"), ("local", f"turbines/{THING}/sensors/health"),
        ("local", "turbines/turbine-02/sensors/health")]
    assert calls[0][1]["publish_message"].binary_message.message == b"{}"
    assert publisher.failed == 1 and publisher.dropped == 0  # the refused one is counted, nothing blocks


def test_the_recipe_allows_its_own_turbines_topics_only() -> None:
    recipe = load_template(SENSORS.directory, SENSORS.name)
    access = recipe["ComponentConfiguration"]["DefaultConfiguration"]["accessControl"]
    assert set(access) == {"aws.greengrass.ipc.pubsub"}  # nothing straight to AWS IoT Core
    [pubsub] = access["aws.greengrass.ipc.pubsub"].values()
    assert pubsub["operations"] == ["aws.greengrass#PublishToTopic"]
    assert pubsub["resources"] == ["turbines/{iot:thingName}/sensors", "turbines/{iot:thingName}/sensors/health"]
    defaults = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    assert defaults["source"] == ""  # never simulated data unless configured
    # what GetConfiguration returns (accessControl and venvRoot included) is a valid configuration once a source is set
    config = SensorsConfig.from_dict({**defaults, "source": "simulator"}, THING)
    assert (config.rate_hz, config.batch_samples, config.health_interval_s) == (20.0, 1, 60.0)
    run = recipe["Manifests"][0]["Lifecycle"]["Run"]["Script"]
    assert "{artifacts:decompressedPath}/sensors/main.py" in run and "{iot:thingName}" in run


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sensors.zip as Greengrass unarchives it: {artifacts:decompressedPath}/sensors/."""
    entries = component_entries(SENSORS)
    root = tmp_path_factory.mktemp("artifacts") / "sensors"
    archive = root.parent / "sensors.zip"
    archive.write_bytes(deterministic_zip(entries))
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(root)
    return root


def test_the_archive_holds_every_module_the_component_imports(unpacked: Path) -> None:
    names = {p.relative_to(unpacked).as_posix() for p in unpacked.rglob("*") if p.is_file()}
    assert {"main.py", "install_venv.py", "requirements.txt", "VERSION", "sensors/app.py", "shared/sensor_map.py",
            "shared/messages.py", "shared/ml/validation.py", "shared/specs/mini-turbine.yaml",
            "nacelle/simulator/physics.py", "nacelle/simulator/stream.py"} <= names
    assert not any(n.startswith(("nacelle/local", "shared/aws", "shared/usecases", "detector/")) for n in names)
    probe = ("import sys, sensors.app, sensors.modbus, sensors.opcua, sensors.streams, sensors.watch, "
             "sensors.publisher; from shared.ml.spec import default_spec; default_spec(); "
             "bad = [m.__file__ for m in list(sys.modules.values()) if m.__name__.split('.')[0] in "
             "('shared', 'nacelle', 'sensors') and not str(getattr(m, '__file__', '') or '').startswith("
             f"{str(unpacked)!r})]; print(bad); sys.exit(1 if bad else 0)")
    run = subprocess.run([sys.executable, "-E", "-s", "-c", probe], cwd=unpacked, capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(unpacked)})
    assert run.returncode == 0, run.stdout + run.stderr


def test_main_check_validates_the_configuration_from_the_unpacked_archive(unpacked: Path, tmp_path: Path) -> None:
    config = tmp_path / "nacelle.sensors.json"
    device = tmp_path / "device.json"
    device.write_text(json.dumps({"endpoint": "127.0.0.1", "port": 8883, "ca": "ca.pem", "cert": "c.pem",
                                  "key": "k.pem", "configuration": str(config), "work": str(tmp_path)}))
    env = {**os.environ, "NACELLE_DEVICE_CONFIG": str(device)}
    env.pop("SVCUID", None)

    def check(doc: Any) -> subprocess.CompletedProcess[str]:
        config.write_text(json.dumps(doc))
        return subprocess.run([sys.executable, "-E", "-s", str(unpacked / "main.py"), "--thing", THING, "--check"],
                              capture_output=True, text=True, timeout=60, env=env)

    ok = check({"source": "simulator"})
    assert ok.returncode == 0 and "configuration valid: simulator" in ok.stdout, ok.stdout + ok.stderr
    bad = check({"source": "modbus", "modbus": {"host": "plc", "registers": {"rps": {"address": 0}}}})
    assert bad.returncode == 2 and "modbus.registers: no entry for 'qw'" in bad.stdout, bad.stdout + bad.stderr
    none = check({})
    assert none.returncode == 2 and "source must be one of" in none.stdout
