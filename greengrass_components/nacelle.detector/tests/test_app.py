"""DetectorApp with an in-memory transport: bad input, hot swap through the config file, spool flush, health;
plus the configuration sources and the IPC adapter (fake clientv2)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from detector.app import DetectorApp, detector_version
from detector.config import DetectorConfig, DeviceConfig, FileConfigSource, GreengrassConfigSource
from detector.ipc import IpcTransport
from detector.messages import sensor_message
from detector.pipeline import Result, TurbinePipeline
from detector.scoring import EdgeModel
from detector.spool import Spool
from detector.transport import PublishRejected, TransportError

from nacelle.simulator.stream import TurbineStream
from shared.errors import ConfigurationError

THING = "turbine-01"
BATCH_S = 1.0  # one sensor message per second of stream time


# -- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory, trained_model) -> Path:
    """<root>/nacelle.model/<v>.0.0/bundle for model versions 1 and 2 (same network, two versions)."""
    from training_jobs.compile import compile_bundle

    root = tmp_path_factory.mktemp("artifacts-unarchived")
    for version in (1, 2):
        compile_bundle(trained_model.model_archive, root / "nacelle.model" / f"{version}.0.0" / "bundle", None,
                       version, warmup=2, runs=5)
    return root


def stream_messages(seconds: float, fault_at: float | None = None, fault_s: float = 90.0, seed: int = 5,
                    fault: str = "rotor_imbalance") -> list[bytes]:
    """Sensor messages of one simulated turbine, optionally with an injected fault."""
    stream = TurbineStream(THING, seed)
    if fault_at is not None:
        stream.inject(fault, "high", fault_s, start=stream.now + timedelta(seconds=fault_at))
    return [sensor_message(THING, stream.next_batch(BATCH_S)) for _ in range(int(seconds / BATCH_S))]


@pytest.fixture(scope="session")
def fault_messages() -> list[bytes]:
    return stream_messages(420, fault_at=150)


class FakeTransport:
    """In-memory Transport: `deliver` plays the broker; `up` switches the link."""

    def __init__(self) -> None:
        self.up = True
        self.sent: list[tuple[str, bytes]] = []
        self.subscriptions: dict[str, Callable[[bytes], None]] = {}
        self.listeners: list[Callable[[bool], None]] = []
        self.refuse: set[str] = set()
        self.connected_calls = 0
        self.stopped = False

    def connect(self) -> None:
        self.connected_calls += 1

    def stop(self) -> None:
        self.stopped = True

    def subscribe(self, topic: str, callback: Callable[[bytes], None]) -> None:
        self.subscriptions[topic] = callback

    def publish(self, topic: str, payload: bytes, timeout: float) -> None:
        if topic in self.refuse:
            raise PublishRejected(f"{topic}: NOT_AUTHORIZED")
        if not self.up:
            raise TransportError("link down")
        self.sent.append((topic, payload))

    @property
    def is_connected(self) -> bool:
        return self.up

    def on_connection_change(self, callback: Callable[[bool], None]) -> None:
        self.listeners.append(callback)

    def set_up(self, up: bool) -> None:
        self.up = up
        for callback in self.listeners:
            callback(up)

    def deliver(self, payload: bytes, topic: str = f"turbines/{THING}/sensors") -> None:
        self.subscriptions[topic](payload)

    def messages(self, kind: str) -> list[dict[str, Any]]:
        return [json.loads(p) for t, p in self.sent if t == f"turbines/{THING}/{kind}"]


def write_config(path: Path, version: str, **extra: Any) -> None:
    """Atomic rewrite, like the local nucleus."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"model": {"version": version}, **extra}))
    tmp.replace(path)


@pytest.fixture
def harness(tmp_path: Path, models_root: Path) -> Iterator[Callable[..., tuple[DetectorApp, FakeTransport, Path]]]:
    apps: list[DetectorApp] = []

    def make(version: str = "1.0.0", *, observer: Callable[[Result], None] | None = None,
             health_s: float = 3600, max_messages: int = 10000,
             **options: Any) -> tuple[DetectorApp, FakeTransport, Path]:
        config_path = tmp_path / "config" / "nacelle.detector.json"
        config_path.parent.mkdir(exist_ok=True)
        write_config(config_path, version, healthIntervalSeconds=health_s, spool={"maxMessages": max_messages})
        source = FileConfigSource(config_path, THING, poll_s=0.05)
        source.start()
        transport = FakeTransport()
        spool = Spool(tmp_path / "work" / "spool.db", max_messages)
        app = DetectorApp(source, transport, spool, models_root, observer=observer, version="test",
                          publish_timeout=0.5, **options)
        apps.append(app.start())
        return app, transport, config_path

    yield make
    for app in apps:
        app.stop(drain_s=0)
        app.spool.close()


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")



