"""The sensors component against real protocol servers on loopback (pymodbus, asyncua): a fault injected at the
controller reaches the detector pipeline as an episode; a server restart and a stalled server give samples marked
missing (nothing held over or invented), then reconnect; OPC UA subscription and SignAndEncrypt work."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sensors.config import SensorsConfig
from sensors.modbus import ModbusSource
from sensors.opcua import OpcUaSource
from sensors.publisher import encode_samples
from sensors.sampler import PollingRunner, Sample, SourceError, SourceStats

from nacelle.simulator.controller import Controller, ModbusEndpoint, OpcUaEndpoint, opcua_certificate
from nacelle.simulator.stream import TurbineStream
from shared.errors import ConfigurationError
from shared.ml.spec import default_spec
from shared.sensor_map import default_node_ids, default_register_map, parse_node_ids, parse_register_map

THING = "turbine-01"
COLUMNS = default_spec().input_columns
SIGNALS = (*COLUMNS, "counter")
FAST_HZ = 50.0  # the real-time scenarios sample faster than the spec to stay short


# ------------------------------------------------------------------ servers
@pytest.fixture
def modbus_controller() -> Iterator[Controller]:
    controller = Controller(ModbusEndpoint(parse_register_map(default_register_map(SIGNALS), "test")))
    controller.start()
    yield controller
    controller.close()


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("opcua-pki")
    server_cert, server_key = opcua_certificate(d, "controller", "urn:nacelle:controller", server=True)
    client_cert, client_key = opcua_certificate(d, "sensors", "urn:nacelle:sensors")
    return {"server": server_cert, "server_key": server_key, "client": client_cert, "client_key": client_key}


@pytest.fixture(scope="module")
def opcua_controller(certificates: dict[str, Path]) -> Iterator[Controller]:
    """One server for the module (its address space takes seconds to build); tests leave it serving."""
    endpoint = OpcUaEndpoint(parse_node_ids(default_node_ids(SIGNALS), "test"), certificates["server"],
                             certificates["server_key"])
    controller = Controller(endpoint)
    controller.start()
    yield controller
    controller.close()


def modbus_config(port: int, rate: float | None = None, **over: Any) -> SensorsConfig:
    section = {"host": "127.0.0.1", "port": port, "timeoutSeconds": 0.1,
               "registers": default_register_map(SIGNALS), **over}
    return SensorsConfig.from_dict({"source": "modbus", "rateHz": rate or 0, "modbus": section,
                                    "reconnect": {"minSeconds": 0.05, "maxSeconds": 0.2}}, THING)


def opcua_config(port: int, rate: float | None = None, **over: Any) -> SensorsConfig:
    section = {"endpoint": f"opc.tcp://127.0.0.1:{port}/nacelle", "timeoutSeconds": 0.1,
               "nodes": default_node_ids(SIGNALS), **over}
    return SensorsConfig.from_dict({"source": "opcua", "rateHz": rate or 0, "opcua": section,
                                    "reconnect": {"minSeconds": 0.05, "maxSeconds": 0.2}}, THING)


def runner_for(config: SensorsConfig, out: list[Sample]) -> PollingRunner:
    if config.modbus is not None:
        source: Any = ModbusSource(config.modbus)
        timeout = config.modbus.timeout_s
    else:
        assert config.opcua is not None
        source, timeout = OpcUaSource(config.opcua, 1.0 / config.rate_hz), config.opcua.timeout_s
    return PollingRunner(source, config.signals, config.rate_hz, out.append, SourceStats(), timeout_s=timeout,
                         reconnect_min_s=config.reconnect_min_s, reconnect_max_s=config.reconnect_max_s)


# ------------------------------------------------------------------ a fault at the controller reaches the detector
@pytest.fixture(scope="module")
def edge_model(tmp_path_factory: pytest.TempPathFactory, trained_model: Any) -> Any:
    from detector.scoring import EdgeModel

    from training_jobs.compile import compile_bundle

    bundle = tmp_path_factory.mktemp("sensors-model") / "bundle"
    compile_bundle(trained_model.model_archive, bundle, None, 1, warmup=2, runs=5)
    return EdgeModel.load(bundle)


def detect(controller: Controller, config: SensorsConfig, edge_model: Any, fault: str | None) -> list[Any]:
    """Each simulated sample is written to the controller, read back over the protocol by the component, encoded
    by it ten samples per message and scored by the detector's pipeline. Returns the episodes opened."""
    from detector.pipeline import TurbinePipeline

    out: list[Sample] = []
    runner = runner_for(config, out)
    stream = TurbineStream(THING, 7)
    if fault is not None:
        stream.inject(fault, "high", 40, start=stream.now + timedelta(seconds=10))
    fault_ts = stream.now.timestamp() + 10

    async def run() -> None:
        await runner.source.connect()
        for _ in range(30 * 20):
            for simulated in stream.next_batch(0.05):
                controller.set({c: simulated[c] for c in COLUMNS})
                runner.out.sample(simulated["seq"], simulated["ts"], await runner.poll())
        await runner.source.close()

    asyncio.run(run())
    assert len(out) > 500 and all(s[c] is not None for s in out for c in COLUMNS)  # every read answered
    pipeline = TurbinePipeline(THING, edge_model)
    events = []
    for i in range(0, len(out), 10):
        [payload] = encode_samples(THING, out[i:i + 10])
        events += pipeline.handle(payload).events
    opened = [e for e in events if e.kind == "open"]
    assert all(e.episode["opened_at"] >= fault_ts for e in opened)  # nothing before the fault started
    return opened


