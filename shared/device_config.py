"""The device file a component reads outside Greengrass (env NACELLE_DEVICE_CONFIG, written by the local
stack): the MQTT broker, the certificate to publish with, the component configuration file and the work
directory. Each component reads its own extra keys from the same document."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared.errors import ConfigurationError

PATH_KEYS = ("ca", "cert", "key", "configuration", "work")


def read_device_config(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(endpoint, port and the PATH_KEYS as Paths; the whole JSON document). Errors name the file and key."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read the device configuration: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{path}: invalid JSON: {exc.msg} at line {exc.lineno}") from exc
    if not isinstance(doc, dict):
        raise ConfigurationError(f"{path}: must be a JSON object")
    values: dict[str, Any] = {}
    for key in ("endpoint", *PATH_KEYS):
        value = doc.get(key)
        if not isinstance(value, str) or not value:
            raise ConfigurationError(f"{path}: {key} must be a non-empty string, got {value!r}")
        values[key] = value if key == "endpoint" else Path(value)
    port = doc.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigurationError(f"{path}: port must be an integer in 1..65535, got {port!r}")
    values["port"] = port
    return values, doc
