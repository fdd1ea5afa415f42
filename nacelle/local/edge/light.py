"""Light devices: many simulated turbines in one process, so the local fleet reaches hundreds of turbines.

`nacelle up --devices N` runs the first few devices as full core devices (a nucleus process applying the recipes
and a simulator process each) and the others as light devices, up to LIGHT_HOST_SIZE per host process
(`python -m nacelle.local.runtime.devicerunner --light <host> --thing ...`; nacelle/local/edge/fleet.py). Each light
turbine has

* its own certificate and MQTT 5 session (LocalPki's device pair, client id = its thing name): the broker's
  identity mapping and topic ACLs apply to it as to a full device;
* its own sensor stream: a nacelle.simulator Simulator (faults and drifts through the same inbox, so
  `nacelle fleet inject` works) whose 1 s batches are encoded as the sensor message and handed to its detector in
  process, not through the broker;
* its own detector: the component's DetectorApp (TurbinePipeline, episodes, health, drift statistics, the disk
  spool under devices/<thing>/work/nacelle.detector/, the same topics and messages), scoring with the host's
  models: one ONNX Runtime session per model version per host (SharedModels). Data capture is off.

Deployments use the nucleus's device API. The host asks LocalGreengrass for all its turbines' targets in one
transaction (`targets_for`: heartbeat and rollout rate included) and applies a new deployment to each turbine as
a nucleus would: IN_PROGRESS; resolve the components from their recipes; download, verify and unarchive the
artifacts of every component but nacelle.detector once per host (a light device runs the detector code of this
checkout, the code the stack publishes as nacelle.detector); load the model (bundle verification: the model
component's Install); the detector's effective configuration -> hot swap; SUCCEEDED with the component versions.
A missing component, an unresolvable dependency, an artifact failing its digest, a bundle failing verification or
a swap that does not happen reports FAILED with Greengrass's error codes and leaves the turbine on its previous
components (ROLLBACK). Per turbine, devices/<thing>/light.json keeps the applied deployment, the statuses
reported and the configuration, so a restarted host resumes where it was, applies no deployment twice and
reports each recorded status once more (a terminal execution ignores the repeat).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from nacelle.local.edge import recipes
from nacelle.local.edge.nucleus import DeploymentFailed, DeviceGreengrass, Nucleus, resolution_failures, write_json
from nacelle.local.edge.pki import LocalPki
from nacelle.local.edge.recipes import DevicePaths
from nacelle.simulator.device import DETECTOR_SRC, Simulator, read_port, sensor_message
from shared.components import DETECTOR_COMPONENT
from shared.errors import ConfigurationError, NacelleError

if str(DETECTOR_SRC) not in sys.path:
    sys.path.append(str(DETECTOR_SRC))
from detector.app import DetectorApp  # the component's source tree (as nacelle.simulator loads it)
from detector.config import DetectorConfig
from detector.mqtt import MqttSettings, MqttTransport
from detector.scoring import EdgeModel
from detector.spool import Spool

log = logging.getLogger("nacelle.light")

BATCH_S = 1.0  # stream seconds per sensor message
POLL_S = 1.0  # deployment poll of all the host's turbines (one transaction)
WORKERS = 4  # deployments applied in parallel per host
SWAP_TIMEOUT_S = 30.0  # a configured model must be scoring by then
STOP_WORKERS = 16
STATS_S = 5.0  # how often the host writes light/<host>/stats.json

__all__ = ["LightDevice", "LightHost", "SharedModels"]


class SharedModels:
    """One loaded (verified, warmed-up) EdgeModel per bundle directory, for every detector of the host: a model
    version costs one ONNX Runtime session per host, not one per turbine (InferenceSession.run is thread-safe)."""

    def __init__(self, loader: Callable[[Path], EdgeModel] = EdgeModel.load) -> None:
        self._loader = loader
        self._lock = threading.Lock()
        self._models: dict[Path, EdgeModel] = {}

    def load(self, bundle_dir: Path) -> EdgeModel:
        key = Path(bundle_dir).resolve()
        with self._lock:
            model = self._models.get(key)
            if model is None:
                model = self._models[key] = self._loader(key)  # raises BundleError; not cached then
            return model

    def __len__(self) -> int:
        return len(self._models)


class PushedConfig:
    """A light detector's configuration source: the host sets it when a deployment applies (what the nucleus's
    configuration file is to a full device). Same interface as detector.config's sources."""

    def __init__(self, config: DetectorConfig) -> None:
        self._config = config
        self._callbacks: list[Callable[[DetectorConfig], None]] = []

    def current(self) -> DetectorConfig:
        return self._config

    def on_change(self, callback: Callable[[DetectorConfig], None]) -> None:
        self._callbacks.append(callback)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def set(self, config: DetectorConfig) -> None:
        changed, self._config = config != self._config, config
        if changed:
            for callback in list(self._callbacks):
                callback(config)


