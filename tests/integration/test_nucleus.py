"""The simulated core device (`python -m nacelle.local.runtime.devicerunner`) against the real LocalGreengrass, with
small test recipes whose lifecycles are short bash scripts (not the real detector)."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nacelle.local.adapters.greengrass import LocalGreengrass
from nacelle.local.adapters.objectstore import FsObjectStore
from nacelle.local.adapters.paths import BUCKET
from nacelle.local.edge.recipes import artifact_digest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

THING = "turbine-01"
GROUP = "nacelle-canary"
GRACE_S = 0.8
WAIT_S = 15.0
# Run: count starts in the work dir, show the configuration it was started with, then wait
RUN = "echo $$ >> '{work:path}/starts'; exec sleep 600"


class Device:
    """One home with LocalGreengrass (cloud side), the object store and a nucleus process."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.gg = LocalGreengrass(home / "greengrass.db")
        self.store = FsObjectStore(home / "objects", BUCKET)
        self.gg.ensure_thing_group(GROUP)
        self.gg.add_thing(THING, GROUP)
        self.root = home / "devices" / THING
        self.proc: subprocess.Popen[bytes] | None = None
        self.tokens = 0

    def start(self, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nacelle.local.runtime.devicerunner", "--thing", THING, "--home", str(self.home),
             "--grace", str(GRACE_S), "--poll", "0.1", *extra],
            stdout=(self.home / "nucleus.out").open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "POWERTOOLS_LOG_LEVEL": "INFO"})

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)  # the nucleus alone: its components must follow by themselves
        self.proc.wait(10)

    def component(self, name: str, version: str, run: str = RUN, install: str | None = None,
                  deps: dict[str, Any] | None = None, defaults: dict[str, Any] | None = None,
                  files: dict[str, bytes] | None = None, bad_digest: bool = False) -> None:
        artifacts = []
        for file, data in (files or {}).items():
            key = f"components/{name}/{version}/{file}"
            self.store.put(key, data)
            digest = artifact_digest(b"something else" if bad_digest else data)
            artifacts.append({"URI": f"s3://{BUCKET}/{key}", "Digest": digest, "Algorithm": "SHA-256",
                              **({"Unarchive": "ZIP"} if file.endswith(".zip") else {})})
        lifecycle: dict[str, Any] = {"Run": {"Script": run, "RequiresPrivilege": False}}
        if install:
            lifecycle["Install"] = {"Script": install, "Timeout": 20}
        recipe: dict[str, Any] = {
            "RecipeFormatVersion": "2020-01-25", "ComponentName": name, "ComponentVersion": version,
            "ComponentConfiguration": {"DefaultConfiguration": defaults or {}},
            "Manifests": [{"Platform": {"os": "linux"}, "Artifacts": artifacts, "Lifecycle": lifecycle}]}
        if deps:
            recipe["ComponentDependencies"] = deps
        self.gg.create_component_version(recipe)

    def deploy(self, components: dict[str, dict[str, Any]]) -> str:
        self.tokens += 1
        return self.gg.create_deployment(
            self.gg.thing_group_arn(GROUP), f"test-{self.tokens}", components,
            {"failureHandlingPolicy": "ROLLBACK"}, {}, f"token-{self.tokens}")

    def execution(self, deployment_id: str) -> Any:
        found = [e for e in self.gg.executions(deployment_id) if e.thing == THING]
        return found[0] if found else None

    def wait_terminal(self, deployment_id: str) -> Any:
        def done() -> Any:
            e = self.execution(deployment_id)
            return e if e is not None and e.status in ("SUCCEEDED", "FAILED") else None
        return wait(done, f"a terminal status of {deployment_id}")

    def starts(self, name: str) -> list[int]:
        path = self.root / "work" / name / "starts"
        return [int(x) for x in path.read_text().split()] if path.is_file() else []

    def config(self, name: str) -> dict[str, Any]:
        return dict(json.loads((self.root / "config" / f"{name}.json").read_text()))

    def bus_events(self) -> list[dict[str, Any]]:
        db = sqlite3.connect(self.home / "bus.db")
        try:
            return [json.loads(body) for (body,) in db.execute("SELECT body FROM events ORDER BY put_at")]
        finally:
            db.close()

    def log(self) -> str:
        return (self.home / "nucleus.out").read_text(errors="replace")[-3000:]