# -- the app -------------------------------------------------------------------------------------------
def test_bad_messages_are_counted_and_the_app_survives(harness, fault_messages: list[bytes]) -> None:
    app, transport, _ = harness()
    good = fault_messages[:60]
    doc = json.loads(good[5])
    doc["samples"][0]["qw"] = "0.9"  # wrong type
    bad = [b"\x00\xffgarbage{", good[5][:-40], b"x" * 300_000, json.dumps(doc).encode(), b"[1, 2]",
           json.dumps({**doc, "turbine_id": "turbine-02"}).encode()]
    for i, payload in enumerate(good):
        transport.deliver(payload)
        if i < len(bad):
            transport.deliver(bad[i])
    wait_for(lambda: app.windows_scored > 0 and app._queue.empty(), what="scoring")
    app.request_health()
    wait_for(lambda: any(h["bad_messages"] == len(bad) for h in transport.messages("health")),
             what="a health message counting every bad message")
    health = transport.messages("health")[-1]
    assert health["bad_messages"] == len(bad) == app.bad_messages
    assert health["windows_scored"] == app.windows_scored > 0
    assert health["model_version"] == 1 and health["detector_version"] == "test" and health["model_error"] is None
    assert health["turbine_id"] == THING and health["v"] == 2 and health["seq"] == len(transport.messages("health"))
    assert set(health) >= {"inference_rate_hz", "latency_p50_ms", "latency_p99_ms", "spool_depth", "spool_dropped",
                           "uptime_s"}


def test_hot_swap_under_load_scores_every_sample_once(harness, fault_messages: list[bytes], models_root: Path) -> None:
    results: list[Result] = []
    app, transport, config_path = harness(observer=results.append)
    part_a, part_b = fault_messages[:120], fault_messages[120:]  # the fault starts in part B

    def feed() -> None:
        for payload in part_a:
            transport.deliver(payload)
            time.sleep(0.002)

    feeder = threading.Thread(target=feed)
    feeder.start()
    time.sleep(0.05)
    write_config(config_path, "2.0.0")  # a deployment's configurationUpdate, while messages keep coming
    feeder.join()
    wait_for(lambda: app.pipeline is not None and app.pipeline.model_version == 2, what="the swap")
    for payload in part_b:
        transport.deliver(payload)
    wait_for(lambda: sum(r.accepted for r in results) == _samples(fault_messages), what="all samples")
    app.request_health()
    wait_for(lambda: transport.messages("health"), what="health")
    app.stop()

    assert sum(r.stale for r in results) == 0 and app.bad_messages == 0
    # the same windows as one uninterrupted pipeline: none skipped, none scored twice
    reference = TurbinePipeline(THING, EdgeModel.load(models_root / "nacelle.model" / "1.0.0" / "bundle"))
    expected = [w.t_end for p in fault_messages for w in reference.handle(p).windows]
    ends = [w.t_end for r in results for w in r.windows]
    assert ends == expected
    versions = [w.model_version for r in results for w in r.windows]
    switch = versions.index(2)
    assert set(versions[:switch]) == {1} and set(versions[switch:]) == {2} and switch > 0
    print(f"\nswap after {switch} of {len(versions)} windows")
    anomalies = transport.messages("anomalies")
    assert anomalies and [m["seq"] for m in anomalies] == list(range(1, len(anomalies) + 1))
    assert {m["model_version"] for m in anomalies} == {2}  # the episode happened after the swap
    assert anomalies[0]["kind"] == "open" and anomalies[-1]["kind"] == "close"
    assert transport.messages("health")[-1]["model_version"] == 2


def _samples(messages: list[bytes]) -> int:
    return sum(len(json.loads(m)["samples"]) for m in messages)


