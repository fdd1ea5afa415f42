"""A local fleet of 200 turbines on one machine (light devices, nacelle/local/edge/light.py): rollout time and lost
messages. Part of bench_scale; alone: `.venv/bin/python -m benchmarks.scale_fleet [--quick]` (needs mosquitto and
`make wheelhouse`; about 10 minutes, --quick: 40 turbines and a 1-minute run).

One small model is trained through the real SageMaker-contract job (not timed) and registered twice (v1, v2) as
training_completed does. `nacelle up --devices 200`: turbine-001..003 full core devices (nucleus + simulator
processes; turbine-001 is the canary), turbine-004..200 light devices in two host processes, each turbine at 1 sensor
message per second (20 samples) with its own certificate, MQTT session, simulator and detector, and a health message
every HEALTH_INTERVAL_S (10 s; at the local default of 1 s, 200 health messages/s outrun the local functions on 2
cores: the bus fell 45,000 deliveries behind in 6 minutes). The rollout rate is set to ROLLOUT_PER_MINUTE (the 197
fleet devices fit in one minute; at the default of 50 per minute they need four).

* `approve_to_fleet_200_seconds`: approval of v2 (an update; v1 is rolled out first, after the full devices' detector
  runtime is built) until every turbine's health reports v2 at a non-zero inference rate: compile, canary, the 10 s
  soak and the fleet deployment included. Also printed: v1's figure (`..._first_...`: each light turbine's detector
  and MQTT session start with it) and `rollout_max_devices_per_60s` (the most executions the deployment created in
  any 60 s: the rate respected when it is at most the setting).
* `messages_lost_200_turbines`: RUN_S (300 s) more of the fleet with FAULTS (10) concurrent faults injected on ten
  turbines. Counted: every message a device numbered (its spool's `seq` counters for anomalies, health and stats,
  read from each device's spool at the end of the run, full and light devices alike) that never reached the
  cloud's handlers (the sequence record shared.usecases.intake keeps per device and stream: numbers up to the
  highest seen, minus the holes), after a grace of GRACE_S for what is in flight, plus what the spools dropped.
* CPU: `light_host_cpu_cores` (the light host processes' CPU time over the run / its wall time: 1.0 = one core),
  `stack_cpu_cores` (this process: the stack's bus, rule engine and functions), `broker_cpu_cores`, the load
  average, and `light_feed_lag_max_s` (how far a host's feeder ran behind the wall clock: above a second, the host
  could not keep up). The cores are shared with whatever else runs; the figures say how much each part used.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import yaml

from benchmarks.bench_fleet import _metadata, _train
from nacelle.components import WHEELHOUSE
from nacelle.local.adapters.state import SqliteStateStore
from nacelle.local.edge.broker import find_mosquitto
from nacelle.local.edge.fleet import ALERTS_PK, thing_names
from nacelle.local.runtime.stack import Stack
from nacelle.local.runtime.up import background_stack, wait_for
from nacelle.simulator.device import request_fault
from shared.records import EpisodeAlert, alert_from_item
from shared.usecases.intake import STREAMS

DEVICES, QUICK_DEVICES = 200, 40
RUN_S, QUICK_RUN_S = 300.0, 60.0
FAULTS = 10
GRACE_S = 60.0
ROLLOUT_PER_MINUTE = 200
HEALTH_INTERVAL_S = 10  # 20 health messages/s from 200 turbines (the local default of 1 s makes 200/s: see docs)
GOAL_S = 60.0
TIMEOUT_S = 600.0
FAULT_KINDS = ("rotor_imbalance", "bearing_wear", "generator_fault", "overspeed", "yaw_misalignment")
SPOOL_STREAMS = ("anomalies", "health", "stats")


def _serving(stack: Stack, thing: str, version: int) -> bool:
    h = stack.state.get("devices", thing) or {}
    rate = float(h.get("inference_rate_hz") or 0)
    return str(h.get("model_version")) in (str(version), f"{version}.0.0") and rate > 0


def _rollout(stack: Stack, key: str, archive: bytes, label: str, things: list[str]) -> tuple[int, float, float]:
    group = stack.settings.group
    token = f"bench-scale-{label}"
    version = stack.registry.register(group, key, "PendingManualApproval", "bench_scale", _metadata(archive, token),
                                      idempotency_token=token).version
    started, epoch = time.perf_counter(), time.time()
    stack.registry.set_status(group, version, "Approved", "benchmark", "bench")
    left = set(things)

    def all_serving() -> bool:
        left.difference_update([t for t in list(left) if _serving(stack, t, version)])
        return not left

    wait_for(all_serving, TIMEOUT_S, f"every turbine's health on v{version} ({len(left)} left)", interval_s=0.2)
    return version, time.perf_counter() - started, epoch


def _max_per_60s(stack: Stack, deployment_id: str) -> int:
    db = sqlite3.connect(stack.paths.greengrass_db)
    try:
        created = sorted(r[0] for r in db.execute("SELECT created_at FROM executions WHERE deployment_id = ?",
                                                  (deployment_id,)))
    finally:
        db.close()
    return max((sum(1 for c in created[i:] if c < t + 60) for i, t in enumerate(created)), default=0)


def _spool_counters(home: Path, thing: str) -> dict[str, int]:
    """The device's spool counters (its last seq per stream, `dropped`), read-only."""
    path = home / "devices" / thing / "work" / "nacelle.detector" / "spool.db"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return {str(n): int(v) for n, v in db.execute("SELECT name, value FROM counters")}
    finally:
        db.close()