def test_a_fault_injected_at_the_modbus_controller_opens_an_episode(modbus_controller: Controller,
                                                                    edge_model: Any) -> None:
    config = modbus_config(modbus_controller.port, registers=default_register_map(COLUMNS))
    assert detect(modbus_controller, config, edge_model, None) == []  # the healthy turbine: nothing
    [episode] = detect(modbus_controller, config, edge_model, "overspeed")
    assert "voltage" in episode.episode["features"]


def test_a_fault_injected_at_the_opcua_server_opens_an_episode(opcua_controller: Controller, edge_model: Any) -> None:
    config = opcua_config(opcua_controller.port, nodes=default_node_ids(COLUMNS))
    [episode] = detect(opcua_controller, config, edge_model, "overspeed")
    assert "voltage" in episode.episode["features"]


# ------------------------------------------------------------------ restarts and stalls, in real time
class Plc(threading.Thread):
    """Writes a new sample (an increasing `counter`) to the controller every 10 ms."""

    def __init__(self, controller: Controller) -> None:
        super().__init__(daemon=True)
        self.controller, self.counter, self.halt = controller, 0, threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.counter += 1
            self.controller.set({**dict.fromkeys(COLUMNS, 1.5), "counter": float(self.counter)})
            time.sleep(0.01)


def restart_and_stall(controller: Controller, config: SensorsConfig) -> tuple[list[Sample], SourceStats,
                                                                               dict[str, float]]:
    out: list[Sample] = []
    runner = runner_for(config, out)
    plc = Plc(controller)
    plc.start()
    marks: dict[str, float] = {}

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        await asyncio.sleep(0.4)
        marks["down"] = time.time()
        await asyncio.to_thread(controller.stop)
        await asyncio.sleep(0.3)
        await asyncio.to_thread(controller.start)
        marks["up"] = time.time()
        await asyncio.sleep(0.5)
        marks["stall"] = time.time()
        controller.stall(0.35)
        await asyncio.sleep(0.35)
        marks["resumed"] = time.time()
        await asyncio.sleep(0.5)
        stop.set()
        await task

    try:
        asyncio.run(scenario())
    finally:
        plc.halt.set()
        plc.join(5)
        if not controller.up:
            controller.start()
    return out, runner.stats, marks


