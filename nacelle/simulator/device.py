"""The turbine simulator of one simulated device: a process publishing its sensor stream over MQTT.

    python -m nacelle.simulator.device --thing turbine-01 --home .nacelle [--speed 1] [--seed n]
                                       [--schedule faults.json]

A TurbineStream starting at the current wall-clock time, released in 1 s batches (`paced`), each batch one
detector sensor message (`detector.messages.sensor_message`) on `turbines/<thing>/sensors`, QoS 1, MQTT 5
with mutual TLS: the turbine's sensor-source certificate of `LocalPki(<home>/pki)` (CN and client id
`<thing>.sensors`, allowed to write that sensor topic only), the port in `<home>/broker/port`.

Faults on demand: `request_fault` drops `{"fault", "severity", "duration_s"}` into
`<home>/devices/<thing>/sim/inbox/` (temp file, then rename). Every 0.2 s the simulator injects each request
into the stream at its current time, appends the episode to `sim/labels.jsonl` (turbine, fault, severity,
start, end in epoch seconds) and moves the file to `sim/done/` (an invalid one to `sim/rejected/` next to a
`.error` file). `--schedule` takes a JSON list of `{"fault", "severity", "duration_s", "at_s"}`, `at_s` being
seconds of stream time after the start. SIGTERM or SIGINT stops it cleanly.

Drifts on demand (nacelle.simulator.drifts: lasting changes that are not faults): `request_drift` drops
`{"drift", "magnitude"}` into the same inbox; the drift starts at the stream's current time, never ends, and is
labelled in `sim/drifts.jsonl` (turbine, drift, magnitude, start and full_at in epoch seconds, end null).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from nacelle.local.edge.pki import validate_thing_name
from nacelle.simulator.drifts import DRIFTS, MAX_MAGNITUDE, DriftEpisode
from nacelle.simulator.faults import FAULTS, SEVERITIES, FaultEpisode, stable_int
from nacelle.simulator.stream import TurbineStream, paced
from shared.errors import ConfigurationError, NacelleError

DETECTOR_SRC = Path(__file__).resolve().parents[2] / "greengrass_components" / "nacelle.detector" / "src"
POLL_S = 0.2
BATCH_S = 1.0
MAX_DURATION_S = 24 * 3600.0
MAX_IN_FLIGHT = 3600  # unacknowledged publishes kept while the broker is away (1 h at speed 1); then drop
CONNECT_WAIT_S = 30.0

log = logging.getLogger("nacelle.simulator.device")

Publish = Callable[[str, bytes], None]


def sensor_message(turbine_id: str, samples: Sequence[Mapping[str, Any]]) -> bytes:
    """The detector's own encoder (one encoder for the sensor schema), loaded from the component source."""
    if str(DETECTOR_SRC) not in sys.path:
        sys.path.append(str(DETECTOR_SRC))
    encoded: bytes = importlib.import_module("detector.messages").sensor_message(turbine_id, samples)
    return encoded


@dataclass(frozen=True)
class SimPaths:
    root: Path  # <home>/devices/<thing>/sim

    @classmethod
    def of(cls, home: Path, thing: str) -> SimPaths:
        return cls(Path(home) / "devices" / validate_thing_name(thing) / "sim")

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def done(self) -> Path:
        return self.root / "done"

    @property
    def rejected(self) -> Path:
        return self.root / "rejected"

    @property
    def labels(self) -> Path:
        return self.root / "labels.jsonl"

    @property
    def samples(self) -> Path:
        return self.root / "samples.jsonl"

    @property
    def drifts(self) -> Path:
        return self.root / "drifts.jsonl"


