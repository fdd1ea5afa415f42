"""The local fleet: N simulated core devices `turbine-01`…, each a nucleus process (nacelle/local/edge/nucleus.py) and a
sensor source: the turbine simulator process (nacelle/simulator/device.py), or with `source` modbus/opcua a simulated
controller process and the nacelle.sensors component reading it, deployed to each device by a deployment to its
thing and run by its nucleus (nacelle/local/edge/sensor_sources.py).

Provisioning gives each device its client certificate (nacelle/local/edge/pki.py) and its thing group: the first
`canary_size` devices in `nacelle-canary`, the rest in `nacelle-fleet`. A monitor thread restarts a process that
exits (with backoff). Every process gets its own process group; `<home>/fleet.json` records them so a fleet
started after a crash kills what the previous one left behind. `status()` works with or without running processes.

With `component_id_base` and root, device k's nucleus runs its components as uid = gid = base + k, and the venvs
the devices share belong to base: built by it (`prepare_runtime`), only read by the devices
(nacelle/local/edge/component_user.py).

Light mode (nacelle/local/edge/light.py): beyond FULL_UP_TO devices, only the first FULL_IN_LARGE_FLEET (or
`full_devices`) are full devices; the others are light devices, up to LIGHT_HOST_SIZE per host process (one
supervised process `light-<k>/light` each, recorded with its turbines). They are provisioned like full devices
(certificate, thing group), take part in the same deployments, and need the broker and the simulator source.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from nacelle.local.edge.component_user import MAX_DEVICES, ComponentUser, device_id, runtime_id
from nacelle.local.edge.component_user import resolve as resolve_user
from nacelle.local.edge.nucleus import die_with_parent, process_start_time, write_json
from nacelle.local.edge.pki import LocalPki
from nacelle.local.edge.sensor_sources import (
    PROTOCOLS,
    SensorsGreengrass,
    check_source,
    controller_port,
    deploy_sensors,
    publish_sensors,
    sensors_configuration,
    source_processes,
    withdraw_sensors,
)
from shared.errors import ConfigurationError
from shared.observability import logger
from shared.ports import StateStore
from shared.records import DeviceRecord, EpisodeAlert, alert_from_item, records
from shared.source_status import source_status
from shared.usecases.intake import REJECTED, missing_messages

CANARY_GROUP = "nacelle-canary"
FLEET_GROUP = "nacelle-fleet"
DEVICES_PK = "devices"  # the device records deployment_status writes (docs/fleet.md)
ALERTS_PK = "alerts"  # anomaly_alert's alert items
STOP_TIMEOUT_S = 15.0
MONITOR_S = 0.5
MAX_BACKOFF_S = 30.0
FULL_UP_TO = 10  # a fleet this small runs every device in full (nucleus + simulator processes)
FULL_IN_LARGE_FLEET = 3  # a larger fleet runs its first 3 in full, the others as light devices
LIGHT_HOST_SIZE = 100  # light turbines per host process

__all__ = ["CANARY_GROUP", "FLEET_GROUP", "Fleet", "thing_names"]


class FleetGreengrass(SensorsGreengrass, Protocol):
    """What the fleet needs of nacelle/local/adapters/greengrass.py."""

    def ensure_thing_group(self, name: str) -> str: ...

    def add_thing(self, thing: str, group: str) -> None: ...

    def groups_of(self, thing: str) -> list[str]: ...

    def devices(self) -> Sequence[Any]: ...


def host_ids(things: Sequence[str], size: int = LIGHT_HOST_SIZE) -> dict[str, list[str]]:
    """Light host id -> its turbines: consecutive chunks of `size`, `light-1`, `light-2`..."""
    if size < 1:
        raise ConfigurationError(f"light host size must be at least 1, got {size}")
    return {f"light-{k // size + 1}": list(things[k:k + size]) for k in range(0, len(things), size)}


def thing_names(count: int) -> list[str]:
    if count < 0 or count > MAX_DEVICES:
        raise ConfigurationError(f"fleet size must be between 0 and {MAX_DEVICES}, got {count}")
    width = max(2, len(str(count)))
    return [f"turbine-{i:0{width}d}" for i in range(1, count + 1)]


@dataclass
class _Managed:
    """One supervised process (a device's nucleus or simulator)."""

    thing: str
    kind: str  # "nucleus" | "simulator" | "controller" | "light" (thing = the light host's id)
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    things: list[str] = field(default_factory=list)  # a light host's turbines
    popen: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    history: list[float] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.thing}/{self.kind}"


