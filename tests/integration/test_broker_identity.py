"""The local broker binds the client id to the certificate, and its ACL is the AWS IoT policy's table.

One real mosquitto for the module, with `bind_client_id`; the expected outcomes come from tests/access_matrix.py,
which tests/unit/test_iot_policy.py checks against template.yaml's AWS IoT policy.

Where AWS refuses a CONNECT whose client id is not the certificate's thing, mosquitto connects it under the
certificate's CN instead (see nacelle/local/edge/broker.py); the tests check what matters for both: the session of the
client id it asked for, connected or persisted, is never touched.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from awscrt import mqtt5

from nacelle.local.edge.broker import MAX_INFLIGHT_MESSAGES, MAX_QUEUED_MESSAGES, Broker
from nacelle.local.edge.pki import DeviceCredentials, LocalPki
from tests.access_matrix import (
    CLOUD,
    DEVICES,
    OUTSIDE_TOPIC,
    Access,
    Connect,
    access_table,
    connect_table,
    other_device,
)
from tests.integration.test_broker import QUIET_S, WAIT_S, Client

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SUCCESS = mqtt5.PubackReasonCode.SUCCESS
NOT_AUTHORIZED = mqtt5.PubackReasonCode.NOT_AUTHORIZED
GRANTED = mqtt5.SubackReasonCode.GRANTED_QOS_1


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    home = tmp_path_factory.mktemp("nacelle-home")
    with Broker(home, LocalPki(home / "pki").ensure(), bind_client_id=True) as b:
        yield b


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    started: list[Client] = []
    yield started
    for c in started:
        c.stop()


def creds(broker: Broker, identity: str) -> DeviceCredentials:
    return broker.pki.cloud() if identity == CLOUD else broker.pki.device(identity)


def connect(clients: list[Client], broker: Broker, identity: str, client_id: str | None = None,
            *, persistent: bool = False) -> Client:
    """`identity`'s certificate, sending `client_id` (default: the identity itself); connected."""
    c = Client(broker.endpoint, creds=creds(broker, identity), ca_path=broker.pki.ca_path,
               client_id=client_id or identity, persistent=persistent)
    clients.append(c)
    return c.wait_connected()


def stop(clients: list[Client], c: Client) -> None:
    c.stop()
    clients.remove(c)


def payload() -> bytes:
    return uuid.uuid4().hex.encode()


def receive(c: Client, expected: tuple[str, bytes]) -> None:
    """Wait for one message, skipping others (e.g. left queued by an earlier test)."""
    deadline = time.monotonic() + WAIT_S
    while (left := deadline - time.monotonic()) > 0:
        if c.next_message(left) == expected:
            return
    raise AssertionError(f"{c.client_id} did not receive {expected}")


