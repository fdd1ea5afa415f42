"""Entry point of the nacelle.sensors component: `python3 -u main.py --thing <name> [--check]`.

Under Greengrass (env SVCUID and AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT) it reads its configuration
and publishes through IPC; otherwise env NACELLE_DEVICE_CONFIG names the broker, certificate and configuration
file (docs/sensors.md). `--check` validates the configuration, builds the source and exits (0: usable, 2: not).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Any

from sensors.app import SensorsApp, build_runner
from sensors.config import DeviceConfig
from sensors.sampler import SourceStats
from sensors.watch import FileConfig, IpcConfig

from shared.errors import ConfigurationError

log = logging.getLogger("sensors")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Nacelle sensors: a turbine's signals to its sensor topic")
    parser.add_argument("--thing", required=True, help="IoT thing name (= turbine id)")
    parser.add_argument("--check", action="store_true", help="validate the configuration and the source, then exit")
    return parser.parse_args(argv)


def build(thing: str, env: dict[str, str]) -> tuple[Any, Any]:
    """(configuration source, publisher factory) for this environment."""
    if env.get("SVCUID") and env.get("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"):
        from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
        from sensors.publisher import IpcPublisher

        client = GreengrassCoreIPCClientV2()
        return IpcConfig(client, thing), lambda: IpcPublisher(client)
    if not env.get("NACELLE_DEVICE_CONFIG"):
        raise ConfigurationError("not under Greengrass and NACELLE_DEVICE_CONFIG is not set")
    device = DeviceConfig.load(env["NACELLE_DEVICE_CONFIG"])

    def publisher() -> Any:
        from sensors.publisher import MqttPublisher

        return MqttPublisher(device.endpoint, device.port, device.ca, device.cert, device.key,
                             device.client_id or thing)

    return FileConfig(device.configuration, thing), publisher


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = _parse(argv)
    try:
        source, make_publisher = build(args.thing, dict(os.environ))
        config = source.load()
        if args.check:
            build_runner(config, lambda _s: None, SourceStats())
            print(f"configuration valid: {config.source} from {config.endpoint}, {len(config.signals)} signals at "
                  f"{config.rate_hz:g} Hz")
            return 0
        publisher = make_publisher()
        app = SensorsApp(config, publisher)
    except ConfigurationError as exc:
        log.error("cannot start: %s", exc)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    app.start()
    source.watch(app.reconfigure)
    while not stop.wait(1.0):
        if not app.alive:  # the sampling thread ended on a bug: exit non-zero, the nucleus restarts the component
            log.error("the sampling loop ended unexpectedly")
            break
    log.info("stopping")
    source.stop()
    app.stop()
    publisher.close()
    return 0 if stop.is_set() else 1


if __name__ == "__main__":
    sys.exit(main())
