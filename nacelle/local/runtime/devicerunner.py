"""A simulated Greengrass core device: `python -m nacelle.local.runtime.devicerunner --thing T --home H`.

The process of one device of the fleet: the edge's Nucleus, applying what the stack's LocalGreengrass deploys to its
thing, whose status-change events go on the stack's bus (as Greengrass's go to EventBridge).
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--thing", required=True, help="the core device's thing name")
    parser.add_argument("--home", required=True, help="the local stack's data directory")
    parser.add_argument("--grace", type=float, default=GRACE_S, help="seconds a new Run must survive (default 5)")
    parser.add_argument("--poll", type=float, default=POLL_S, help="seconds between deployment polls")
    parser.add_argument("--component-user", default="",
                        help="when run as root: who unprivileged lifecycle steps run as: uid:gid, user or user:group "
                             "(Greengrass's posixUser)")
    args = parser.parse_args(argv)
    home = Path(args.home).resolve()
    nucleus = Nucleus(args.thing, home, greengrass_factory(home), grace_s=args.grace, poll_s=args.poll,
                      component_user=args.component_user)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nucleus.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return nucleus.run()
    except NacelleError as e:
        print(f"nucleus {args.thing}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