@dataclass(frozen=True)
class FaultRequest:
    fault: str
    severity: str
    duration_s: float
    at_s: float | None = None  # schedule only: stream seconds after the start

    @classmethod
    def parse(cls, raw: Any, where: str, scheduled: bool = False) -> FaultRequest:
        allowed = {"fault", "severity", "duration_s", *(("at_s",) if scheduled else ())}
        if not isinstance(raw, dict):
            raise ConfigurationError(f"{where}: a fault request must be a JSON object, got {type(raw).__name__}")
        if unknown := set(raw) - allowed:
            raise ConfigurationError(f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(allowed)})")
        fault, severity = raw.get("fault"), raw.get("severity", "medium")
        if fault not in FAULTS:
            raise ConfigurationError(f"{where}: fault: unknown fault {fault!r}; valid: {', '.join(FAULTS)}")
        if severity not in SEVERITIES:
            raise ConfigurationError(f"{where}: severity: unknown {severity!r}; valid: {', '.join(SEVERITIES)}")
        duration = _seconds(raw.get("duration_s", 60.0), f"{where}: duration_s", positive=True)
        if duration > MAX_DURATION_S:
            raise ConfigurationError(f"{where}: duration_s: {duration} exceeds {MAX_DURATION_S:.0f} s")
        at = _seconds(raw.get("at_s"), f"{where}: at_s", positive=False) if scheduled else None
        return cls(fault, severity, duration, at)


@dataclass(frozen=True)
class DriftRequest:
    drift: str
    magnitude: float = 1.0

    @classmethod
    def parse(cls, raw: Any, where: str) -> DriftRequest:
        if not isinstance(raw, dict):
            raise ConfigurationError(f"{where}: a drift request must be a JSON object, got {type(raw).__name__}")
        if unknown := set(raw) - {"drift", "magnitude"}:
            raise ConfigurationError(f"{where}: unknown keys {sorted(unknown)} (allowed: ['drift', 'magnitude'])")
        drift, magnitude = raw.get("drift"), raw.get("magnitude", 1.0)
        if drift not in DRIFTS:
            raise ConfigurationError(f"{where}: drift: unknown drift {drift!r}; valid: {', '.join(DRIFTS)}")
        if isinstance(magnitude, bool) or not isinstance(magnitude, int | float) or not 0 < magnitude <= MAX_MAGNITUDE:
            raise ConfigurationError(f"{where}: magnitude: must be a number in (0, {MAX_MAGNITUDE:g}], "
                                     f"got {magnitude!r}")
        return cls(drift, float(magnitude))


def request_drift(home: Path, thing: str, drift: str, magnitude: float = 1.0) -> Path:
    """Ask the running simulator of `thing` to start a drift; returns the request file (in the inbox)."""
    request = DriftRequest.parse({"drift": drift, "magnitude": magnitude}, f"drift request for {thing}")
    return _drop(home, thing, {"drift": request.drift, "magnitude": request.magnitude})


def _drop(home: Path, thing: str, doc: dict[str, Any]) -> Path:
    paths = SimPaths.of(home, thing)
    paths.inbox.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
    tmp = paths.inbox / f".{name}.tmp"  # not *.json: the simulator ignores it until the rename
    tmp.write_text(json.dumps(doc))
    return tmp.replace(paths.inbox / name)


def _seconds(value: Any, where: str, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or value < 0 or (positive and value == 0):
        raise ConfigurationError(f"{where}: must be a {'positive' if positive else 'non-negative'} number of "
                                 f"seconds, got {value!r}")
    return float(value)


def request_fault(home: Path, thing: str, fault: str, severity: str = "medium", duration_s: float = 60.0) -> Path:
    """Ask the running simulator of `thing` to inject a fault; returns the request file (in the inbox)."""
    request = FaultRequest.parse({"fault": fault, "severity": severity, "duration_s": duration_s},
                                 f"fault request for {thing}")
    return _drop(home, thing, {"fault": request.fault, "severity": request.severity, "duration_s": request.duration_s})


def load_schedule(path: Path) -> list[FaultRequest]:
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"{path}: cannot read the fault schedule: {exc}") from exc
    if not isinstance(raw, list):
        raise ConfigurationError(f"{path}: the fault schedule must be a JSON list")
    return [FaultRequest.parse(item, f"{path}[{i}]", scheduled=True) for i, item in enumerate(raw)]


