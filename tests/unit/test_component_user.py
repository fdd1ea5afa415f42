"""Who local components run as: never root when the nucleus is root and the user can reach the data dir."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from nacelle.local.component_user import reachable, resolve


def test_reachable_needs_search_permission_on_every_parent(tmp_path: Path) -> None:
    inner = tmp_path / "a" / "b"
    inner.mkdir(parents=True)
    (tmp_path / "a").chmod(0o755)
    inner.chmod(0o755)
    owner = tmp_path.stat()
    other_uid, other_gid = owner.st_uid + 4242, owner.st_gid + 4242
    tmp_path.chmod(0o700)
    assert reachable(inner, owner.st_uid, owner.st_gid) or not reachable(tmp_path.parent, owner.st_uid, owner.st_gid)
    assert not reachable(inner, other_uid, other_gid)  # the owner's bits only
    (tmp_path / "a").chmod(0o700)
    assert not reachable(inner, other_uid, other_gid)
    assert not reachable(tmp_path / "missing", owner.st_uid, owner.st_gid)


@pytest.mark.skipif(os.geteuid() != 0, reason="resolve drops privileges only for a root nucleus")
def test_resolve_as_root(tmp_path: Path) -> None:
    assert resolve("", tmp_path) is None
    assert resolve("no-such-user-nacelle", tmp_path) is None
    assert resolve("root", tmp_path) is None
    tmp_path.chmod(0o700)
    if not reachable(tmp_path, 65534, 65534):
        assert resolve("nobody", tmp_path) is None  # cannot reach the data dir: runs as the nucleus, with a warning
    home = Path("/tmp")
    user = resolve("nobody", home)
    assert user is not None and user.uid == pwd.getpwnam("nobody").pw_uid


def test_not_root_means_the_nucleus_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert resolve("nobody", tmp_path) is None