def wait(predicate: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Device]:
    d = Device(tmp_path / "home")
    yield d
    if d.proc is not None and d.proc.poll() is None:
        d.kill(signal.SIGTERM)


def bundle(text: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("manifest.json", json.dumps({"model": text}))
    return buf.getvalue()


MODEL = "nacelle.model"
DETECTOR = "nacelle.detector"
SOFT = {MODEL: {"VersionRequirement": ">=1.0.0", "DependencyType": "SOFT"}}
HARD = {MODEL: {"VersionRequirement": ">=1.0.0", "DependencyType": "HARD"}}
DETECTOR_DEFAULTS = {"model": {"component": MODEL, "version": ""}, "healthIntervalSeconds": 60}


def release(version: str) -> dict[str, dict[str, Any]]:
    merge = json.dumps({"model": {"version": version}})
    return {MODEL: {"componentVersion": version},
            DETECTOR: {"componentVersion": "1.0.0", "configurationUpdate": {"merge": merge}},
            "nacelle.hard": {"componentVersion": "1.0.0"}}


def first_release(d: Device) -> str:
    """model 1.0.0 (a zipped bundle), a detector with a SOFT and a watcher with a HARD dependency on it."""
    d.component(MODEL, "1.0.0", files={"bundle.zip": bundle("one")},
                install="test -f '{artifacts:decompressedPath}/bundle/manifest.json'")
    d.component(DETECTOR, "1.0.0", deps=SOFT, defaults=DETECTOR_DEFAULTS,
                install="printf %s \"$NACELLE_DEVICE_CONFIG\" > '{work:path}/device-config-path'")
    d.component("nacelle.hard", "1.0.0", deps=HARD)
    dep = d.deploy(release("1.0.0"))
    d.start()
    e = d.wait_terminal(dep)
    assert e.status == "SUCCEEDED", (e, d.log())
    return dep


def test_apply_then_soft_update_keeps_the_dependant_running(device: Device) -> None:
    d = device
    (d.home / "capture-gateway").mkdir(parents=True)
    (d.home / "capture-gateway" / "port").write_text("4443\n")  # the stack's capture gateway
    first = first_release(d)
    assert (d.root / "packages/artifacts/nacelle.model/1.0.0/bundle.zip").is_file()
    assert json.loads((d.root / "packages/artifacts-unarchived/nacelle.model/1.0.0/bundle/manifest.json")
                      .read_text()) == {"model": "one"}
    assert d.config(DETECTOR)["model"] == {"component": MODEL, "version": "1.0.0"}
    device_config = json.loads(Path((d.root / "work" / DETECTOR / "device-config-path").read_text()).read_text())
    assert device_config["configuration"] == str(d.root / "config" / f"{DETECTOR}.json")
    assert device_config["cert"].endswith(f"{THING}.pem") and device_config["work"] == str(d.root / "work" / DETECTOR)
    assert device_config["capture_url"] == "https://127.0.0.1:4443"  # where its captured data goes
    detector_pid = d.starts(DETECTOR)[0]
    assert [len(d.starts(c)) for c in (MODEL, DETECTOR, "nacelle.hard")] == [1, 1, 1]
    assert d.gg.devices()[0].components == {MODEL: "1.0.0", DETECTOR: "1.0.0", "nacelle.hard": "1.0.0"}

    d.component(MODEL, "2.0.0", files={"bundle.zip": bundle("two")})
    second = d.deploy(release("2.0.0"))
    e = d.wait_terminal(second)
    assert e.status == "SUCCEEDED", (e, d.log())
    assert d.config(DETECTOR)["model"]["version"] == "2.0.0"  # rewritten: the detector hot-swaps
    assert d.starts(DETECTOR) == [detector_pid] and alive(detector_pid)  # SOFT: never restarted
    assert len(d.starts(MODEL)) == 2 and len(d.starts("nacelle.hard")) == 2  # HARD: restarted with its dependency
    assert d.gg.devices()[0].components[MODEL] == "2.0.0"

    # the status-change events reached the bus, AWS-shaped
    events = [ev for ev in d.bus_events() if ev["source"] == "aws.greengrass"]
    assert [(ev["detail"]["deploymentId"], ev["detail"]["coreDeviceExecutionStatus"]) for ev in events] == \
        [(first, "SUCCEEDED"), (second, "SUCCEEDED")]
    assert events[0]["detail-type"] == "Greengrass V2 Effective Deployment Status Change"
    assert events[0]["resources"][0].endswith(f":coreDevices:{THING}")

    # SIGTERM: the components stop with the nucleus
    pids = [d.starts(c)[-1] for c in (MODEL, DETECTOR, "nacelle.hard")]
    d.kill(signal.SIGTERM)
    assert d.proc is not None and d.proc.returncode == 0
    wait(lambda: not any(alive(p) for p in pids), "the components to stop")


def test_digest_mismatch_fails_and_keeps_the_previous_components(device: Device) -> None:
    d = device
    first_release(d)
    before = {c: d.starts(c) for c in (MODEL, DETECTOR, "nacelle.hard")}
    d.component(MODEL, "3.0.0", files={"bundle.zip": bundle("three")}, bad_digest=True)
    dep = d.deploy(release("3.0.0"))
    e = d.wait_terminal(dep)
    assert e.status == "FAILED"
    assert e.error_stack[0] == "DEPLOYMENT_FAILURE" and "ARTIFACT_CHECKSUM_MISMATCH" in e.error_stack
    assert "bundle.zip" in e.reason and "digest" in e.reason
    assert {c: d.starts(c) for c in before} == before and all(alive(p[0]) for p in before.values())
    assert d.config(DETECTOR)["model"]["version"] == "1.0.0"
    assert not (d.root / "packages/artifacts/nacelle.model/3.0.0/bundle.zip").exists()
    assert d.gg.devices()[0].components[MODEL] == "1.0.0"
    failed = [ev for ev in d.bus_events() if ev["detail"].get("deploymentId") == dep]
    assert [ev["detail"]["coreDeviceExecutionStatus"] for ev in failed] == ["FAILED"]
    assert "ARTIFACT_CHECKSUM_MISMATCH" in failed[0]["detail"]["statusDetails"]["errorStack"]


def test_a_run_failing_at_start_rolls_back(device: Device) -> None:
    d = device
    first_release(d)
    old_detector = d.starts(DETECTOR)[0]
    d.component(MODEL, "4.0.0", files={"bundle.zip": bundle("four")})
    d.component(DETECTOR, "2.0.0", deps=SOFT, defaults=DETECTOR_DEFAULTS,
                run="echo starting 2.0.0; echo $$ >> '{work:path}/broken-starts'; exit 3")
    components = release("4.0.0")
    components[DETECTOR]["componentVersion"] = "2.0.0"
    dep = d.deploy(components)
    e = d.wait_terminal(dep)
    assert e.status == "FAILED", d.log()
    assert e.error_stack == ("DEPLOYMENT_FAILURE", "COMPONENT_UPDATE_ERROR", "COMPONENT_BROKEN")
    assert "nacelle.detector is BROKEN" in e.reason and "status 3" in e.reason and "rolled back" in e.reason
    assert (d.root / "work" / DETECTOR / "broken-starts").is_file()
    # the previous set is back: detector 1.0.0 (restarted once), model 1.0.0, configuration 1.0.0
    assert not alive(old_detector) and len(d.starts(DETECTOR)) == 2 and alive(d.starts(DETECTOR)[-1])
    assert d.config(DETECTOR)["model"]["version"] == "1.0.0"
    assert d.gg.devices()[0].components == {MODEL: "1.0.0", DETECTOR: "1.0.0", "nacelle.hard": "1.0.0"}
    assert "starting 2.0.0" in (d.root / "logs" / f"{DETECTOR}.log").read_text()
    state = json.loads((d.root / "state.json").read_text())
    assert state["handled"][dep] == "FAILED" and state["components"][DETECTOR]["version"] == "1.0.0"


def test_an_install_failure_rolls_back(device: Device) -> None:
    d = device
    first_release(d)
    d.component("nacelle.extra", "1.0.0", install="echo no disk; exit 7")
    components = release("1.0.0")
    components["nacelle.extra"] = {"componentVersion": "1.0.0"}
    e = d.wait_terminal(d.deploy(components))
    assert e.status == "FAILED" and "nacelle.extra is BROKEN: its Install step exited with status 7" in e.reason
    assert "nacelle.extra" not in d.gg.devices()[0].components
    assert len(d.starts(DETECTOR)) == 1  # untouched by the failed deployment


def test_a_nucleus_killed_mid_deployment_converges_after_restart(device: Device) -> None:
    d = device
    first_release(d)
    d.component(MODEL, "5.0.0", files={"bundle.zip": bundle("five")},
                install="echo $$ > '{work:path}/installing'; sleep 2")
    dep = d.deploy(release("5.0.0"))
    installing = d.root / "work" / MODEL / "installing"
    # the shell creates the file before `echo` writes the pid into it
    wait(lambda: installing.is_file() and installing.read_text().strip(), "the slow install to start")
    installer = int(installing.read_text())
    assert d.execution(dep).status == "IN_PROGRESS"
    running = [d.starts(c)[-1] for c in (DETECTOR, "nacelle.hard")]
    d.kill(signal.SIGKILL)
    # the killed nucleus's children follow it (parent-death signal)
    wait(lambda: not any(alive(p) for p in [*running, installer]), "orphans to die")
    d.start()
    e = d.wait_terminal(dep)
    assert e.status == "SUCCEEDED", (e, d.log())
    assert d.config(DETECTOR)["model"]["version"] == "5.0.0"
    assert alive(d.starts(DETECTOR)[-1]) and alive(d.starts(MODEL)[-1])
    assert d.gg.devices()[0].components[MODEL] == "5.0.0"
    state = json.loads((d.root / "state.json").read_text())
    assert state["applied"] == dep and state["pending"] is None


# -- the fleet: provisioning, supervision, status ------------------------------------------------------------------
def test_fleet_provisions_supervises_and_reports(tmp_path: Path) -> None:
    from nacelle.local.adapters.state import SqliteStateStore
    from nacelle.local.edge.fleet import CANARY_GROUP, FLEET_GROUP, Fleet

    home = tmp_path / "home"
    gg = LocalGreengrass(home / "greengrass.db")
    state, alerts = SqliteStateStore(home / "state.db"), SqliteStateStore(home / "alerts.db")
    fleet = Fleet(home, gg, size=3, canary_size=1, state=state, alerts=alerts, simulators=False,
                  nucleus_args=["--grace", str(GRACE_S), "--poll", "0.1"])
    with fleet:
        assert fleet.things == ["turbine-01", "turbine-02", "turbine-03"]
        assert gg.things_in_group(CANARY_GROUP) == ["turbine-01"]
        assert gg.things_in_group(FLEET_GROUP) == ["turbine-02", "turbine-03"]
        assert all((home / "pki" / "clients" / f"{t}.pem").is_file() for t in fleet.things)

        store = FsObjectStore(home / "objects", BUCKET)
        store.put("components/c/1.0.0/a.txt", b"hello")
        gg.create_component_version({
            "RecipeFormatVersion": "2020-01-25", "ComponentName": "c", "ComponentVersion": "1.0.0",
            "Manifests": [{"Artifacts": [{"URI": f"s3://{BUCKET}/components/c/1.0.0/a.txt",
                                          "Digest": artifact_digest(b"hello")}],
                           "Lifecycle": {"Run": "exec sleep 600"}}]})
        dep = gg.create_deployment(gg.thing_group_arn(CANARY_GROUP), "canary", {"c": {"componentVersion": "1.0.0"}},
                                   {}, {}, "fleet-token")
        wait(lambda: [e.status for e in gg.executions(dep)] == ["SUCCEEDED"], "the canary to succeed")
        # the digest cache is shared by the devices
        assert len(list((home / "greengrass" / "artifact-cache").iterdir())) == 1

        # a crashed nucleus is restarted, and converges again
        victim = fleet.procs["turbine-01/nucleus"].popen
        assert victim is not None
        victim.kill()
        wait(lambda: fleet.procs["turbine-01/nucleus"].restarts == 1, "the nucleus to be restarted", timeout=10)

        alerts.put("alerts", "episode#e1", {"kind": "episode", "turbine_id": "turbine-02", "status": "open"})
        state.put("devices", "turbine-02", {"thing_name": "turbine-02", "model_version": 7, "last_health_at": 1.0,
                                            "inference_rate_hz": 2.5})
        rows = {r["thing"]: r for r in fleet.status()}
        assert rows["turbine-01"]["deployment"]["status"] == "SUCCEEDED"
        assert rows["turbine-01"]["components"] == {"c": "1.0.0"} and rows["turbine-01"]["groups"] == [CANARY_GROUP]
        assert rows["turbine-02"]["deployment"] is None and rows["turbine-02"]["model_version"] == 7
        assert rows["turbine-02"]["episodes"] == {"total": 1, "open": 1}
        assert rows["turbine-01"]["processes"]["nucleus"].startswith("running")
        pids = [m.popen.pid for m in fleet.procs.values() if m.popen is not None]
        component_pid = wait(lambda: (home / "devices/turbine-01/procs.json").is_file() and json.loads(
            (home / "devices/turbine-01/procs.json").read_text()).get("c", {}).get("pid"), "c to run")
    assert not any(alive(p) for p in [*pids, component_pid])
    assert not (home / "fleet.json").exists()
    # status also works without running processes (the CLI's view)
    rows = {r["thing"]: r for r in Fleet(home, gg, size=0, canary_size=0).status()}
    assert rows["turbine-03"]["processes"] == {"nucleus": "stopped", "simulator": "stopped"}


@pytest.mark.skipif(os.geteuid() != 0, reason="only a nucleus started as root drops to the component user")
def test_a_root_nucleus_runs_unprivileged_steps_as_the_component_user(tmp_path_factory: pytest.TempPathFactory
                                                                       ) -> None:
    import pwd
    import tempfile

    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="nacelle-nucleus-user-", dir="/tmp"))  # pytest's tmp is 0700: unreachable
    base.chmod(0o755)
    d = Device(base / "home")
    try:
        run = "id -u > '{work:path}/uid'; cat \"$NACELLE_DEVICE_CONFIG\" > '{work:path}/device.json'; exec sleep 600"
        d.component("c", "1.0.0", run=run)
        d.component("p", "1.0.0", run="id -u > '{work:path}/uid'; exec sleep 600")
        stored = d.gg.get_component("p", "1.0.0")
        assert stored is not None
        recipe = stored.recipe
        recipe = {**recipe, "ComponentVersion": "1.0.1"}
        recipe["Manifests"] = [{**recipe["Manifests"][0], "Lifecycle": {
            "Run": {"Script": "id -u > '{work:path}/uid'; exec sleep 600", "RequiresPrivilege": True}}}]
        d.gg.create_component_version(recipe)
        (d.home / "pki" / "clients").mkdir(parents=True)
        (d.home / "pki" / "clients" / f"{THING}.key").write_text("secret")
        (d.home / "pki" / "clients" / f"{THING}.key").chmod(0o600)
        d.start("--component-user", "nobody")
        dep = d.deploy({"c": {"componentVersion": "1.0.0"}, "p": {"componentVersion": "1.0.1"}})
        assert d.wait_terminal(dep).status == "SUCCEEDED", d.log()
        uid = wait(lambda: (d.root / "work/c/uid").is_file() and (d.root / "work/c/uid").read_text().strip(), "c")
        assert int(uid) == nobody.pw_uid  # never root
        assert int(wait(lambda: (d.root / "work/p/uid").read_text().strip(), "p")) == 0  # RequiresPrivilege
        key = Path(json.loads(wait(lambda: (d.root / "work/c/device.json").read_text(), "device.json"))["key"])
        assert key.read_text() == "secret" and key.stat().st_uid == nobody.pw_uid and key.stat().st_mode & 0o077 == 0
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.kill(signal.SIGTERM)
        subprocess.run(["rm", "-rf", str(base)], check=False)


