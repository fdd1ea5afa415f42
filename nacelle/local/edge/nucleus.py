"""A simulated Greengrass core device, run as a process by `python -m nacelle.local.runtime.devicerunner`.

It applies the deployments LocalGreengrass targets at the thing (to the thing itself or to its thing groups, each
merged with what the other targets last deployed to it, as Greengrass v2 does), from the same recipes the real
nucleus uses: resolve → fetch and verify artifacts (shared by-digest cache) → unarchive → write each component's
effective configuration → Install → Run, watched for `grace_s` (a deployment that starts no Run process, such as a
new model bundle, is not watched). A component whose Install fails or whose Run exits
non-zero within the grace is BROKEN: the previous components come back (failureHandlingPolicy ROLLBACK) and
the execution is FAILED. A component whose version and interpolated lifecycle are unchanged keeps running;
only its configuration file is rewritten (the detector hot-swaps). `<root>/state.json` remembers the applied
deployment and components, so a killed device restarts them and re-applies an unfinished deployment.

Components run in their own process group; steps without `RequiresPrivilege` run as the device's component
identity when the nucleus is root (nacelle/local/edge/component_user.py), otherwise as the nucleus's own user. They die
with the nucleus (SIGTERM handler, PR_SET_PDEATHSIG, and stale groups recorded in `<root>/procs.json` are
killed at start-up).

With a component identity, other devices cannot read this device's files: `<root>` is root:<its gid> 0750, each
work dir (spool included) is the identity's and 0700, its certificate and private key are copied, the identity's
and 0600, into `<root>/credentials/`, configuration files are the identity's and 0600, logs and state are the
nucleus's and 0600. The shared CA certificate, the artifacts and the shared venvs stay readable. Components get
no IPC variables (they use MQTT, from `NACELLE_DEVICE_CONFIG`: with the device's certificate and client id, or
nacelle.sensors with the turbine's sensor source's, `mqtt_identity`) and none of the operator's AWS credentials.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from nacelle.local.adapters.objectstore import FsObjectStore
from nacelle.local.edge import recipes
from nacelle.local.edge.capture_gateway import gateway_url
from nacelle.local.edge.component_user import ComponentUser
from nacelle.local.edge.component_user import resolve as resolve_user
from nacelle.local.edge.pki import SENSOR_SOURCE
from nacelle.local.edge.recipes import DevicePaths, RecipeError
from shared.components import SENSORS_COMPONENT
from shared.errors import Conflict, NacelleError, NotFound
from shared.observability import logger

POLL_S = 0.3
HEARTBEAT_S = 2.0
GRACE_S = 5.0
INSTALL_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 5.0
MAX_RESTARTS = 3
# components that talk MQTT as an identity of their own (CN and client id `<thing><suffix>`, nacelle/local/edge/pki.py)
COMPONENT_IDENTITIES = {SENSORS_COMPONENT: SENSOR_SOURCE}
_KEEP_HANDLED = 50
# variables that would make a component believe it runs under a real nucleus (IPC)
_IPC_ENV = ("SVCUID", "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT", "AWS_CONTAINER_AUTHORIZATION_TOKEN")
# the operator's cloud credentials (Greengrass hands components credentials only through its token exchange service)
_CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                   "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
                   "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")


class DeviceGreengrass(Protocol):
    """The device-side API of nacelle/local/adapters/greengrass.py that the nucleus uses."""

    def target_for(self, thing: str) -> Any: ...

    def report(self, thing: str, deployment_id: str, status: str, reason: str = "",
               error_stack: tuple[str, ...] = (), error_types: tuple[str, ...] = (),
               components: Mapping[str, str] | None = None) -> None: ...

    def heartbeat(self, thing: str) -> None: ...

    def get_component(self, name: str, version: str) -> Any: ...


class DeploymentFailed(NacelleError):
    """The deployment cannot be applied; carries the Greengrass error stack and types."""

    def __init__(self, reason: str, error_stack: tuple[str, ...], error_types: tuple[str, ...]) -> None:
        super().__init__(reason)
        self.error_stack = error_stack
        self.error_types = error_types


@contextlib.contextmanager
def resolution_failures() -> Iterator[None]:
    """Resolving a deployment's components: a missing version, unmet requirements or a bad recipe become the
    DeploymentFailed a Greengrass nucleus reports for them."""
    try:
        yield
    except NotFound as e:
        raise DeploymentFailed(str(e), ("DEPLOYMENT_FAILURE", "NO_AVAILABLE_COMPONENT_VERSION"),
                               ("REQUEST_ERROR",)) from e
    except recipes.ResolutionError as e:
        raise DeploymentFailed(str(e), ("DEPLOYMENT_FAILURE", "COMPONENT_VERSION_REQUIREMENTS_NOT_MET"),
                               ("REQUEST_ERROR",)) from e
    except RecipeError as e:
        raise DeploymentFailed(str(e), ("DEPLOYMENT_FAILURE", "RECIPE_PARSE_ERROR"),
                               ("COMPONENT_RECIPE_ERROR",)) from e


class Interrupted(NacelleError):
    """The nucleus was asked to stop in the middle of a deployment (it re-applies it on restart)."""


@dataclass
class ComponentState:
    """What decides whether a component restarts, and what restarting it needs (persisted in state.json)."""

    name: str
    version: str
    config: dict[str, Any]
    lifecycle: dict[str, Any]
    deps: list[str] = field(default_factory=list)  # every dependency (start order)
    hard_deps: list[str] = field(default_factory=list)  # a restart of one of these restarts this one


@dataclass
class _Proc:
    popen: subprocess.Popen[bytes]
    started: float
    restarts: int = 0


def die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def process_start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _write_private(path: Path, data: bytes, owner: ComponentUser) -> None:
    """Atomic, 0600 and `owner`'s before it holds any data."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.fchown(fd, owner.uid, owner.gid)
        os.write(fd, data)
    finally:
        os.close(fd)
    tmp.replace(path)