class Fleet:
    def __init__(self, home: Path, greengrass: FleetGreengrass, *, size: int = 5, canary_size: int = 1,
                 state: StateStore | None = None, alerts: StateStore | None = None, simulators: bool = True,
                 nucleus_args: Sequence[str] = (), simulator_args: Sequence[str] = (),
                 component_id_base: int = 0, source: str = "sim", full_devices: int | None = None,
                 light_args: Sequence[str] = ()) -> None:
        if not 0 <= canary_size <= size:
            raise ConfigurationError(f"canary_size must be between 0 and the fleet size {size}, got {canary_size}")
        self.home = Path(home).resolve()
        self.gg = greengrass
        self.things = thing_names(size)
        self.canary_size = canary_size
        self.state, self.alerts = state, alerts
        self.simulators = simulators
        self.source = check_source(source)  # the turbines' sensor source (nacelle/local/edge/sensor_sources.py)
        self.component_id_base = component_id_base  # 0: components run as the nucleus's user
        self.nucleus_args = list(nucleus_args)
        self.simulator_args = list(simulator_args)
        self.light_args = list(light_args)
        if full_devices is not None and not 0 <= full_devices <= size:
            raise ConfigurationError(f"full_devices must be between 0 and the fleet size {size}, got {full_devices}")
        full = size if size <= FULL_UP_TO else FULL_IN_LARGE_FLEET
        if full_devices is not None:
            full = full_devices
        if not simulators or self.source != "sim":
            full = size  # a light device's sensor stream is its simulator, and it needs the broker
        self.full_things, self.light_things = self.things[:full], self.things[full:]
        self.procs: dict[str, _Managed] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._monitor: threading.Thread | None = None
        self._prepare: subprocess.Popen[bytes] | None = None

    @property
    def _deploys_sensors(self) -> bool:
        """Each device gets nacelle.sensors through a deployment to its thing (a protocol source)."""
        return self.simulators and self.source in PROTOCOLS

    @property
    def record_path(self) -> Path:
        return self.home / "fleet.json"

    def device_root(self, thing: str) -> Path:
        return self.home / "devices" / thing

    @property
    def venvs_root(self) -> Path:
        return self.home / "greengrass" / "venvs"

    def identities(self) -> dict[str, str]:
        """thing -> the `uid:gid` its components run as; empty: they run as the nucleus's user."""
        if not self.component_id_base or not self.things:
            return {}
        if os.geteuid() != 0:
            logger.warning("not root: every device's components run as this user, not isolated from one another")
            return {}
        ids = {thing: device_id(self.component_id_base, k) for k, thing in enumerate(self.things, start=1)}
        return {thing: f"{i}:{i}" for thing, i in ids.items()}

    def runtime_user(self) -> ComponentUser | None:
        """Who builds and owns the shared venvs when devices are isolated (never one of them)."""
        if not self.component_id_base or os.geteuid() != 0:
            return None
        rid = runtime_id(self.component_id_base)
        return resolve_user(f"{rid}:{rid}", self.home)

    # ------------------------------------------------------------------ provisioning
    def provision(self) -> list[str]:
        """Certificates, thing groups and memberships (idempotent). Returns the thing names."""
        pki = LocalPki(self.home / "pki").ensure()
        for group in (CANARY_GROUP, FLEET_GROUP):
            self.gg.ensure_thing_group(group)
        for i, thing in enumerate(self.things):
            pki.device(thing)
            group = CANARY_GROUP if i < self.canary_size else FLEET_GROUP
            other = FLEET_GROUP if group == CANARY_GROUP else CANARY_GROUP
            if other in self.gg.groups_of(thing):
                raise ConfigurationError(f"{thing} is already in {other}; the groups must stay disjoint "
                                         f"(use the canary size it was provisioned with, or a fresh data directory)")
            self.gg.add_thing(thing, group)
            self.device_root(thing).mkdir(parents=True, exist_ok=True)
        return list(self.things)

    # ------------------------------------------------------------------ processes
    def start(self) -> Fleet:
        self.provision()
        self._kill_recorded()
        identities = self.identities()
        if identities:
            self._share_venvs()
        sensors = publish_sensors(self.home, self.gg) if self._deploys_sensors else ""
        if self.simulators and not sensors:
            for thing in self.things:  # run with a protocol source before: its sensors would fight the simulator
                withdraw_sensors(self.gg, thing)
        if sensors and identities:  # the devices' identities cannot write the shared venvs: ready before they run
            from nacelle.components import SENSORS

            self._build_venvs([SENSORS], wait=True)
        python = sys.executable
        for thing in self.full_things:
            logs = self.device_root(thing) / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            user = ["--component-user", identities[thing]] if thing in identities else []
            self.procs[f"{thing}/nucleus"] = _Managed(
                thing, "nucleus", [python, "-m", "nacelle.local.runtime.devicerunner", "--thing", thing,
                                   "--home", str(self.home), *self.nucleus_args, *user], logs / "nucleus.log")
            if self.simulators:
                port = controller_port(self.home, thing) if sensors else None
                for proc in source_processes(self.home, thing, self.source, self.simulator_args, port):
                    self.procs[f"{thing}/{proc.kind}"] = _Managed(thing, proc.kind, proc.argv,
                                                                  logs / f"{proc.kind}.log", proc.env)
                if sensors and port is not None:  # its nucleus runs nacelle.sensors against that controller
                    deploy_sensors(self.gg, thing, sensors, sensors_configuration(thing, self.source, port))
        for host, things in host_ids(self.light_things).items():
            log = self.home / "light" / host / "host.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            argv = [python, "-m", "nacelle.local.runtime.devicerunner", "--light", host, "--home", str(self.home),
                    *self.light_args, *(a for t in things for a in ("--thing", t))]
            self.procs[f"{host}/light"] = _Managed(host, "light", argv, log, things=things)
        with self._lock:
            for managed in self.procs.values():
                self._spawn(managed)
            self._record()
        self._stop.clear()
        self._monitor = threading.Thread(target=self._watch, name="nacelle-fleet", daemon=True)
        self._monitor.start()
        logger.info("fleet started", devices=len(self.things), canary=self.things[:self.canary_size],
                    light=len(self.light_things))
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM every process (a nucleus stops its components first), SIGKILL the groups after `timeout`."""
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(timeout=5)
        if self._prepare is not None and self._prepare.poll() is None:  # its group: the installer's pip too
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._prepare.pid, signal.SIGKILL)  # an unfinished venv has no completion marker
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._prepare.wait(5)
        with self._lock:
            live = [m.popen for m in self.procs.values() if m.popen is not None and m.popen.poll() is None]
            for p in live:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            for p in live:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(max(0.0, deadline - time.monotonic()))
            for p in live:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(2)
            self.record_path.unlink(missing_ok=True)
        logger.info("fleet stopped")

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, m: _Managed) -> None:
        with m.log.open("ab") as log:
            m.popen = subprocess.Popen(m.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       cwd=self.home, start_new_session=True, preexec_fn=die_with_parent,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1", **m.env})
        m.history.append(time.monotonic())

    def _watch(self) -> None:
        while not self._stop.wait(MONITOR_S):
            try:
                self._restart_exited()
            except Exception:  # the monitor must outlive one bad round (e.g. a full disk for the logs)
                logger.exception("fleet monitor round failed")

    def _restart_exited(self) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            changed = False
            for m in self.procs.values():
                if m.popen is None or m.popen.poll() is None:
                    continue
                now = time.monotonic()
                if m.next_start == 0.0:
                    recent = [t for t in m.history if now - t < 60]
                    backoff = min(MAX_BACKOFF_S, 0.5 * 2 ** max(0, len(recent) - 1))
                    m.next_start = now + backoff
                    logger.warning("fleet process exited; restarting", fleet_process=m.key,
                                   status=m.popen.returncode, backoff_s=backoff, log=str(m.log))
                elif now >= m.next_start:
                    m.next_start = 0.0
                    self._spawn(m)
                    m.restarts += 1  # after the spawn: a reader seeing the count sees the new process
                    changed = True
            if changed:
                self._record()

    def _record(self) -> None:
        write_json(self.record_path, {m.key: {"pid": m.popen.pid, "start": process_start_time(m.popen.pid),
                                              **({"things": m.things} if m.things else {})}
                                       for m in self.procs.values() if m.popen is not None})

    def _kill_recorded(self) -> None:
        """Processes a previous fleet recorded and left running (it was killed): their groups are killed."""
        for entry in _read_json(self.record_path).values():
            pid = int(entry.get("pid", 0))
            if pid > 1 and entry.get("start") and process_start_time(pid) == entry["start"]:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGTERM)
                deadline = time.monotonic() + STOP_TIMEOUT_S
                while process_start_time(pid) == entry["start"] and time.monotonic() < deadline:
                    time.sleep(0.05)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
        self.record_path.unlink(missing_ok=True)

    def prepare_runtime(self) -> None:
        """Build the detector's shared venv now (and, with a protocol source, nacelle.sensors's after it), in the
        background, as a device image would ship them: the first deployments' Install steps then find them complete
        instead of building them (same requirements hash)."""
        from nacelle.components import DETECTOR, SENSORS

        self._prepare = self._build_venvs([DETECTOR, *([SENSORS] if self._deploys_sensors else [])])

    def _build_venvs(self, sources: Sequence[Any], wait: bool = False) -> subprocess.Popen[bytes] | None:
        """Build the components' venvs in the shared root, one after the other (two cores are shared with the
        devices), as the venvs' owner; `wait`: until done (an unfinished one is rebuilt by the next run)."""
        sources = [c for c in sources if any(c.wheelhouse.glob("*.whl"))]  # else the Install step reports it
        if not sources:
            return None
        root = self.venvs_root
        root.mkdir(parents=True, exist_ok=True)
        log = self.home / "greengrass" / "prepare-runtime.log"
        identity: dict[str, Any] = {}
        user = self._share_venvs()
        if user is not None:  # built by the venvs' owner; a device's Install only reads them
            for c in sources:
                _shared_lock(root, c.installer, c.directory / "requirements.txt")
            identity = {"user": user.uid, "group": user.gid, "extra_groups": [], "cwd": root,
                        "env": {**os.environ, "HOME": str(root)}}
        builds = [shlex.join(["python3", "-u", str(c.installer), "--requirements",
                              str(c.directory / "requirements.txt"), "--wheels", str(c.wheelhouse),
                              "--venvs-root", str(root), "--default-venvs-root", str(root)]) for c in sources]
        with log.open("ab") as out:
            proc = subprocess.Popen(["sh", "-c", " && ".join(builds)], stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, **identity)
        if wait:
            try:
                rc = proc.wait()
            except BaseException:  # e.g. Ctrl-C: no build left behind (an unfinished venv has no completion marker)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                raise
            if rc != 0:
                raise ConfigurationError(f"building the venvs of {', '.join(c.name for c in sources)} failed: "
                                         f"see {log}")
        return proc

    def _share_venvs(self) -> ComponentUser | None:
        """The shared venvs root, the runtime identity's and 0755 (devices read it, none can write it)."""
        user = self.runtime_user()
        if user is not None:
            self.venvs_root.mkdir(parents=True, exist_ok=True)
            user.own(self.venvs_root)
            self.venvs_root.chmod(0o755)
        return user

    # ------------------------------------------------------------------ status
    def status(self) -> list[dict[str, Any]]:
        """One row per device: groups, components, latest deployment, health, episodes, processes."""
        recorded = _read_json(self.record_path)
        episodes: dict[str, dict[str, int]] = {}
        for alert in map(alert_from_item, self.alerts.query(ALERTS_PK) if self.alerts is not None else []):
            if not isinstance(alert, EpisodeAlert):
                continue
            counts = episodes.setdefault(alert.turbine_id, {"total": 0, "open": 0})
            counts["total"] += 1
            counts["open"] += alert.status == "open"
        health = {r.thing_name: r for r in records(DeviceRecord, self.state.query(DEVICES_PK)
                                                   if self.state is not None else [])}
        refused: dict[str, dict[str, int]] = {}  # thing -> reason -> messages the cloud refused
        for item in self.state.query(REJECTED) if self.state is not None else []:
            counts = refused.setdefault(str(item["thing_name"]), {})
            for reason, n in item.get("by_reason", {}).items():
                counts[reason] = counts.get(reason, 0) + int(n)
        rows = []
        hosts = {t: key for key, entry in recorded.items() for t in entry.get("things") or []}
        hosts.update({t: key for key, m in self.procs.items() for t in m.things})
        known = {d.thing: d for d in self.gg.devices()}
        for thing in sorted(set(known) | set(self.things) | set(health)):  # and any device the cloud hears from
            info = known.get(thing)
            latest = info.executions[0] if info is not None and info.executions else None
            record = health.get(thing)
            rows.append({
                "thing": thing,
                "groups": list(info.groups) if info is not None else [],
                "components": dict(info.components) if info is not None else {},
                "last_seen": info.last_seen.isoformat() if info is not None and info.last_seen else None,
                "deployment": None if latest is None else {
                    "id": latest.deployment_id, "name": latest.deployment_name, "status": latest.status,
                    "reason": latest.reason, "error_stack": list(latest.error_stack)},
                "model_version": record.model_version if record is not None else None,
                "inference_rate_hz": record.inference_rate_hz if record is not None else None,
                "last_health_at": (record.last_health_at or None) if record is not None else None,
                "episodes": episodes.get(thing, {"total": 0, "open": 0}),
                "unexpected_version": record.unexpected_version if record is not None else None,
                "source": source_status(record.sensors, record.last_health_at) if record is not None else None,
                "messages_missing": missing_messages(self.state, thing) if self.state is not None else {},
                "messages_refused": refused.get(thing, {}),
                "processes": ({"light": self._process_state(hosts[thing].split("/")[0], "light", recorded)}
                              if thing in hosts
                              else {kind: self._process_state(thing, kind, recorded)
                                    for kind in self._kinds(thing, recorded)}),
            })
        return rows

    def _kinds(self, thing: str, recorded: Mapping[str, Any]) -> tuple[str, ...]:
        """nucleus, then the sensor source's process: the simulator, or a controller (nacelle.sensors reading it
        runs under the nucleus: the device's `components`)."""
        known = set(self.procs) | set(recorded)
        return ("nucleus", "controller" if f"{thing}/controller" in known else "simulator")

    def _process_state(self, thing: str, kind: str, recorded: Mapping[str, Any]) -> str:
        m = self.procs.get(f"{thing}/{kind}")
        if m is not None and m.popen is not None:
            state = "running" if m.popen.poll() is None else f"exited {m.popen.returncode}"
            return f"{state} (restarts {m.restarts})" if m.restarts else state
        entry = recorded.get(f"{thing}/{kind}")
        if entry and entry.get("start") and process_start_time(int(entry["pid"])) == entry["start"]:
            return "running"
        return "stopped"


def _shared_lock(root: Path, installer: Path, requirements: Path) -> None:
    """The build's lock file, writable by all: a device's Install that starts during the build waits on it (the
    installer locks, then looks for the finished venv again) instead of failing to create it in a root it cannot
    write."""
    spec = importlib.util.spec_from_file_location("nacelle_install_venv", installer)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lock = root / f"{module.venv_dir(root, requirements).name}.lock"
    lock.touch()
    lock.chmod(0o666)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}