# -- per-device isolation of credentials (a root fleet) -------------------------------------------------------------
# Install step of `probe`: what this device's identity may read of its own credentials and of the other device's
PROBE = b'''
import json, os, sys
from pathlib import Path

out, home, *things = sys.argv[1:]
me = os.environ["AWS_IOT_THING_NAME"]
(other,) = [t for t in things if t != me]
device = json.loads(Path(os.environ["NACELLE_DEVICE_CONFIG"]).read_text())


def attempt(action, path):
    try:
        action(path)
        return "ok"
    except PermissionError:
        return "denied"
    except OSError as e:
        return type(e).__name__


def read(path):
    Path(path).read_bytes()


def create(path):
    Path(path).write_text("x")


theirs = f"{home}/devices/{other}"
result = {
    "thing": me, "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "home": os.environ["HOME"],
    "venvs": os.environ.get("NACELLE_VENVS_ROOT"), "secret": os.environ.get("AWS_SECRET_ACCESS_KEY"),
    "device": device,
    "own": {"key": attempt(read, device["key"]), "cert": attempt(read, device["cert"]),
            "ca": attempt(read, device["ca"]), "ca_env": attempt(read, os.environ["GG_ROOT_CA_PATH"]),
            "config": attempt(read, device["configuration"]),
            "spool": attempt(read, f"{device['work']}/../c/spool.db")},
    "other": {"key": attempt(read, f"{home}/pki/clients/{other}.key"),
              "key_copy": attempt(read, f"{theirs}/credentials/{other}.key"),
              "work": attempt(os.listdir, f"{theirs}/work/c"), "spool": attempt(read, f"{theirs}/work/c/spool.db"),
              "log": attempt(read, f"{theirs}/logs/c.log"), "root": attempt(os.listdir, theirs)},
    "shared": {"venvs_write": attempt(create, f"{os.environ.get('NACELLE_VENVS_ROOT')}/planted"),
               "ca_key": attempt(read, f"{home}/pki/ca.key")},
}
Path(out).write_text(json.dumps(result))
'''