class LightGreengrass(DeviceGreengrass, Protocol):
    """The device API of nacelle/local/adapters/greengrass.py, with the poll of many things at once."""

    def targets_for(self, things: Sequence[str]) -> Mapping[str, Any]: ...


class LightDevice:
    """One light turbine: simulator, detector (created by its first deployment) and deployment state."""

    def __init__(self, thing: str, home: Path, models: SharedModels, models_root: Path, port: Callable[[], int],
                 speed: float = 1.0) -> None:
        self.thing = thing
        self.home = Path(home)
        self.models, self.models_root, self._port = models, models_root, port
        self.paths = DevicePaths(self.home / "devices" / thing, thing)
        self.sim = Simulator(thing, self.home, lambda _topic, _payload: None, speed=speed)
        self.app: DetectorApp | None = None
        self.source: PushedConfig | None = None
        self.applied: str | None = None
        self.handled: dict[str, str] = {}  # deployment id -> terminal status reported
        self.components: dict[str, str] = {}
        self.config: dict[str, Any] = {}  # the detector's effective configuration
        self.fed = self.unconsumed = 0  # sensor messages handed to the detector / made before it existed
        self.confirmed: set[str] = set()  # handled deployments reported again by this run of the host

    @property
    def state_path(self) -> Path:
        return self.paths.root / "light.json"

    def load(self) -> None:
        try:
            doc = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            raise NacelleError(f"{self.state_path}: unreadable light device state ({e}); delete it to start "
                               f"afresh") from e
        self.applied = doc.get("applied")
        self.handled = dict(doc.get("handled") or {})
        self.components = dict(doc.get("components") or {})
        self.config = dict(doc.get("config") or {})

    def save(self) -> None:
        handled = dict(list(self.handled.items())[-50:])
        write_json(self.state_path, {"thing": self.thing, "applied": self.applied, "handled": handled,
                                      "components": self.components, "config": self.config})

    # -- sensors ---------------------------------------------------------------------------------------
    def feed(self) -> None:
        """The simulator's next batch (fault and drift requests first) to the detector."""
        self.sim.poll_inbox()
        payload = sensor_message(self.thing, self.sim.stream.next_batch(BATCH_S))
        app = self.app
        if app is None:
            self.unconsumed += 1  # as on a full device before its first deployment: nobody reads the topic
            return
        app.on_sensor_message(payload)
        self.fed += 1

    # -- detector --------------------------------------------------------------------------------------
    def configure(self, raw: Mapping[str, Any]) -> None:
        """Run the detector on this configuration: start it the first time, else push it (hot swap)."""
        config = DetectorConfig.from_dict(raw, self.thing, f"{self.thing} {DETECTOR_COMPONENT} configuration")
        self.config = dict(raw)
        if self.source is not None:
            self.source.set(config)
            return
        pki = LocalPki(self.home / "pki")
        creds = pki.device(self.thing)
        transport = MqttTransport(MqttSettings("127.0.0.1", self._port(), creds.ca_path, creds.cert_path,
                                               creds.key_path, client_id=self.thing))
        spool = Spool(self.paths.work(DETECTOR_COMPONENT) / "spool.db", config.spool_max_messages)
        source = PushedConfig(config)
        try:
            self.app = DetectorApp(source, transport, spool, self.models_root, loader=self.models.load).start()
        except BaseException:
            transport.stop()
            spool.close()
            raise
        self.source = source

    def serving(self, model: EdgeModel | None) -> bool:
        """The detector scores with `model` (None: no model configured)."""
        app = self.app
        if app is None:
            return False
        pipeline = app.pipeline
        return pipeline is None if model is None else pipeline is not None and pipeline.model is model

    def stop(self) -> None:
        app, self.app = self.app, None
        if app is not None:
            app.stop()
            app.spool.close()

    def counters(self) -> dict[str, Any]:
        app = self.app
        return {"fed": self.fed, "unconsumed": self.unconsumed,
                **({} if app is None else {**app.stats(), "spool_seq": {s: app.spool.seq(s) for s in
                                                                       ("anomalies", "health", "stats")},
                                            "spool_dropped": app.spool.dropped,
                                            "connected": app.transport.is_connected})}


