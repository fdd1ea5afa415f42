"""The local MQTT broker: mosquitto with mutual TLS, per-device topic ACLs and a persistent store.

Everything lives under `<home>/broker/`: `mosquitto.conf`, `acl`, `port` (kept across restarts while free),
`data/` (persistence: the cloud subscriber's session and its queued QoS1 messages survive a restart),
`mosquitto.log`, `mosquitto.stderr` (start-up errors printed before the log file is opened) and `pid` (a
broker left running by a stack killed with SIGKILL is stopped by the next start).

Identity = the client certificate's CN (`use_identity_as_username`); access control in the ACL:
* every device: readwrite `turbines/<its CN>/#` only;
* a device's sensor source (`<thing>.sensors`): write `turbines/<thing>/sensors` only;
* the cloud client (`nacelle-cloud`): read `turbines/#`, write nothing (least privilege).
mosquitto 2.0.11 grants every SUBSCRIBE whatever the ACL and checks `read` on each delivery instead: a filter
reaching beyond the ACL gets a granted SUBACK and only the messages the ACL lets it read. AWS IoT refuses such a
SUBSCRIBE (NOT_AUTHORIZED); either way nothing of another turbine arrives.

Client id. AWS IoT accepts a device's CONNECT only with the client id of its thing (`<thing>`, `<thing>#<n>`,
template.yaml's CoreDevicePolicy), so a certificate can never disconnect, resume or wipe another client's MQTT
session. mosquitto 2.0.11 cannot refuse such a CONNECT: a certificate-authenticated client skips the
authentication plugins (the dynamic-security plugin's client-id binding is never consulted) and no option
compares the client id with the certificate. With `bind_client_id` it substitutes instead
(`use_username_as_clientid`): whatever client id is sent, the connection gets the CN as client id, so
turbine-01's certificate connecting as `nacelle-cloud` or `turbine-02` is connected as `turbine-01` and never
touches their sessions, connected or persisted. For takeover this is the same guarantee (a certificate reaches
the session of its own identity only); what differs: the mismatched CONNECT succeeds and takes over the
certificate's own session (which its holder can take over anyway), and `<thing>#<n>` collapses into `<thing>`,
one connection per certificate: a turbine's sensor source (its simulator, a PLC gateway) has a certificate of
its own (CN `<thing>.sensors`, allowed to write `turbines/<thing>/sensors` and the nacelle.sensors component's
`turbines/<thing>/sensors/health` only; `refresh_acl` after issuing one). `bind_client_id` is on by default; off
only to show, in tests, what it prevents.

Queues, bounded per client and sized for a persistent session such as the cloud subscriber's, which may be down
for minutes: `max_queued_messages 100000` QoS 1 messages kept for it while it is offline (or beyond those in
flight; once full, newer messages are dropped, the oldest kept), `max_inflight_messages 1000` unacknowledged QoS 1
messages to one client at a time (also the Receive Maximum the broker announces in its CONNACK).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from nacelle.local.edge.pki import CLOUD_CLIENT, SENSOR_SOURCE, LocalPki
from shared.errors import ConfigurationError

HOST = "127.0.0.1"
INSTALL_HINT = "mosquitto is not installed: apt-get install -y mosquitto (Debian/Ubuntu) or brew install mosquitto"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
MAX_QUEUED_MESSAGES = 100_000
MAX_INFLIGHT_MESSAGES = 1_000

__all__ = ["Broker", "BrokerError", "find_mosquitto"]


class BrokerError(ConfigurationError):
    """mosquitto is missing, or did not start/stop."""


def find_mosquitto() -> Path | None:
    """The mosquitto executable: on PATH, else /usr/sbin or /usr/local/sbin (Debian keeps it out of a user PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return Path(found)
    for candidate in (Path("/usr/sbin/mosquitto"), Path("/usr/local/sbin/mosquitto"),
                      Path("/opt/homebrew/sbin/mosquitto"), Path("/usr/local/opt/mosquitto/sbin/mosquitto")):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR like mosquitto itself: a port in TIME_WAIT after our own stop still counts as free
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has installed its SIGTERM handler (Linux /proc; assumed elsewhere).
    mosquitto opens its listeners before it installs its handlers: a SIGTERM in between kills it
    without saving its persistence store."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return True


class Broker:
    def __init__(self, home: Path, pki: LocalPki, *, bind_client_id: bool = True) -> None:
        self.home = Path(home).resolve()
        self.pki = pki
        self.bind_client_id = bind_client_id
        self.dir = self.home / "broker"
        self.conf_path = self.dir / "mosquitto.conf"
        self.acl_path = self.dir / "acl"
        self.port_path = self.dir / "port"
        self.data_dir = self.dir / "data"
        self.log_path = self.dir / "mosquitto.log"
        self.stderr_path = self.dir / "mosquitto.stderr"
        self.pid_path = self.dir / "pid"
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    # ------------------------------------------------------------------ configuration
    @property
    def port(self) -> int:
        if self._port is None:
            raise BrokerError("the broker has not been configured yet: call start()")
        return self._port

    @property
    def endpoint(self) -> tuple[str, int]:
        return HOST, self.port

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _choose_port(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            remembered = int(self.port_path.read_text().strip())
            if 0 < remembered < 65536 and _port_is_free(remembered):
                return remembered
        port = _free_port()
        self.port_path.write_text(f"{port}\n")
        return port

    def write_config(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        self.pki.ensure()
        certfile, keyfile = self.pki.server()
        self._port = self._choose_port()
        self.acl_path.write_text(self._acl())
        lines = [
            "# generated by nacelle (nacelle/local/edge/broker.py); edits are overwritten",
            "per_listener_settings false",
            "set_tcp_nodelay true",  # PUBACKs and small messages leave at once (no Nagle delay)
            "allow_anonymous false",
            # as on AWS (no iot:RetainPublish): a device cannot leave a message, or a will, replayed to every
            # later subscriber; a retained PUBLISH disconnects its client
            "retain_available false",
            f"acl_file {self.acl_path}",
            "persistence true",
            f"persistence_location {self.data_dir}/",
            "autosave_interval 60",
            f"max_queued_messages {MAX_QUEUED_MESSAGES}",
            f"max_inflight_messages {MAX_INFLIGHT_MESSAGES}",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "",
            f"listener {self._port} {HOST}",
            "protocol mqtt",
            f"cafile {self.pki.ca_path}",
            f"certfile {certfile}",
            f"keyfile {keyfile}",
            "require_certificate true",
            "use_identity_as_username true",
            "tls_version tlsv1.2",
        ]
        if self.bind_client_id:
            lines.append("use_username_as_clientid true")  # the client id is the certificate's CN
        if os.geteuid() == 0:
            # mosquitto started as root drops to the `mosquitto` user, which cannot write this (root-owned) home
            # nor read the 0600 keys; stay the invoking user (ignored by mosquitto when not started as root)
            lines.insert(1, f"user {pwd.getpwuid(os.geteuid()).pw_name}")
        self.conf_path.write_text("\n".join(lines) + "\n")
        return self.conf_path

    def _acl(self) -> str:
        sources = "".join(
            f"user {thing}{SENSOR_SOURCE}\ntopic deny turbines/{thing}{SENSOR_SOURCE}/#\n"
            f"topic write turbines/{thing}/sensors\ntopic write turbines/{thing}/sensors/health\n\n"
            for thing in self.pki.sensor_sources())
        return ("# generated by nacelle: identity = client certificate CN\n"
                "# the cloud side reads every turbine's topics and writes nothing; a deny (checked before any\n"
                "# allow) keeps the device pattern below from giving it, or a sensor source, a subtree\n"
                f"user {CLOUD_CLIENT}\n"
                f"topic deny turbines/{CLOUD_CLIENT}/#\n"
                "topic read turbines/#\n"
                "\n"
                "# each turbine's sensor source: that turbine's sensor topic and its health, write only\n"
                f"{sources}"
                "# every device: its own subtree only (thing names never contain / + # .)\n"
                "pattern readwrite turbines/%u/#\n")

    def refresh_acl(self) -> None:
        """Rewrite the ACL (sensor sources issued since the start) and have a running broker reload it."""
        self.acl_path.write_text(self._acl())
        if self.running and self._proc is not None:
            self._proc.send_signal(signal.SIGHUP)

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = START_TIMEOUT_S) -> Broker:
        if self.running:
            return self
        exe = find_mosquitto()
        if exe is None:
            raise BrokerError(INSTALL_HINT)
        self._stop_orphan()
        conf = self.write_config()
        with self.stderr_path.open("wb") as err:
            self._proc = subprocess.Popen([str(exe), "-c", str(conf)], stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        self.pid_path.write_text(f"{self._proc.pid}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                rc = self._proc.returncode
                self._proc = None
                raise BrokerError(f"mosquitto exited with status {rc} on start-up:\n{self._diagnostics()}")
            if _accepts(self.port) and _catches_sigterm(self._proc.pid):
                return self
            time.sleep(0.02)
        self.stop()
        raise BrokerError(f"mosquitto did not accept connections on {HOST}:{self.port} within {timeout:.0f}s:\n"
                          f"{self._diagnostics()}")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, so mosquitto writes its persistence file; SIGKILL only if it hangs."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        with contextlib.suppress(OSError):
            self.pid_path.unlink()

    def _orphan_pid(self) -> int | None:
        """The pid of a broker a killed stack left running on this home (its command line names our
        config file; Linux /proc), else None."""
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pid_path.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if str(self.conf_path).encode() in cmdline:
                return pid
        return None

    def _stop_orphan(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """A stack killed with SIGKILL leaves its broker (its own session) holding the port and the
        persistence store: stop it like our own (SIGTERM, then SIGKILL) before starting anew."""
        pid = self._orphan_pid()
        if pid is None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and self._orphan_pid() == pid:
                time.sleep(0.02)
            if self._orphan_pid() != pid:
                return
        raise BrokerError(f"the broker left by an earlier stack (pid {pid}) does not stop")

    def revive(self) -> int | None:
        """If the broker we started has died, start it again (same port, same persistence store) and
        return its exit status; None while it runs (or was never started)."""
        proc = self._proc
        if proc is None or proc.poll() is None:
            return None
        rc = proc.returncode
        self._proc = None
        self.start()
        return rc

    def restart(self) -> Broker:
        self.stop()
        return self.start()

    def _diagnostics(self) -> str:
        parts = []
        for path in (self.stderr_path, self.log_path):
            with contextlib.suppress(OSError):
                tail = path.read_text(errors="replace").strip().splitlines()[-15:]
                if tail:
                    parts.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(parts) or "(no output)"

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
