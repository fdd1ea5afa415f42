"""Where the configuration comes from: Greengrass IPC (GetConfiguration, SubscribeToConfigurationUpdate) or, outside
Greengrass, the JSON file the local nucleus or stack writes (polled; replaced atomically by its writer).

`load()` returns the current configuration (ConfigurationError when it is invalid: the component refuses to start);
afterwards every valid change is handed to `on_change`, an invalid one is logged and ignored.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.errors import ConfigurationError

from .config import SensorsConfig, read_config_file

log = logging.getLogger("sensors.config")

POLL_S = 0.5
Listener = Callable[[SensorsConfig], None]


class FileConfig:
    def __init__(self, path: Path, thing: str, poll_s: float = POLL_S) -> None:
        self.path, self.thing, self.poll_s = Path(path), thing, poll_s
        self._stamp: tuple[int, int, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def load(self) -> SensorsConfig:
        self._stamp = self._stat()
        return read_config_file(self.path, self.thing)

    def watch(self, on_change: Listener) -> None:
        def loop() -> None:
            while not self._stop.wait(self.poll_s):
                stamp = self._stat()
                if stamp is None or stamp == self._stamp:
                    continue
                self._stamp = stamp
                try:
                    on_change(read_config_file(self.path, self.thing))
                except ConfigurationError as exc:
                    log.error("ignoring the configuration change: %s", exc)

        self._thread = threading.Thread(target=loop, name="sensors-config", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


class IpcConfig:
    def __init__(self, client: Any, thing: str) -> None:
        self.client, self.thing = client, thing
        self._operation: Any = None

    def _fetch(self) -> SensorsConfig:
        response = self.client.get_configuration(key_path=[])
        return SensorsConfig.from_dict(response.value or {}, self.thing, "component configuration (IPC)")

    def load(self) -> SensorsConfig:
        return self._fetch()

    def watch(self, on_change: Listener) -> None:
        def on_event(_event: Any) -> None:
            try:
                on_change(self._fetch())
            except ConfigurationError as exc:
                log.error("ignoring the configuration change: %s", exc)
            except Exception:  # IPC errors: keep the running configuration
                log.exception("cannot fetch the updated configuration")

        def on_error(exc: Exception) -> bool:
            log.error("configuration update stream error: %s", exc)
            return False  # keep the stream open

        _, self._operation = self.client.subscribe_to_configuration_update(
            key_path=[], on_stream_event=on_event, on_stream_error=on_error)

    def stop(self) -> None:
        if self._operation is not None:
            self._operation.close()
            self._operation = None