class LightHost:
    """The light turbines of one process: a feeder thread (every turbine's next batch each BATCH_S / speed), a
    deployment poll (POLL_S) and WORKERS threads applying deployments."""

    def __init__(self, host_id: str, home: Path, things: Sequence[str], greengrass: LightGreengrass, *,
                 speed: float = 1.0, poll_s: float = POLL_S, workers: int = WORKERS,
                 models: SharedModels | None = None) -> None:
        if not things:
            raise ConfigurationError(f"light host {host_id}: no turbines")
        if not speed > 0:
            raise ConfigurationError(f"light host {host_id}: speed must be > 0, got {speed}")
        self.host_id = host_id
        self.home = Path(home).resolve()
        self.gg = greengrass
        self.root = self.home / "light" / host_id
        self.fetcher = Nucleus(host_id, self.home, greengrass, root=self.root)  # artifacts only, shared by the host
        self.models = models or SharedModels()
        self.models_root = self.root / "packages" / "artifacts-unarchived"
        self.speed, self.poll_s = speed, poll_s
        self._port: int | None = None
        self.devices = {t: LightDevice(t, self.home, self.models, self.models_root, self.port, speed)
                        for t in things}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{host_id}-deploy")
        self._fetch_lock = threading.Lock()
        self._fetched: set[tuple[str, str]] = set()
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()
        self.stop_event = threading.Event()
        self.lag_s = self.max_lag_s = 0.0  # how far the feeder runs behind the wall clock (CPU starvation)
        self._feeder: threading.Thread | None = None

    def port(self) -> int:
        if self._port is None:
            self._port = read_port(self.home)
        return self._port

    # -- lifecycle -------------------------------------------------------------------------------------
    def run(self) -> int:
        """Until `stop_event`: restore each turbine's detector, feed them, apply deployments. Then stop them."""
        self.restore()
        self._feeder = threading.Thread(target=self._feed_loop, name=f"{self.host_id}-feeder", daemon=True)
        self._feeder.start()
        log.info("light host %s: %d turbines (%s..%s)", self.host_id, len(self.devices), next(iter(self.devices)),
                 list(self.devices)[-1])
        next_stats = 0.0
        try:
            while not self.stop_event.is_set():
                self.poll()
                if time.monotonic() >= next_stats:
                    next_stats = time.monotonic() + STATS_S
                    try:
                        self.write_stats()
                    except OSError as e:  # e.g. a full disk: the turbines keep running
                        log.error("stats not written: %s", e)
                self.stop_event.wait(self.poll_s)
        finally:
            self.shutdown()
        return 0

    def restore(self) -> None:
        """Each turbine back on the configuration it had (its spool kept its numbering). A turbine whose state file is
        unreadable starts afresh (the current deployment is applied again; a terminal report is not repeated);
        the others are not held up by it."""
        self.root.mkdir(parents=True, exist_ok=True)
        for device in self.devices.values():
            try:
                device.load()
            except NacelleError as e:
                log.error("%s: %s; starting it afresh", device.thing, e)
                continue
            if not device.config:
                continue
            try:
                for name, version in device.components.items():
                    if name != DETECTOR_COMPONENT:
                        self._fetch(name, version)  # already there unless the host's copy was removed
                device.configure(device.config)
            except (NacelleError, OSError) as e:
                log.error("%s: detector not restored: %s", device.thing, e)

    def shutdown(self) -> None:
        self.stop_event.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._feeder is not None:
            self._feeder.join(10)
        with ThreadPoolExecutor(max_workers=STOP_WORKERS) as stopper:  # each drains its spool for up to 3 s
            list(stopper.map(LightDevice.stop, self.devices.values()))
        with contextlib.suppress(OSError):
            self.write_stats()
        log.info("light host %s stopped", self.host_id)

    def _feed_loop(self) -> None:
        t0, k = time.monotonic(), 0
        while not self.stop_event.is_set():
            for device in self.devices.values():
                try:
                    device.feed()
                except Exception:  # one turbine's bad request or encoder failure must not stop the others
                    log.exception("%s: sensor batch failed", device.thing)
            k += 1
            delay = t0 + k * BATCH_S / self.speed - time.monotonic()
            self.lag_s = max(0.0, -delay)
            self.max_lag_s = max(self.max_lag_s, self.lag_s)
            if delay > 0:
                self.stop_event.wait(delay)

    def write_stats(self) -> None:
        write_json(self.root / "stats.json", {
            "host": self.host_id, "turbines": len(self.devices), "models_loaded": len(self.models),
            "feed_lag_s": round(self.lag_s, 3), "feed_lag_max_s": round(self.max_lag_s, 3),
            "devices": {t: d.counters() for t, d in self.devices.items()}})

    # -- deployments -----------------------------------------------------------------------------------
    def poll(self) -> None:
        """One transaction for every idle turbine's target; new deployments go to the workers."""
        with self._busy_lock:
            idle = [t for t in self.devices if t not in self._busy]
        if not idle:
            return
        try:
            targets = self.gg.targets_for(idle)
        except (NacelleError, sqlite3.Error, OSError) as e:  # e.g. a locked database: poll again
            log.error("deployment poll failed; retrying: %s", e)
            return
        for thing, target in targets.items():
            device = self.devices[thing]
            if target is None:
                continue
            dep_id = target.deployment_id
            if dep_id in device.handled and dep_id not in device.confirmed:
                self._confirm(device, dep_id)
            if dep_id == device.applied or dep_id in device.handled:
                continue
            with self._busy_lock:
                self._busy.add(thing)
            self._pool.submit(self._apply_guarded, device, target)

    def _confirm(self, device: LightDevice, dep_id: str) -> None:
        """Report a status recorded by an earlier run again, once: that run may have been killed between recording
        it and reporting it (a terminal execution ignores the repeat; the status event is emitted once)."""
        device.confirmed.add(dep_id)
        try:
            self.gg.report(device.thing, dep_id, device.handled[dep_id], reason="reported again by a restarted "
                           "light host", components=device.components)
        except (NacelleError, sqlite3.Error, OSError) as e:
            device.confirmed.discard(dep_id)
            log.error("%s: status of %s not reported again: %s", device.thing, dep_id, e)

    def _apply_guarded(self, device: LightDevice, target: Any) -> None:
        try:
            self.apply(device, target)
        except Exception:  # reported on the next poll's attempt; the worker must survive
            log.exception("%s: deployment %s could not be applied", device.thing, target.deployment_id)
        finally:
            with self._busy_lock:
                self._busy.discard(device.thing)

    def apply(self, device: LightDevice, target: Any) -> str:
        """Apply one deployment to one light turbine; returns the terminal status reported."""
        dep_id = target.deployment_id
        log.info("%s: applying deployment %s (%s)", device.thing, dep_id, getattr(target, "name", ""))
        self.gg.report(device.thing, dep_id, "IN_PROGRESS")
        try:
            raw, versions, model = self.plan(device, target.components)
        except DeploymentFailed as e:
            return self._finish(device, dep_id, "FAILED", str(e), e.error_stack, e.error_types)
        try:
            device.configure(raw)
        except (NacelleError, OSError) as e:
            return self._finish(device, dep_id, "FAILED", f"{DETECTOR_COMPONENT} is BROKEN: {e}",
                                ("DEPLOYMENT_FAILURE", "COMPONENT_UPDATE_ERROR", "COMPONENT_BROKEN"),
                                ("USER_COMPONENT_ERROR",))
        deadline = time.monotonic() + SWAP_TIMEOUT_S
        while not device.serving(model) and time.monotonic() < deadline and not self.stop_event.is_set():
            time.sleep(0.02)
        if not device.serving(model):
            if self.stop_event.is_set():
                return "INTERRUPTED"  # applied again after a restart (not handled yet)
            return self._finish(device, dep_id, "FAILED", f"{DETECTOR_COMPONENT} did not swap to the configured "
                                f"model within {SWAP_TIMEOUT_S:g}s", ("DEPLOYMENT_FAILURE", "COMPONENT_UPDATE_ERROR"),
                                ("USER_COMPONENT_ERROR",))
        device.applied, device.components = dep_id, versions
        return self._finish(device, dep_id, "SUCCEEDED", "")

    def plan(self, device: LightDevice, deployment: Mapping[str, Mapping[str, Any]],
             ) -> tuple[dict[str, Any], dict[str, str], EdgeModel | None]:
        """(the detector's effective configuration, component versions, the loaded model) or DeploymentFailed."""

        def recipe_of(name: str, version: str) -> Mapping[str, Any] | None:
            found = self.gg.get_component(name, version)
            return None if found is None else found.recipe

        try:
            with resolution_failures():
                resolved = recipes.resolve(deployment, recipe_of, device.components)
                detector = resolved.get(DETECTOR_COMPONENT)
                if detector is None:
                    raise recipes.ResolutionError(f"a light device runs {DETECTOR_COMPONENT}; the deployment "
                                                  f"resolves to {sorted(resolved)}")
                raw = recipes.effective_configuration(detector.recipe, detector.update, device.config or None)
            config = DetectorConfig.from_dict(raw, device.thing, f"{DETECTOR_COMPONENT} configuration")
        except ConfigurationError as e:  # what a full device's detector would exit on at its start
            raise DeploymentFailed(f"{DETECTOR_COMPONENT} is BROKEN: {e}", ("DEPLOYMENT_FAILURE",
                                   "COMPONENT_UPDATE_ERROR", "COMPONENT_BROKEN"), ("USER_COMPONENT_ERROR",)) from e
        for name, rc in resolved.items():
            if name != DETECTOR_COMPONENT:
                self._fetch(name, rc.version)
        model = None
        bundle = config.model_dir(self.models_root)
        if bundle is not None:
            try:
                model = self.models.load(bundle)
            except (NacelleError, OSError) as e:  # the model component's Install (bundle verification) fails
                raise DeploymentFailed(
                    f"{config.model_component} is BROKEN: its bundle fails verification ({e}); rolled back to the "
                    f"previous components", ("DEPLOYMENT_FAILURE", "COMPONENT_UPDATE_ERROR", "COMPONENT_BROKEN"),
                    ("USER_COMPONENT_ERROR",)) from e
        return raw, {n: rc.version for n, rc in sorted(resolved.items())}, model

    def _fetch(self, name: str, version: str) -> None:
        """Once per host: download, verify and unarchive (DeploymentFailed on a bad artifact)."""
        with self._fetch_lock:
            if (name, version) in self._fetched:
                return
            self.fetcher.fetch(name, version)
            self._fetched.add((name, version))

    def _finish(self, device: LightDevice, dep_id: str, status: str, reason: str,
                error_stack: tuple[str, ...] = (), error_types: tuple[str, ...] = ()) -> str:
        device.handled[dep_id] = status
        device.confirmed.add(dep_id)
        device.save()
        self.gg.report(device.thing, dep_id, status, reason=reason, error_stack=error_stack, error_types=error_types,
                       components=device.components)
        (log.info if status == "SUCCEEDED" else log.error)("%s: deployment %s %s %s", device.thing, dep_id, status,
                                                           reason)
        return status
