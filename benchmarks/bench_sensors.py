"""The nacelle.sensors component against a simulated Modbus TCP controller and a simulated OPC UA server, at the
spec's rate (20 Hz), into the detector over the real mosquitto broker (mutual TLS), with a server restart halfway.

Two turbines run at once for `--minutes` (default 10): turbine-01 reads a Modbus controller, turbine-02 an OPC UA
server (polling), each controller a process of its own. Each produces one sample per sample interval, half an
interval after the component's reading grid (a PLC scan and a poller on independent schedules meet on average half
a period apart), holding the simulated turbine's signals plus `server_seq` (the sample's number) and `server_ts`
(when it was produced); `server_seq` is the component's `sampleCounter`, so a sample read twice (a poll delayed past
the next sample) is published once. The component is the packaged archive run as its own process with the turbine's
sensor-source certificate; the detector (DetectorApp with the small trained model) subscribes to the turbine's
sensor topic. Halfway through, each server stops for RESTART_S seconds and starts again on its port (the turbine
keeps producing meanwhile).

Figures (per protocol, `modbus_...` and `opcua_...`):

* `<p>_samples_lost`: samples the server produced while it was serving that never reached the detector with their
  values. Samples produced while the server was down cannot be read; the component publishes those ticks with no
  values (marked missing) and they are NOT counted here. Goal 0.
* `<p>_samples_lost_incl_outage`: every sample produced over the run that never reached the detector, the outage's
  included: the same count plus what the restart cost.
* `<p>_reconnect_s`, `<p>_samples_lost_reconnecting`: from the server's return to the first sample read from it
  again, and the samples lost meanwhile (part of `<p>_samples_lost`).
* `<p>_samples_marked_missing`: samples the component published with no values over the evaluation period (ticks
  without an answer: the outage, the reconnection, ticks the component could not serve in time).
* `<p>_samples_repeated`: server samples that reached the detector twice (a value read again and passed off as a
  new sample). Goal 0.
* `sensor_to_score_p99_ms` (and p50): from a sample's production at the server (`server_ts`) to the moment the
  detector has scored the window ending with it, over both turbines; includes the half interval the sample waits
  for the next read. Goal <= 50 ms.
* `<p>_component_samples_repeated`, `<p>_component_reconnects`: the component's own counts, from its last health
  report as the detector forwards it in the device's health message (readings its `sampleCounter` showed to be a
  repeat, published as missing; reconnections).
* `sensors_cpu_percent`: CPU time of the component process over its wall time after a 10 s warm-up, percent of one
  core, the higher of the two (each is printed too). Goal <= 5.

The evaluation period runs from the first sample the detector received to STOP_MARGIN_S before the producers stop.
Run alone: `.venv/bin/python -m benchmarks.bench_sensors [--minutes 1]` (needs mosquitto).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from nacelle.local.edge.broker import Broker, find_mosquitto
from nacelle.local.edge.nucleus import die_with_parent
from nacelle.local.edge.pki import SENSOR_SOURCE, LocalPki
from nacelle.local.edge.sensor_sources import unpack_component
from nacelle.simulator.controller import Controller, ModbusEndpoint, endpoint_for
from nacelle.simulator.stream import TurbineStream
from shared.ml.spec import default_spec
from shared.sensor_map import default_node_ids, default_register_map, parse_register_map

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "greengrass_components" / "nacelle.detector" / "src"))
from detector.app import DetectorApp
from detector.config import FileConfigSource
from detector.mqtt import MqttSettings, MqttTransport
from detector.pipeline import Result
from detector.spool import Spool

TURBINES = {"turbine-01": "modbus", "turbine-02": "opcua"}
EXTRA = ("server_seq", "server_ts")
REPO = Path(__file__).resolve().parents[1]
RESTART_S = 5.0
WARMUP_S = 10.0
STOP_MARGIN_S = 2.0


@dataclass
class Turbine:
    thing: str
    protocol: str
    work: Path
    received: list[int] = field(default_factory=list)  # server_seq of samples with values the detector got
    produced_at: dict[float, float] = field(default_factory=dict)  # a sample's ts (its tick) -> its server_ts
    marked_missing: list[int] = field(default_factory=list)  # ticks of samples published with no values
    latencies_ms: list[float] = field(default_factory=list)
    cpu: tuple[float, float] | None = None  # (cpu seconds, wall seconds) after the warm-up
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)  # the component, the controller
    app: DetectorApp | None = None
    detector_stats: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def produced_log(self) -> Path:
        return self.work / "produced.jsonl"


class TeeTransport(MqttTransport):
    """The detector's MQTT transport; each sensor message is also read here (which server sample each carries)."""

    def __init__(self, settings: MqttSettings, on_message: Callable[[bytes], None]) -> None:
        super().__init__(settings)
        self._tee = on_message

    def subscribe(self, topic: str, callback: Callable[[bytes], None]) -> None:
        if not topic.endswith("/sensors"):  # the source's health reports
            super().subscribe(topic, callback)
            return

        def both(payload: bytes) -> None:
            self._tee(payload)
            callback(payload)

        super().subscribe(topic, both)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ the controller process
