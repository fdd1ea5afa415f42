"""Sampling: one sample per tick of the spec's rate; a reading that is not there is null, never made up.

PollingRunner (Modbus, OPC UA) ticks on a grid aligned to the epoch: tick k is due at k / rate seconds UTC, and its
sample carries `seq` k and `ts` k / rate, so timestamps are evenly spaced and never collide across restarts (a hole
in `seq` is a stretch with no sample at all). At each tick it reads the source once, bounded by the timeout. A
failed or timed-out read, or no connection, gives a sample whose signals are all null; ticks that pass while a
read is outstanding (or while the process was not scheduled) give such samples too. Nothing is held over, repeated
or interpolated. A background task (re)connects with exponential backoff and jitter; a failed read drops the
connection and the backoff is reset only by a successful read. A refused connection (nothing listens: a server
restarting) is retried every quarter of a sample interval (at most `reconnect_min_s`, at least REFUSED_RETRY_MIN_S)
for the first REFUSED_FAST_S of an outage, so a restarted server is read again within the tick it comes back; past
that it backs off like any other failure (a controller that is gone for good is not hammered).

A poll delayed by load (a slow publisher, a process not scheduled, a server answering late) may read the controller's
next sample, and the tick after it read that same sample again. With `counter` (the configuration's sampleCounter: a
mapped signal the controller changes with every new sample, a scan counter or the sample's time) a reading whose
counter equals the last one published with values is a repeat: that tick is published as missing and counted
(`samples_repeated`), so each controller sample reaches the sensor topic at most once. Without a counter a repeat
cannot be told from a signal that holds still.

StreamRunner (replay, simulator) releases the source's own samples as their stream time elapses at `speed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from shared.errors import AdapterError

log = logging.getLogger("sensors.sampler")

Sample = dict[str, Any]  # {"seq": int, "ts": float, <signal>: float | None, ...}
Emit = Callable[[Sample], None]
State = Literal["connecting", "connected", "disconnected", "finished"]
MAX_CATCHUP_S = 10.0  # missed ticks beyond this are counted but not published one by one (a gap instead)
REFUSED_FAST_S = 2.0  # a refused connection is retried at once this long into an outage (a restart), then backs off
REFUSED_RETRY_MIN_S = 0.01  # the fast retry's floor: at high rates a quarter tick is shorter than a connection attempt


class SourceError(AdapterError):
    """A connection attempt or read failed (I/O, timeout, protocol); `reconnect`: drop the connection; `refused`: the
    host actively refused the connection (nothing listens on the port: a server restarting)."""

    def __init__(self, message: str, reconnect: bool = True, refused: bool = False) -> None:
        super().__init__(message)
        self.reconnect = reconnect
        self.refused = refused


class PolledSource(Protocol):
    kind: str
    endpoint: str
    connect_timeout_s: float  # the whole connection attempt (a handshake may take several requests)

    @property
    def connected(self) -> bool: ...

    async def connect(self) -> None: ...

    async def read(self) -> Mapping[str, float | None]:
        """The current value of every signal (None: no valid reading). Raises SourceError."""

    async def close(self) -> None: ...


class StreamSource(Protocol):
    kind: str
    endpoint: str
    speed: float

    @property
    def finished(self) -> bool: ...

    def take(self, seconds: float) -> list[Sample]:
        """The samples of the next `seconds` of stream time (their own seq and ts)."""


@dataclass
class SourceStats:
    """What the health message reports; updated on the sampling loop only."""

    state: State = "connecting"
    samples: int = 0  # published (or handed to the publisher)
    samples_missing: int = 0  # samples with no value at all
    samples_repeated: int = 0  # readings the sample counter showed to be a repeat (published as missing)
    values_missing: int = 0  # single signals without a reading in samples that have others
    reads_failed: int = 0
    connects: int = 0
    last_error: str | None = None
    last_value_ts: float | None = None  # ts of the newest sample holding a value

    @property
    def reconnects(self) -> int:
        return max(0, self.connects - 1)


class Counting:
    """Turns readings into samples and counts them."""

    def __init__(self, signals: Sequence[str], emit: Emit, stats: SourceStats) -> None:
        self.signals = tuple(signals)
        self.emit = emit
        self.stats = stats

    def sample(self, seq: int, ts: float, values: Mapping[str, Any] | None) -> None:
        sample: Sample = {"seq": seq, "ts": ts}
        present = 0
        for name in self.signals:
            value = None if values is None else values.get(name)
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            sample[name] = value
            present += value is not None
        self.stats.samples += 1
        if present == 0:
            self.stats.samples_missing += 1
        else:
            self.stats.values_missing += len(self.signals) - present
            self.stats.last_value_ts = ts
        self.emit(sample)


class PollingRunner:
    def __init__(self, source: PolledSource, signals: Sequence[str], rate_hz: float, emit: Emit,
                 stats: SourceStats, *, timeout_s: float, reconnect_min_s: float = 0.1, reconnect_max_s: float = 5.0,
                 counter: str = "", wall: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self.counter = counter
        self.last_counter: Any = None  # the counter of the last sample published with values
        self.rate = rate_hz
        self.out = Counting(signals, emit, stats)
        self.stats = stats
        self.timeout_s = timeout_s
        self.connect_timeout_s = source.connect_timeout_s
        self.backoff_min, self.backoff_max = reconnect_min_s, reconnect_max_s
        self.refused_retry_s = max(REFUSED_RETRY_MIN_S, min(reconnect_min_s, 0.25 / rate_hz))
        self.refused_fast_s = REFUSED_FAST_S
        self.wall, self.mono = wall, mono
        self._backoff = reconnect_min_s
        self._failures = 0  # consecutive failed connects and reads; a successful read resets it
        self._failing_since: float | None = None  # when the current run of failures began (mono)
        self._refused = False  # the last connection attempt was refused
        self._lost = asyncio.Event()
        self.next_tick: int | None = None  # the first tick not published yet

    # -- the tick loop -----------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, resume_from: int | None = None) -> None:
        """Sample until `stop`. `resume_from`: the first tick (a runner replacing another at the same rate goes on
        where that one stopped; the ticks in between are published as missing)."""
        connector = asyncio.create_task(self._keep_connected(stop), name="sensors-connect")
        offset = self.wall() - self.mono()
        tick = math.ceil((self.mono() + offset) * self.rate)
        if resume_from is not None and tick - MAX_CATCHUP_S * self.rate <= resume_from <= tick:
            tick = resume_from
        try:
            while not stop.is_set():
                self.next_tick = tick
                delay = tick / self.rate - (self.mono() + offset)
                if delay > 0 and await _stopped(stop, delay):
                    break
                latest = max(tick, math.floor((self.mono() + offset) * self.rate + 1e-9))
                self.missed(tick, latest)
                self.next_tick = latest
                self.out.sample(latest, self.ts(latest), self.unrepeated(await self.poll()))
                tick = latest + 1
            self.next_tick = tick
        finally:
            connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connector
            await self._close()

    def ts(self, tick: int) -> float:
        return round(tick / self.rate, 6)

    def missed(self, first: int, end: int) -> None:
        """Ticks first..end-1 passed without a read: published as samples with nothing in them (the most recent
        MAX_CATCHUP_S worth; older ones are counted only)."""
        if end <= first:
            return
        keep = max(first, end - int(MAX_CATCHUP_S * self.rate))
        self.stats.samples_missing += keep - first
        for tick in range(keep, end):
            self.out.sample(tick, self.ts(tick), None)

    def unrepeated(self, values: Mapping[str, float | None] | None) -> Mapping[str, float | None] | None:
        """The reading, or None when its sample counter says the last published sample was read again."""
        if not self.counter or values is None:
            return values
        counter = values.get(self.counter)
        if counter is None:
            return values
        if counter == self.last_counter:
            self.stats.samples_repeated += 1
            if self.stats.samples_repeated % 100 == 1:
                log.warning("%s: %s %r read again (the controller had no new sample): published as missing "
                            "(%d so far)", self.source.endpoint, self.counter, counter, self.stats.samples_repeated)
            return None
        self.last_counter = counter
        return values

    async def poll(self) -> Mapping[str, float | None] | None:
        """One read of the source, or None (not connected, failed, timed out)."""
        if not self.source.connected:
            if self.stats.state == "connected":  # the library saw the connection go before a read failed
                self.stats.last_error = f"connection to {self.source.endpoint} lost"
                log.warning("%s", self.stats.last_error)
                self._failed()
                await self._close()
            return None
        try:
            values = await asyncio.wait_for(self.source.read(), self.timeout_s)
        except Exception as exc:  # SourceError, a timeout, or a library's own error: the sample is missing
            self.stats.reads_failed += 1
            reason = f"read from {self.source.endpoint} failed: {_text(exc)}"
            if self.stats.last_error != reason:
                log.warning("%s", reason)
            self.stats.last_error = reason
            if getattr(exc, "reconnect", True):
                self._failed()
                await self._close()
            return None
        if self._failures:
            log.info("reading %s again", self.source.endpoint)
        self._failures, self._failing_since, self._backoff = 0, None, self.backoff_min
        return values

    def _failed(self) -> None:
        self._failures += 1
        if self._failing_since is None:
            self._failing_since = self.mono()

    def _retry_at_once(self) -> bool:
        """A refused connection early in an outage: the server is likely restarting and will be back shortly."""
        started = self._failing_since
        return self._refused and started is not None and self.mono() - started < self.refused_fast_s

    # -- the connection ------------------------------------------------------------------------------------
    async def _close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.source.close(), self.connect_timeout_s)
        if self.stats.state == "connected":
            self.stats.state = "disconnected"
        self._lost.set()

    async def _keep_connected(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self.source.connected:
                self._lost.clear()
                if self.source.connected:
                    await _first(stop.wait(), self._lost.wait())
                continue
            if self._failures:
                fast = self._retry_at_once()
                wait = self.refused_retry_s if fast else self._backoff
                if await _stopped(stop, wait * random.uniform(0.8, 1.2)):
                    return
                if not fast:
                    self._backoff = min(self._backoff * 2, self.backoff_max)
            try:
                await asyncio.wait_for(self.source.connect(), self.connect_timeout_s)
            except Exception as exc:  # refused, unreachable, handshake or security failure
                self._failed()
                # a refused connection costs the server little: early in an outage it is retried within a quarter of
                # a sample interval, so a restarted server is read again at once; anything else (no answer, a
                # handshake or session refused), or a server that stays away, backs off
                self._refused = getattr(exc, "refused", False) or isinstance(exc, ConnectionRefusedError)
                reason = f"cannot connect to {self.source.endpoint}: {_text(exc)}"
                if self.stats.last_error != reason:
                    log.warning("%s (retrying %s)", reason, f"every {self.refused_retry_s:g}s for "
                                f"{self.refused_fast_s:g}s, then with backoff up to {self.backoff_max:g}s"
                                if self._refused else f"with backoff up to {self.backoff_max:g}s")
                self.stats.last_error = reason
                self.stats.state = "disconnected" if self.stats.connects else "connecting"
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.source.close(), self.connect_timeout_s)
                continue
            self._refused = False
            self.stats.connects += 1
            self.stats.state = "connected"
            log.info("connected to %s%s", self.source.endpoint,
                     f" (reconnect {self.stats.reconnects})" if self.stats.reconnects else "")


class StreamRunner:
    """Replay and simulator: the source's samples, released as their stream time elapses at the source's speed."""

    def __init__(self, source: StreamSource, signals: Sequence[str], rate_hz: float, batch: int, emit: Emit,
                 stats: SourceStats, mono: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self.out = Counting(signals, emit, stats)
        self.stats = stats
        self.step_s = max(1, batch) / rate_hz
        self.mono = mono

    async def run(self, stop: asyncio.Event) -> None:
        self.stats.state, self.stats.connects = "connected", 1
        start, elapsed = self.mono(), 0.0
        while not stop.is_set():
            samples = self.source.take(self.step_s)
            if not samples and self.source.finished:
                self.stats.state = "finished"
                log.info("%s: end of the stream", self.source.endpoint)
                await stop.wait()
                return
            elapsed += self.step_s
            delay = start + elapsed / self.source.speed - self.mono()
            if delay > 0 and await _stopped(stop, delay):
                return
            for sample in samples:
                self.out.sample(int(sample["seq"]), float(sample["ts"]), sample)


async def _stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds` unless stopped first; True when stopped."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


async def _first(*waits: Any) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def _text(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, SourceError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
