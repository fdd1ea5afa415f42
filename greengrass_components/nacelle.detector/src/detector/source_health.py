"""The turbine's signal source in the device's health message.

The nacelle.sensors component reports its source's health (shared.messages.SensorHealthMessage) on the device's
local pub/sub, `<sensors topic>/health` (turbines/<thing>/sensors/health). SourceHealth keeps the newest report and
turns it into the `sensors` block of the detector's health message (shared.messages.SensorsSummary), so the cloud
stores it with the device's health and an operator sees a source that is down or no longer reports.

A report that fails its definition or speaks for another turbine is refused, counted and logged, never kept. Reports
are ordered by the component's run (its start time, now - uptime_s) and `seq`: a duplicate or a late report of an
earlier run never replaces a newer one.

Every change of the source's state reaches the cloud, in order, each in a health message of its own that carries the
report of that change, even when the source has changed again since (an outage of one second still shows as an
outage, then its recovery). A change asks for a health message at once, at most one every CHANGE_HEALTH_MIN_S for
changes to "connected" and as many for changes away from it, so a flapping source cannot flood the link and a
recovery (or the start) just before an outage cannot hide it. A change held back by that limit is sent once it allows
(ask_due, polled by the detector's worker), and a change after it follows it, in order; at most the last two changes
wait (of a flapping source, its last outage and recovery).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from shared.messages import BadMessage, HealthMessage, SensorHealthMessage, SensorsSummary, decode, validate

log = logging.getLogger("detector.source_health")

CHANGE_HEALTH_MIN_S = 5.0
SAME_RUN_S = 2.0  # two reports whose start times differ by less than this come from one run of the component
MAX_ERROR = 200  # characters of the source's last error kept in the block


@dataclass(frozen=True)
class _Change:
    healthy: bool  # to "connected", or away from it
    report: SensorHealthMessage
    received: float  # mono time


class SourceHealth:
    def __init__(self, thing: str, on_change: Callable[[], None] | None = None, *,
                 wall: Callable[[], float] = time.time, mono: Callable[[], float] = time.monotonic) -> None:
        self.thing = thing
        self.on_change = on_change
        self.wall, self.mono = wall, mono
        self.refused = 0
        self._lock = threading.Lock()
        self._latest: SensorHealthMessage | None = None
        self._received = 0.0  # mono time the latest report arrived
        self._run_start = 0.0  # wall time its component run started
        self._last_sent = {True: -CHANGE_HEALTH_MIN_S, False: -CHANGE_HEALTH_MIN_S}  # by "to connected"
        self._unsent: list[_Change] = []  # changes no health message has carried yet, oldest first (at most two)

    def on_message(self, payload: bytes) -> None:
        """A report off the local topic (the transport's thread)."""
        try:
            report = decode(SensorHealthMessage, payload)
        except BadMessage as exc:
            self._refuse(f"sensor-source health refused: {exc.reason}")
            return
        if report.turbine_id != self.thing:
            self._refuse(f"sensor-source health for {report.turbine_id!r} refused: this is {self.thing!r}")
            return
        now, run_start = self.mono(), self.wall() - report.uptime_s
        with self._lock:
            latest = self._latest
            if latest is not None:
                same_run = abs(run_start - self._run_start) < SAME_RUN_S
                if (same_run and report.seq <= latest.seq) or (not same_run and run_start < self._run_start):
                    return  # a duplicate, or older than what is kept
            self._latest, self._received = report, now
            self._run_start = run_start if latest is None or not same_run else self._run_start
            changed = latest is None or latest.state != report.state
            if changed:
                self._queue(_Change(report.state == "connected", report, now))
            ask = changed and self._due(now) is not None
        if changed:
            log.info("sensor source %s %s%s", report.source, report.state,
                     f": {report.last_error}" if report.state != "connected" and report.last_error else "")
        if ask and self.on_change is not None:
            self.on_change()

    def _queue(self, change: _Change) -> None:
        """Under the lock. The last two changes wait, no more, in order, the newer one the source's state now: a
        flapping source's last outage and recovery; an earlier waiting change merges into them."""
        self._unsent = [*self._unsent[-1:], change]

    def _due(self, now: float) -> _Change | None:
        """Under the lock: the oldest unsent change if the limit of its direction allows sending it now."""
        if not self._unsent:
            return None
        first = self._unsent[0]
        return first if now - self._last_sent[first.healthy] >= CHANGE_HEALTH_MIN_S else None

    def ask_due(self) -> bool:
        """True when a change waits to be sent and the limit now allows it: the next health message carries it.
        Polled on every worker turn: with nothing waiting it returns before taking the lock."""
        if not self._unsent:  # one attribute read; a change queued meanwhile is seen on the next turn
            return False
        with self._lock:
            return self._due(self.mono()) is not None

    def _refuse(self, reason: str) -> None:
        with self._lock:
            self.refused += 1
            n = self.refused
        if n == 1 or n % 100 == 0:
            log.warning("%s (%d refused so far)", reason, n)

    def summary(self) -> SensorsSummary | None:
        """The `sensors` block for the health message being built (None: no report yet, e.g. the sensor topic is fed
        by something else): the oldest unsent change when the limit allows sending it, else the newest report; its
        ages as of now."""
        with self._lock:
            now = self.mono()
            change = self._due(now)
            r: SensorHealthMessage | None = self._latest
            received = self._received
            if change is not None:  # this message carries that change
                self._unsent.pop(0)
                self._last_sent[change.healthy] = now
                r, received = change.report, change.received
        if r is None:
            return None
        waited = max(0.0, now - received)
        error = r.last_error
        return SensorsSummary(
            source=r.source, state=r.state, rate_hz=r.rate_hz,
            last_sample_age_s=None if r.last_sample_age_s is None else round(r.last_sample_age_s + waited, 3),
            report_age_s=round(waited, 3), report_interval_s=r.health_interval_s, samples=r.samples,
            samples_missing=r.samples_missing, values_missing=r.values_missing, samples_repeated=r.samples_repeated,
            reconnects=r.reconnects, last_error=None if error is None else error[:MAX_ERROR],
            component_version=r.component_version)

    def with_summary(self, health: dict[str, Any]) -> dict[str, Any]:
        """The detector's health message with the `sensors` block (checked as the cloud checks it)."""
        summary = self.summary()
        if summary is None:
            return health
        return asdict(validate(HealthMessage, {**health, "sensors": asdict(summary)}))
