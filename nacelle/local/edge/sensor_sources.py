"""Where a simulated turbine's sensor stream comes from in the local fleet (`nacelle up --source`):

* `sim` (default): the turbine simulator publishes over MQTT itself (nacelle/simulator/device.py);
* `modbus` / `opcua`: a simulated controller serves the turbine's signals on a loopback port
  (nacelle/simulator/controller.py), supervised by the fleet, and the nacelle.sensors component reads it and
  publishes on the turbine's sensor topic — the path a real turbine's signals take.

As on a real core device, the component reaches the device through a deployment to its thing (`deploy_sensors`,
configuration: the controller's address), which the local Greengrass merges with the rollout's group deployments;
the device's nucleus installs and runs it (and restarts it when it dies). `publish_sensors` builds it from this
checkout (`make wheelhouse-sensors` first), puts it in the local bucket and creates its component version. The
nucleus connects it as the turbine's sensor source (certificate CN and client id `<thing>.sensors`), which the broker
lets write `turbines/<thing>/sensors` and `turbines/<thing>/sensors/health` only. The controller's port is kept in
`<device>/sensors/controller-port` while it stays free, so a restarted stack redeploys nothing; with the `sim`
source again, `withdraw_sensors` deploys nothing to the thing, which stops the component.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import uuid
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from nacelle.local.adapters.objectstore import FsObjectStore
from nacelle.local.adapters.paths import ACCOUNT, BUCKET, REGION
from shared.aws.greengrass import thing_arn
from shared.components import SENSORS_COMPONENT, component_prefix
from shared.errors import ConfigurationError, Conflict
from shared.ml.spec import default_spec
from shared.sensor_map import default_node_ids

SOURCES = ("sim", "modbus", "opcua")
PROTOCOLS = ("modbus", "opcua")
DEPLOYMENT_POLICIES = {"failureHandlingPolicy": "ROLLBACK",
                       "componentUpdatePolicy": {"action": "NOTIFY_COMPONENTS", "timeoutInSeconds": 60}}


class SensorsGreengrass(Protocol):
    """What publishing and deploying the component needs of nacelle/local/adapters/greengrass.py."""

    def get_component(self, name: str, version: str) -> Any: ...

    def create_component_version(self, recipe: Mapping[str, Any]) -> Any: ...

    def create_deployment(self, target_arn: str, name: str, components: Mapping[str, Mapping[str, Any]],
                          deployment_policies: Mapping[str, Any], iot_job_configuration: Mapping[str, Any],
                          client_token: str) -> str: ...

    def list_deployments(self, group: str | None = None, *, thing: str | None = None) -> Sequence[Any]: ...


@dataclass(frozen=True)
class SourceProcess:
    kind: str  # simulator | controller
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def check_source(source: str) -> str:
    if source not in SOURCES:
        raise ConfigurationError(f"--source must be one of {', '.join(SOURCES)}, got {source!r}")
    return source


def check_deployable(source: str) -> None:
    """A protocol source deploys nacelle.sensors, built from its wheelhouse: refused up front when that is empty."""
    from nacelle.components import SENSORS

    if check_source(source) in PROTOCOLS and not any(SENSORS.wheelhouse.glob("*.whl")):
        raise ConfigurationError(f"--source {source}: {SENSORS.wheelhouse} has no wheels for the nacelle.sensors "
                                 f"component the devices run (run `make wheelhouse-sensors` first)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@functools.lru_cache(maxsize=4)
def unpack_component(home: Path) -> Path:
    """The nacelle.sensors archive built from this checkout, unpacked once per version under
    `<home>/greengrass/sensors/<version>/sensors/` (what Greengrass's {artifacts:decompressedPath}/sensors holds);
    built once per process, replaced when this checkout's archive differs from the unpacked one. For running it
    outside a nucleus (benchmarks/bench_sensors.py); the fleet deploys it instead (`deploy_sensors`)."""
    from nacelle.components import SENSORS, component_entries, read_version
    from shared.components import deterministic_zip

    target = home / "greengrass" / "sensors" / read_version(SENSORS.directory) / "sensors"
    archive = deterministic_zip(component_entries(SENSORS))
    stamp = target / ".archive-sha256"
    digest = hashlib.sha256(archive).hexdigest()
    if stamp.is_file() and stamp.read_text() == digest:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".sensors.", dir=target.parent))
    try:
        archive_path = tmp / "sensors.zip"
        archive_path.write_bytes(archive)
        with zipfile.ZipFile(archive_path) as zf:
            zf.extractall(tmp / "sensors")
        (tmp / "sensors" / stamp.name).write_text(digest)
        if target.exists():
            shutil.rmtree(target)
        (tmp / "sensors").rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def sensors_configuration(thing: str, protocol: str, port: int) -> dict[str, Any]:
    """The component configuration for a loopback controller serving the default spec's signals and its sample
    counter (`scan`, mapped as sampleCounter: a sample read twice is never published twice)."""
    from nacelle.simulator.controller import SCAN, turbine_register_map, turbine_signals

    signals = turbine_signals(default_spec().input_columns)
    if protocol == "modbus":
        return {"source": "modbus", "healthIntervalSeconds": 10, "sampleCounter": SCAN,
                "modbus": {"host": "127.0.0.1", "port": port, "unitId": 1, "timeoutSeconds": 0.5,
                           "registers": turbine_register_map(signals)}}
    return {"source": "opcua", "healthIntervalSeconds": 10, "sampleCounter": SCAN,
            "opcua": {"endpoint": f"opc.tcp://127.0.0.1:{port}/nacelle", "mode": "polling", "timeoutSeconds": 0.5,
                      "nodes": default_node_ids(signals)}}


def controller_port(home: Path, thing: str) -> int:
    """The loopback port of `thing`'s controller: the one recorded for it while that is free, else a new one."""
    record = home / "devices" / thing / "sensors" / "controller-port"
    try:
        port = int(record.read_text().strip())
    except (OSError, ValueError):
        port = 0
    if port and _free(port):
        return port
    port = free_port()
    record.parent.mkdir(parents=True, exist_ok=True)
    _write_text(record, f"{port}\n")
    return port


def _free(port: int) -> bool:
    """Nothing listens there (connections of a stopped controller in TIME_WAIT do not count, as for its server)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def source_processes(home: Path, thing: str, source: str, simulator_args: list[str],
                     port: int | None = None) -> list[SourceProcess]:
    """The processes the fleet supervises for `thing`'s sensor source: its simulator, or its controller (on `port`,
    kept for the fleet's life: a restarted controller comes back where the component reads; nacelle.sensors itself
    is deployed to the device, `deploy_sensors`)."""
    python = sys.executable
    if check_source(source) == "sim":
        return [SourceProcess("simulator", [python, "-m", "nacelle.simulator.device", "--thing", thing, "--home",
                                            str(home), *simulator_args])]
    port = port or controller_port(home, thing)
    return [SourceProcess("controller", [python, "-m", "nacelle.simulator.controller", "--thing", thing, "--home",
                                         str(home), "--protocol", source, "--port", str(port)])]


def publish_sensors(home: Path, greengrass: SensorsGreengrass) -> str:
    """Build nacelle.sensors from this checkout (its VERSION, the wheels of `make wheelhouse-sensors`), put it under
    components/nacelle.sensors/<VERSION>/ of the local bucket and create the component version (idempotent; other
    bytes or another recipe under the same VERSION: Conflict, bump it). Returns the version."""
    from nacelle.components import RECIPE_FILE, SENSORS, build, publish

    built = build(home / "greengrass" / "build", source=SENSORS, bucket=BUCKET)
    store = FsObjectStore(home / "objects", BUCKET)
    publish(store, built.directory)
    recipe = json.loads(store.get(component_prefix(SENSORS_COMPONENT, built.version) + RECIPE_FILE))
    existing = greengrass.get_component(SENSORS_COMPONENT, built.version)
    if existing is None:
        greengrass.create_component_version(recipe)
    elif existing.recipe != recipe:
        raise Conflict(f"{SENSORS_COMPONENT} {built.version} already exists in the local Greengrass with another "
                       f"recipe: bump greengrass_components/{SENSORS_COMPONENT}/VERSION")
    return built.version


def deploy_sensors(greengrass: SensorsGreengrass, thing: str, version: str, configuration: Mapping[str, Any]) -> str:
    """The deployment of nacelle.sensors `version` with `configuration` (on the recipe's defaults) to the core device
    `thing` itself, as on AWS (docs/sensors.md "Deploying it"); the thing's deployment in force when it already
    deploys exactly that (a restarted stack redeploys nothing)."""
    update = {"reset": [""], "merge": json.dumps(configuration, sort_keys=True)}
    return _deploy_to_thing(greengrass, thing, {SENSORS_COMPONENT: {"componentVersion": version,
                                                                    "configurationUpdate": update}})


def withdraw_sensors(greengrass: SensorsGreengrass, thing: str) -> str | None:
    """With the `sim` source again: a deployment of nothing to `thing` supersedes its sensors deployment, so its
    nucleus stops nacelle.sensors (the simulator publishes as the turbine's sensor source itself; the two would take
    each other's session). None when no deployment to the thing itself is in force with components."""
    current = _thing_deployment(greengrass, thing)
    return None if current is None or not current.components else _deploy_to_thing(greengrass, thing, {})


def _thing_deployment(greengrass: SensorsGreengrass, thing: str) -> Any:
    """The deployment to the thing itself in force (the newest, when not superseded nor canceled), else None."""
    newest = next(iter(greengrass.list_deployments(thing=thing)), None)
    return newest if newest is not None and newest.status in ("ACTIVE", "COMPLETED") else None


def _deploy_to_thing(greengrass: SensorsGreengrass, thing: str, components: Mapping[str, Any]) -> str:
    """Idempotent: the thing's deployment in force when it has these components (a restarted stack, or a retry
    after a crash, redeploys nothing), else a new one."""
    current = _thing_deployment(greengrass, thing)
    if current is not None and _canonical(current.components) == _canonical(components):
        return str(current.deployment_id)
    return greengrass.create_deployment(thing_arn(REGION, ACCOUNT, thing), f"{thing}-sensors", components,
                                        DEPLOYMENT_POLICIES, {}, uuid.uuid4().hex)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
