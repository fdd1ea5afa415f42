"""`nacelle up`: run the local stack in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import getpass
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import FrameType
from typing import TypeVar

from nacelle.local.adapters.paths import ACCOUNT, BUCKET, REGION
from nacelle.local.adapters.state import SqliteStateStore
from nacelle.local.edge.broker import Broker, BrokerError
from nacelle.local.edge.capture_gateway import CaptureGateway
from nacelle.local.edge.fleet import CANARY_GROUP, Fleet, thing_names
from nacelle.local.edge.pki import LocalPki
from nacelle.local.edge.sensor_sources import PROTOCOLS, check_deployable, publish_sensors
from nacelle.local.runtime.bus import Dispatcher
from nacelle.local.runtime.console_server import DEFAULT_PORT, TOKEN_FILE, ConsoleServer
from nacelle.local.runtime.rules import RuleEngine, ScheduleTicker
from nacelle.local.runtime.s3events import NotifiedKeys, RawWatcher
from nacelle.local.runtime.stack import JOB_CHECK_S, Stack, StackLock
from nacelle.local.runtime.template import load_template, schedule_routes, topic_rules
from shared.errors import ConfigurationError, NacelleError
from shared.observability import logger
from shared.usecases.intake import record_rejected

T = TypeVar("T")


def run_up(home: Path, stop: threading.Event | None = None,
           on_ready: Callable[[Stack], None] | None = None, devices: int = 0, canary_size: int = 1,
           console_port: int | None = 0, source: str = "sim", full_devices: int | None = None) -> int:
    """Run the stack until `stop`; with `console_port` (0: any free port, None: no console) serve the operator
    console on 127.0.0.1. `source`: where the devices' sensor streams come from (sim, modbus, opcua;
    nacelle/local/edge/sensor_sources.py). `full_devices`: how many devices run in full (nucleus + simulator
    processes), the others being light devices (None: all up to 10 devices, else 3; nacelle/local/edge/light.py)."""
    if full_devices is not None and not 0 <= full_devices <= devices:
        raise ConfigurationError(f"--full-devices {full_devices}: between 0 and --devices ({devices})")
    if devices > 0:
        check_deployable(source)  # before anything starts
    stop = stop or threading.Event()
    lock = StackLock(home / "up.lock")
    lock.acquire()
    try:
        stack = Stack(home)
        if devices > 0 and source in PROTOCOLS:  # a build or version refused stops here, before anything runs
            publish_sensors(home, stack.greengrass)
        console = _bind_console(stack, console_port)  # a port in use fails here, before anything else starts
        for job in stack.recover_orphans(adopt_standalone=True):
            print(f"job {job} was orphaned by a stopped stack: killed and reported Failed", flush=True)
        dispatcher = Dispatcher(stack.bus, stack.targets())
        for tmp in stack.store.inner.sweep_temp_files():
            print(f"removed {tmp}, left half-written by a killed writer", flush=True)
        watcher = RawWatcher(stack.paths.bucket_dir, BUCKET, stack.bus.put, NotifiedKeys(home / "s3events.db"))
        previous = _install_signals(stop)
        started: list[Callable[[], object]] = []  # how to stop what runs, in the order it started
        try:  # a failure while starting stops what had started (a broker is never left behind)
            dispatcher.start()
            started.append(lambda: dispatcher.stop(timeout=10))
            watcher.start()
            started.append(watcher.stop)
            broker, rule_engine = _start_iot(stack, thing_names(devices))
            if broker is not None:
                started.append(broker.stop)
            if rule_engine is not None:
                started.append(rule_engine.stop)
            gateway = _start_capture_gateway(stack)
            if gateway is not None:
                started.append(gateway.stop)
            ticker = ScheduleTicker(stack.bus.put, [r.pattern["resources"][0] for r in
                                                   schedule_routes(load_template(), REGION, ACCOUNT)],
                                    stack.settings.offline_check_interval_s).start()
            started.append(ticker.stop)
            _publish_detector(stack)
            started.append(Periodic(1.0, stack.greengrass.sweep, "nacelle-greengrass-sweep").start().stop)
            started.append(Periodic(JOB_CHECK_S, stack.reap_jobs, "nacelle-job-reaper").start().stop)
            if broker is not None:
                started.append(Periodic(BROKER_CHECK_S, lambda: keep_broker(broker, stack),
                                        "nacelle-broker-keeper").start().stop)
            fleet = _start_fleet(stack, devices, canary_size, simulators=broker is not None, source=source,
                                 full_devices=full_devices)
            if fleet is not None:
                started.append(fleet.stop)
            if console is not None:
                _start_console(stack, console)
                started.append(console.stop)
            print(f"nacelle local stack up: data dir {home}, bucket {BUCKET}, "
                  f"raw folder {stack.paths.raw_dir} (Ctrl-C to stop)", flush=True)
            if on_ready is not None:
                on_ready(stack)
            stop.wait()
        finally:
            print("stopping the local stack...", flush=True)
            for stop_part in reversed(started):  # the devices and the console first, the dispatcher last
                stop_part()
            for job in stack.recover_orphans():
                print(f"job {job} was stopped with the stack and reported Failed", flush=True)
            _restore_signals(previous)
        logger.info("local stack stopped")
        return 0
    finally:
        lock.release()


def _bind_console(stack: Stack, port: int | None) -> ConsoleServer | None:
    """The operator console bound to 127.0.0.1:`port` (0: any free port; None: no console), not serving yet."""
    if port is None:
        return None
    try:
        return ConsoleServer(stack.paths.home, stack.operator_deps(), getpass.getuser(), port)
    except OSError as exc:
        raise NacelleError(f"the operator console cannot listen on 127.0.0.1:{port}: {exc.strerror} "
                           f"(choose another with --console-port, 0: any free port)") from exc


def _start_console(stack: Stack, console: ConsoleServer) -> None:
    """Serve the console; its URL (with the access token) is printed here, once."""
    console.start()
    stack.console_url = console.url
    print(f"operator console: {console.url}  (port {console.port}; the token is also in "
          f"{stack.paths.home / TOKEN_FILE})", flush=True)


def free_console_port(preferred: int = DEFAULT_PORT) -> int:
    """`preferred` when it is free on 127.0.0.1, else 0 (any free port)."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", preferred))
        except OSError:
            return 0
    return preferred


