"""The local mosquitto broker with mutual TLS, driven by the same MQTT 5 client the detector uses (awsiotsdk/awscrt).

One broker per module (fast); the persistence test restarts it and therefore runs last.
"""

from __future__ import annotations

import contextlib
import queue
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from awscrt import io as awscrt_io
from awscrt import mqtt5
from awsiot import mqtt5_client_builder

from nacelle.local.edge.broker import Broker
from nacelle.local.edge.pki import DeviceCredentials, LocalPki
from shared.errors import ConfigurationError

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(60),
]

WAIT_S = 5.0
QUIET_S = 0.3  # how long "receives nothing" waits after a sequencing witness has arrived


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LocalPki:
    return LocalPki(tmp_path_factory.mktemp("nacelle-home") / "pki").ensure()


@pytest.fixture(scope="module")
def broker(pki: LocalPki) -> Iterator[Broker]:
    with Broker(pki.root.parent, pki) as b:
        yield b


class Client:
    """A started awscrt MQTT 5 client with its connection outcome and received messages."""

    def __init__(self, endpoint: tuple[str, int], *, creds: DeviceCredentials | None, ca_path: Path,
                 client_id: str | None = None, persistent: bool = False, host: str | None = None) -> None:
        self.client_id = client_id or f"test-{uuid.uuid4().hex[:12]}"
        self.received: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connected = threading.Event()
        self.failed = threading.Event()
        self.stopped = threading.Event()
        self.failure: Any = None
        self.connack: Any = None
        self.connections = 0  # successful connections so far (a reconnection counts again)
        self.disconnections = 0  # lost connections, e.g. taken over by a client with the same client id
        host_name = host or endpoint[0]
        common: dict[str, Any] = {
            "on_publish_received": self._on_publish,
            "on_lifecycle_connection_success": self._on_success,
            "on_lifecycle_connection_failure": self._on_failure,
            "on_lifecycle_disconnection": self._on_disconnection,
            "on_lifecycle_stopped": lambda _data: self.stopped.set(),
            "connack_timeout_ms": 3000,
            "min_reconnect_delay_ms": 200,
            "max_reconnect_delay_ms": 1000,
        }
        if persistent:
            common["session_behavior"] = mqtt5.ClientSessionBehaviorType.REJOIN_ALWAYS
            common["session_expiry_interval_sec"] = 3600
        if creds is not None:
            self.client = mqtt5_client_builder.mtls_from_path(
                endpoint=host_name, port=endpoint[1], cert_filepath=str(creds.cert_path),
                pri_key_filepath=str(creds.key_path), ca_filepath=str(ca_path), client_id=self.client_id,
                **common)
        else:
            # plain server-authenticated TLS: trusts the CA, presents no client certificate
            tls = awscrt_io.TlsContextOptions()
            tls.override_default_trust_store_from_path(None, str(ca_path))
            self.client = mqtt5.Client(mqtt5.ClientOptions(
                host_name=host_name, port=endpoint[1], tls_ctx=awscrt_io.ClientTlsContext(tls),
                connect_options=mqtt5.ConnectPacket(client_id=self.client_id, keep_alive_interval_sec=30),
                connack_timeout_ms=3000, min_reconnect_delay_ms=200, max_reconnect_delay_ms=1000,
                on_publish_callback_fn=self._on_publish,
                on_lifecycle_event_connection_success_fn=self._on_success,
                on_lifecycle_event_connection_failure_fn=self._on_failure,
                on_lifecycle_event_disconnection_fn=self._on_disconnection,
                on_lifecycle_event_stopped_fn=lambda _data: self.stopped.set()))
        self.client.start()

    def _on_publish(self, data: Any) -> None:
        self.received.put((data.publish_packet.topic, bytes(data.publish_packet.payload)))

    def _on_success(self, data: Any) -> None:
        self.connack = data.connack_packet
        self.connections += 1
        self.connected.set()

    def _on_disconnection(self, _data: Any) -> None:
        self.disconnections += 1

    def _on_failure(self, data: Any) -> None:
        self.failure = data.exception
        self.failed.set()

    def wait_connected(self) -> Client:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and not self.connected.is_set():
            if self.failed.is_set():
                raise AssertionError(f"{self.client_id} could not connect: {self.failure!r}")
            time.sleep(0.01)
        assert self.connected.is_set(), f"{self.client_id} did not connect within {WAIT_S}s"
        return self

    def subscribe(self, topic_filter: str) -> Any:
        packet = mqtt5.SubscribePacket(subscriptions=[mqtt5.Subscription(topic_filter=topic_filter,
                                                                         qos=mqtt5.QoS.AT_LEAST_ONCE)])
        return self.client.subscribe(packet).result(WAIT_S)

    def publish(self, topic: str, payload: bytes) -> Any:
        packet = mqtt5.PublishPacket(topic=topic, payload=payload, qos=mqtt5.QoS.AT_LEAST_ONCE)
        return self.client.publish(packet).result(WAIT_S)

    def next_message(self, timeout: float = WAIT_S) -> tuple[str, bytes]:
        try:
            return self.received.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.client_id} received nothing within {timeout}s") from None

    def drain(self) -> list[tuple[str, bytes]]:
        out = []
        while True:
            try:
                out.append(self.received.get_nowait())
            except queue.Empty:
                return out

    def stop(self) -> None:
        self.client.stop()
        self.stopped.wait(WAIT_S)


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    started: list[Client] = []
    yield started
    for c in started:
        c.stop()