def test_spool_flushes_in_order_after_the_link_returns(harness, fault_messages: list[bytes]) -> None:
    app, transport, _ = harness(health_s=0.2)
    transport.set_up(False)
    for payload in fault_messages:
        transport.deliver(payload)
    wait_for(lambda: app._queue.empty() and app.anomalies_spooled > 0, what="anomalies while offline")
    time.sleep(0.5)  # health keeps coming while offline
    assert transport.sent == [] and app.spool.depth() >= app.anomalies_spooled + 1
    transport.set_up(True)
    wait_for(lambda: app.spool.depth() == 0, what="the spool to drain")
    anomalies, health = transport.messages("anomalies"), transport.messages("health")
    assert [m["seq"] for m in anomalies] == list(range(1, app.anomalies_spooled + 1))
    assert [m["seq"] for m in health] == list(range(1, len(health) + 1)) and len(health) >= 2
    assert any(h["spool_depth"] > 0 for h in health)


def test_stop_flushes_the_open_episode_into_the_spool(harness, fault_messages: list[bytes]) -> None:
    app, transport, _ = harness()
    transport.set_up(False)
    for payload in fault_messages:
        transport.deliver(payload)
        if app.anomalies_spooled:  # an episode just opened
            break
    wait_for(lambda: app._queue.empty(), what="handling")
    app.stop(drain_s=0)
    kinds, stats = [], []
    while (entry := app.spool.peek()) is not None:
        if entry.kind == "stats":  # the drift statistics of the period so far
            stats.append((entry.topic, json.loads(entry.payload)))
        elif entry.kind != "health":  # health is spooled too (one right after the model swap)
            kinds.append(json.loads(entry.payload)["kind"])
        app.spool.ack(entry.id)
    assert kinds[0] == "open" and kinds[-1] == "close"
    [(topic, period)] = stats
    assert topic == f"turbines/{THING}/stats" and period["windows"] == app.windows_scored and period["seq"] == 1


def test_no_model_then_a_bad_version_then_a_good_one(harness, fault_messages: list[bytes]) -> None:
    app, transport, config_path = harness(version="")
    for payload in fault_messages[:10]:
        transport.deliver(payload)
    wait_for(lambda: app.unscored_messages == 10, what="counting without a model")
    app.request_health()
    wait_for(lambda: transport.messages("health"), what="health")
    assert transport.messages("health")[-1]["model_version"] is None
    write_config(config_path, "9.0.0")  # not installed
    wait_for(lambda: app.model_error is not None, what="the load failure")
    assert "9.0.0" in app.model_error and app.pipeline is None
    app.request_health()
    wait_for(lambda: len(transport.messages("health")) == 2, what="health")
    assert transport.messages("health")[-1]["model_error"] == app.model_error
    write_config(config_path, "1.0.0")
    wait_for(lambda: app.pipeline is not None, what="the first model")
    assert app.model_error is None and app.stats()["model_version"] == 1


def test_a_failed_load_keeps_the_current_model(harness) -> None:
    app, _, config_path = harness()
    write_config(config_path, "3.0.0")
    wait_for(lambda: app.model_error is not None, what="the load failure")
    assert app.pipeline is not None and app.pipeline.model_version == 1
    assert "3.0.0" in app.model_error


def test_a_refused_message_is_dropped_not_retried_forever(harness, fault_messages: list[bytes]) -> None:
    app, transport, _ = harness()
    transport.refuse.add(f"turbines/{THING}/health")
    app.request_health()
    wait_for(lambda: app.spool.dropped == 1, what="the refusal")
    assert app.spool.depth() == 0


