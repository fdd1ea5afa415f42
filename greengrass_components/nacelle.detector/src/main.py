"""Entry point of the nacelle.detector component: `python3 -u main.py --thing <name> [--models-root <dir>]`.

Under Greengrass (env SVCUID and AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT) it talks IPC and uploads
captured data to S3 with the token exchange service's credentials (AWS_CONTAINER_CREDENTIALS_FULL_URI,
AWS_CONTAINER_AUTHORIZATION_TOKEN, AWS_REGION); otherwise it reads env NACELLE_DEVICE_CONFIG, uses MQTT 5 with mutual
TLS and uploads to the local stack's capture gateway with the same certificate (docs/fleet.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from detector.app import DetectorApp
from detector.capture import Capture
from detector.config import DeviceConfig, FileConfigSource, GreengrassConfigSource
from detector.spool import Spool
from detector.upload import ContainerCredentials, GatewayUploader, S3Uploader, Uploader

from shared.errors import ConfigurationError

log = logging.getLogger("detector")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Nacelle edge anomaly detector")
    parser.add_argument("--thing", required=True, help="IoT thing name (= turbine id, MQTT client id)")
    parser.add_argument("--models-root", type=Path, default=None,
                        help="root of unarchived component artifacts (default: <work>/../../packages/"
                             "artifacts-unarchived)")
    return parser.parse_args(argv)


def build(thing: str, models_root: Path | None, env: dict[str, str]) -> DetectorApp:
    source: Any
    transport: Any
    uploader: Uploader | None = None
    if env.get("SVCUID") and env.get("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"):
        from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
        from detector.ipc import IpcTransport

        client = GreengrassCoreIPCClientV2()
        source, transport, work = GreengrassConfigSource(client, thing), IpcTransport(client), Path.cwd()
        try:
            uploader = S3Uploader("", env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION", ""),
                                  ContainerCredentials(env))
        except ConfigurationError as exc:
            log.error("captured data will not be uploaded: %s", exc)
    else:
        from detector.mqtt import MqttSettings, MqttTransport

        if not env.get("NACELLE_DEVICE_CONFIG"):
            raise ConfigurationError("not under Greengrass and NACELLE_DEVICE_CONFIG is not set")
        device = DeviceConfig.load(env["NACELLE_DEVICE_CONFIG"])
        source, work = FileConfigSource(device.configuration, thing), device.work
        transport = MqttTransport(MqttSettings(device.endpoint, device.port, device.ca, device.cert, device.key,
                                               client_id=thing))
        if device.capture_url:
            uploader = GatewayUploader(device.capture_url, device.ca, device.cert, device.key)
        source.start()  # reads the file now, so the app starts on the current configuration
    if isinstance(source, GreengrassConfigSource):
        source.start()
    root = models_root or (work / ".." / ".." / "packages" / "artifacts-unarchived").resolve()
    config = source.current()
    spool = Spool(work / "spool.db", config.spool_max_messages)
    capture = Capture(thing, work / "capture", config.capture, uploader)
    return DetectorApp(source, transport, spool, root, capture=capture)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = _parse(argv)
    try:
        app = build(args.thing, args.models_root, dict(os.environ))
    except ConfigurationError as exc:
        log.error("cannot start: %s", exc)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    app.start()
    stop.wait()
    log.info("stopping")
    app.stop()
    app.spool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