def connect(clients: list[Client], broker: Broker, creds: DeviceCredentials | None, **kwargs: Any) -> Client:
    kwargs.setdefault("ca_path", broker.pki.ca_path)
    c = Client(broker.endpoint, creds=creds, **kwargs)
    clients.append(c)
    return c


def assert_refused(c: Client) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and not (c.failed.is_set() or c.connected.is_set()):
        time.sleep(0.01)
    assert not c.connected.is_set(), f"{c.client_id} was accepted"
    assert c.failed.is_set(), "no connection failure reported"


def test_device_publish_reaches_cloud(broker: Broker, clients: list[Client]) -> None:
    pki = broker.pki
    cloud = connect(clients, broker, pki.cloud(), host="localhost").wait_connected()  # SAN DNS:localhost
    suback = cloud.subscribe("turbines/+/anomalies")
    assert suback.reason_codes == [mqtt5.SubackReasonCode.GRANTED_QOS_1]
    device = connect(clients, broker, pki.device("wt-01")).wait_connected()  # SAN IP:127.0.0.1

    done = device.publish("turbines/wt-01/anomalies", b'{"v":1,"episode":"e1"}')
    assert done.puback.reason_code == mqtt5.PubackReasonCode.SUCCESS
    assert cloud.next_message() == ("turbines/wt-01/anomalies", b'{"v":1,"episode":"e1"}')


def test_publish_to_another_devices_topic_is_not_authorized(broker: Broker, clients: list[Client]) -> None:
    pki = broker.pki
    cloud = connect(clients, broker, pki.cloud()).wait_connected()
    cloud.subscribe("turbines/+/anomalies")
    device = connect(clients, broker, pki.device("wt-01")).wait_connected()

    forbidden = device.publish("turbines/wt-02/anomalies", b'{"v":1,"spoof":true}')
    assert forbidden.puback.reason_code == mqtt5.PubackReasonCode.NOT_AUTHORIZED
    # the broker handles one client's packets in order: once this witness arrives, the forbidden one never will
    device.publish("turbines/wt-01/anomalies", b"witness")
    assert cloud.next_message() == ("turbines/wt-01/anomalies", b"witness")
    time.sleep(QUIET_S)
    assert cloud.drain() == []