class Simulator:
    """One turbine's stream with fault injection; publishing goes through the injected `publish`."""

    def __init__(self, thing: str, home: Path, publish: Publish, *, speed: float = 1.0, seed: int | None = None,
                 start: datetime | None = None, schedule: Iterable[FaultRequest] = (),
                 batch_seconds: float = BATCH_S, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, record: bool = False) -> None:
        self.thing = validate_thing_name(thing)
        self.paths = SimPaths.of(home, thing)
        for d in (self.paths.inbox, self.paths.done, self.paths.rejected):
            d.mkdir(parents=True, exist_ok=True)
        self.publish = publish
        self.speed, self.batch_seconds = speed, batch_seconds
        self.clock, self._sleep = clock, sleep
        self.stream = TurbineStream(thing, stable_int("simulator", thing) % 2**31 if seed is None else seed,
                                    start=start or datetime.now(UTC))
        self.origin = self.stream.now
        self.topic = f"turbines/{thing}/sensors"
        self._schedule = sorted(schedule, key=lambda r: r.at_s or 0.0)
        self.stop_event = threading.Event()
        self.batches = 0
        self.record = record  # keep every published sample in sim/samples.jsonl (the mission's timelines)

    # -- faults ------------------------------------------------------------------------------------
    def _inject(self, request: FaultRequest, start: datetime | None = None) -> FaultEpisode:
        ep = self.stream.inject(request.fault, request.severity, request.duration_s, start)
        label = {"turbine": self.thing, "fault": ep.fault, "severity": ep.severity,
                 "start": ep.start.timestamp(), "end": ep.end.timestamp()}
        with self.paths.labels.open("a") as f:  # one short line per write: appends stay whole
            f.write(json.dumps(label) + "\n")
        log.info("fault injected: %s %s %.0f s from %s", ep.fault, ep.severity, request.duration_s,
                 ep.start.isoformat())
        return ep

    def drift(self, request: DriftRequest) -> DriftEpisode:
        """Start a drift at the stream's current time; labelled in sim/drifts.jsonl."""
        ep = self.stream.drift(request.drift, request.magnitude)
        with self.paths.drifts.open("a") as f:  # one short line per write: appends stay whole
            f.write(json.dumps(ep.label()) + "\n")
        log.info("drift started: %s (magnitude %g) from %s", ep.kind, ep.magnitude, ep.start.isoformat())
        return ep

    def poll_inbox(self) -> list[FaultEpisode]:
        """Inject every request waiting in the inbox, oldest first (faults are returned; drifts are labelled)."""
        injected = []
        for path in sorted(self.paths.inbox.glob("*.json")):
            try:
                raw = json.loads(path.read_text())
                if isinstance(raw, dict) and "drift" in raw:
                    self.drift(DriftRequest.parse(raw, str(path)))
                else:
                    injected.append(self._inject(FaultRequest.parse(raw, str(path))))
            except (ValueError, ConfigurationError) as exc:
                log.error("request rejected: %s", exc)
                (self.paths.rejected / f"{path.name}.error").write_text(f"{exc}\n")
                path.replace(self.paths.rejected / path.name)
                continue
            path.replace(self.paths.done / path.name)
        return injected

    def _schedule_due(self) -> None:
        """Inject scheduled faults that start before the end of the next batch, at their exact time."""
        horizon = self.stream.now + timedelta(seconds=self.batch_seconds)
        while self._schedule:
            start = self.origin + timedelta(seconds=self._schedule[0].at_s or 0.0)
            if start >= horizon:
                return
            self._inject(self._schedule.pop(0), max(start, self.stream.now))

    # -- loop --------------------------------------------------------------------------------------
    def _wait(self, delay: float) -> None:
        """paced's sleep: polls the inbox every POLL_S and returns early on stop."""
        deadline = self.clock() + delay
        while not self.stop_event.is_set():
            self.poll_inbox()
            left = deadline - self.clock()
            if left <= 0:
                return
            self._sleep(min(POLL_S, left))

    def run(self, max_batches: int | None = None) -> int:
        """Publish batches until stopped (or `max_batches`); returns the number published."""
        self._schedule_due()
        for batch in paced(self.stream, self.speed, self.batch_seconds, self.clock, self._wait):
            if self.stop_event.is_set():
                break
            self.publish(self.topic, sensor_message(self.thing, batch))
            if self.record:
                with self.paths.samples.open("a") as f:
                    f.write("".join(json.dumps(sample, separators=(",", ":")) + "\n" for sample in batch))
            self.batches += 1
            if max_batches is not None and self.batches >= max_batches:
                break
            self.poll_inbox()
            self._schedule_due()
        return self.batches