def check_outages(out: list[Sample], stats: SourceStats, marks: dict[str, float], rate: float) -> None:
    seqs = [s["seq"] for s in out]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # one sample per tick, none skipped
    assert all(s["ts"] == pytest.approx(s["seq"] / rate) for s in out)
    empty = [all(s[c] is None for c in SIGNALS) for s in out]
    assert all(all(s[c] is not None for c in SIGNALS) or e for s, e in zip(out, empty, strict=True))  # all or none

    def window(start: float, end: float) -> list[bool]:
        return [e for s, e in zip(out, empty, strict=True) if start <= s["ts"] <= end]

    # a sample is stamped when its read is requested; the answer may come up to the timeout (0.1 s) later
    tick, late = 1 / rate, 0.1 + 1 / rate
    assert not any(window(out[0]["ts"] + 0.2, marks["down"] - tick))  # connected: every sample has values
    assert all(window(marks["down"] + tick, marks["up"] - late))  # server down: marked missing, nothing held
    assert not any(window(marks["up"] + 0.35, marks["stall"] - tick))  # reconnected with the backoff
    assert all(window(marks["stall"] + late, marks["resumed"] - late))  # stalled: reads time out
    assert not any(window(marks["resumed"] + 0.4, out[-1]["ts"]))  # and it reads again
    counters = [s["counter"] for s in out if s["counter"] is not None]
    assert counters == sorted(counters)  # never an older value after a newer one
    assert stats.reconnects >= 1 and stats.reads_failed >= 1
    assert stats.samples == len(out) and stats.samples_missing == sum(empty)
    assert stats.samples_missing >= 0.6 * rate * 0.5  # at least half of the outage and the stall


def test_modbus_survives_a_server_restart_and_a_stall(modbus_controller: Controller) -> None:
    out, stats, marks = restart_and_stall(modbus_controller, modbus_config(modbus_controller.port, FAST_HZ))
    check_outages(out, stats, marks, FAST_HZ)


def test_opcua_polling_survives_a_server_restart_and_a_stall(opcua_controller: Controller) -> None:
    out, stats, marks = restart_and_stall(opcua_controller, opcua_config(opcua_controller.port, FAST_HZ))
    check_outages(out, stats, marks, FAST_HZ)


def run_for(config: SensorsConfig, seconds: float, during: Any = None) -> tuple[list[Sample], SourceStats]:
    out: list[Sample] = []
    runner = runner_for(config, out)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        await asyncio.sleep(seconds)
        if during is not None:
            await asyncio.to_thread(during)
            await asyncio.sleep(seconds)
        stop.set()
        await task

    asyncio.run(scenario())
    return out, runner.stats


def test_opcua_subscription_over_sign_and_encrypt_loses_values_with_the_server(
        opcua_controller: Controller, certificates: dict[str, Path], tmp_path: Path) -> None:
    """Subscription mode on a SignAndEncrypt channel with a client certificate: the values arrive; when the
    server goes, the subscription's values go too (missing, never held)."""
    opcua_controller.set({**dict.fromkeys(COLUMNS, 2.0), "counter": 7.0})
    security = {"mode": "SignAndEncrypt", "policy": "Basic256Sha256", "certificate": str(certificates["client"]),
                "privateKey": str(certificates["client_key"]), "serverCertificate": str(certificates["server"]),
                "applicationUri": "urn:nacelle:sensors"}
    config = opcua_config(opcua_controller.port, FAST_HZ, mode="subscription", security=security)
    down: list[float] = []

    def stop_server() -> None:
        down.append(time.time())
        opcua_controller.stop()

    try:
        out, stats = run_for(config, 0.5, during=stop_server)
    finally:
        opcua_controller.start()
    before = [s for s in out if s["ts"] < down[0]]
    after = [s for s in out if s["ts"] > down[0] + 0.1]
    assert any(s["counter"] == 7.0 and s["rps"] == 2.0 for s in before)
    assert after and all(s[c] is None for s in after for c in SIGNALS)  # the subscription is gone: missing
    assert stats.reads_failed >= 1
    missing = {**security, "certificate": str(tmp_path / "absent.der")}
    with pytest.raises(ConfigurationError, match=r"opcua\.security\.certificate: .*absent\.der"):
        OpcUaSource(opcua_config(opcua_controller.port, security=missing).opcua, 0.05)  # type: ignore[arg-type]