def test_a_device_cannot_leave_a_retained_message_for_later_subscribers(broker: Broker, clients: list[Client]
                                                                        ) -> None:
    device = connect(clients, broker, broker.pki.device("wt-07")).wait_connected()
    forged = mqtt5.PublishPacket(topic="turbines/wt-07/anomalies", payload=b"forged", qos=mqtt5.QoS.AT_LEAST_ONCE,
                                 retain=True)
    with contextlib.suppress(Exception):  # refused by the client (retain not available) or the broker
        device.client.publish(forged).result(WAIT_S)
    cloud = connect(clients, broker, broker.pki.cloud()).wait_connected()  # a subscriber that comes later
    cloud.subscribe("turbines/+/anomalies")
    time.sleep(QUIET_S)
    assert cloud.drain() == []


def test_cloud_client_cannot_publish(broker: Broker, clients: list[Client]) -> None:
    cloud = connect(clients, broker, broker.pki.cloud()).wait_connected()
    done = cloud.publish("turbines/wt-01/config", b'{"v":1}')
    assert done.puback.reason_code == mqtt5.PubackReasonCode.NOT_AUTHORIZED


def test_subscribing_to_another_devices_topics_gets_nothing(broker: Broker, clients: list[Client]) -> None:
    pki = broker.pki
    spy = connect(clients, broker, pki.device("wt-01")).wait_connected()
    suback = spy.subscribe("turbines/wt-02/#")
    # mosquitto 2.0.11 grants the SUBSCRIBE (its acl_file check on subscribe passes a filter it cannot match
    # yet) and enforces `read` on every delivery instead; newer brokers may refuse it outright. Either way:
    # nothing of wt-02's reaches wt-01.
    assert suback.reason_codes[0] in (mqtt5.SubackReasonCode.NOT_AUTHORIZED, mqtt5.SubackReasonCode.GRANTED_QOS_1)
    cloud = connect(clients, broker, pki.cloud()).wait_connected()
    cloud.subscribe("turbines/+/anomalies")
    other = connect(clients, broker, pki.device("wt-02")).wait_connected()

    done = other.publish("turbines/wt-02/anomalies", b"wt-02 only")
    assert done.puback.reason_code == mqtt5.PubackReasonCode.SUCCESS
    assert cloud.next_message() == ("turbines/wt-02/anomalies", b"wt-02 only")  # routed by now
    time.sleep(QUIET_S)
    assert spy.drain() == []


def test_certificate_from_another_ca_is_refused(broker: Broker, clients: list[Client],
                                                tmp_path: Path) -> None:
    rogue = LocalPki(tmp_path / "rogue-pki")
    # trusts the real CA (so the server side is fine) but presents a wt-01 certificate signed by a rogue CA
    c = connect(clients, broker, rogue.device("wt-01"), ca_path=broker.pki.ca_path)
    assert_refused(c)


def test_client_without_certificate_is_refused(broker: Broker, clients: list[Client]) -> None:
    c = connect(clients, broker, None)
    assert_refused(c)


def test_private_keys_are_owner_only_and_files_are_reused(broker: Broker) -> None:
    pki = broker.pki
    creds = pki.device("wt-01")
    keys = [pki.ca_key_path, pki.server_key_path, creds.key_path, pki.cloud().key_path]
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    before = {p: p.read_bytes() for p in [*keys, pki.ca_path, creds.cert_path]}
    again = LocalPki(pki.root)
    again.ensure()
    again.device("wt-01")
    again.cloud()
    assert {p: p.read_bytes() for p in before} == before


@pytest.mark.parametrize("name", ["", "wt/01", "wt+", "wt#", "a" * 129, "wt 01", "nacelle-cloud"])
def test_invalid_thing_names_are_rejected(broker: Broker, name: str) -> None:
    with pytest.raises(ConfigurationError):
        broker.pki.device(name)


