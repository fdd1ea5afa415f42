"""SensorsApp: source -> sampler -> batches -> publisher, with health and configuration changes.

One thread runs an asyncio loop: the sampler (its reads, timeouts and reconnects), the batches it fills, and the
health report. Health (shared.messages.SensorHealthMessage) goes to `topics.health` on the device's local pub/sub
(the detector reports it to the cloud in the device's health message) every healthIntervalSeconds and, at most once
a second, when the source's state changes (connected, disconnected...). A valid configuration change
builds the new source first (a file that cannot be read keeps the old one running), then replaces the old one
between two ticks. Changes are compared with the newest one: a change reverted before its swap leaves the running
source alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from shared.errors import ConfigurationError
from shared.messages import SensorHealthMessage

from .config import SensorsConfig
from .publisher import Batcher, Publisher
from .sampler import PollingRunner, Sample, SourceStats, StreamRunner

log = logging.getLogger("sensors.app")
RUNNER_STOP_S = 5.0  # a replaced or stopped runner returns within a tick; past this it is cancelled

STATE_HEALTH_MIN_S = 1.0  # health on a state change, at most this often
Runner = PollingRunner | StreamRunner


def component_version(here: Path | None = None) -> str:
    """The VERSION file next to the component's sources (artifact root or source tree), else "dev"."""
    base = (here or Path(__file__)).resolve().parent
    for folder in (base, base.parent, base.parent.parent):
        path = folder / "VERSION"
        if path.is_file() and (text := path.read_text(encoding="utf-8").strip()):
            return text
    return "dev"


def build_runner(config: SensorsConfig, emit: Callable[[Sample], None], stats: SourceStats) -> Runner:
    """The configured source and its runner; ConfigurationError when the source cannot be set up (a missing
    certificate, a replay file that fails validation...)."""
    signals = config.signals
    if config.modbus is not None:
        from .modbus import ModbusSource

        return PollingRunner(ModbusSource(config.modbus), signals, config.rate_hz, emit, stats,
                             timeout_s=config.modbus.timeout_s, reconnect_min_s=config.reconnect_min_s,
                             reconnect_max_s=config.reconnect_max_s, counter=config.sample_counter)
    if config.opcua is not None:
        from .opcua import OpcUaSource

        return PollingRunner(OpcUaSource(config.opcua, 1.0 / config.rate_hz), signals, config.rate_hz, emit, stats,
                             timeout_s=config.opcua.timeout_s, reconnect_min_s=config.reconnect_min_s,
                             reconnect_max_s=config.reconnect_max_s, counter=config.sample_counter)
    from .streams import ReplaySource, SimulatedSource

    source: ReplaySource | SimulatedSource
    if config.replay is not None:
        source = ReplaySource(config.replay, config.spec)
    else:
        assert config.simulator is not None
        source = SimulatedSource(config.thing, config.simulator, config.spec)
    return StreamRunner(source, signals, config.rate_hz, config.batch_samples, emit, stats)


