"""Where a simulated turbine's sensor stream comes from in the local fleet (`nacelle up --source`):

* `sim` (default): the turbine simulator publishes over MQTT itself (nacelle/simulator/device.py);
* `modbus` / `opcua`: a simulated controller serves the turbine's signals on a loopback port
  (nacelle/simulator/controller.py) and the nacelle.sensors component, run from its packaged archive, reads it and
  publishes on the turbine's sensor topic — the path a real turbine's signals take.

The component runs as the turbine's sensor source (certificate CN `<thing>.sensors`, client id the same), which the
broker lets write `turbines/<thing>/sensors` and `turbines/<thing>/sensors/health` only. On a real core device the
nucleus runs it from a thing deployment (docs/sensors.md); here the fleet supervises it next to the nucleus, as it
does the simulator. Its files: `<device>/sensors/` (configuration, device file, log in the device's logs/).
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
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nacelle.local.edge.pki import SENSOR_SOURCE, LocalPki
from shared.errors import ConfigurationError
from shared.ml.spec import default_spec
from shared.sensor_map import default_node_ids, default_register_map

SOURCES = ("sim", "modbus", "opcua")
PROTOCOLS = ("modbus", "opcua")


@dataclass(frozen=True)
class SourceProcess:
    kind: str  # simulator | controller | sensors
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def check_source(source: str) -> str:
    if source not in SOURCES:
        raise ConfigurationError(f"--source must be one of {', '.join(SOURCES)}, got {source!r}")
    return source


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@functools.lru_cache(maxsize=4)
def unpack_component(home: Path) -> Path:
    """The nacelle.sensors archive built from this checkout, unpacked once per version under
    `<home>/greengrass/sensors/<version>/sensors/` (what Greengrass's {artifacts:decompressedPath}/sensors holds);
    built once per process, replaced when this checkout's archive differs from the unpacked one."""
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
    """The component configuration for a loopback controller serving the default spec's signals."""
    signals = default_spec().input_columns
    if protocol == "modbus":
        return {"source": "modbus", "healthIntervalSeconds": 10,
                "modbus": {"host": "127.0.0.1", "port": port, "unitId": 1, "timeoutSeconds": 0.5,
                           "registers": default_register_map(signals)}}
    return {"source": "opcua", "healthIntervalSeconds": 10,
            "opcua": {"endpoint": f"opc.tcp://127.0.0.1:{port}/nacelle", "mode": "polling", "timeoutSeconds": 0.5,
                      "nodes": default_node_ids(signals)}}


def source_processes(home: Path, thing: str, source: str, simulator_args: list[str],
                     broker_port: int | None = None) -> list[SourceProcess]:
    """The processes that make up `thing`'s sensor source."""
    python = sys.executable
    if check_source(source) == "sim":
        return [SourceProcess("simulator", [python, "-m", "nacelle.simulator.device", "--thing", thing, "--home",
                                            str(home), *simulator_args])]
    port = free_port()  # kept for the fleet's life: a restarted controller comes back where the component reads
    directory = home / "devices" / thing / "sensors"
    directory.mkdir(parents=True, exist_ok=True)
    configuration = directory / "nacelle.sensors.json"
    _write(configuration, sensors_configuration(thing, source, port))
    creds = LocalPki(home / "pki").sensor_source(thing)
    device = directory / "device.json"
    _write(device, {"endpoint": "127.0.0.1", "port": broker_port or _broker_port(home), "ca": str(creds.ca_path),
                    "cert": str(creds.cert_path), "key": str(creds.key_path), "configuration": str(configuration),
                    "work": str(directory), "client_id": f"{thing}{SENSOR_SOURCE}"})
    component = unpack_component(home)
    controller = [python, "-m", "nacelle.simulator.controller", "--thing", thing, "--home", str(home),
                  "--protocol", source, "--port", str(port)]
    sensors = [python, "-u", str(component / "main.py"), "--thing", thing]
    return [SourceProcess("controller", controller),
            SourceProcess("sensors", sensors, {"NACELLE_DEVICE_CONFIG": str(device)})]


def _broker_port(home: Path) -> int:
    try:
        return int((home / "broker" / "port").read_text().strip())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"{home / 'broker' / 'port'}: no broker port (is the local broker running?)") from exc


def _write(path: Path, doc: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))
    tmp.replace(path)
