"""The component configuration (docs/sensors.md "Configuration"), validated into SensorsConfig.

Every problem raises ConfigurationError naming where the configuration came from, the field by its path
(`modbus.registers.rps.dataType`) and the reason. Missing keys take DEFAULTS. Nothing here opens a connection:
the protocol libraries are imported by the sources only.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeGuard, cast

from shared.device_config import read_device_config
from shared.errors import ConfigurationError, SpecError
from shared.ml.spec import FeatureSpec, default_spec
from shared.sensor_map import Register, parse_node_ids, parse_register_map

from . import SOURCES

DEFAULTS: dict[str, Any] = {
    "source": "",  # no default: a device never publishes simulated data unless told to
    "spec": "",  # "": the packaged default spec (mini-turbine); else a spec object (docs/data.md)
    "rateHz": 0,  # 0: the spec's sampling.rate_hz
    "batchSamples": 1,  # samples per sensor message (1: each sample as soon as it is read)
    "sampleCounter": "",  # modbus/opcua: a mapped signal the controller changes with every new sample (counter, time)
    "healthIntervalSeconds": 60,
    "topics": {"sensors": "turbines/{thing}/sensors", "health": "turbines/{thing}/sensors/health"},
    "reconnect": {"minSeconds": 0.1, "maxSeconds": 5.0},
    "modbus": {"host": "", "port": 502, "unitId": 1, "timeoutSeconds": 0.5, "registers": {}},
    "opcua": {"endpoint": "", "mode": "polling", "timeoutSeconds": 0.5, "nodes": {},
              "security": {"mode": "None", "policy": "Basic256Sha256", "certificate": "", "privateKey": "",
                           "serverCertificate": "", "applicationUri": "urn:nacelle:sensors"}},
    "replay": {"file": "", "turbine": "", "speed": 1.0, "loop": False},
    "simulator": {"seed": None, "speed": 1.0},
    "venvRoot": "",  # the Install step's (recipe.yaml); not read here
}
Source = Literal["modbus", "opcua", "replay", "simulator"]
MAX_RATE_HZ = 1000.0
MIN_RATE_HZ = 0.01  # a sample every 100 s at most: slower is no stream the detector can score
MIN_HEALTH_INTERVAL_S = 1.0  # health on the local pub/sub shares the publisher's bound with the samples
MAX_HEALTH_INTERVAL_S = 86400.0
MIN_RECONNECT_S = 0.01  # a reconnect loop tighter than this would spin on a dead controller
MAX_BATCH = 1000
OPCUA_MODES = ("polling", "subscription")
SECURITY_MODES = ("None", "Sign", "SignAndEncrypt")
SECURITY_POLICIES = ("Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss")
MAX_SPEED = 1000.0


@dataclass(frozen=True)
class ModbusSettings:
    host: str
    port: int
    unit_id: int
    timeout_s: float
    registers: tuple[Register, ...]

    @property
    def endpoint(self) -> str:
        return f"modbus://{self.host}:{self.port}/{self.unit_id}"


@dataclass(frozen=True)
class OpcUaSecurity:
    mode: str  # None | Sign | SignAndEncrypt
    policy: str
    certificate: str  # client certificate (DER or PEM)
    private_key: str  # PEM
    server_certificate: str  # "": taken from the server's endpoint description
    application_uri: str  # must be in the client certificate's subjectAltName


@dataclass(frozen=True)
class OpcUaSettings:
    endpoint: str
    mode: str
    timeout_s: float
    nodes: dict[str, str]
    security: OpcUaSecurity


@dataclass(frozen=True)
class ReplaySettings:
    file: str
    turbine: str
    speed: float
    loop: bool


@dataclass(frozen=True)
class SimulatorSettings:
    seed: int | None
    speed: float


@dataclass(frozen=True)
class SensorsConfig:
    thing: str
    source: Source
    spec: FeatureSpec
    rate_hz: float
    batch_samples: int
    health_interval_s: float
    sensors_topic: str
    health_topic: str
    reconnect_min_s: float
    reconnect_max_s: float
    modbus: ModbusSettings | None = None
    opcua: OpcUaSettings | None = None
    replay: ReplaySettings | None = None
    simulator: SimulatorSettings | None = None
    extra_signals: tuple[str, ...] = field(default=())  # mapped signals the spec does not use: carried along
    sample_counter: str = ""  # a mapped signal that changes with every new controller sample ("": none)

    @property
    def signals(self) -> tuple[str, ...]:
        """What every sample carries: the spec's input columns, then the extra mapped signals."""
        return (*self.spec.input_columns, *self.extra_signals)

    @property
    def endpoint(self) -> str:
        if self.modbus is not None:
            return self.modbus.endpoint
        if self.opcua is not None:
            return self.opcua.endpoint
        if self.replay is not None:
            return f"file://{self.replay.file}"
        return "simulator"

    @classmethod
    def from_dict(cls, raw: Any, thing: str, where: str = "configuration") -> SensorsConfig:
        if not isinstance(raw, Mapping):
            raise ConfigurationError(f"{where}: must be a JSON object, got {type(raw).__name__}")
        unknown = sorted(set(raw) - set(DEFAULTS) - {"accessControl"})
        if unknown:
            raise ConfigurationError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(DEFAULTS)}")
        doc = _merge(DEFAULTS, raw)
        source = doc["source"]
        if source not in SOURCES:
            raise ConfigurationError(f"{where}: source must be one of {', '.join(SOURCES)}, got {source!r}")
        spec = _spec(doc["spec"], where)
        rate = _rate(doc, where) or spec.sampling.rate_hz
        batch = _integer(doc, "batchSamples", where, 1, MAX_BATCH)
        health = _number(doc, "healthIntervalSeconds", where, low=MIN_HEALTH_INTERVAL_S, high=MAX_HEALTH_INTERVAL_S)
        topics = _obj(doc, "topics", where)
        resolved = {}
        for name in ("sensors", "health"):
            topic = topics.get(name)
            if not isinstance(topic, str) or not topic:
                raise ConfigurationError(f"{where}: topics.{name} must be a non-empty string, got {topic!r}")
            resolved[name] = topic.replace("{thing}", thing)
            if "+" in resolved[name] or "#" in resolved[name]:
                raise ConfigurationError(f"{where}: topics.{name} must be a plain topic, got {topic!r}")
        reconnect = _obj(doc, "reconnect", where)
        low = _number(reconnect, "minSeconds", f"{where}: reconnect", low=MIN_RECONNECT_S, high=60)
        high = _number(reconnect, "maxSeconds", f"{where}: reconnect", low=low, high=3600)
        settings: dict[str, Any] = {}
        extra: tuple[str, ...] = ()
        section = _obj(doc, source, where)
        here = f"{where}: {source}"
        if source == "modbus":
            settings["modbus"] = _modbus(section, here)
            extra = _mapped(tuple(r.signal for r in settings["modbus"].registers), spec, f"{here}.registers")
        elif source == "opcua":
            settings["opcua"] = _opcua(section, here)
            extra = _mapped(tuple(settings["opcua"].nodes), spec, f"{here}.nodes")
        elif source == "replay":
            settings["replay"] = _replay(section, here)
        else:
            settings["simulator"] = _simulator(section, here)
        counter = doc["sampleCounter"]
        if not isinstance(counter, str):
            raise ConfigurationError(f"{where}: sampleCounter must be the name of a mapped signal, got {counter!r}")
        if counter and source not in ("modbus", "opcua"):
            raise ConfigurationError(f"{where}: sampleCounter applies to the modbus and opcua sources only "
                                     f"(source is {source})")
        if counter and counter not in (*spec.input_columns, *extra):
            mapped = "registers" if source == "modbus" else "nodes"
            raise ConfigurationError(f"{where}: sampleCounter: {counter!r} is not one of the signals of "
                                     f"{source}.{mapped}")
        settings["sample_counter"] = counter
        return cls(thing, cast(Source, source), spec, float(rate), batch, health, resolved["sensors"],
                   resolved["health"], low, high, extra_signals=extra, **settings)