def test_modbus_exception_responses_fail_reads_without_reconnecting(modbus_controller: Controller) -> None:
    """A register map that reaches past the controller's registers, or another unit id: the controller answers
    with an exception; those reads are missing and counted, the connection is kept."""
    regs = {**default_register_map(SIGNALS), "extra": {"address": 500, "registerType": "input"}}
    out, stats = run_for(modbus_config(modbus_controller.port, FAST_HZ, registers=regs), 0.4)
    assert out and all(s["qw"] is None for s in out)
    assert stats.reads_failed >= len(out) - 2 and stats.connects == 1
    assert "illegal data address" in (stats.last_error or "")


# ------------------------------------------------------------------ a delayed poll never publishes a sample twice
def test_a_poll_delayed_past_the_controllers_next_sample_never_publishes_it_twice(
        modbus_controller: Controller) -> None:
    """The controller produces sample k half an interval after tick k of the reading grid (a PLC scan and a poller
    meet on average half a period apart). A slow publisher holds the sampling loop for 1.7 intervals after every
    tenth sample: the next poll, late, reads the controller's next sample, and the poll after it, on time, reads that
    same sample again. With the controller's counter mapped as `sampleCounter` each controller sample is published
    at most once: the repeat goes out as a missing sample and is counted."""
    rate = 20.0
    config = SensorsConfig.from_dict({"source": "modbus", "rateHz": rate, "sampleCounter": "counter",
                                      "modbus": {"host": "127.0.0.1", "port": modbus_controller.port,
                                                 "timeoutSeconds": 0.1, "registers": default_register_map(SIGNALS)}},
                                     THING)
    assert config.sample_counter == "counter"
    halt = threading.Event()

    def plc() -> None:
        k0 = k = int(time.time() * rate) + 1
        while not halt.is_set():
            delay = (k + 0.5) / rate - time.time()
            if delay > 0:
                time.sleep(delay)
            modbus_controller.set({**dict.fromkeys(COLUMNS, 1.5), "counter": float(k - k0)})  # float32: kept small
            k += 1

    out: list[Sample] = []

    def slow_publisher(sample: Sample) -> None:
        out.append(sample)
        if len(out) % 10 == 0:
            time.sleep(1.7 / rate)  # blocks the sampling loop, as a stuck publish or an unscheduled process would

    stats = SourceStats()
    assert config.modbus is not None
    runner = PollingRunner(ModbusSource(config.modbus), config.signals, rate, slow_publisher, stats,
                           timeout_s=0.1, counter=config.sample_counter)
    writer = threading.Thread(target=plc, daemon=True)
    writer.start()

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        await asyncio.sleep(3.5)
        stop.set()
        await task

    try:
        asyncio.run(scenario())
    finally:
        halt.set()
        writer.join(5)
    counters = [s["counter"] for s in out if s["counter"] is not None]
    assert len(counters) > 30
    assert len(counters) == len(set(counters)) and counters == sorted(counters)  # each controller sample at most once
    assert stats.samples_repeated >= 1  # the slow publisher made polls read a sample again: caught, not published
    repeats = [s for s in out if all(s[c] is None for c in SIGNALS)]
    assert len(repeats) >= stats.samples_repeated and stats.samples_missing == len(repeats)
    seqs = [s["seq"] for s in out]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # one sample per tick all the same