def _unseen(stack: Stack, thing: str, counters: dict[str, int]) -> int:
    """How many of the numbers 1..counters[stream] the cloud's handlers have not seen."""
    items = {str(i["stream"]): i for i in stack.state.query(STREAMS, f"{thing}#")}
    lost = 0
    for stream in SPOOL_STREAMS:
        last = counters.get(stream, 0)
        item = items.get(stream)
        if item is None:
            lost += last
            continue
        high = int(item["high"])
        lost += max(0, last - high) + sum(1 for m in item.get("missing", []) if int(m) <= last)
        lost += int(item.get("lost_uncounted", 0))
    return lost


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _light_pids(home: Path) -> list[int]:
    doc = json.loads((home / "fleet.json").read_text())
    return [int(e["pid"]) for key, e in doc.items() if key.endswith("/light")]


def _broker_pid(home: Path) -> int:
    try:
        return int((home / "broker" / "pid").read_text().strip())
    except (OSError, ValueError):
        return 0


def _feed_lag(home: Path) -> float:
    lags = [json.loads(p.read_text()).get("feed_lag_max_s", 0.0) for p in (home / "light").glob("*/stats.json")]
    return max(lags, default=0.0)


def _episodes(stack: Stack, things: Iterable[str]) -> int:
    """Episode alerts the cloud raised for `things` (anomaly_alert's records)."""
    wanted = set(things)
    alerts = map(alert_from_item, SqliteStateStore(stack.paths.alerts_db).query(ALERTS_PK))
    return sum(1 for a in alerts if isinstance(a, EpisodeAlert) and a.turbine_id in wanted)