# keep last: restarts the module's broker
def test_cloud_persistent_session_survives_broker_restart(broker: Broker, clients: list[Client]) -> None:
    pki = broker.pki
    cloud_id = f"nacelle-cloud-{uuid.uuid4().hex[:8]}"
    cloud = connect(clients, broker, pki.cloud(), client_id=cloud_id, persistent=True).wait_connected()
    cloud.subscribe("turbines/+/anomalies")
    cloud.stop()  # offline; its session (subscription + queued QoS1 messages) lives on for an hour

    device = connect(clients, broker, pki.device("wt-03")).wait_connected()
    assert device.publish("turbines/wt-03/anomalies", b"before restart").puback.reason_code == \
        mqtt5.PubackReasonCode.SUCCESS
    device.stop()

    port = broker.port
    broker.restart()
    assert broker.port == port  # the remembered port was free again

    device = connect(clients, broker, pki.device("wt-03")).wait_connected()
    assert device.publish("turbines/wt-03/anomalies", b"after restart").puback.reason_code == \
        mqtt5.PubackReasonCode.SUCCESS

    cloud = connect(clients, broker, pki.cloud(), client_id=cloud_id, persistent=True).wait_connected()
    assert cloud.connack.session_present is True
    got = [cloud.next_message(), cloud.next_message()]
    assert got == [("turbines/wt-03/anomalies", b"before restart"), ("turbines/wt-03/anomalies", b"after restart")]


def test_leaf_certificates_are_reissued_when_the_ca_changes(tmp_path: Path) -> None:
    pki = LocalPki(tmp_path / "pki")
    old = pki.device("wt-09").cert_path.read_bytes()
    pki.ca_path.unlink()
    fresh = LocalPki(tmp_path / "pki")
    creds = fresh.device("wt-09")
    assert creds.cert_path.read_bytes() != old
    from cryptography import x509

    ca = x509.load_pem_x509_certificate(fresh.ca_path.read_bytes())
    x509.load_pem_x509_certificate(creds.cert_path.read_bytes()).verify_directly_issued_by(ca)


def test_missing_mosquitto_gives_an_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nacelle.local.edge.broker as broker_module

    monkeypatch.setattr(broker_module, "find_mosquitto", lambda: None)
    with pytest.raises(ConfigurationError, match=r"apt-get install -y mosquitto .* brew install mosquitto"):
        Broker(tmp_path, LocalPki(tmp_path / "pki")).start()


def test_a_remembered_port_is_replaced_when_taken(tmp_path: Path) -> None:
    import socket

    b = Broker(tmp_path, LocalPki(tmp_path / "pki"))
    b.write_config()
    first = b.port
    assert (tmp_path / "broker" / "port").read_text().strip() == str(first)
    assert f"listener {first} 127.0.0.1" in b.conf_path.read_text()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", first))
        squatter.listen()
        b.write_config()
        assert b.port != first


def test_a_broker_left_by_a_killed_stack_is_stopped_by_the_next_start(tmp_path: Path) -> None:
    pki = LocalPki(tmp_path / "pki")
    first = Broker(tmp_path, pki).start()
    orphan, port = first._proc, first.port
    assert orphan is not None
    first._proc = None  # its owner died with SIGKILL: nobody will stop it
    second = Broker(tmp_path, pki)
    try:
        second.start()
        assert orphan.wait(timeout=10) == 0  # SIGTERM: it saved its persistence store and left
        assert second.port == port and second.running  # the port it held is ours again
    finally:
        second.stop()
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()
    assert not (tmp_path / "broker" / "pid").exists()


def test_a_pid_file_naming_another_process_is_left_alone(tmp_path: Path) -> None:
    import subprocess
    import sys

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "broker").mkdir()
        (tmp_path / "broker" / "pid").write_text(f"{other.pid}\n")  # a stale pid, reused by another program
        b = Broker(tmp_path, LocalPki(tmp_path / "pki"))
        with b:
            assert b.running and other.poll() is None
    finally:
        other.kill()
        other.wait()