def serve(protocol: str, seed: int, work: Path, restart_at: float, restart_s: float) -> int:
    """A controller in a process of its own: one sample per interval, half an interval after each tick of the
    component's reading grid, `server_seq` = the tick, `server_ts` = now; the server stops `restart_at` seconds
    after the start for `restart_s`. Each sample is logged as `[server_seq, served]` in produced.jsonl."""
    rate = default_spec().sampling.rate_hz
    columns = default_spec().input_columns
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    controller = Controller(_endpoint(protocol))
    (work / "controller.port").write_text(str(controller.start()))
    stream = TurbineStream(f"bench-{protocol}", seed)
    values = dict.fromkeys(columns, 0.0)
    started = time.monotonic()
    down_until: float | None = None
    k = math.ceil(time.time() * rate) + 1
    with (work / "produced.jsonl").open("w") as log:
        try:
            while not stop.is_set():
                delay = (k + 0.5) / rate - time.time()
                if delay > 0 and stop.wait(delay):
                    break
                elapsed = time.monotonic() - started
                if down_until is None and elapsed >= restart_at:
                    controller.stop()
                    down_until = elapsed + restart_s
                elif down_until is not None and not controller.up and elapsed >= down_until:
                    controller.start()
                for sample in stream.next_batch(1.0 / rate)[-1:]:
                    values = {c: sample[c] for c in columns}
                controller.set({**values, "server_seq": float(k), "server_ts": time.time()})
                log.write(f"[{k}, {str(controller.up).lower()}]\n")
                k += 1
        finally:
            controller.close()
    return 0


# ------------------------------------------------------------------ the detector side
def _on_message(turbine: Turbine, payload: bytes) -> None:
    doc = json.loads(payload)
    with turbine.lock:
        for s in doc["samples"]:
            if s.get("server_seq") is None:
                turbine.marked_missing.append(int(s["seq"]))
                continue
            turbine.received.append(int(s["server_seq"]))
            turbine.produced_at[round(s["ts"], 6)] = s["server_ts"]


def _on_result(turbine: Turbine, result: Result) -> None:
    now = time.time()
    with turbine.lock:
        for window in result.windows:
            produced = turbine.produced_at.get(round(window.t_end, 6))
            if produced is not None:
                turbine.latencies_ms.append((now - produced) * 1000)


def _config(protocol: str, port: int) -> dict[str, Any]:
    signals = (*default_spec().input_columns, *EXTRA)
    if protocol == "modbus":
        registers = default_register_map(signals)
        registers["server_seq"]["dataType"] = "uint64"
        registers["server_ts"] = {"address": registers["server_seq"]["address"] + 4, "registerType": "input",
                                  "dataType": "float64"}
        return {"source": "modbus", "healthIntervalSeconds": 10, "sampleCounter": "server_seq",
                "modbus": {"host": "127.0.0.1", "port": port, "timeoutSeconds": 0.5, "registers": registers}}
    return {"source": "opcua", "healthIntervalSeconds": 10, "sampleCounter": "server_seq",
            "opcua": {"endpoint": f"opc.tcp://127.0.0.1:{port}/nacelle", "mode": "polling", "timeoutSeconds": 0.5,
                      "nodes": default_node_ids(signals)}}


