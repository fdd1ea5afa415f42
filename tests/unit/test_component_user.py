"""Who local components run as: never root when the nucleus is root and the identity can reach the data dir; one
numeric identity per device of the fleet."""

from __future__ import annotations

import os
import pwd
from pathlib import Path
from unittest.mock import Mock

import pytest

from nacelle.local.edge.component_user import (
    MAX_DEVICES,
    MIN_BASE,
    check_base,
    device_id,
    parse,
    reachable,
    resolve,
    runtime_id,
)
from nacelle.local.edge.fleet import Fleet
from nacelle.local.runtime.stack import LocalSettings
from shared.errors import ConfigurationError

BASE = LocalSettings().component_id_base


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


# -- per-device ids ------------------------------------------------------------------------------------------------
def test_device_ids_are_deterministic_distinct_in_range_and_never_root() -> None:
    ids = [device_id(BASE, k) for k in range(1, MAX_DEVICES + 1)]
    assert ids == [device_id(BASE, k) for k in range(1, MAX_DEVICES + 1)]  # a pure function of (base, number)
    assert len(set(ids)) == MAX_DEVICES
    assert min(ids) == BASE + 1 and max(ids) == BASE + MAX_DEVICES
    assert 0 not in ids and runtime_id(BASE) == BASE not in ids  # the shared venvs' owner is no device
    assert all(i >= MIN_BASE for i in ids)  # above every id distributions hand out, nobody (65534) included
    assert device_id(BASE + 1000, 1) != device_id(BASE, 1)  # the base moves the whole range


@pytest.mark.parametrize("base", [0, 1, 1000, 65534, MIN_BASE - 1, 2**31 - MAX_DEVICES, 2**32])
def test_a_base_that_could_meet_root_or_real_users_or_overflow_is_refused(base: int) -> None:
    with pytest.raises(ConfigurationError):
        check_base(base)
    with pytest.raises(ConfigurationError):
        device_id(base, 1)


@pytest.mark.parametrize("number", [0, -1, MAX_DEVICES + 1])
def test_device_numbers_outside_the_fleet_are_refused(number: int) -> None:
    with pytest.raises(ConfigurationError):
        device_id(BASE, number)


def test_settings_validate_the_base_and_zero_turns_isolation_off(tmp_path: Path) -> None:
    assert LocalSettings(component_id_base=0).component_id_base == 0
    assert check_base(BASE) == BASE
    (tmp_path / "config.yaml").write_text("component_id_base: 1000\n")
    with pytest.raises(ConfigurationError, match="component_id_base"):
        LocalSettings.load(tmp_path / "config.yaml")


def test_the_fleet_gives_each_device_its_own_id_as_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    fleet = Fleet(tmp_path, Mock(), size=12, component_id_base=BASE)
    ids = fleet.identities()
    assert ids == Fleet(tmp_path, Mock(), size=12, component_id_base=BASE).identities()
    assert ids["turbine-01"] == f"{BASE + 1}:{BASE + 1}" and ids["turbine-12"] == f"{BASE + 12}:{BASE + 12}"
    assert len(set(ids.values())) == 12
    assert Fleet(tmp_path, Mock(), size=3, component_id_base=BASE).identities()["turbine-02"] == ids["turbine-02"]
    assert Fleet(tmp_path, Mock(), size=3).identities() == {}  # no base: components run as the nucleus


def test_a_fleet_that_is_not_root_cannot_isolate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    fleet = Fleet(tmp_path, Mock(), size=2, component_id_base=BASE)
    assert fleet.identities() == {} and fleet.runtime_user() is None


# -- parsing and resolving -----------------------------------------------------------------------------------------
def test_parse_accepts_greengrass_posix_user_forms() -> None:
    numeric = parse(f"{BASE + 3}:{BASE + 3}")
    assert (numeric.uid, numeric.gid, numeric.spec) == (BASE + 3, BASE + 3, f"{BASE + 3}:{BASE + 3}")
    nobody = pwd.getpwnam("nobody")
    assert (parse("nobody").uid, parse("nobody").gid) == (nobody.pw_uid, nobody.pw_gid)
    assert parse("nobody:12345").gid == 12345
    with pytest.raises(KeyError):
        parse("no-such-user-nacelle")
    with pytest.raises(ValueError):
        parse(f"{2**32}:{2**32}")


@pytest.mark.skipif(os.geteuid() != 0, reason="resolve drops privileges only for a root nucleus")
def test_resolve_as_root(tmp_path: Path) -> None:
    assert resolve("", tmp_path) is None
    assert resolve("no-such-user-nacelle", tmp_path) is None
    assert resolve("root", tmp_path) is None
    assert resolve("0:0", tmp_path) is None
    tmp_path.chmod(0o700)
    if not reachable(tmp_path, 65534, 65534):
        assert resolve("nobody", tmp_path) is None  # cannot reach the data dir: runs as the nucleus, with a warning
        assert resolve(f"{BASE + 1}:{BASE + 1}", tmp_path) is None
    home = Path("/tmp")
    user = resolve("nobody", home)
    assert user is not None and user.uid == pwd.getpwnam("nobody").pw_uid
    device = resolve(f"{BASE + 1}:{BASE + 1}", home)  # no passwd entry needed
    assert device is not None and (device.uid, device.gid) == (BASE + 1, BASE + 1)


def test_not_root_means_the_nucleus_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert resolve("nobody", tmp_path) is None
    assert resolve(f"{BASE + 1}:{BASE + 1}", tmp_path) is None


def test_the_retired_component_user_setting_says_what_replaced_it(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("component_user: nobody\n")
    with pytest.raises(ConfigurationError, match=r"component_user: no longer used.*component_id_base"):
        LocalSettings.load(tmp_path / "config.yaml")