def wait_until(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def readable_filter(identity: str) -> str:
    """A filter `identity` may read: a device its own subtree, the cloud every turbine's."""
    return "turbines/#" if identity == CLOUD else f"turbines/{identity}/#"


def clear_session(clients: list[Client], broker: Broker, identity: str) -> None:
    """End `identity`'s persistent session (a clean start with no expiry), so no later test inherits its queue."""
    stop(clients, connect(clients, broker, identity))


# ------------------------------------------------------------------ client id = certificate CN


@pytest.mark.parametrize("row", connect_table(), ids=lambda r: r.id)
def test_a_certificate_holds_only_the_session_of_its_own_cn(broker: Broker, clients: list[Client],
                                                            row: Connect) -> None:
    if row.allowed:  # its own client id: a persistent session it can leave and resume
        mine = connect(clients, broker, row.identity, row.client_id, persistent=True)
        mine.subscribe(readable_filter(row.identity))
        stop(clients, mine)
        again = connect(clients, broker, row.identity, row.client_id, persistent=True)
        assert again.connack.session_present is True
        stop(clients, again)
        clear_session(clients, broker, row.identity)
        return

    victim_id = row.client_id  # the session the certificate asks for belongs to another identity
    victim = connect(clients, broker, victim_id, persistent=True)
    victim.subscribe(readable_filter(victim_id))
    own = connect(clients, broker, row.identity)  # the certificate's own connection

    attacker = connect(clients, broker, row.identity, victim_id)  # clean start, under another's client id
    # connected under its own CN: it took over its own connection (AWS would refuse the CONNECT instead)
    wait_until(lambda: own.disconnections >= 1, "the certificate's own connection was not taken over")
    stop(clients, own)
    assert (victim.connections, victim.disconnections) == (1, 0), "the victim's connection was taken over"
    # the victim's subscription lives on: it still receives, and only what it may read
    # (a device victim hears itself; the cloud hears the attacker's device, connected as itself)
    witness_from, topic_owner = (victim, victim_id) if victim_id in DEVICES else (attacker, row.identity)
    witness = (f"turbines/{topic_owner}/anomalies", payload())
    assert witness_from.publish(*witness).puback.reason_code == SUCCESS
    receive(victim, witness)
    stop(clients, attacker)

    # offline, its persistent session (subscription and queued messages) survives the certificate asking to
    # resume it
    stop(clients, victim)
    queued = None
    if victim_id == CLOUD:
        publisher = connect(clients, broker, DEVICES[0])
        queued = ("turbines/turbine-01/anomalies", payload())
        assert publisher.publish(*queued).puback.reason_code == SUCCESS
        stop(clients, publisher)
    thief = connect(clients, broker, row.identity, victim_id, persistent=True)
    time.sleep(QUIET_S)
    assert queued not in thief.drain()
    stop(clients, thief)
    back = connect(clients, broker, victim_id, persistent=True)
    assert back.connack.session_present is True
    if queued is not None:
        receive(back, queued)
    stop(clients, back)
    for identity in (victim_id, row.identity):
        clear_session(clients, broker, identity)


# ------------------------------------------------------------------ topics: the ACL


def _probe(row: Access) -> tuple[str, str] | None:
    """Who may publish on a topic the row's filter matches (so that its delivery can be checked), and where."""
    if row.topic == "turbines/#":
        return other_device(row.identity), f"turbines/{other_device(row.identity)}/anomalies"
    if row.topic.startswith("turbines/") and row.topic.split("/")[1] in DEVICES:
        return row.topic.split("/")[1], row.topic
    return None  # $SYS/# (the broker's own retained messages), a topic outside turbines/, the cloud's own subtree


@pytest.mark.parametrize("row", [r for r in access_table() if r.action == "publish"], ids=lambda r: r.id)
def test_publish_matches_the_table(broker: Broker, clients: list[Client], row: Access) -> None:
    me = connect(clients, broker, row.identity)
    reader = None
    if row.identity != CLOUD:  # the cloud reads every turbine topic: it sees whether the message got through
        reader = connect(clients, broker, CLOUD)
        reader.subscribe("turbines/#")
    message = (row.topic, payload())
    assert me.publish(*message).puback.reason_code == (SUCCESS if row.allowed else NOT_AUTHORIZED)
    if reader is None:
        return
    if row.allowed:
        receive(reader, message)
    else:
        # one client's packets are handled in order: once this witness arrives, the refused one never will
        witness = (f"turbines/{row.identity}/witness", payload())
        me.publish(*witness)
        receive(reader, witness)
        time.sleep(QUIET_S)
        assert message not in reader.drain()


@pytest.mark.parametrize("row", [r for r in access_table() if r.action == "subscribe"], ids=lambda r: r.id)
def test_subscribe_matches_the_table(broker: Broker, clients: list[Client], row: Access) -> None:
    me = connect(clients, broker, row.identity)
    suback = me.subscribe(row.topic).reason_codes[0]
    # AWS refuses a subscription beyond the policy; mosquitto 2.0.11 grants every SUBSCRIBE and checks `read` on
    # each delivery, so a refused row is checked on what arrives (for $SYS/#: the broker's retained $SYS/broker/*
    # messages, sent right after the SUBACK to any subscriber allowed to read them)
    if row.allowed:
        assert suback == GRANTED
    else:
        assert suback in (mqtt5.SubackReasonCode.NOT_AUTHORIZED, GRANTED)
    probe = _probe(row)
    sent = None
    if probe is not None:
        owner, topic = probe
        publisher = me if owner == row.identity else connect(clients, broker, owner)
        sent = (topic, payload())
        assert publisher.publish(*sent).puback.reason_code == SUCCESS
    if row.allowed:
        assert sent is not None, "an allowed row needs a probe"
        receive(me, sent)
        return
    # sequencing: the probe was handled (PUBACK) before the witness was sent, and the broker writes to one
    # client's connection in order, so once the witness arrives, the refused probe never will
    witness_owner = row.identity if row.identity in DEVICES else DEVICES[0]
    witness = (f"turbines/{witness_owner}/witness", payload())
    me.subscribe(witness[0])
    publisher = me if witness_owner == row.identity else connect(clients, broker, witness_owner)
    assert publisher.publish(*witness).puback.reason_code == SUCCESS
    receive(me, witness)
    time.sleep(QUIET_S)
    got = me.drain()
    assert sent not in got
    assert not [t for t, _ in got if t.startswith("$SYS/") or t == OUTSIDE_TOPIC or
                (t.startswith("turbines/") and t.split("/")[1] not in (row.identity, witness_owner))], got


# ------------------------------------------------------------------ queues


def test_queues_are_bounded_for_a_subscriber_that_is_down_for_minutes(broker: Broker, clients: list[Client]) -> None:
    conf = broker.conf_path.read_text().splitlines()
    assert f"max_queued_messages {MAX_QUEUED_MESSAGES}" in conf and MAX_QUEUED_MESSAGES == 100_000
    assert f"max_inflight_messages {MAX_INFLIGHT_MESSAGES}" in conf and MAX_INFLIGHT_MESSAGES == 1_000
    # mosquitto took the setting: it announces it as its Receive Maximum
    assert connect(clients, broker, DEVICES[0]).connack.receive_maximum == MAX_INFLIGHT_MESSAGES


def test_client_id_binding_is_a_listener_option(tmp_path: Path) -> None:
    pki = LocalPki(tmp_path / "pki")
    bound, unbound = Broker(tmp_path / "a", pki), Broker(tmp_path / "b", pki, bind_client_id=False)
    bound_conf = bound.write_config().read_text().splitlines()
    assert bound_conf.index("use_username_as_clientid true") > bound_conf.index(f"listener {bound.port} 127.0.0.1")
    assert "use_username_as_clientid true" not in unbound.write_config().read_text().splitlines()


# ------------------------------------------------------------------ a turbine's sensor source
def allowed(c: Client, topic: str) -> bool:
    """A PUBLISH the broker took (SUCCESS, or NO_MATCHING_SUBSCRIBERS when nobody listens)."""
    return bool(c.publish(topic, payload()).puback.reason_code != NOT_AUTHORIZED)


def test_a_sensor_source_writes_its_turbines_sensor_topic_only(tmp_path: Path, clients: list[Client]) -> None:
    pki = LocalPki(tmp_path / "pki").ensure()
    pki.sensor_source("turbine-01")
    with Broker(tmp_path, pki) as b:
        def source(thing: str) -> Client:
            c = Client(b.endpoint, creds=pki.sensor_source(thing), ca_path=pki.ca_path, client_id=f"{thing}-plc")
            clients.append(c)
            return c.wait_connected()

        plc = source("turbine-01")
        assert allowed(plc, "turbines/turbine-01/sensors")
        assert allowed(plc, "turbines/turbine-01/sensors/health")  # the nacelle.sensors component's health
        for topic in ("turbines/turbine-01/anomalies", "turbines/turbine-01/health", "turbines/turbine-02/sensors",
                      "turbines/turbine-02/sensors/health", "turbines/turbine-01/sensors/x",
                      "turbines/turbine-01.sensors/anomalies", OUTSIDE_TOPIC):
            assert not allowed(plc, topic), topic
        late = source("turbine-02")  # issued after the broker started: nothing until the ACL is reloaded
        assert not allowed(late, "turbines/turbine-02/sensors")
        b.refresh_acl()
        wait_until(lambda: allowed(late, "turbines/turbine-02/sensors"), "the ACL reload")
        assert not allowed(late, "turbines/turbine-01/sensors")
