"""The detector's configuration (docs/fleet.md "Detector configuration") and its two sources.

Both sources offer the same interface: `current()` (the validated config), `on_change(callback)`
(called with the new config on every valid change), `start()` and `stop()`. An invalid update is
logged and ignored: the detector keeps running on the last valid configuration.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from shared.device_config import read_device_config
from shared.errors import ConfigurationError

from .capture import DEFAULTS as CAPTURE_DEFAULTS
from .capture import CaptureConfig

log = logging.getLogger("detector.config")

DEFAULTS: dict[str, Any] = {
    "topics": {"sensors": "turbines/{thing}/sensors", "anomalies": "turbines/{thing}/anomalies",
               "health": "turbines/{thing}/health", "stats": "turbines/{thing}/stats"},
    "healthIntervalSeconds": 60,
    "statsPeriodSeconds": 1800,
    "spool": {"maxMessages": 10000},
    "model": {"component": "nacelle.model", "version": ""},
    "capture": CAPTURE_DEFAULTS,
}
POLL_S = 0.2
# A Greengrass component version (semantic versioning): never a path, never "." or "..".
VERSION_PATTERN = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+(?:[-+][0-9A-Za-z.+-]+)?")


@dataclass(frozen=True)
class DetectorConfig:
    thing: str
    sensors_topic: str
    anomalies_topic: str
    health_topic: str
    health_interval_s: float
    spool_max_messages: int
    model_component: str
    model_version: str  # "" = no model configured yet
    capture: CaptureConfig = field(default_factory=CaptureConfig)  # data capture (capture.py)
    stats_topic: str = ""  # drift statistics (stats.py); "" = turbines/<thing>/stats
    stats_period_s: float = 1800.0

    def model_dir(self, models_root: Path) -> Path | None:
        """<models-root>/<component>/<version>/bundle, or None when no model is configured."""
        if not self.model_version:
            return None
        return Path(models_root) / self.model_component / self.model_version / "bundle"

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], thing: str, where: str = "configuration") -> DetectorConfig:
        """Validate `raw` (the component configuration; missing keys take the defaults)."""
        if not isinstance(raw, Mapping):
            raise ConfigurationError(f"{where}: must be a JSON object, got {type(raw).__name__}")
        doc = _merge(DEFAULTS, raw)
        topics = _obj(doc, "topics", where)
        spool = _obj(doc, "spool", where)
        model = _obj(doc, "model", where)
        interval = doc["healthIntervalSeconds"]
        if not _number(interval) or not 0 < interval <= 86400:
            raise ConfigurationError(f"{where}: healthIntervalSeconds must be a number in (0, 86400], got {interval!r}")
        max_messages = spool.get("maxMessages")
        if not isinstance(max_messages, int) or isinstance(max_messages, bool) or max_messages < 1:
            raise ConfigurationError(f"{where}: spool.maxMessages must be a positive integer, got {max_messages!r}")
        period = doc["statsPeriodSeconds"]
        if not _number(period) or not 60 <= period <= 86400:
            raise ConfigurationError(f"{where}: statsPeriodSeconds must be a number in [60, 86400], got {period!r}")
        resolved = {}
        for name in ("sensors", "anomalies", "health", "stats"):
            topic = topics.get(name)
            if not isinstance(topic, str) or not topic:
                raise ConfigurationError(f"{where}: topics.{name} must be a non-empty string, got {topic!r}")
            resolved[name] = topic.replace("{thing}", thing)
            if "+" in resolved[name] or "#" in resolved[name]:
                raise ConfigurationError(f"{where}: topics.{name} must be a plain topic, got {topic!r}")
        component = model.get("component")
        if not isinstance(component, str) or not component or "/" in component or component.startswith("."):
            raise ConfigurationError(f"{where}: model.component must be a component name, got {component!r}")
        return cls(thing, resolved["sensors"], resolved["anomalies"], resolved["health"], float(interval),
                   max_messages, component, _model_version(model.get("version", ""), where),
                   CaptureConfig.from_dict(doc["capture"], where), resolved["stats"], float(period))


def _model_version(raw: Any, where: str) -> str:
    """The stripped version, checked after stripping: it becomes a directory name under the models root."""
    version = raw.strip() if isinstance(raw, str) else raw
    if not isinstance(version, str) or (version and not VERSION_PATTERN.fullmatch(version)):
        raise ConfigurationError(f"{where}: model.version must be a component version like 7.0.0 (\"\" = none), "
                                 f"got {raw!r}")
    return version


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _obj(doc: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = doc[key]
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{where}: {key} must be an object, got {type(value).__name__}")
    return value


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class ConfigSource(Protocol):
    def current(self) -> DetectorConfig: ...
    def on_change(self, callback: Callable[[DetectorConfig], None]) -> None: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...


class _Source:
    """Holds the current config and notifies listeners when it changes."""

    def __init__(self, thing: str) -> None:
        self.thing = thing
        self._config: DetectorConfig | None = None
        self._callbacks: list[Callable[[DetectorConfig], None]] = []
        self._lock = threading.Lock()

    def current(self) -> DetectorConfig:
        if self._config is None:
            raise ConfigurationError("configuration not loaded yet: call start()")
        return self._config

    def on_change(self, callback: Callable[[DetectorConfig], None]) -> None:
        self._callbacks.append(callback)

    def _update(self, raw: Any, where: str) -> None:
        try:
            config = DetectorConfig.from_dict(raw, self.thing, where)
        except ConfigurationError as exc:
            if self._config is None:
                raise
            log.error("ignoring invalid configuration update: %s", exc)
            return
        with self._lock:
            changed = config != self._config
            first = self._config is None
            self._config = config
        if changed and not first:
            log.info("configuration changed: model %s %s", config.model_component, config.model_version or "(none)")
            for callback in list(self._callbacks):
                try:
                    callback(config)
                except Exception:  # a listener's bug must not stop the source
                    log.exception("configuration listener failed")


class FileConfigSource(_Source):
    """The local contract: a JSON file the local nucleus rewrites atomically (rename); polled every POLL_S."""

    def __init__(self, path: str | Path, thing: str, poll_s: float = POLL_S) -> None:
        super().__init__(thing)
        self.path = Path(path)
        self.poll_s = poll_s
        self._stamp: tuple[int, int, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> Any:
        try:
            st = self.path.stat()
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(f"{self.path}: cannot read the configuration: {exc.strerror}") from exc
        self._stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"{self.path}: invalid JSON: {exc.msg} at line {exc.lineno}") from exc

    def poll(self) -> None:
        """Re-read the file if its inode, mtime or size changed."""
        try:
            st = self.path.stat()
        except OSError as exc:
            log.warning("configuration file %s unavailable: %s", self.path, exc.strerror)
            return
        if (st.st_ino, st.st_mtime_ns, st.st_size) == self._stamp:
            return
        try:
            raw = self._read()
        except ConfigurationError as exc:
            log.error("ignoring unreadable configuration: %s", exc)
            return
        self._update(raw, str(self.path))

    def start(self) -> None:
        if self._config is None:
            self._update(self._read(), str(self.path))
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="config-poll", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


class GreengrassConfigSource(_Source):
    """Under Greengrass: GetConfiguration + SubscribeToConfigurationUpdate through an injected clientv2."""

    def __init__(self, client: Any, thing: str) -> None:
        super().__init__(thing)
        self.client = client
        self._operation: Any = None

    def _fetch(self) -> None:
        response = self.client.get_configuration(key_path=[])
        self._update(response.value or {}, "component configuration (IPC)")

    def _on_event(self, _event: Any) -> None:
        try:
            self._fetch()
        except Exception:  # IPC errors: keep the last configuration
            log.exception("cannot fetch the updated configuration")

    def start(self) -> None:
        if self._config is None:
            self._fetch()
        if self._operation is None:
            _, self._operation = self.client.subscribe_to_configuration_update(
                key_path=[], on_stream_event=self._on_event, on_stream_error=self._on_error)

    def _on_error(self, exc: Exception) -> bool:
        log.error("configuration update stream error: %s", exc)
        return False  # keep the stream open

    def stop(self) -> None:
        if self._operation is not None:
            self._operation.close()
            self._operation = None


@dataclass(frozen=True)
class DeviceConfig:
    """Outside Greengrass: the file named by env NACELLE_DEVICE_CONFIG (docs/fleet.md "Transport")."""

    endpoint: str
    port: int
    ca: Path
    cert: Path
    key: Path
    configuration: Path
    work: Path
    capture_url: str = ""  # the local stack's capture gateway (https://127.0.0.1:<port>); "": no upload

    @classmethod
    def load(cls, path: str | Path) -> DeviceConfig:
        values, doc = read_device_config(path)
        capture_url = doc.get("capture_url", "")
        if not isinstance(capture_url, str) or (capture_url and not capture_url.startswith("https://")):
            raise ConfigurationError(f"{path}: capture_url must be an https:// URL or \"\", got {capture_url!r}")
        return cls(capture_url=capture_url, **values)