# ------------------------------------------------------------------ sections
def _modbus(raw: Mapping[str, Any], where: str) -> ModbusSettings:
    _known(raw, DEFAULTS["modbus"], where)
    host = raw.get("host")
    if not isinstance(host, str) or not host.strip() or len(host) > 253 or any(c.isspace() for c in host):
        raise ConfigurationError(f"{where}.host: must be the controller's host name or IP address, got {host!r}")
    port = _integer(raw, "port", where, 1, 65535)
    unit = _integer(raw, "unitId", where, 0, 255)
    timeout = _number(raw, "timeoutSeconds", where, low=0, high=10, open_low=True)
    return ModbusSettings(host, port, unit, timeout, parse_register_map(raw.get("registers"), f"{where}.registers"))


def _opcua(raw: Mapping[str, Any], where: str) -> OpcUaSettings:
    _known(raw, DEFAULTS["opcua"], where)
    endpoint = raw.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint.startswith("opc.tcp://") or len(endpoint) <= len("opc.tcp://"):
        raise ConfigurationError(f"{where}.endpoint: must be an opc.tcp://host:port/path URL, got {endpoint!r}")
    mode = raw.get("mode")
    if mode not in OPCUA_MODES:
        raise ConfigurationError(f"{where}.mode: must be one of {', '.join(OPCUA_MODES)}, got {mode!r}")
    timeout = _number(raw, "timeoutSeconds", where, low=0, high=10, open_low=True)
    sec = _obj(raw, "security", where)
    _known(sec, DEFAULTS["opcua"]["security"], f"{where}.security")
    sec_mode, policy = sec.get("mode"), sec.get("policy")
    if sec_mode not in SECURITY_MODES:
        raise ConfigurationError(f"{where}.security.mode: must be one of {', '.join(SECURITY_MODES)}, got "
                                 f"{sec_mode!r}")
    if policy not in SECURITY_POLICIES:
        raise ConfigurationError(f"{where}.security.policy: must be one of {', '.join(SECURITY_POLICIES)}, got "
                                 f"{policy!r}")
    paths = {}
    for key in ("certificate", "privateKey", "serverCertificate", "applicationUri"):
        value = sec.get(key)
        if not isinstance(value, str):
            raise ConfigurationError(f"{where}.security.{key}: must be a string, got {value!r}")
        paths[key] = value
    if sec_mode != "None":
        for key in ("certificate", "privateKey"):
            if not paths[key]:
                raise ConfigurationError(f"{where}.security.{key}: required with security mode {sec_mode} (the "
                                         f"client certificate and its private key)")
        if not paths["applicationUri"]:
            raise ConfigurationError(f"{where}.security.applicationUri: required with security mode {sec_mode}")
    security = OpcUaSecurity(sec_mode, policy, paths["certificate"], paths["privateKey"], paths["serverCertificate"],
                             paths["applicationUri"])
    return OpcUaSettings(endpoint, mode, timeout, parse_node_ids(raw.get("nodes"), f"{where}.nodes"), security)