def _endpoint(protocol: str) -> Any:
    if protocol == "modbus":
        return ModbusEndpoint(parse_register_map(_config("modbus", 1)["modbus"]["registers"], "bench"))
    return endpoint_for("opcua", (*default_spec().input_columns, *EXTRA))


def _spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                cwd=REPO, preexec_fn=die_with_parent)


def _wait_file(path: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while not (path.is_file() and path.read_text().strip()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear within {timeout:g}s")
        time.sleep(0.05)
    return path.read_text().strip()


def run_bench(home: Path, models_root: Path, minutes: float, echo: Callable[[str], None] = print) -> list[Turbine]:
    pki = LocalPki(home / "pki").ensure()
    for thing in TURBINES:
        pki.sensor_source(thing)  # before the broker starts: its ACL lists them
    broker = Broker(home, pki).start()
    component = unpack_component(home)
    turbines: list[Turbine] = []
    duration = minutes * 60
    try:
        for i, (thing, protocol) in enumerate(TURBINES.items()):
            work = home / "devices" / thing
            work.mkdir(parents=True, exist_ok=True)
            turbine = Turbine(thing, protocol, work)
            turbines.append(turbine)
            turbine.processes.append(_spawn(
                [sys.executable, "-m", "benchmarks.bench_sensors", "--serve", protocol, "--seed", str(5 + i),
                 "--work", str(work), "--restart-at", str(duration / 2), "--restart-s", str(RESTART_S)],
                work / "controller.log"))
        for turbine in turbines:
            work, thing = turbine.work, turbine.thing
            port = int(_wait_file(work / "controller.port", 60))
            (work / "detector.json").write_text(json.dumps({"healthIntervalSeconds": 60,
                                                            "model": {"version": "1.0.0"}}))
            creds = pki.device(thing)
            transport = TeeTransport(MqttSettings("127.0.0.1", broker.port, creds.ca_path, creds.cert_path,
                                                  creds.key_path, client_id=thing), partial(_on_message, turbine))
            source = FileConfigSource(work / "detector.json", thing)
            source.start()
            turbine.app = DetectorApp(source, transport, Spool(work / "spool.db", 10000), models_root,
                                      version="bench", observer=partial(_on_result, turbine)).start()
            (work / "sensors.json").write_text(json.dumps(_config(turbine.protocol, port)))
            source_creds = pki.sensor_source(thing)
            (work / "device.json").write_text(json.dumps({
                "endpoint": "127.0.0.1", "port": broker.port, "ca": str(source_creds.ca_path),
                "cert": str(source_creds.cert_path), "key": str(source_creds.key_path),
                "configuration": str(work / "sensors.json"), "work": str(work),
                "client_id": f"{thing}{SENSOR_SOURCE}"}))
            env = {"NACELLE_DEVICE_CONFIG": str(work / "device.json")}
            turbine.processes.insert(0, _spawn([sys.executable, "-u", str(component / "main.py"), "--thing", thing],
                                               work / "sensors.log", env))
        started = time.monotonic()
        time.sleep(min(WARMUP_S, duration / 2))
        cpu0 = {t.thing: (_cpu_seconds(t.processes[0].pid), time.monotonic()) for t in turbines}
        echo(f"running {minutes:g} min; the servers restart at {duration / 2:.0f}s for {RESTART_S:g}s")
        time.sleep(max(0.0, started + duration - time.monotonic()))
        for t in turbines:
            c0, w0 = cpu0[t.thing]
            t.cpu = (_cpu_seconds(t.processes[0].pid) - c0, time.monotonic() - w0)
            if any(p.poll() is not None for p in t.processes):
                raise RuntimeError(f"{t.thing}: a process ended early (see {t.work}/*.log)")
        for t in turbines:
            t.processes[1].send_signal(signal.SIGTERM)  # the controllers stop producing first
        for t in turbines:
            t.processes[1].wait(15)
        time.sleep(STOP_MARGIN_S)  # what was produced last reaches the detector
        for t in turbines:
            if t.app is not None:
                report = t.app.source_health.summary()  # the component's last report, as the device sends it
                t.detector_stats = {**t.app.stats(), "source": None if report is None else asdict(report)}
        return turbines
    finally:
        for t in turbines:
            for proc in t.processes:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(5)
            if t.app is not None:
                t.app.stop(drain_s=0)
                t.app.spool.close()
        broker.stop()


def report(turbines: list[Turbine], rate: float) -> dict[str, float]:
    figures: dict[str, float] = {}
    latencies: list[float] = []
    for t in turbines:
        p = t.protocol
        with t.lock:
            received = list(t.received)
            latencies += t.latencies_ms
        produced = {int(k): bool(up) for k, up in map(json.loads, t.produced_log.read_text().splitlines())}
        if not received:
            figures[f"{p}_samples_lost"] = float("nan")
            continue
        first, last = min(received), max(produced) - int(STOP_MARGIN_S * rate)
        period = [k for k in produced if first <= k <= last]
        got = set(received)
        figures[f"{p}_samples_produced"] = len(period)
        figures[f"{p}_samples_lost"] = sum(1 for k in period if produced[k] and k not in got)
        figures[f"{p}_samples_lost_incl_outage"] = sum(1 for k in period if k not in got)
        back = [k for k in sorted(produced) if produced[k] and not produced.get(k - 1, True)]  # the server is back
        if back and any(k >= back[0] for k in got):
            first_after = min(k for k in got if k >= back[0])
            figures[f"{p}_reconnect_s"] = round((first_after - back[0]) / rate, 2)
            figures[f"{p}_samples_lost_reconnecting"] = sum(1 for k in range(back[0], first_after) if k not in got)
        # tick j reads the sample produced half an interval before it: server_seq j - 1
        figures[f"{p}_samples_marked_missing"] = sum(1 for j in t.marked_missing if first < j <= last + 1)
        figures[f"{p}_samples_repeated"] = len(received) - len(got)
        if t.cpu is not None:
            figures[f"sensors_cpu_percent_{p}"] = round(100 * t.cpu[0] / t.cpu[1], 2)
        if t.detector_stats:
            figures[f"{p}_detector_bad_messages"] = t.detector_stats["bad_messages"] + t.detector_stats["overflow"]
            source = t.detector_stats.get("source") or {}
            for key in ("samples_repeated", "reconnects"):  # as the device's health message reports them
                if key in source:
                    figures[f"{p}_component_{key}"] = source[key]
    if latencies:
        figures["sensor_to_score_p50_ms"] = round(float(np.percentile(latencies, 50)), 1)
        figures["sensor_to_score_p99_ms"] = round(float(np.percentile(latencies, 99)), 1)
    cpu = [v for k, v in figures.items() if k.startswith("sensors_cpu_percent_")]
    if cpu:
        figures["sensors_cpu_percent"] = max(cpu)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_sensors", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the run (default 10)")
    parser.add_argument("--serve", choices=sorted(set(TURBINES.values())), help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=5, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--restart-at", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--restart-s", type=float, default=RESTART_S, help=argparse.SUPPRESS)
    args = parser.parse_args(argv or [])  # `python -m benchmarks` runs it with the defaults
    if args.serve:  # the controller process of one turbine
        return serve(args.serve, args.seed, args.work, args.restart_at, args.restart_s)
    if find_mosquitto() is None:
        print("mosquitto is not installed: skipped", file=sys.stderr)
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up (broker, component processes) on SIGTERM
    from nacelle.simulator.generate import generate_dataset
    from nacelle.train_runner import run_training_job
    from training_jobs.compile import compile_bundle

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_dataset(root / "data", 2, 1.0, "default", 3)
        job = run_training_job(root / "job", "bench-sensors", {"train": root / "data"},
                               {"epochs": "4", "max_train_windows": "6000", "threads": "1"}, echo=None)
        if job.model_archive is None:
            print(f"training failed: {job.failure_reason}", file=sys.stderr)
            return 1
        models = root / "models"
        compile_bundle(job.model_archive, models / "nacelle.model" / "1.0.0" / "bundle", None, 1, warmup=5, runs=20)
        turbines = run_bench(root / "home", models, args.minutes, echo=lambda m: print(f"# {m}", flush=True))
        figures = report(turbines, default_spec().sampling.rate_hz)
    print(f"sensors_minutes={args.minutes:g}")
    for name, value in figures.items():
        print(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}", flush=True)
    ok = all(figures.get(f"{p}_samples_lost") == 0 and figures.get(f"{p}_samples_repeated") == 0
             for p in TURBINES.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