class MqttPublisher:
    """MQTT 5 over mutual TLS to the local broker with the device's certificate; QoS 1, acknowledged async."""

    def __init__(self, thing: str, home: Path, port: int, host: str = "127.0.0.1") -> None:
        from awscrt import mqtt5
        from awsiot import mqtt5_client_builder

        from nacelle.local.edge.pki import SENSOR_SOURCE, LocalPki

        self._mqtt5 = mqtt5
        creds = LocalPki(Path(home) / "pki").sensor_source(thing)
        self.connected = threading.Event()
        self.stopped = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()
        self.in_flight = self.acked = self.failed = self.dropped = 0
        self.client = mqtt5_client_builder.mtls_from_path(
            endpoint=host, port=port, cert_filepath=str(creds.cert_path), pri_key_filepath=str(creds.key_path),
            ca_filepath=str(creds.ca_path), client_id=f"{thing}{SENSOR_SOURCE}",
            on_lifecycle_connection_success=self._on_connected,
            on_lifecycle_connection_failure=lambda data: log.warning("connection failed: %s", data.exception),
            on_lifecycle_disconnection=self._on_disconnected,
            on_lifecycle_stopped=lambda _data: self.stopped.set(),
            min_reconnect_delay_ms=200, max_reconnect_delay_ms=5000, connack_timeout_ms=5000)
        self.client.start()

    def _on_connected(self, _data: Any) -> None:
        log.info("connected to the broker")
        self.connected.set()

    def _on_disconnected(self, data: Any) -> None:
        self.connected.clear()
        if self._stopping:  # our own stop: nothing to warn about
            log.info("disconnected from the broker (stopping)")
        else:
            log.warning("disconnected from the broker: %s", getattr(data, "exception", None))

    def publish(self, topic: str, payload: bytes) -> None:
        with self._lock:
            if self.in_flight >= MAX_IN_FLIGHT:
                self.dropped += 1
                if self.dropped % 60 == 1:
                    log.warning("broker unreachable: %d sensor messages dropped so far", self.dropped)
                return
            self.in_flight += 1
        packet = self._mqtt5.PublishPacket(topic=topic, payload=payload, qos=self._mqtt5.QoS.AT_LEAST_ONCE)
        self.client.publish(packet).add_done_callback(self._on_done)

    def _on_done(self, future: Any) -> None:
        ok = False
        try:
            ok = future.result().puback.reason_code == self._mqtt5.PubackReasonCode.SUCCESS
        except Exception as exc:  # the publish future reports connection loss etc. as an exception
            log.warning("publish failed: %r", exc)
        with self._lock:
            self.in_flight -= 1
            self.acked += ok
            self.failed += not ok

    def close(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self.client.stop()
        self.stopped.wait(timeout)


def read_port(home: Path, timeout: float = CONNECT_WAIT_S) -> int:
    """The broker's port from `<home>/broker/port`, waiting for the broker to write it."""
    path = Path(home) / "broker" / "port"
    deadline = time.monotonic() + timeout
    while True:
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            if time.monotonic() >= deadline:
                raise ConfigurationError(f"{path}: no broker port (is the local broker running?)") from None
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nacelle.simulator.device",
                                     description="Publish one simulated turbine's sensor stream to the local broker.")
    parser.add_argument("--thing", required=True)
    parser.add_argument("--home", type=Path, required=True, help="the local stack's data directory")
    parser.add_argument("--speed", type=float, default=1.0, help="stream seconds per wall-clock second")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--schedule", type=Path, help="JSON list of {fault, severity, duration_s, at_s}")
    parser.add_argument("--record", action="store_true", help="also append every published sample to "
                        "<home>/devices/<thing>/sim/samples.jsonl")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format=f"%(asctime)s %(levelname)s sim[{args.thing}] %(message)s")
    publisher: MqttPublisher | None = None
    try:
        schedule = load_schedule(args.schedule) if args.schedule else []
        home = args.home.resolve()
        publisher = MqttPublisher(args.thing, home, read_port(home))
        sim = Simulator(args.thing, home, publisher.publish, speed=args.speed, seed=args.seed, schedule=schedule,
                        record=args.record)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: sim.stop_event.set())
        log.info("publishing to %s (pid %d, speed %g)", sim.topic, os.getpid(), args.speed)
        sim.run()
        log.info("stopped after %d batches (%d acknowledged, %d failed, %d dropped)", sim.batches,
                 publisher.acked, publisher.failed, publisher.dropped)
    except NacelleError as exc:
        log.error("%s", exc)
        return 2
    finally:
        if publisher is not None:
            publisher.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