def _replay(raw: Mapping[str, Any], where: str) -> ReplaySettings:
    _known(raw, DEFAULTS["replay"], where)
    file, turbine, loop = raw.get("file"), raw.get("turbine"), raw.get("loop")
    if not isinstance(file, str) or not file:
        raise ConfigurationError(f"{where}.file: must be the path of a CSV file in the spec's format, got {file!r}")
    if not isinstance(turbine, str):
        raise ConfigurationError(f"{where}.turbine: must be a string (\"\": the file's only turbine), got "
                                 f"{turbine!r}")
    if not isinstance(loop, bool):
        raise ConfigurationError(f"{where}.loop: must be true or false, got {loop!r}")
    speed = _number(raw, "speed", where, low=0, high=MAX_SPEED, open_low=True)
    return ReplaySettings(file, turbine, speed, loop)


def _simulator(raw: Mapping[str, Any], where: str) -> SimulatorSettings:
    _known(raw, DEFAULTS["simulator"], where)
    seed = raw.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31):
        raise ConfigurationError(f"{where}.seed: must be null or an integer in 0..2^31-1, got {seed!r}")
    return SimulatorSettings(seed, _number(raw, "speed", where, low=0, high=MAX_SPEED, open_low=True))


def _mapped(signals: tuple[str, ...], spec: FeatureSpec, where: str) -> tuple[str, ...]:
    """Every input column of the spec must be mapped; returns the extra signals (carried along in samples)."""
    missing = [c for c in spec.input_columns if c not in signals]
    if missing:
        raise ConfigurationError(f"{where}: no entry for {', '.join(repr(c) for c in missing)} (feature spec "
                                 f"{spec.name!r} reads {', '.join(spec.input_columns)})")
    return tuple(s for s in signals if s not in spec.input_columns)