def run(quick: bool = False, echo: Callable[[str], None] = print) -> dict[str, float]:
    devices, run_s = (QUICK_DEVICES, QUICK_RUN_S) if quick else (DEVICES, RUN_S)
    things = thing_names(devices)
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        archive = _train(root)
        home = root / "home"
        home.mkdir()
        (home / "config.yaml").write_text(yaml.safe_dump({"rollout_max_per_minute": ROLLOUT_PER_MINUTE,
                                                          "detector_configuration": {"healthIntervalSeconds":
                                                                                     HEALTH_INTERVAL_S}}))
        with background_stack(home, devices=devices, start_timeout_s=120) as stack:
            key = "jobs/bench-scale/output/model.tar.gz"
            stack.store.put_if_absent(key, archive)
            wait_for(lambda: any((home / "greengrass" / "venvs").glob("*/.nacelle-complete")), TIMEOUT_S,
                     "the full devices' detector runtime")
            _, first, _ = _rollout(stack, key, archive, "v1", things)
            echo(f"v1 on all {devices} turbines after {first:.1f} s")
            version, update, approved = _rollout(stack, key, archive, "v2", things)
            record = stack.state.get(f"group#{stack.settings.group}", f"rollout#{version}") or {}
            figures["approve_to_canary_deployment_seconds"] = float(record.get("canary_started_at", 0)) - approved
            figures["approve_to_fleet_deployment_seconds"] = float(record.get("fleet_started_at", 0)) - approved
            figures["approve_to_fleet_first_seconds"] = first
            figures["approve_to_fleet_seconds"] = update
            figures["rollout_max_devices_per_60s"] = _max_per_60s(stack, str(record.get("fleet_deployment_id", "")))
            echo(f"v2 on all {devices} turbines after {update:.1f} s; running {run_s:.0f} s with {FAULTS} faults")

            pids, broker = _light_pids(home), _broker_pid(home)
            cpu0 = sum(map(_cpu_s, pids)), os.times(), _cpu_s(broker)
            t0 = time.perf_counter()
            faulted = things[-FAULTS:]
            time.sleep(min(30.0, run_s / 4))
            for i, thing in enumerate(faulted):  # ten at once, lasting most of the run
                request_fault(home, thing, FAULT_KINDS[i % len(FAULT_KINDS)], "high", run_s / 2)
            time.sleep(max(0.0, run_s - (time.perf_counter() - t0)))
            wall = time.perf_counter() - t0
            cpu1 = sum(map(_cpu_s, pids)), os.times(), _cpu_s(broker)
            figures["light_host_cpu_cores"] = (cpu1[0] - cpu0[0]) / wall
            figures["stack_cpu_cores"] = (cpu1[1].user + cpu1[1].system - cpu0[1].user - cpu0[1].system) / wall
            figures["broker_cpu_cores"] = (cpu1[2] - cpu0[2]) / wall
            figures["load_average_1min"] = os.getloadavg()[0]
            figures["light_feed_lag_max_s"] = _feed_lag(home)

            counters = {t: _spool_counters(home, t) for t in things}
            numbered = sum(c.get(s, 0) for c in counters.values() for s in SPOOL_STREAMS)
            dropped = sum(c.get("dropped", 0) for c in counters.values())
            deadline = time.monotonic() + GRACE_S
            while (lost := sum(_unseen(stack, t, c) for t, c in counters.items())) and time.monotonic() < deadline:
                time.sleep(1.0)
            figures["messages_lost"] = lost + dropped
            figures["messages_numbered"] = numbered
            figures["spool_dropped"] = dropped
            figures["faulted_turbines_with_episodes"] = sum(1 for t in faulted if _episodes(stack, [t]))
    figures["devices"] = devices
    figures["run_seconds"] = run_s
    return figures


def print_figures(figures: dict[str, float], quick: bool) -> int:
    n = int(figures["devices"])
    quick_suffix = "_quick" if quick else ""
    print(f"fleet_devices={n}")
    print(f"approve_to_fleet_{n}{quick_suffix}_seconds={figures['approve_to_fleet_seconds']:.1f}")
    print(f"approve_to_fleet_first_{n}{quick_suffix}_seconds={figures['approve_to_fleet_first_seconds']:.1f}")
    print(f"approve_to_canary_deployment_seconds={figures['approve_to_canary_deployment_seconds']:.1f}")
    print(f"approve_to_fleet_deployment_seconds={figures['approve_to_fleet_deployment_seconds']:.1f}")
    print(f"rollout_max_devices_per_60s={figures['rollout_max_devices_per_60s']:.0f}")
    print(f"rollout_rate_setting_per_minute={ROLLOUT_PER_MINUTE}")
    print(f"messages_lost_{n}_turbines{quick_suffix}={figures['messages_lost']:.0f}")
    print(f"messages_numbered={figures['messages_numbered']:.0f}")
    print(f"spool_dropped={figures['spool_dropped']:.0f}")
    print(f"faulted_turbines={FAULTS}")
    print(f"faulted_turbines_with_episodes={figures['faulted_turbines_with_episodes']:.0f}")
    for name in ("light_host_cpu_cores", "stack_cpu_cores", "broker_cpu_cores", "load_average_1min",
                 "light_feed_lag_max_s"):
        print(f"{name}={figures[name]:.2f}")
    print(f"fleet_run_seconds={figures['run_seconds']:.0f}")
    print(f"approve_to_fleet_goal_seconds={GOAL_S:.0f}", flush=True)
    return 0 if figures["messages_lost"] == 0 and figures["approve_to_fleet_seconds"] <= GOAL_S else 1


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if find_mosquitto() is None or not any(WHEELHOUSE.glob("*.whl")):
        print(f"mosquitto or the wheelhouse ({WHEELHOUSE}, `make wheelhouse`) is missing: skipped", file=sys.stderr)
        return 0
    quick = "--quick" in args
    return print_figures(run(quick, lambda m: print(f"# {m}", flush=True)), quick)


if __name__ == "__main__":
    sys.exit(main())