def test_sample_counter_settings_are_checked() -> None:
    base = {"source": "modbus", "modbus": {"host": "plc", "registers": default_register_map(SIGNALS)}}
    with pytest.raises(ConfigurationError, match=r"sampleCounter: 'scan' is not one of the signals of modbus\.reg"):
        SensorsConfig.from_dict({**base, "sampleCounter": "scan"}, THING)
    with pytest.raises(ConfigurationError, match="sampleCounter must be the name of a mapped signal"):
        SensorsConfig.from_dict({**base, "sampleCounter": 7}, THING)
    with pytest.raises(ConfigurationError, match="sampleCounter applies to the modbus and opcua sources only"):
        SensorsConfig.from_dict({"source": "simulator", "sampleCounter": "counter"}, THING)


# ------------------------------------------------------------------ slow, silent and refusing servers
class SlowLink:
    """A TCP proxy in front of a server that delays each chunk the server sends by `delay` seconds: every answer is
    late but within the client's timeout. `open` counts the client connections it holds."""

    def __init__(self, port: int, delay: float) -> None:
        self.port, self.delay, self.open = port, delay, 0
        self.writers: set[asyncio.StreamWriter] = set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._client, "127.0.0.1", 0), self.loop).result(5)
        self.listen_port = self.server.sockets[0].getsockname()[1]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.writers.add(up_writer)
            await asyncio.gather(self._pipe(reader, up_writer, 0.0), self._pipe(up_reader, writer, self.delay))
        finally:
            self.open -= 1

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
        try:
            while data := await reader.read(65536):
                await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def wait_closed(self, seconds: float = 3.0) -> int:
        """The client connections still open once they all closed or `seconds` passed."""
        deadline = time.monotonic() + seconds
        while self.open and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.open

    def close(self) -> None:
        async def shut() -> None:
            self.server.close()
            for writer in self.writers:
                writer.transport.abort()
            while self.open:
                await asyncio.sleep(0.05)

        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def slow_opcua(opcua_controller: Controller) -> Iterator[SlowLink]:
    link = SlowLink(opcua_controller.port, 0.3)
    yield link
    link.close()


def test_a_slow_opcua_handshake_connects_and_one_cut_short_leaves_nothing_open(
        opcua_controller: Controller, slow_opcua: SlowLink) -> None:
    """Each answer takes 0.3 s of a 0.5 s timeout: the handshake (hello, channel, session, activation) takes longer
    than one request's timeout, yet connects; cancelled half way, it closes its socket all the same."""
    opcua_controller.set({**dict.fromkeys(COLUMNS, 3.0), "counter": 1.0})
    config = opcua_config(slow_opcua.listen_port, 5.0, timeoutSeconds=0.5)
    assert config.opcua is not None
    source = OpcUaSource(config.opcua, 0.2)

    async def cut_short() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(source.connect(), 0.5)

    asyncio.run(cut_short())
    assert not source.connected and slow_opcua.wait_closed() == 0
    out, stats = run_for(config, 4.0)
    assert stats.connects >= 1 and any(s["rps"] == 3.0 for s in out)
    assert slow_opcua.wait_closed() == 0  # and closed when the runner stopped


def subscription_config(port: int) -> SensorsConfig:
    return opcua_config(port, 20.0, mode="subscription", timeoutSeconds=0.5)


