"""Who local components run as. Like a Greengrass nucleus with its `posixUser`, a local nucleus started as root
runs every lifecycle step that does not set `RequiresPrivilege` as an unprivileged identity (`--component-user`:
`uid:gid`, `user` or `user:group`): the detector never runs as root.

The fleet gives every device its own numeric identity: device k (`turbine-0k`, k = 1…999) runs as uid = gid =
`base + k`, base = LocalSettings.component_id_base; `base` itself owns the venvs the devices share, so no device can
change code another device runs. A device's private key copy, work dirs, spool, configuration and logs then belong
to its identity (or its root nucleus) with modes that deny the others (nacelle/local/edge/nucleus.py).

Numeric ids rather than real users: a root nucleus can setuid to any id and Greengrass accepts `uid:gid` as
posixUser, so nothing is added to /etc/passwd (no useradd to run, undo or keep in step between machines). The
fleet's position rather than a hash of the thing name: positions are distinct, so ids are collision-free by
construction and stable across restarts; a hash into a small range could collide. The range sits above the 16-bit
ids that distributions hand to users (and to `nobody`, 65534), so it meets no real account by default.

Fallbacks: a nucleus that is not root runs components as itself (devices are then not isolated: a warning says
so); an identity that cannot reach the data directory (a parent without search permission for it), or a user that
does not exist, also leaves components with the nucleus's user, with a warning.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from shared.errors import ConfigurationError
from shared.observability import logger

MAX_DEVICES = 999  # the fleet's largest size (nacelle/local/edge/fleet.py thing_names)
MIN_BASE = 65536  # above the 16-bit ids distributions allocate
MAX_ID = 2**31 - 1  # some tools read ids as signed 32-bit; (uid_t)-1 is "no change"

__all__ = ["MAX_DEVICES", "ComponentUser", "check_base", "device_id", "parse", "reachable", "resolve", "runtime_id"]


@dataclass(frozen=True)
class ComponentUser:
    name: str
    uid: int
    gid: int

    @property
    def spec(self) -> str:
        return f"{self.uid}:{self.gid}"

    def own(self, *paths: Path) -> None:
        """Give these files or directories to the component user (the nucleus, as root, creates them)."""
        for path in paths:
            os.chown(path, self.uid, self.gid)

    def own_tree(self, root: Path) -> None:
        """`root` and everything under it (symlinks themselves, never their targets)."""
        os.chown(root, self.uid, self.gid)
        for parent, dirs, files in os.walk(root):
            for entry in (*dirs, *files):
                os.chown(Path(parent) / entry, self.uid, self.gid, follow_symlinks=False)


def check_base(base: int) -> int:
    if not MIN_BASE <= base <= MAX_ID - MAX_DEVICES:
        raise ConfigurationError(f"component_id_base must be between {MIN_BASE} and {MAX_ID - MAX_DEVICES} "
                                 f"(ids base..base+{MAX_DEVICES}), got {base}")
    return base


def device_id(base: int, number: int) -> int:
    """The uid (and gid) of the fleet's device `number` (1 = its first device)."""
    if not 1 <= number <= MAX_DEVICES:
        raise ConfigurationError(f"device number must be between 1 and {MAX_DEVICES}, got {number}")
    return check_base(base) + number


def runtime_id(base: int) -> int:
    """The uid (and gid) owning what the devices share read-only (the venvs); never a device's."""
    return check_base(base)


def parse(spec: str) -> ComponentUser:
    """`uid:gid` (no passwd entry needed), `user` (its primary group) or `user:group`; KeyError if unknown."""
    user, _, group = spec.partition(":")
    if user.isdigit() and group.isdigit():
        uid, gid = int(user), int(group)
        if max(uid, gid) > MAX_ID:
            raise ValueError(f"{spec}: ids above {MAX_ID}")
        return ComponentUser(spec, uid, gid)
    entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid if group else entry.pw_gid
    return ComponentUser(spec, entry.pw_uid, gid)


def reachable(path: Path, uid: int, gid: int) -> bool:
    """Whether `uid` may search every directory from / down to `path` (and `path` itself)."""
    for directory in [*reversed(path.parents), path]:
        try:
            st = directory.stat()
        except OSError:
            return False
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def resolve(spec: str, home: Path) -> ComponentUser | None:
    """The identity to run unprivileged steps as, or None for the nucleus's own user (see the module doc)."""
    if not spec:
        return None
    if os.geteuid() != 0:
        logger.warning("the nucleus is not root: components run as its user, not isolated from other devices",
                       component_user=spec)
        return None
    try:
        user = parse(spec)
    except (KeyError, ValueError, OverflowError):
        logger.warning("component user does not exist: components run as root", component_user=spec)
        return None
    if user.uid == 0:
        return None
    if not reachable(home, user.uid, user.gid):
        logger.warning("component user cannot reach the data directory: components run as root",
                       component_user=spec, home=str(home))
        return None
    return user