def _publish_detector(stack: Stack) -> None:
    """Build the pinned nacelle.detector component from this checkout and put it in the bucket, where
    compilation_completed finds its recipe (on AWS `nacelle aws package` does the same)."""
    from nacelle.components import build, publish

    try:
        built = build(stack.paths.home / "greengrass" / "build", bucket=BUCKET)
    except ConfigurationError as exc:  # no wheelhouse: the stack runs; deployments report the missing recipe
        print(f"nacelle.detector not published: {exc}", flush=True)
        return
    written = publish(stack.store, built.directory)
    if written:
        print(f"published nacelle.detector {built.version} ({len(written)} objects)", flush=True)


class Periodic:
    """Call `fn` every `interval_s` in a daemon thread until stopped; a failing round is logged."""

    def __init__(self, interval_s: float, fn: Callable[[], object], name: str) -> None:
        self.interval_s, self.fn = interval_s, fn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Periodic:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.fn()
            except Exception:  # one bad round must not end the loop
                logger.exception("periodic task failed", task=self._thread.name)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


BROKER_CHECK_S = 0.5


def keep_broker(broker: Broker, stack: Stack) -> None:
    """A broker that died is started again at once (its persistence store keeps the queued messages;
    clients reconnect by themselves), and the operators hear about it."""
    started = time.monotonic()
    rc = broker.revive()
    if rc is None:
        return
    took = time.monotonic() - started
    logger.error("local broker died and was restarted", exit_status=rc, restart_seconds=round(took, 3))
    print(f"local broker exited with status {rc}; restarted on 127.0.0.1:{broker.port} in {took:.2f} s", flush=True)
    stack.notifier.publish(
        "alerts", "[HIGH] local MQTT broker restarted",
        f"The stack's mosquitto exited with status {rc} and was restarted in {took:.2f} s on the same port with "
        f"its persistence store; devices and the IoT rules reconnect by themselves. Its log: "
        f"{broker.log_path}", {"severity": "high", "kind": "broker", "turbine_id": "-", "features": "[]"})


def _record_refused(state: SqliteStateStore, thing: str, stream: str, reason: str, detail: str, count: int) -> None:
    record_rejected(state, thing, stream, reason, detail, time.time(), count)


def _start_iot(stack: Stack, things: list[str]) -> tuple[Broker | None, RuleEngine | None]:
    """The local broker (mutual TLS) and the IoT rules engine; without mosquitto the stack runs without IoT.
    The `things`' sensor sources (their simulators) get their certificates first: the broker's ACL lists them."""
    pki = LocalPki(stack.paths.home / "pki")
    for thing in things:
        pki.sensor_source(thing)
    broker = Broker(stack.paths.home, pki)
    try:
        broker.start()
    except BrokerError as exc:
        print(f"IoT disabled (no local broker): {exc}", flush=True)
        return None, None
    try:
        engine = RuleEngine(topic_rules(load_template()), stack.bus.put_many, broker.endpoint, pki.cloud(),
                            reject=partial(_record_refused, stack.state)).start()
    except BaseException:
        broker.stop()
        raise
    print(f"local IoT: broker 127.0.0.1:{broker.port}, rules {[r.rule for r, _ in engine.rules]}", flush=True)
    return broker, engine


