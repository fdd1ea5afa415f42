"""Who local components run as. Like a Greengrass nucleus with its default component user (ggc_user), a
local nucleus started as root runs every lifecycle step that does not set `RequiresPrivilege` as an
unprivileged user (LocalSettings.component_user, default `nobody`): the detector never runs as root.

A nucleus that is not root already runs components as itself. When the user does not exist, or cannot
reach the data directory (a parent directory without search permission for it), components run as the
nucleus's user and a warning says why.
"""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from shared.observability import logger


@dataclass(frozen=True)
class ComponentUser:
    name: str
    uid: int
    gid: int

    def own(self, *paths: Path) -> None:
        """Give these files or directories to the component user (the nucleus, as root, creates them)."""
        for path in paths:
            os.chown(path, self.uid, self.gid)


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


def resolve(name: str, home: Path) -> ComponentUser | None:
    """The user to run unprivileged steps as, or None for the nucleus's own user (see the module doc)."""
    if os.geteuid() != 0 or not name:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        logger.warning("component user does not exist: components run as root", component_user=name)
        return None
    if entry.pw_uid == 0:
        return None
    if not reachable(home, entry.pw_uid, entry.pw_gid):
        logger.warning("component user cannot reach the data directory: components run as root",
                       component_user=name, home=str(home))
        return None
    return ComponentUser(name, entry.pw_uid, entry.pw_gid)