@pytest.mark.skipif(os.geteuid() != 0, reason="per-device identities need a root fleet (setuid to their ids)")
def test_a_device_component_cannot_read_another_devices_key_or_work_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from nacelle.local.edge.component_user import device_id, runtime_id
    from nacelle.local.edge.fleet import FLEET_GROUP, Fleet
    from nacelle.local.runtime.stack import LocalSettings

    base = LocalSettings().component_id_base
    tmp = Path(tempfile.mkdtemp(prefix="nacelle-isolation-", dir="/tmp"))  # pytest's tmp is 0700: unreachable
    tmp.chmod(0o755)
    home = tmp / "home"
    gg = LocalGreengrass(home / "greengrass.db")
    store = FsObjectStore(home / "objects", BUCKET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "the-operator's")  # the nuclei inherit it; components must not
    fleet = Fleet(home, gg, size=2, canary_size=0, simulators=False, component_id_base=base,
                  nucleus_args=["--grace", str(GRACE_S), "--poll", "0.1"])
    things = fleet.things

    def component(name: str, lifecycle: dict[str, Any], files: dict[str, bytes]) -> None:
        artifacts = []
        for file, data in files.items():
            store.put(f"components/{name}/1.0.0/{file}", data)
            artifacts.append({"URI": f"s3://{BUCKET}/components/{name}/1.0.0/{file}", "Digest": artifact_digest(data)})
        gg.create_component_version({"RecipeFormatVersion": "2020-01-25", "ComponentName": name,
                                     "ComponentVersion": "1.0.0",
                                     "Manifests": [{"Artifacts": artifacts, "Lifecycle": lifecycle}]})

    def deploy(components: dict[str, Any], token: str) -> None:
        dep = gg.create_deployment(gg.thing_group_arn(FLEET_GROUP), token, components, {}, {}, token)
        wait(lambda: [e.status for e in gg.executions(dep)] == ["SUCCEEDED"] * 2, f"{token} on both devices")

    component("c", {"Run": {"Script": "echo spool > '{work:path}/spool.db'; echo started; exec sleep 600"}}, {})
    component("probe", {"Install": {"Script": f"python3 -u '{{artifacts:path}}/probe.py' '{{work:path}}/probe.json' "
                                              f"'{home}' {' '.join(things)}", "RequiresPrivilege": False}},
              {"probe.py": PROBE})
    try:
        with fleet:
            deploy({"c": {"componentVersion": "1.0.0"}}, "first")  # both devices hold their credentials and spool
            for thing in things:
                wait((home / f"devices/{thing}/work/c/spool.db").is_file, f"{thing}'s spool")
            deploy({"c": {"componentVersion": "1.0.0"}, "probe": {"componentVersion": "1.0.0"}}, "probe")
            results = {t: json.loads((home / f"devices/{t}/work/probe/probe.json").read_text()) for t in things}
            modes = {t: _modes(home / "devices" / t, t) for t in things}
            pids = [m.popen.pid for m in fleet.procs.values() if m.popen is not None]
            pids += [json.loads((home / f"devices/{t}/procs.json").read_text())["c"]["pid"] for t in things]
        assert not any(alive(p) for p in pids)
        venvs = (home / "greengrass" / "venvs").stat()
        assert (venvs.st_uid, venvs.st_gid, venvs.st_mode & 0o777) == (runtime_id(base), runtime_id(base), 0o755)
    finally:
        fleet.stop()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)

    for number, thing in enumerate(things, start=1):
        r = results[thing]
        other = next(t for t in things if t != thing)
        ident = device_id(base, number)
        assert r["uid"] == r["gid"] == ident, r  # the nucleus's real code path, its own identity
        assert modes[thing] == {"root": (0, ident, 0o750), "credentials": (0, ident, 0o750),
                                "key": (ident, ident, 0o600), "cert": (ident, ident, 0o600),
                                "work": (ident, ident, 0o700), "spool": (ident, ident, 0o644),
                                "config": (ident, ident, 0o600), "log": (0, 0, 0o600)}, modes[thing]
        assert set(r["groups"]) <= {r["gid"]}  # none of root's groups
        assert r["own"] == dict.fromkeys(r["own"], "ok"), r  # its own key, certificate, CA, config and spool
        assert r["device"]["key"] == str(home / f"devices/{thing}/credentials/{thing}.key")
        assert r["device"]["ca"] == str(home / "pki" / "ca.pem")  # the shared CA, not a copy
        # the other device's key (the original and the copy), work dir, spool, log: a permission error, not absence
        assert r["other"] == dict.fromkeys(r["other"], "denied"), (thing, other, r["other"])
        assert r["shared"] == {"venvs_write": "denied", "ca_key": "denied"}
        assert r["venvs"] == str(home / "greengrass" / "venvs") and r["home"] == r["device"]["work"]
        assert r["secret"] is None
    assert results[things[0]]["uid"] != results[things[1]]["uid"] != runtime_id(base)