def _start_capture_gateway(stack: Stack) -> CaptureGateway | None:
    """Where devices upload their captured data (mutual TLS, each to its own raw/capture/<thing>/ only)."""
    try:
        gateway = CaptureGateway(stack.paths.home, LocalPki(stack.paths.home / "pki"), stack.store).start()
    except OSError as exc:
        print(f"data capture uploads disabled (no capture gateway): {exc}", flush=True)
        return None
    print(f"local capture gateway: {gateway.url} (devices upload raw/capture/<thing>/ there)", flush=True)
    return gateway


HEALTH_MSGS_PER_S_HINT = 50.0  # what the local deployment_status keeps up with, with margin, on 2 shared cores


def _start_fleet(stack: Stack, devices: int, canary_size: int, simulators: bool, source: str = "sim",
                 full_devices: int | None = None) -> Fleet | None:
    """`devices` simulated core devices (nucleus + sensor source each, or light devices), after the broker is up."""
    if devices <= 0:
        return None
    s = stack.settings
    simulator_args = ["--speed", str(s.simulator_speed), *(["--record"] if s.record_samples else [])]
    fleet = Fleet(stack.paths.home, stack.greengrass, size=devices, canary_size=min(canary_size, devices),
                  state=stack.state, alerts=SqliteStateStore(stack.paths.alerts_db), simulators=simulators,
                  simulator_args=simulator_args, component_id_base=s.component_id_base, source=source,
                  full_devices=full_devices, light_args=["--speed", str(s.simulator_speed)])
    fleet.start()
    fleet.prepare_runtime()
    light = fleet.light_things
    interval = float(s.detector_configuration.get("healthIntervalSeconds", 60) or 60)
    if devices / interval > HEALTH_MSGS_PER_S_HINT:
        print(f"note: {devices} devices sending health every {interval:g} s make {devices / interval:.0f} "
              f"messages/s for the local functions, more than a 2-core machine keeps up with; set "
              f"`detector_configuration: {{healthIntervalSeconds: 10}}` in {stack.paths.config} "
              f"(docs/fleet.md \"Light devices\")", flush=True)
    print(f"local fleet: {', '.join(fleet.full_things)}"
          f"{f' and {len(light)} light devices {light[0]}..{light[-1]}' if light else ''}"
          f" ({', '.join(fleet.things[:fleet.canary_size]) or 'none'} "
          f"in {CANARY_GROUP}){'' if simulators else '; no simulators without a broker'}"
          f"{f'; {source} controllers read by nacelle.sensors, deployed to each device' if source != 'sim' else ''}",
          flush=True)
    return fleet


def _install_signals(stop: threading.Event) -> dict[int, object]:
    if threading.current_thread() is not threading.main_thread():
        return {}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    return {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_signals(previous: dict[int, object]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)  # type: ignore[arg-type]


@contextmanager
def background_stack(home: Path, start_timeout_s: float = 60.0, devices: int = 0,
                     full_devices: int | None = None, canary_size: int = 1) -> Iterator[Stack]:
    """`nacelle up` in a background thread of this process (the demo, benchmarks and tests use it)."""
    stop = threading.Event()
    ready: list[Stack] = []
    errors: list[BaseException] = []
    started = threading.Event()

    def on_ready(stack: Stack) -> None:
        ready.append(stack)
        started.set()

    def target() -> None:
        try:
            run_up(home, stop, on_ready=on_ready, devices=devices, full_devices=full_devices, canary_size=canary_size)
        except BaseException as exc:  # handed to the caller below
            errors.append(exc)
            started.set()

    thread = threading.Thread(target=target, name="nacelle-up", daemon=True)
    thread.start()
    if not started.wait(start_timeout_s):
        stop.set()
        raise NacelleError(f"the local stack did not start within {start_timeout_s:.0f}s")
    if errors:
        raise errors[0]
    try:
        yield ready[0]
    finally:
        stop.set()
        thread.join(timeout=60)


def wait_for(predicate: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.25) -> T:
    """Poll a condition of the local state (for callers outside the stack: demo, tests, benchmarks)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise NacelleError(f"timed out after {timeout_s:.0f}s waiting for {what}")