def test_an_opcua_subscription_is_judged_by_the_publishing_interval_the_server_granted(
        opcua_controller: Controller, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server revises the 50 ms publishing interval to 1 s (many controllers' minimum) and the values hold
    still: it publishes them once, then keep-alives every 10 s. That is a live subscription, not a silent one."""
    from asyncua.server.subscription_service import SubscriptionService

    original = SubscriptionService.create_subscription

    async def at_most_every_second(self: Any, params: Any, *args: Any, **kwargs: Any) -> Any:
        params.RequestedPublishingInterval = max(params.RequestedPublishingInterval, 1000.0)
        return await original(self, params, *args, **kwargs)

    monkeypatch.setattr(SubscriptionService, "create_subscription", at_most_every_second)
    opcua_controller.set({**dict.fromkeys(COLUMNS, 4.0), "counter": 2.0})
    out, stats = run_for(subscription_config(opcua_controller.port), 4.0)
    assert stats.connects == 1 and stats.reads_failed == 0, stats.last_error
    first = next(i for i, s in enumerate(out) if s["rps"] is not None)
    assert out[first:] and all(s["rps"] == 4.0 for s in out[first:])


def test_an_opcua_subscription_that_never_publishes_is_dead(
        opcua_controller: Controller, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server accepts the subscription but never publishes, not even a keep-alive: after the keep-alive period
    (twice, plus a second: 2 s here) from its creation the read fails and the source reconnects."""
    from asyncua.server.internal_subscription import InternalSubscription

    async def never_publishes(self: Any) -> None:
        pass

    monkeypatch.setattr(InternalSubscription, "start", never_publishes)
    out, stats = run_for(subscription_config(opcua_controller.port), 3.0)
    assert all(s["rps"] is None for s in out)
    assert stats.reads_failed >= 1 and "subscription silent for more than 2.0s" in (stats.last_error or "")


class CountedModbus(ModbusSource):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.attempts: list[float] = []

    async def connect(self) -> None:
        self.attempts.append(time.monotonic())
        await super().connect()


def test_a_refused_connection_is_retried_at_once_early_in_an_outage_then_backs_off() -> None:
    """Nothing listens: retried every quarter tick while a restart is likely, then with the backoff (0.05 doubling
    to 0.4 s here) instead of 80 attempts a second for good."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = modbus_config(port, 20.0)
    assert config.modbus is not None
    source = CountedModbus(config.modbus)
    out: list[Sample] = []
    runner = PollingRunner(source, config.signals, 20.0, out.append, SourceStats(), timeout_s=0.1,
                           reconnect_min_s=0.05, reconnect_max_s=0.4)
    runner.refused_fast_s = 0.5

    async def scenario() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        started = time.monotonic()
        await asyncio.sleep(2.5)
        stop.set()
        await task
        return started

    started = asyncio.run(scenario())
    early = [t for t in source.attempts if t - started < 0.4]
    late = [t for t in source.attempts if t - started > 1.0]
    assert len(early) >= 8  # a quarter tick apart (12.5 ms)
    assert 1 <= len(late) <= 8  # 0.4 s apart at most 1.5 s: about 4
    assert runner.stats.state == "connecting" and "refused" in (runner.stats.last_error or "")


def test_a_modbus_response_to_another_function_is_a_failed_read() -> None:
    """pymodbus matches a response to its request by transaction id: input registers answering a holding register
    request would pass as the holding registers' values."""
    from pymodbus.pdu.register_message import ReadHoldingRegistersResponse, ReadInputRegistersResponse

    config = modbus_config(502, registers=default_register_map(SIGNALS, register_type="holding"))
    assert config.modbus is not None
    answers: list[Any] = []

    class Client:
        connected = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        async def connect(self) -> bool:
            return True

        async def read_holding_registers(self, address: int, *, count: int, device_id: int) -> Any:
            return answers.pop(0)

        def close(self) -> None:
            pass

    source = ModbusSource(config.modbus, client_factory=Client)
    words = [0x4120, 0] * len(SIGNALS)  # 10.0 each

    async def read(answer: Any) -> Any:
        answers.append(answer)
        await source.connect()
        return await source.read()

    assert asyncio.run(read(ReadHoldingRegistersResponse(registers=words))) == dict.fromkeys(SIGNALS, 10.0)
    with pytest.raises(SourceError, match=r"expected function code 3 for holding registers 0\.\.15, got 4") as info:
        asyncio.run(read(ReadInputRegistersResponse(registers=words)))
    assert info.value.reconnect is False  # like any malformed response: the connection is kept