class SensorsApp:
    def __init__(self, config: SensorsConfig, publisher: Publisher, *, version: str | None = None,
                 runner_factory: Callable[[SensorsConfig, Callable[[Sample], None], SourceStats], Runner]
                 = build_runner, wall: Callable[[], float] = time.time) -> None:
        self.config = config
        self.publisher = publisher
        self.version = version or component_version()
        self.runner_factory = runner_factory
        self.wall = wall
        self.stats = SourceStats()
        self.batcher = Batcher(config.thing, config.sensors_topic, config.batch_samples, publisher)
        self.runner = runner_factory(config, self._emit, self.stats)  # raises ConfigurationError: fail at start
        self.health_sent = 0
        self._started = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._swap: asyncio.Event | None = None
        self._pending: tuple[SensorsConfig, Runner] | None = None
        self._pending_lock = threading.Lock()  # reconfigure() runs on the caller's thread, the swap on the loop's
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._last_state = ""
        self._last_state_health = 0.0

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> SensorsApp:
        def target() -> None:
            try:
                asyncio.run(self.run())
            except Exception:  # logged here; main() sees the thread end and exits non-zero
                log.exception("the sampling loop failed")

        self._thread = threading.Thread(target=target, name="sensors", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout)

    async def run(self) -> None:
        """Sample until stopped, swapping runners on configuration changes; flushes what is batched at the end."""
        self._loop, self._stop, self._swap = asyncio.get_running_loop(), asyncio.Event(), asyncio.Event()
        self._ready.set()
        health = asyncio.create_task(self._health_loop(), name="sensors-health")
        log.info("nacelle.sensors %s: %s from %s at %g Hz, %d signals, to %s", self.version, self.config.source,
                 self.config.endpoint, self.config.rate_hz, len(self.config.signals), self.config.sensors_topic)
        try:
            resume: int | None = None
            while not self._stop.is_set():
                halt = asyncio.Event()  # this runner's own stop: set on a configuration change or the app's stop
                sampling = asyncio.create_task(self._run_runner(resume, halt), name="sensors-sampling")
                await self._until_change(sampling)
                # The runner returns at its next tick, its source closed. Not Task.cancel(): Python 3.11's
                # asyncio.wait_for can swallow a cancellation that meets a finishing read, and the old source would
                # then go on sampling for good.
                halt.set()
                done, _ = await asyncio.wait({sampling}, timeout=RUNNER_STOP_S)
                if not done:  # stuck in a library call
                    log.warning("the %s source did not stop within %g s: cancelled", self.config.source,
                                RUNNER_STOP_S)
                    sampling.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await sampling
                else:
                    sampling.result()  # the runners return when stopped; anything else is a bug: raise it
                pending = self._take_pending()
                if pending is None:  # stopped, or a change reverted meanwhile: the same runner goes on where it was
                    resume = self.runner.next_tick if isinstance(self.runner, PollingRunner) else None
                else:
                    old, self.runner = self.runner, pending[1]
                    same_grid = isinstance(old, PollingRunner) and isinstance(self.runner, PollingRunner) \
                        and old.rate == self.runner.rate
                    resume = old.next_tick if same_grid else None  # type: ignore[union-attr]
                    if same_grid and old.counter == self.runner.counter:  # type: ignore[union-attr]
                        self.runner.last_counter = old.last_counter  # type: ignore[union-attr]
                    self.batcher.flush()
                    self.batcher = Batcher(self.config.thing, self.config.sensors_topic, self.config.batch_samples,
                                           self.publisher)
                    log.info("now sampling %s from %s", self.config.source, self.config.endpoint)
        finally:
            self.batcher.flush()
            health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await health
            self._send_health()

    async def _until_change(self, sampling: asyncio.Task[None]) -> None:
        """Until the runner ends, the app stops or a configuration change is pending (a swap signalled for a change
        reverted since is no change)."""
        assert self._swap is not None and self._stop is not None
        while not sampling.done() and not self._stop.is_set():
            self._swap.clear()  # before looking: a change made after this sets it again
            if self._has_pending():
                return
            waits = {asyncio.create_task(self._swap.wait()), asyncio.create_task(self._stop.wait())}
            await asyncio.wait({sampling, *waits}, return_when=asyncio.FIRST_COMPLETED)
            for wait in waits:
                wait.cancel()

    def _has_pending(self) -> bool:
        with self._pending_lock:
            return self._pending is not None

    def _take_pending(self) -> tuple[SensorsConfig, Runner] | None:
        """The pending change, now the running configuration (under the lock: reconfigure() compares with it)."""
        with self._pending_lock:
            pending, self._pending = self._pending, None
            if pending is not None:
                self.config = pending[0]
            return pending

    async def _run_runner(self, resume: int | None, halt: asyncio.Event) -> None:
        if isinstance(self.runner, PollingRunner):
            await self.runner.run(halt, resume)
        else:
            await self.runner.run(halt)

    def reconfigure(self, config: SensorsConfig) -> None:
        """A new configuration (from any thread): its source is built now; an unusable one is logged and ignored.
        It is compared with the newest configuration, the pending one when there is one: a change back to the running
        configuration before the swap cancels the swap."""
        with self._pending_lock:
            if self._pending is not None and config == self._pending[0]:
                return
            if config == self.config:
                self._pending = None
                return
        try:
            runner = self.runner_factory(config, self._emit, self.stats)
        except ConfigurationError as exc:
            log.error("ignoring the configuration change: %s", exc)
            return
        with self._pending_lock:
            self._pending = (config, runner)
        if self._loop is not None and self._swap is not None:
            self._loop.call_soon_threadsafe(self._swap.set)

    # -- samples and health --------------------------------------------------------------------------------
    def _emit(self, sample: Sample) -> None:
        self.batcher.add(sample)
        if self.stats.state != self._last_state:
            self._on_state()

    def _on_state(self) -> None:
        now = time.monotonic()
        if now - self._last_state_health >= STATE_HEALTH_MIN_S:
            self._last_state = self.stats.state
            self._last_state_health = now
            self._send_health()

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            self._send_health()

    def health(self) -> dict[str, Any]:
        s = self.stats
        age = None if s.last_value_ts is None else max(0.0, round(self.wall() - s.last_value_ts, 3))
        message = SensorHealthMessage(
            v=SensorHealthMessage.VERSION, turbine_id=self.config.thing, seq=self.health_sent + 1,
            source=self.config.source, endpoint=self.config.endpoint[:200], state=s.state,
            rate_hz=self.config.rate_hz, last_sample_age_s=age, samples=s.samples, samples_missing=s.samples_missing,
            values_missing=s.values_missing, reads_failed=s.reads_failed, reconnects=s.reconnects,
            dropped=self.publisher.dropped, last_error=None if s.last_error is None else s.last_error[:2000],
            uptime_s=round(time.monotonic() - self._started, 3), component_version=self.version,
            health_interval_s=self.config.health_interval_s, samples_repeated=s.samples_repeated)
        return asdict(message)

    def _send_health(self) -> None:
        """On the device's local pub/sub: the detector folds it into the device's health message to the cloud."""
        doc = self.health()
        payload = SensorHealthMessage(**doc).to_json()  # the same check any reader applies
        self.publisher.publish(self.config.health_topic, payload)
        self.health_sent += 1
