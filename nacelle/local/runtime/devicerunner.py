"""A simulated Greengrass core device: `python -m nacelle.local.runtime.devicerunner --thing T --home H`.

The process of one device of the fleet: the edge's Nucleus, applying what the stack's LocalGreengrass deploys to its
thing, whose status-change events go on the stack's bus (as Greengrass's go to EventBridge).

With `--light HOST --thing T1 --thing T2 ...`: a host of light devices (nacelle/local/edge/light.py), many turbines in
this one process, each with its own certificate, MQTT session, simulator and detector.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from nacelle.local.adapters.greengrass import LocalGreengrass
from nacelle.local.adapters.paths import StackPaths
from nacelle.local.edge.nucleus import GRACE_S, POLL_S, DeviceGreengrass, Nucleus
from nacelle.local.runtime.stack import build_bus
from shared.errors import NacelleError


def open_greengrass(home: Path) -> DeviceGreengrass:
    """LocalGreengrass at `<home>/greengrass.db`, its status-change events on the stack's bus."""
    paths = StackPaths(home)
    return LocalGreengrass(paths.greengrass_db, on_status_event=build_bus(paths).put)


def main(argv: list[str] | None = None, greengrass_factory: Callable[[Path], DeviceGreengrass] = open_greengrass,
         ) -> int:
    parser = argparse.ArgumentParser(prog="python -m nacelle.local.runtime.devicerunner",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--thing", required=True, action="append",
                        help="the core device's thing name (with --light: each of the host's turbines)")
    parser.add_argument("--light", metavar="HOST", default="",
                        help="run the --thing turbines as light devices of this host (e.g. light-1)")
    parser.add_argument("--speed", type=float, default=1.0, help="with --light: the simulators' stream seconds per "
                                                                 "wall-clock second")
    parser.add_argument("--home", required=True, help="the local stack's data directory")
    parser.add_argument("--grace", type=float, default=GRACE_S, help="seconds a new Run must survive (default 5)")
    parser.add_argument("--poll", type=float, default=POLL_S, help="seconds between deployment polls")
    parser.add_argument("--component-user", default="",
                        help="when run as root: who unprivileged lifecycle steps run as: uid:gid, user or user:group "
                             "(Greengrass's posixUser)")
    args = parser.parse_args(argv)
    home = Path(args.home).resolve()
    if args.light:
        return _light(args.light, home, args.thing, args.speed)
    if len(args.thing) != 1:
        parser.error("one --thing per core device (several only with --light)")
    nucleus = Nucleus(args.thing[0], home, greengrass_factory(home), grace_s=args.grace, poll_s=args.poll,
                      component_user=args.component_user)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nucleus.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return nucleus.run()
    except NacelleError as e:
        print(f"nucleus {args.thing[0]}: {e}", file=sys.stderr)
        return 2


def _light(host_id: str, home: Path, things: list[str], speed: float) -> int:
    from nacelle.local.edge.light import LightHost  # the detector's modules: only a light host needs them

    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format=f"%(asctime)s %(levelname)s {host_id} %(message)s")
    logging.getLogger("detector").setLevel(logging.WARNING)  # a hundred detectors' routine lines would drown it
    paths = StackPaths(home)
    try:
        greengrass = LocalGreengrass(paths.greengrass_db, on_status_event=build_bus(paths).put)
        host = LightHost(host_id, home, things, greengrass, speed=speed)
    except NacelleError as e:
        print(f"light host {host_id}: {e}", file=sys.stderr)
        return 2

    def on_signal(signum: int, frame: FrameType | None) -> None:
        host.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return host.run()


if __name__ == "__main__":
    sys.exit(main())