def write_json(path: Path, doc: Any, owner: ComponentUser | None = None) -> None:
    """Atomic: a reader sees the old file or the new one, never a partial one (nor one it may not read yet)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2, sort_keys=True)
        if owner is not None:
            owner.own(Path(tmp))
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def mqtt_identity(thing: str, component: str) -> str:
    """Whom a component connects to the local broker as: its certificate's CN and its client id. nacelle.sensors
    as the turbine's sensor source (`<thing>.sensors`: it may write the turbine's sensor topics only, and never
    touches the detector's session); every other component as the device (`<thing>`)."""
    return thing + COMPONENT_IDENTITIES.get(component, "")


class Nucleus:
    def __init__(self, thing: str, home: Path, greengrass: DeviceGreengrass, *, grace_s: float = GRACE_S,
                 poll_s: float = POLL_S, install_timeout_s: float = INSTALL_TIMEOUT_S,
                 stop_timeout_s: float = STOP_TIMEOUT_S, component_user: str = "", root: Path | None = None) -> None:
        self.thing = thing
        self.home = Path(home).resolve()
        self.user = resolve_user(component_user, self.home)
        self.venvs = self.home / "greengrass" / "venvs"
        self.gg = greengrass
        self.paths = DevicePaths(Path(root) if root is not None else self.home / "devices" / thing, thing)
        self.root = self.paths.root
        self.cache = self.home / "greengrass" / "artifact-cache"
        self.grace_s, self.poll_s = grace_s, poll_s
        self.install_timeout_s, self.stop_timeout_s = install_timeout_s, stop_timeout_s
        self.components: dict[str, ComponentState] = {}
        self.procs: dict[str, _Proc] = {}
        self.broken: set[str] = set()
        self.applied: str | None = None
        self.pending: str | None = None  # the deployment being applied (re-applied after a crash)
        self.handled: dict[str, str] = {}  # deployment id -> terminal status reported
        self.stopping = False
        self._last_heartbeat = 0.0

    # ------------------------------------------------------------------ persistence
    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    def _load(self) -> str | None:
        try:
            doc = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise NacelleError(f"{self.state_path}: unreadable device state ({e}); delete it to start afresh") from e
        self.applied = doc.get("applied")
        self.handled = dict(doc.get("handled") or {})
        self.components = {n: ComponentState(**c) for n, c in (doc.get("components") or {}).items()}
        self.pending = doc.get("pending")
        return self.pending

    def _save(self) -> None:
        handled = dict(list(self.handled.items())[-_KEEP_HANDLED:])
        write_json(self.state_path, {"thing": self.thing, "applied": self.applied, "pending": self.pending,
                                      "handled": handled,
                                      "components": {n: asdict(c) for n, c in self.components.items()}})

    def _save_procs(self) -> None:
        write_json(self.root / "procs.json", {n: {"pid": p.popen.pid, "start": process_start_time(p.popen.pid)}
                                               for n, p in self.procs.items() if p.popen.poll() is None})

    def _kill_stale(self) -> None:
        """Process groups left by a nucleus that was killed (SIGKILL skips our handler)."""
        try:
            stale = json.loads((self.root / "procs.json").read_text())
        except (OSError, ValueError):
            return
        for entry in stale.values():
            pid = int(entry.get("pid", 0))
            if pid > 1 and entry.get("start") and process_start_time(pid) == entry["start"]:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
        (self.root / "procs.json").unlink(missing_ok=True)

    # ------------------------------------------------------------------ main loop
    def run(self) -> int:
        for d in ("packages", "work", "config", "logs"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            self._isolate()
        self._kill_stale()
        pending = self._load()
        if pending:
            logger.info("re-applying the deployment a previous run did not finish", thing=self.thing,
                        deployment_id=pending)
        self._restore()
        try:
            while not self.stopping:
                try:
                    self.step()
                except Interrupted:
                    raise
                except (NacelleError, sqlite3.Error, OSError) as e:  # e.g. a locked database: poll again
                    logger.error("poll failed; retrying", thing=self.thing, error=str(e))
                self._sleep(self.poll_s)
        except Interrupted:
            pass
        finally:
            self.stop_all()
        return 0

    def _isolate(self) -> None:
        """Only the nucleus and this device's identity (its group) may enter the device root."""
        assert self.user is not None
        os.chown(self.root, -1, self.user.gid)
        self.root.chmod(0o750)
        for d in (self.root.parent, *(self.root / d for d in ("packages", "work", "config"))):
            d.chmod(0o755)  # traversable whatever the umask; `<root>` above keeps other devices out

    def step(self) -> None:
        now = time.monotonic()
        if now - self._last_heartbeat >= HEARTBEAT_S:
            self._last_heartbeat = now
            self.gg.heartbeat(self.thing)
        target = self.gg.target_for(self.thing)
        if target is not None and target.deployment_id != self.applied and target.deployment_id not in self.handled:
            self.apply(target)
        self._supervise()

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        if self.stopping:
            raise Interrupted("stopping")

    def request_stop(self, *_: Any) -> None:
        self.stopping = True

    # ------------------------------------------------------------------ deployments
    def apply(self, target: Any) -> str:
        """Apply one deployment; returns the terminal status reported (SUCCEEDED or FAILED)."""
        dep_id = target.deployment_id
        logger.info("applying deployment", thing=self.thing, deployment_id=dep_id,
                    deployment_name=getattr(target, "name", ""))
        self.pending = dep_id
        self._save()
        self.gg.report(self.thing, dep_id, "IN_PROGRESS")
        previous = {n: ComponentState(**asdict(c)) for n, c in self.components.items()}
        try:
            desired = self.plan(self._effective(target))
            for name in desired:
                self._fetch(name, desired[name].version)
            broken = self._converge(desired)
        except DeploymentFailed as e:
            return self._finish(dep_id, "FAILED", str(e), e.error_stack, e.error_types)
        if broken is None:
            self.applied = dep_id
            return self._finish(dep_id, "SUCCEEDED", "")
        name, why = broken
        reason = f"{name} is BROKEN: {why}"
        policy = (getattr(target, "deployment_policies", None) or {}).get("failureHandlingPolicy", "ROLLBACK")
        if policy == "ROLLBACK":
            reason += "; rolled back to the previous components"
            rollback_broken = self._converge(previous)
            if rollback_broken is not None:
                reason += f" (the rollback left {rollback_broken[0]} BROKEN: {rollback_broken[1]})"
        return self._finish(dep_id, "FAILED", reason, ("DEPLOYMENT_FAILURE", "COMPONENT_UPDATE_ERROR",
                                                      "COMPONENT_BROKEN"), ("USER_COMPONENT_ERROR",))

    @staticmethod
    def _effective(target: Any) -> Mapping[str, Mapping[str, Any]]:
        """The deployment's components merged with what the thing's other targets deployed to it (Greengrass v2:
        a group rollout leaves the thing deployment's components running)."""
        try:
            return dict(target.effective_components())
        except Conflict as e:
            raise DeploymentFailed(str(e), ("DEPLOYMENT_FAILURE", "COMPONENT_VERSION_REQUIREMENTS_NOT_MET"),
                                   ("REQUEST_ERROR",)) from e

    def _finish(self, dep_id: str, status: str, reason: str, error_stack: tuple[str, ...] = (),
                error_types: tuple[str, ...] = ()) -> str:
        self.handled[dep_id] = status
        self.pending = None
        self._save()
        self.gg.report(self.thing, dep_id, status, reason=reason, error_stack=error_stack,
                       error_types=error_types, components=self.running_versions())
        logger.info("deployment finished", thing=self.thing, deployment_id=dep_id, status=status, reason=reason)
        return status

    def running_versions(self) -> dict[str, str]:
        return {n: c.version for n, c in sorted(self.components.items())}

    def plan(self, deployment: Mapping[str, Mapping[str, Any]]) -> dict[str, ComponentState]:
        """The desired component states: resolved versions, effective configuration, interpolated lifecycle."""

        def recipe_of(name: str, version: str) -> Mapping[str, Any] | None:
            found = self.gg.get_component(name, version)
            return None if found is None else found.recipe

        with resolution_failures():
            resolved = recipes.resolve(deployment, recipe_of, {n: c.version for n, c in self.components.items()})
            configs = {}
            for name, rc in resolved.items():
                current = self.components.get(name)
                configs[name] = recipes.effective_configuration(
                    rc.recipe, rc.update, current.config if current is not None else None)
            view = {n: (rc.version, configs[n]) for n, rc in resolved.items()}
            deps = {n: {d.name for d in recipes.dependencies(rc.recipe)} for n, rc in resolved.items()}
            out = {}
            for name, rc in resolved.items():
                hard = sorted(d.name for d in recipes.dependencies(rc.recipe) if d.hard)
                life = recipes.interpolated_lifecycle(name, view, rc.recipe, self.paths, deps)
                out[name] = ComponentState(name, rc.version, configs[name], life, sorted(deps[name]), hard)
        return out

    # ------------------------------------------------------------------ artifacts
    def fetch(self, name: str, version: str) -> Path:
        """Download, verify and unarchive a component version's artifacts (raises DeploymentFailed); returns
        `{artifacts:decompressedPath}` (a host of light devices shares one copy: nacelle/local/edge/light.py)."""
        self._fetch(name, version)
        return self.paths.unarchived(name, version)

    def _fetch(self, name: str, version: str) -> None:
        found = self.gg.get_component(name, version)
        if found is None:
            raise DeploymentFailed(f"component {name} version {version} does not exist",
                                   ("DEPLOYMENT_FAILURE", "NO_AVAILABLE_COMPONENT_VERSION"), ("REQUEST_ERROR",))
        recipe = found.recipe
        try:
            artifacts = recipes.artifacts(recipe, recipes.select_manifest(recipe))
        except RecipeError as e:
            raise DeploymentFailed(str(e), ("DEPLOYMENT_FAILURE", "RECIPE_PARSE_ERROR"),
                                   ("COMPONENT_RECIPE_ERROR",)) from e
        target_dir = self.paths.artifacts(name, version)
        for art in artifacts:
            dest = target_dir / art.file_name
            data = self._artifact_bytes(name, version, art)
            if not dest.is_file() or recipes.artifact_digest(dest.read_bytes()) != recipes.artifact_digest(data):
                target_dir.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
                tmp.write_bytes(data)
                tmp.chmod(0o644)
                tmp.replace(dest)
            if art.unarchive == "ZIP":
                self._unzip(name, version, dest)

    def _artifact_bytes(self, name: str, version: str, art: recipes.Artifact) -> bytes:
        cached = None
        if art.digest:
            try:
                cached = self.cache / base64.b64decode(art.digest, validate=True).hex()
            except ValueError as e:
                raise DeploymentFailed(f"{name} {version}: artifact {art.uri} has an invalid Digest {art.digest!r}",
                                       ("DEPLOYMENT_FAILURE", "RECIPE_PARSE_ERROR"),
                                       ("COMPONENT_RECIPE_ERROR",)) from e
            if cached.is_file():
                data = cached.read_bytes()
                if recipes.artifact_digest(data) == art.digest:
                    return data
        try:
            data = FsObjectStore(self.home / "objects", art.bucket).get(art.key)
        except NacelleError as e:
            raise DeploymentFailed(f"{name} {version}: cannot download {art.uri}: {e}",
                                   ("DEPLOYMENT_FAILURE", "ARTIFACT_DOWNLOAD_ERROR", "S3_RESOURCE_NOT_FOUND"),
                                   ("DEPENDENCY_ERROR",)) from e
        if art.digest and recipes.artifact_digest(data) != art.digest:
            raise DeploymentFailed(
                f"{name} {version}: artifact {art.uri} has digest {recipes.artifact_digest(data)}, "
                f"the recipe says {art.digest}",
                ("DEPLOYMENT_FAILURE", "ARTIFACT_DOWNLOAD_ERROR", "ARTIFACT_CHECKSUM_MISMATCH"),
                ("DEPENDENCY_ERROR",))
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(cached)
        return data

    def _unzip(self, name: str, version: str, archive: Path) -> None:
        """Into `{artifacts:decompressedPath}/<archive stem>/`, atomically (a temp directory renamed)."""
        dest = self.paths.unarchived(name, version) / archive.stem
        if dest.is_dir():
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{archive.stem}.", dir=dest.parent))
        try:
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    target = (tmp / member).resolve()
                    if not target.is_relative_to(tmp.resolve()):
                        raise DeploymentFailed(f"{name} {version}: {archive.name} entry {member!r} leaves the "
                                               f"archive directory", ("DEPLOYMENT_FAILURE", "IO_UNZIP_ERROR"),
                                               ("DEVICE_ERROR",))
                zf.extractall(tmp)
            tmp.chmod(0o755)  # mkdtemp made it 0700: artifacts are readable by the component user, like Greengrass's
            tmp.rename(dest)
        except zipfile.BadZipFile as e:
            raise DeploymentFailed(f"{name} {version}: {archive.name} is not a ZIP archive: {e}",
                                   ("DEPLOYMENT_FAILURE", "IO_UNZIP_ERROR"), ("DEVICE_ERROR",)) from e
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------ converging the running set
    def _converge(self, desired: Mapping[str, ComponentState]) -> tuple[str, str] | None:
        """Make `desired` the running set; returns (component, reason) of the first BROKEN one, else None."""
        order = _order(desired)
        restart: set[str] = set()
        for name in order:
            want, have = desired[name], self.components.get(name)
            if (have is None or have.version != want.version or have.lifecycle != want.lifecycle
                    or name in self.broken or any(d in restart for d in want.hard_deps)):
                restart.add(name)
        for name in reversed(_order(self.components)):
            if name not in desired or name in restart:
                self._stop(name)
                self.components.pop(name, None)
        for name in order:
            self._write_config(desired[name])
            if name not in restart:
                self.components[name] = desired[name]  # same lifecycle; only the configuration may change
        started = []
        for name in order:
            if name not in restart:
                continue
            self.components[name] = desired[name]
            why = self._start(desired[name])
            if why is not None:
                return name, why
            started.append(name)
        self._save()
        running = [name for name in started if name in self.procs]  # a component without Run is done
        deadline = time.monotonic() + (self.grace_s if running else 0.0)
        while True:
            for name in running:
                proc = self.procs.get(name)
                rc = proc.popen.poll() if proc else None
                if rc not in (None, 0):
                    self.broken.add(name)
                    return name, f"its Run step exited with status {rc} within {self.grace_s:g}s of starting " \
                                 f"(see {self.paths.log(name)})"
            if time.monotonic() >= deadline:
                return None
            self._sleep(0.05)

    def _restore(self) -> None:
        """After a restart: bring the recorded components back (Install again, then Run)."""
        for name in _order(self.components):
            self._write_config(self.components[name])
            why = self._start(self.components[name])
            if why is not None:
                logger.warning("component did not come back after a restart", thing=self.thing, component=name,
                               reason=why)

    def _write_config(self, c: ComponentState) -> None:
        path = self.paths.config(c.name)
        try:
            same = json.loads(path.read_text()) == c.config
        except (OSError, ValueError):
            same = False
        if not same:
            write_json(path, c.config, self.user)
        elif self.user is not None:
            self.user.own(path)  # written by an earlier nucleus that ran components as itself
        broker_port = self.home / "broker" / "port"
        try:
            port = int(broker_port.read_text().strip())
        except (OSError, ValueError):
            port = 8883
        pki = self.home / "pki"
        identity = mqtt_identity(self.thing, c.name)
        ca, cert, key = pki / "ca.pem", pki / "clients" / f"{identity}.pem", pki / "clients" / f"{identity}.key"
        if self.user is not None:  # pki/clients is the nucleus's: the device's own pair, readable by it only
            cert, key = self._credentials(cert, key)
        write_json(self._device_file(c.name), {
            "endpoint": "127.0.0.1", "port": port, "ca": str(ca), "cert": str(cert), "key": str(key),
            "client_id": identity, "configuration": str(path), "work": str(self.paths.work(c.name)),
            "capture_url": gateway_url(self.home)}, self.user)

    def _credentials(self, cert: Path, key: Path) -> tuple[Path, Path]:
        """Copies of the device's certificate and key in `<root>/credentials/`: the identity's, 0600. The directory
        stays the nucleus's (root:<gid> 0750), so the identity cannot plant links where root writes."""
        assert self.user is not None
        directory = self.root / "credentials"
        directory.mkdir(exist_ok=True)
        os.chown(directory, -1, self.user.gid)
        directory.chmod(0o750)
        for source in (cert, key):
            if source.is_file():
                _write_private(directory / source.name, source.read_bytes(), self.user)
        return directory / cert.name, directory / key.name

    def _work_dir(self, name: str, user: ComponentUser | None) -> Path:
        """The component's work dir; with an identity, its and 0700 (all of it, if another one owned it before)."""
        work = self.paths.work(name)
        work.mkdir(parents=True, exist_ok=True)
        if user is not None:
            st = work.stat()
            if (st.st_uid, st.st_gid) != (user.uid, user.gid):
                user.own_tree(work)
            work.chmod(0o700)
        return work

    def _identity(self, step: Mapping[str, Any]) -> ComponentUser | None:
        """Who runs this step: None = the nucleus's user (RequiresPrivilege, or no component identity)."""
        return None if step.get("RequiresPrivilege") in (True, "true", "True") else self.user

    def _device_file(self, name: str) -> Path:
        return self.root / "config" / f"{name}.device.json"

    def _env(self, c: ComponentState, step: Mapping[str, Any]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _IPC_ENV and k not in _CREDENTIAL_ENV}
        env.update({"AWS_IOT_THING_NAME": self.thing, "AWS_REGION": "local", "GG_ROOT_CA_PATH":
                    str(self.home / "pki" / "ca.pem"), "NACELLE_DEVICE_CONFIG": str(self._device_file(c.name)),
                    "NACELLE_COMPONENT": c.name, "NACELLE_COMPONENT_VERSION": c.version})
        if self._identity(step) is None or self.venvs.is_dir():
            # a device identity cannot create the shared root: without one (fleet-made), a private venv in work/
            env["NACELLE_VENVS_ROOT"] = str(self.venvs)
        env.update(c.lifecycle.get("Setenv") or {})
        env.update({str(k): str(v) for k, v in (step.get("Setenv") or {}).items()})
        return env

    def _skip(self, step: Mapping[str, Any], env: Mapping[str, str]) -> bool:
        """`Skipif: onpath <exe>` / `exists <file>`."""
        cond = str(step.get("Skipif") or step.get("SkipIf") or "").split(None, 1)
        if len(cond) != 2:
            return False
        if cond[0] == "onpath":
            return shutil.which(cond[1], path=env.get("PATH")) is not None
        return cond[0] == "exists" and Path(cond[1]).exists()

    def _spawn(self, c: ComponentState, step: Mapping[str, Any]) -> subprocess.Popen[bytes]:
        user = self._identity(step)
        work = self._work_dir(c.name, user)
        env = self._env(c, step)
        if user is not None:
            env["HOME"] = str(work)  # a numeric identity has no home (and nobody's is /nonexistent)
        log_path = self.paths.log(c.name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        identity: dict[str, Any] = {} if user is None else {"user": user.uid, "group": user.gid, "extra_groups": []}
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)  # the nucleus's: the component writes through this descriptor only
        with os.fdopen(fd, "ab") as log:
            return subprocess.Popen(["bash", "-c", str(step["Script"])], cwd=work, env=env,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=die_with_parent, **identity)

    def _run_step(self, c: ComponentState, step_name: str) -> str | None:
        """Run a blocking lifecycle step (Install, Startup); the reason it failed, or None."""
        step = c.lifecycle.get(step_name)
        if not step or "Script" not in step or self._skip(step, self._env(c, step)):
            return None
        timeout = float(step.get("Timeout", self.install_timeout_s))
        proc = self._spawn(c, step)
        self.procs[f"{c.name}#{step_name}"] = _Proc(proc, time.monotonic())
        self._save_procs()
        try:
            deadline = time.monotonic() + timeout
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    _kill(proc, 0)
                    return f"its {step_name} step timed out after {timeout:g}s (see {self.paths.log(c.name)})"
                self._sleep(0.02)
        except Interrupted:
            _kill(proc, 0)
            raise
        finally:
            self.procs.pop(f"{c.name}#{step_name}", None)
        if proc.returncode != 0:
            return f"its {step_name} step exited with status {proc.returncode} (see {self.paths.log(c.name)})"
        return None

    def _start(self, c: ComponentState) -> str | None:
        self.broken.discard(c.name)
        for step_name in ("Install", "Startup"):
            why = self._run_step(c, step_name)
            if why is not None:
                self.broken.add(c.name)
                return why
        run = c.lifecycle.get("Run")
        if run and "Script" in run and not self._skip(run, self._env(c, run)):
            self.procs[c.name] = _Proc(self._spawn(c, run), time.monotonic())
            self._save_procs()
        logger.info("component started", thing=self.thing, component=c.name, version=c.version)
        return None

    def _stop(self, name: str) -> None:
        c = self.components.get(name)
        proc = self.procs.pop(name, None)
        if c is not None and proc is not None and proc.popen.poll() is None and c.lifecycle.get("Shutdown"):
            with contextlib.suppress(Interrupted):
                self._run_step(c, "Shutdown")
        if proc is not None:
            _kill(proc.popen, self.stop_timeout_s)
            self._save_procs()
        self.broken.discard(name)

    def _supervise(self) -> None:
        """A Run that fails later is restarted (up to MAX_RESTARTS times in a row), then BROKEN."""
        for name, proc in list(self.procs.items()):
            rc = proc.popen.poll()
            if rc is None or name not in self.components:
                continue
            if rc == 0:
                self.procs.pop(name)
                continue
            if proc.restarts >= MAX_RESTARTS:
                logger.error("component BROKEN", thing=self.thing, component=name, status=rc)
                self.broken.add(name)
                self.procs.pop(name)
                continue
            logger.warning("component exited; restarting", thing=self.thing, component=name, status=rc)
            run = self.components[name].lifecycle["Run"]
            self.procs[name] = _Proc(self._spawn(self.components[name], run), time.monotonic(), proc.restarts + 1)
            self._save_procs()

    def stop_all(self) -> None:
        for name in reversed(_order(self.components)):
            self._stop(name)
        for name in list(self.procs):
            _kill(self.procs.pop(name).popen, self.stop_timeout_s)
        (self.root / "procs.json").unlink(missing_ok=True)


def _order(components: Mapping[str, ComponentState]) -> list[str]:
    """Dependencies before dependants; stable."""
    order: list[str] = []

    def visit(name: str, seen: tuple[str, ...]) -> None:
        if name in order or name in seen or name not in components:
            return
        for dep in components[name].deps:
            visit(dep, (*seen, name))
        order.append(name)

    for name in sorted(components):
        visit(name, ())
    return order


def _kill(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the process group, SIGKILL it after `timeout`."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(1)