def test_a_full_queue_counts_dropped_sensor_messages(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    write_config(config, "")
    source = FileConfigSource(config, THING)
    source.start()
    app = DetectorApp(source, FakeTransport(), Spool(tmp_path / "s.db", 10), tmp_path, queue_size=1,
                      version="test")  # not started: nothing drains the queue
    app.on_sensor_message(b"{}")
    app.on_sensor_message(b"{}")
    assert app.overflow == 1 and app.health()["bad_messages"] == 1


def _samples_with(payload: bytes, **changes: Any) -> bytes:
    doc = json.loads(payload)
    for sample in doc["samples"]:
        sample.update(changes)
    return json.dumps(doc).encode()


def test_a_huge_reading_opens_an_episode_and_scoring_goes_on(harness) -> None:
    """40 s of a sensor reading float32's maximum (a Modbus register glitch): the model overflows, the episode is
    reported with a finite score, and every later message is scored."""
    import numpy as np

    app, transport, _ = harness()
    messages = stream_messages(300)
    glitch = float(np.finfo(np.float32).max)
    for i, payload in enumerate(messages):
        transport.deliver(_samples_with(payload, voltage=glitch) if 100 <= i < 140 else payload)
    assert app.pipeline is not None
    reference = TurbinePipeline(THING, app.pipeline.model)
    expected = sum(len(reference.handle(p).windows) for p in messages)
    wait_for(lambda: app.windows_scored == expected, what="every window scored")
    wait_for(lambda: [m["kind"] for m in transport.messages("anomalies")][-1:] == ["close"], what="the episode")
    anomalies = transport.messages("anomalies")
    assert anomalies[0]["kind"] == "open" and anomalies[0]["score"] > 1e30 and anomalies[0]["features"]
    assert app.bad_messages == 0 and app.errors == 0


def test_a_failure_handling_one_message_is_counted_and_scoring_goes_on(harness, fault_messages: list[bytes]) -> None:
    calls: list[Result] = []

    def observer(result: Result) -> None:
        calls.append(result)
        if len(calls) == 30:
            raise RuntimeError("boom")

    app, transport, _ = harness(observer=observer)
    for payload in fault_messages:
        transport.deliver(payload)
    wait_for(lambda: len(calls) == len(fault_messages), what="every message handled")
    app.request_health()
    wait_for(lambda: transport.messages("health")[-1:] and transport.messages("health")[-1]["bad_messages"] == 1,
             what="health counting the message")
    assert app.bad_messages == 1 and app.errors == 1 and transport.messages("health")[-1]["errors"] == 1
    kinds = [m["kind"] for m in transport.messages("anomalies")]
    assert kinds[0] == "open" and kinds[-1] == "close"


def test_a_far_future_timestamp_is_a_bad_message_and_stale_samples_are_counted(harness,
                                                                               fault_messages: list[bytes]) -> None:
    """A sensor clock glitch (one sample ten years ahead) is refused and counted; it does not hold back the samples
    after it. A redelivered message's samples are dropped and counted."""
    now = json.loads(fault_messages[0])["samples"][0]["ts"]
    app, transport, _ = harness(wall_clock=lambda: now)
    glitch = json.loads(fault_messages[100])
    glitch["samples"][-1]["ts"] += 10 * 365 * 86400.0
    for i, payload in enumerate(fault_messages):
        transport.deliver(json.dumps(glitch).encode() if i == 100 else payload)
    transport.deliver(fault_messages[-1])  # redelivered
    wait_for(lambda: app.stats()["stale_samples"] == len(json.loads(fault_messages[-1])["samples"]),
             what="the redelivered samples counted")
    app.request_health()
    wait_for(lambda: transport.messages("health")[-1:] and transport.messages("health")[-1]["bad_messages"] == 1,
             what="health counting the refused message")
    assert transport.messages("health")[-1]["stale_samples"] == app.stale_samples > 0  # the cloud hears of both
    kinds = [m["kind"] for m in transport.messages("anomalies")]
    assert kinds[0] == "open" and kinds[-1] == "close"


def test_a_bundle_that_fails_to_load_or_to_score_is_reported_at_start_and_on_a_swap(harness, models_root: Path) -> None:
    """Whatever a bad bundle raises (a malformed manifest's RecursionError, MemoryError, a model the pipeline cannot
    take), the detector starts or keeps its model and says why in model_error."""
    unusable = SimpleNamespace(spec=None, rule=None, threshold=0.0, model_version=4)

    def loader(path: Path) -> Any:
        version = path.parent.name
        if version == "3.0.0":
            raise RecursionError("maximum recursion depth exceeded while decoding a JSON object")
        if version == "5.0.0":
            raise MemoryError
        return unusable if version == "4.0.0" else EdgeModel.load(path)

    for bad in ("3.0.0", "4.0.0"):
        app, transport, config_path = harness(bad, loader=loader)
        assert app.pipeline is None and app.model_error is not None and bad in app.model_error
        app.request_health()
        wait_for(lambda: bool(transport.messages("health")), what="health")  # noqa: B023 (called at once)
        assert transport.messages("health")[-1]["model_error"] == app.model_error
        app.stop(drain_s=0)
        app.spool.close()
    app, transport, config_path = harness("1.0.0", loader=loader)
    for bad in ("3.0.0", "4.0.0", "5.0.0"):
        write_config(config_path, bad)
        wait_for(lambda: app.model_error is not None and bad in app.model_error,  # noqa: B023 (called at once)
                 what=f"the failure of {bad}")
        assert app.pipeline is not None and app.pipeline.model_version == 1
        write_config(config_path, "1.0.0")
        wait_for(lambda: app.model_error is None, what="back to 1.0.0")
    write_config(config_path, "2.0.0")
    wait_for(lambda: app.pipeline is not None and app.pipeline.model_version == 2, what="a good swap")
    assert app._loader_thread is not None and app.errors == 0


def test_a_full_spool_disk_neither_stops_scoring_nor_publishing(harness, fault_messages: list[bytes]) -> None:
    """While the spool cannot write, messages are lost but counted as dropped; once it can, what follows is spooled
    and sent, and health says how many were lost."""
    app, transport, _ = harness(health_s=0.05)
    transport.set_up(False)
    pages = app.spool._db.execute("PRAGMA page_count").fetchone()[0]
    app.spool._db.execute(f"PRAGMA max_page_count = {pages}")  # writes fail as on a full disk
    for payload in fault_messages[:200]:
        transport.deliver(payload)
    wait_for(lambda: app._queue.empty() and app.spool.dropped > 0, what="lost messages")
    transport.set_up(True)  # and the publisher sends what was spooled before
    wait_for(lambda: app.spool.depth() == 0, what="the spool to drain")
    app.spool._db.execute("PRAGMA max_page_count = 1000000")  # space is back
    for payload in fault_messages[200:]:
        transport.deliver(payload)
    wait_for(lambda: [m["kind"] for m in transport.messages("anomalies")][-1:] == ["close"], what="the episode")
    wait_for(lambda: transport.messages("health")[-1]["spool_dropped"] > 0, what="health counting the loss")
    assert app.windows_scored > 0 and app.errors == 0 and app.stats()["spool_failures"] > 0


# -- configuration -----------------------------------------------------------------------------------------
def test_config_defaults_and_placeholders() -> None:
    config = DetectorConfig.from_dict({}, "wt-7")
    assert config.sensors_topic == "turbines/wt-7/sensors" and config.health_topic == "turbines/wt-7/health"
    assert config.health_interval_s == 60 and config.spool_max_messages == 10000
    assert config.model_component == "nacelle.model" and config.model_version == ""
    assert config.model_dir(Path("/r")) is None
    merged = DetectorConfig.from_dict({"model": {"version": "7.0.0"}, "accessControl": {"x": 1}}, "wt-7")
    assert merged.model_dir(Path("/r")) == Path("/r/nacelle.model/7.0.0/bundle")


@pytest.mark.parametrize(("raw", "field"), [
    ({"healthIntervalSeconds": 0}, "healthIntervalSeconds"), ({"healthIntervalSeconds": "60"}, "healthIntervalSeconds"),
    ({"spool": {"maxMessages": 0}}, "spool.maxMessages"), ({"spool": []}, "spool"),
    ({"topics": {"sensors": ""}}, "topics.sensors"), ({"topics": {"health": "turbines/+/health"}}, "topics.health"),
    ({"model": {"version": "../x"}}, "model.version"), ({"model": {"component": 3}}, "model.component"),
])
def test_config_errors_name_the_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError, match=field.replace(".", r"\.").replace("+", r"\+")):
        DetectorConfig.from_dict(raw, "wt-7", "cfg.json")