def _spec(raw: Any, where: str) -> FeatureSpec:
    if raw in ("", None):
        return default_spec()
    if not isinstance(raw, Mapping):
        raise ConfigurationError(f"{where}: spec must be \"\" (the default spec) or a feature spec object, got "
                                 f"{type(raw).__name__}")
    try:
        return FeatureSpec.from_dict(dict(raw), f"{where}: spec")
    except SpecError as exc:
        raise ConfigurationError(str(exc)) from exc


# ------------------------------------------------------------------ helpers
def _known(raw: Mapping[str, Any], defaults: Mapping[str, Any], where: str) -> None:
    unknown = sorted(set(raw) - set(defaults))
    if unknown:
        raise ConfigurationError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(defaults)}")


def _obj(doc: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = doc.get(key)
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{where}: {key} must be an object, got {type(value).__name__}")
    return value


def _integer(doc: Mapping[str, Any], key: str, where: str, low: int, high: int) -> int:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigurationError(f"{where}.{key}: must be an integer in {low}..{high}, got {value!r}")
    return value


def _rate(doc: Mapping[str, Any], where: str) -> float:
    """rateHz: 0 (the spec's rate) or a rate in [MIN_RATE_HZ, MAX_RATE_HZ]."""
    value = doc.get("rateHz")
    if value == 0 and not isinstance(value, bool):
        return 0.0
    if not _is_number(value) or not MIN_RATE_HZ <= value <= MAX_RATE_HZ:
        raise ConfigurationError(f"{where}.rateHz: must be 0 (the spec's rate) or a number in [{MIN_RATE_HZ:g}, "
                                 f"{MAX_RATE_HZ:g}], got {value!r}")
    return float(value)


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _number(doc: Mapping[str, Any], key: str, where: str, *, low: float, high: float, open_low: bool = False) -> float:
    value = doc.get(key)
    if not _is_number(value) or not (value > low if open_low else value >= low) or value > high:
        bracket = "(" if open_low else "["
        raise ConfigurationError(f"{where}.{key}: must be a number in {bracket}{low:g}, {high:g}], got {value!r}")
    return float(value)


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) and key not in ("registers", "nodes"):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class DeviceConfig:
    """Outside Greengrass: the file named by env NACELLE_DEVICE_CONFIG (the local stack writes it): the MQTT
    broker, the certificate to publish with, the component configuration file and the work directory."""

    endpoint: str
    port: int
    ca: Path
    cert: Path
    key: Path
    configuration: Path
    work: Path
    client_id: str  # "": the thing name

    @classmethod
    def load(cls, path: str | Path) -> DeviceConfig:
        values, doc = read_device_config(path)
        client_id = doc.get("client_id", "")
        if not isinstance(client_id, str) or len(client_id) > 128:
            raise ConfigurationError(f"{path}: client_id must be a string of at most 128 characters")
        return cls(client_id=client_id, **values)


def read_config_file(path: Path, thing: str) -> SensorsConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read the configuration: {exc.strerror}") from exc
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{path}: invalid JSON: {exc.msg} at line {exc.lineno}") from exc
    return SensorsConfig.from_dict(raw, thing, str(path))