def _modes(root: Path, thing: str) -> dict[str, tuple[int, int, int]]:
    """(uid, gid, mode) of what a device keeps from the others (each must exist: a denial is not an absence)."""
    paths = {"root": root, "credentials": root / "credentials", "key": root / f"credentials/{thing}.key",
             "cert": root / f"credentials/{thing}.pem", "work": root / "work/c", "spool": root / "work/c/spool.db",
             "config": root / "config/c.device.json", "log": root / "logs/c.log"}
    return {name: (st.st_uid, st.st_gid, st.st_mode & 0o777) for name, st in ((n, p.stat()) for n, p in paths.items())}


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="per-device identities need a root fleet (setuid to their ids)")
def test_isolated_devices_share_the_venv_the_fleet_builds_and_wait_for_it() -> None:
    import tempfile

    from nacelle.components import COMPONENT_DIR, WHEELHOUSE
    from nacelle.local.edge.component_user import runtime_id
    from nacelle.local.edge.fleet import FLEET_GROUP, Fleet
    from nacelle.local.runtime.stack import LocalSettings

    if not any(WHEELHOUSE.glob("*.whl")):
        pytest.skip(f"{WHEELHOUSE} has no wheels: run `make wheelhouse`")
    base = LocalSettings().component_id_base
    tmp = Path(tempfile.mkdtemp(prefix="nacelle-venvs-", dir="/tmp"))
    tmp.chmod(0o755)
    home = tmp / "home"
    gg = LocalGreengrass(home / "greengrass.db")
    store = FsObjectStore(home / "objects", BUCKET)
    files = {"install_venv.py": (COMPONENT_DIR / "src/detector/install_venv.py").read_bytes(),
             "requirements.txt": (COMPONENT_DIR / "requirements.txt").read_bytes()}
    for file, data in files.items():
        store.put(f"components/v/1.0.0/{file}", data)
    install = ("python3 -u '{artifacts:path}/install_venv.py' --requirements '{artifacts:path}/requirements.txt' "
               f"--wheels '{WHEELHOUSE}' --venvs-root '' --default-venvs-root '{{work:path}}/venvs' "
               "--record '{work:path}/venv'")
    gg.create_component_version({"RecipeFormatVersion": "2020-01-25", "ComponentName": "v", "ComponentVersion": "1.0.0",
                                 "Manifests": [{"Artifacts": [{"URI": f"s3://{BUCKET}/components/v/1.0.0/{f}",
                                                               "Digest": artifact_digest(d)} for f, d in files.items()],
                                                "Lifecycle": {"Install": {"Script": install, "Timeout": 60}}}]})
    fleet = Fleet(home, gg, size=2, canary_size=0, simulators=False, component_id_base=base,
                  nucleus_args=["--grace", str(GRACE_S), "--poll", "0.1"])
    try:
        with fleet:
            fleet.prepare_runtime()  # in the background: the devices' Install steps start during the build
            dep = gg.create_deployment(gg.thing_group_arn(FLEET_GROUP), "v", {"v": {"componentVersion": "1.0.0"}},
                                       {}, {}, "v")

            def finished() -> list[Any] | None:
                runs = gg.executions(dep)
                return runs if len(runs) == 2 and all(e.status in ("SUCCEEDED", "FAILED") for e in runs) else None

            done = wait(finished, "v to finish on both devices", 40)
            assert [e.status for e in done] == ["SUCCEEDED"] * 2, [e.reason for e in done]
            assert fleet._prepare is not None and fleet._prepare.wait(30) == 0
            recorded = {(home / f"devices/{t}/work/v/venv").read_text().strip() for t in fleet.things}
            (venv,) = recorded  # one venv for both devices: the one the fleet built
            assert Path(venv).parent == fleet.venvs_root and (Path(venv) / ".nacelle-complete").is_file()
            assert Path(venv).stat().st_uid == runtime_id(base)  # no device owns code another device runs
            assert not any((home / f"devices/{t}/work/v/venvs").exists() for t in fleet.things)
    finally:
        fleet.stop()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