def test_file_source_follows_atomic_rewrites_and_ignores_bad_ones(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    write_config(path, "1.0.0")
    source = FileConfigSource(path, THING, poll_s=0.02)
    seen: list[DetectorConfig] = []
    source.on_change(seen.append)
    source.start()
    try:
        assert source.current().model_version == "1.0.0"
        path.with_name("x.tmp").write_text("{not json")
        path.with_name("x.tmp").replace(path)
        time.sleep(0.1)
        assert source.current().model_version == "1.0.0" and seen == []
        write_config(path, "2.0.0")
        wait_for(lambda: len(seen) == 1, 5, "the change")
        assert seen[0].model_version == "2.0.0" and source.current() == seen[0]
    finally:
        source.stop()


def test_file_source_requires_a_readable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"missing\.json"):
        FileConfigSource(tmp_path / "missing.json", THING).start()


def test_greengrass_source_reads_and_follows_updates() -> None:
    values = [{"model": {"version": ""}}, {"model": {"version": "4.0.0"}}]
    streams: list[Any] = []

    class Client:
        def get_configuration(self, *, key_path: list[str]) -> Any:
            return SimpleNamespace(component_name="nacelle.detector", value=values[0])

        def subscribe_to_configuration_update(self, **kwargs: Any) -> tuple[Any, Any]:
            streams.append(kwargs)
            return SimpleNamespace(), SimpleNamespace(close=lambda: None)

    source = GreengrassConfigSource(Client(), THING)
    seen: list[DetectorConfig] = []
    source.on_change(seen.append)
    source.start()
    assert source.current().model_version == ""
    values[0] = values[1]
    streams[0]["on_stream_event"](SimpleNamespace(configuration_update_event=None))
    assert [c.model_version for c in seen] == ["4.0.0"]
    source.stop()


def test_device_config(tmp_path: Path) -> None:
    doc = {"endpoint": "127.0.0.1", "port": 8883, "ca": "/p/ca.pem", "cert": "/p/c.pem", "key": "/p/c.key",
           "configuration": "/d/config.json", "work": "/d/work"}
    path = tmp_path / "device.json"
    path.write_text(json.dumps(doc))
    device = DeviceConfig.load(path)
    assert device.port == 8883 and device.work == Path("/d/work")
    path.write_text(json.dumps({**doc, "port": "8883"}))
    with pytest.raises(ConfigurationError, match="port"):
        DeviceConfig.load(path)


def test_detector_version_reads_the_version_file(tmp_path: Path) -> None:
    (tmp_path / "detector").mkdir()
    assert detector_version(tmp_path / "detector" / "app.py") == "dev"
    (tmp_path / "VERSION").write_text("1.2.0\n")
    assert detector_version(tmp_path / "detector" / "app.py") == "1.2.0"


# -- IPC adapter -------------------------------------------------------------------------------------------
class FakeIpcClient:
    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}
        self.published: list[dict[str, Any]] = []
        self.fail: Exception | None = None

    def subscribe_to_topic(self, *, topic: str, on_stream_event: Any, on_stream_error: Any) -> tuple[Any, Any]:
        self.handlers[topic] = on_stream_event
        return SimpleNamespace(), SimpleNamespace(close=lambda: None)

    def publish_to_iot_core_async(self, **kwargs: Any) -> Any:
        import concurrent.futures

        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if self.fail is not None:
            future.set_exception(self.fail)
        else:
            self.published.append(kwargs)
            future.set_result(SimpleNamespace())
        return future


def test_ipc_transport() -> None:
    from awsiot.greengrasscoreipc.model import ServiceError, UnauthorizedError

    client = FakeIpcClient()
    transport = IpcTransport(client)
    got: list[bytes] = []
    transport.subscribe("turbines/t/sensors", got.append)
    transport.connect()
    assert transport.is_connected
    on_event = client.handlers["turbines/t/sensors"]
    on_event(SimpleNamespace(binary_message=SimpleNamespace(message=b'{"v":1}'), json_message=None))
    on_event(SimpleNamespace(binary_message=None, json_message=SimpleNamespace(message={"v": 1})))
    assert got == [b'{"v":1}', b'{"v": 1}']
    transport.publish("turbines/t/health", b"{}", 1.0)
    assert client.published == [{"topic_name": "turbines/t/health", "qos": "1", "payload": b"{}"}]
    client.fail = UnauthorizedError(message="no")
    with pytest.raises(PublishRejected):
        transport.publish("turbines/t/health", b"{}", 1.0)
    client.fail = ServiceError(message="nucleus busy")
    with pytest.raises(TransportError):
        transport.publish("turbines/t/health", b"{}", 1.0)
    transport.stop()
    assert not transport.is_connected
