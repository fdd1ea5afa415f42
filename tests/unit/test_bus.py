"""The local event bus: durable puts, routing, at-least-once delivery, retries, dead letters, wake-ups."""

import re
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from nacelle.local.runtime.bus import Dispatcher, EventBus, Rule, socket_path_for
from shared.errors import ConfigurationError, Conflict, DataError, NacelleError, NotFound
from shared.ports import Envelope

PROJECT_ROOT = Path(__file__).resolve().parents[2]
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
RULES = [
    Rule("arrival", "data_arrival", {"source": ["aws.s3"], "detail": {"object": {"key": [{"prefix": "raw/"}]}}}),
    Rule("audit", "audit", {"source": ["aws.s3", "nacelle"]}),
    Rule("training", "training_completed", {"source": ["aws.sagemaker"]}),
]


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def s3_put(key: str) -> Envelope:
    return Envelope("aws.s3", "Object Created", {"bucket": {"name": "b"}, "object": {"key": key}})


def ping(n: int = 0) -> Envelope:
    return Envelope("nacelle", "Ping", {"n": n})


def run_child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=20)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def bus(tmp_path: Path, clock: FakeClock):
    with EventBus(tmp_path / "bus.db", RULES, region="eu-west-1", account="111122223333", clock=clock) as b:
        yield b


# -- put ------------------------------------------------------------------------------------------
def test_put_stores_the_exact_eventbridge_shape_before_any_delivery(bus):
    event_id = bus.put(s3_put("raw/t1.csv"))

    event = bus.event(event_id)
    assert list(event) == ["version", "id", "detail-type", "source", "account", "time", "region", "resources",
                           "detail"]
    assert event == {"version": "0", "id": event_id, "detail-type": "Object Created", "source": "aws.s3",
                     "account": "111122223333", "time": "2026-01-01T00:00:00Z", "region": "eu-west-1",
                     "resources": [], "detail": {"bucket": {"name": "b"}, "object": {"key": "raw/t1.csv"}}}
    assert uuid.UUID(event_id).version == 4
    assert [(d.rule, d.target, d.status, d.attempts) for d in bus.deliveries(event_id=event_id)] == [
        ("arrival", "data_arrival", "pending", 0), ("audit", "audit", "pending", 0)]


def test_put_takes_an_eventbridge_dict_and_keeps_its_id_time_and_resources(bus):
    event_id = bus.put({"version": "0", "id": "e-1", "detail-type": "Ping", "source": "nacelle", "account": "999",
                        "region": "us-east-1", "time": "2025-05-05T05:05:05Z", "resources": ["arn:x"],
                        "detail": {"a": 1}})
    assert event_id == "e-1"
    event = bus.event("e-1")
    assert (event["time"], event["resources"], event["account"], event["region"]) == (
        "2025-05-05T05:05:05Z", ["arn:x"], "111122223333", "eu-west-1")  # the bus's own account and region


def test_an_event_no_rule_matches_is_stored_without_deliveries(bus):
    event_id = bus.put(Envelope("aws.ec2", "Instance State-change Notification", {}))
    assert bus.event(event_id)["source"] == "aws.ec2"
    assert bus.deliveries() == []


def test_put_rejects_malformed_events_and_stores_nothing(bus):
    with pytest.raises(DataError, match="no detail-type, detail"):
        bus.put({"source": "nacelle"})
    with pytest.raises(DataError, match="detail must be an object"):
        bus.put({"source": "nacelle", "detail-type": "Ping", "detail": "text"})
    with pytest.raises(DataError, match="not JSON"):
        bus.put(Envelope("nacelle", "Ping", {"when": datetime.now(UTC)}))
    assert bus.stats()["events"] == 0


def test_an_event_id_already_on_the_bus_is_a_conflict(bus):
    bus.put(Envelope("nacelle", "Ping", {}, id="fixed"))
    with pytest.raises(Conflict):
        bus.put(Envelope("nacelle", "Ping", {}, id="fixed"))
    assert len(bus.deliveries()) == 1


def test_a_dedup_key_makes_the_second_put_a_no_op(bus):
    first = bus.put(ping(1), deliver_at=datetime.fromtimestamp(T0 + 600, UTC), dedup_key="retrain-check-g1")
    second = bus.put(ping(2), deliver_at=datetime.fromtimestamp(T0 + 900, UTC), dedup_key="retrain-check-g1")
    assert first is not None and second is None
    assert bus.stats() == {"events": 1, "pending": 1, "delivering": 0, "done": 0, "dead": 0}
    assert bus.event(first)["detail"] == {"n": 1}


def _held_first_commit(bus: EventBus, waiting: int, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Hold the first transaction of `bus` open until `waiting` more puts queue behind it; returns the
    number of puts each transaction carried (the events counted before and after it)."""
    real, sizes, first = bus._transaction, [], threading.Event()

    @contextmanager
    def counted():
        if not first.is_set():
            first.set()
            deadline = time.monotonic() + 5.0
            while len(bus._queue) < waiting and time.monotonic() < deadline:
                time.sleep(0.005)
        with real() as conn:
            before = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            yield conn
            sizes.append(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] - before)

    monkeypatch.setattr(bus, "_transaction", counted)
    return sizes


def _concurrently(*calls: Any) -> list[Any]:
    """Run each call in its own thread, the first one first; their results (or exceptions) in order."""
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    threads[0].start()
    time.sleep(0.05)  # the first one leads the first commit
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(10)
    return results


def test_concurrent_puts_share_one_commit_and_each_returns_once_stored(bus, monkeypatch):
    sizes = _held_first_commit(bus, 3, monkeypatch)
    ids = _concurrently(*(lambda n=n: bus.put(ping(n)) for n in range(4)))
    assert sizes == [1, 3]  # the three puts that queued while the first committed shared the next commit
    assert all(isinstance(i, str) for i in ids)
    assert [bus.event(i)["detail"]["n"] for i in ids] == [0, 1, 2, 3]
    assert len(bus.deliveries("pending")) == 4


def test_a_refused_put_in_a_shared_commit_refuses_only_itself(bus, monkeypatch):
    bus.put(Envelope("nacelle", "Ping", {}, id="taken"))
    sizes = _held_first_commit(bus, 4, monkeypatch)
    later = datetime.fromtimestamp(T0 + 600, UTC)
    results = _concurrently(lambda: bus.put(ping(0)),
                            lambda: bus.put(Envelope("nacelle", "Ping", {}, id="taken")),
                            lambda: bus.put(ping(1)),
                            lambda: bus.put(ping(2), deliver_at=later, dedup_key="check-1"),
                            lambda: bus.put(ping(3), deliver_at=later, dedup_key="check-1"))
    assert sizes[0] == 1 and sum(sizes) == 3
    assert isinstance(results[1], Conflict)
    assert sorted(r is None for r in results[3:]) == [False, True]  # one of the two with the same key is stored
    stored = sorted(bus.event(r)["detail"]["n"] for r in (results[0], results[2], *results[3:]) if isinstance(r, str))
    assert stored in ([0, 1, 2], [0, 1, 3])
    assert bus.stats()["events"] == 4


def test_a_failed_shared_commit_fails_every_put_of_it_and_stores_none(bus, monkeypatch):
    real = bus._write

    def failing(conn, put):
        real(conn, put)
        if put.body and '"n":2' in put.body:
            raise sqlite3.OperationalError("disk I/O error")

    sizes = _held_first_commit(bus, 2, monkeypatch)
    monkeypatch.setattr(bus, "_write", failing)
    results = _concurrently(lambda: bus.put(ping(0)), lambda: bus.put(ping(1)), lambda: bus.put(ping(2)))
    assert isinstance(results[0], str) and sizes[0] == 1
    assert all(isinstance(r, sqlite3.OperationalError) for r in results[1:])
    assert bus.stats()["events"] == 1 and len(bus.deliveries()) == 1


def test_unknown_event_is_not_found(bus):
    with pytest.raises(NotFound):
        bus.event("nope")


def test_rules_are_validated_and_named_uniquely(tmp_path):
    with pytest.raises(ConfigurationError, match="expected a list"):
        Rule("bad", "t", {"source": "aws.s3"})
    with pytest.raises(ConfigurationError, match="unique"):
        EventBus(tmp_path / "bus.db", [RULES[0], RULES[0]])


def test_the_bus_is_an_event_publisher(bus):
    bus.publish(ping())
    assert [d.target for d in bus.deliveries()] == ["audit"]


# -- routing and delivery ----------------------------------------------------------------------------
def test_events_are_routed_by_pattern_to_every_matching_target(bus):
    received: dict[str, list[str]] = {"data_arrival": [], "audit": [], "training_completed": []}
    targets = {name: (lambda event, name=name: received[name].append(event["detail"]["object"]["key"]))
               for name in received}
    raw = bus.put(s3_put("raw/t1.csv"))
    bus.put(s3_put("models/m.tar.gz"))

    assert Dispatcher(bus, targets).run_until_idle() == 3
    assert received == {"data_arrival": ["raw/t1.csv"], "audit": ["raw/t1.csv", "models/m.tar.gz"],
                        "training_completed": []}
    assert {d.status for d in bus.deliveries()} == {"done"}
    assert bus.event(raw)["detail"]["object"]["key"] == "raw/t1.csv"


def test_each_target_gets_its_own_copy_of_the_event(bus):
    def vandal(event):
        event["detail"]["n"] = "changed"

    event_id = bus.put(s3_put("raw/a.csv"))
    seen = []
    Dispatcher(bus, {"data_arrival": vandal, "audit": lambda e: seen.append(e["detail"])}).run_until_idle()
    assert seen == [{"bucket": {"name": "b"}, "object": {"key": "raw/a.csv"}}]
    assert "n" not in bus.event(event_id)["detail"]


def test_a_failing_target_is_retried_with_exponential_backoff(bus, clock):
    calls: list[float] = []

    def flaky(event):
        calls.append(clock())
        if len(calls) < 3:
            raise RuntimeError("throttled")

    dispatcher = Dispatcher(bus, {"audit": flaky}, backoff_base_s=2.0, jitter=0)
    bus.put(ping())

    assert dispatcher.run_until_idle() == 0
    [delivery] = bus.deliveries()
    assert (delivery.status, delivery.attempts, delivery.available_at) == ("pending", 1, T0 + 2)
    assert delivery.last_error == "RuntimeError: throttled"
    clock.advance(1.9)
    assert dispatcher.run_until_idle() == 0 and len(calls) == 1  # not due yet
    clock.advance(0.1)
    assert dispatcher.run_until_idle() == 0
    assert bus.deliveries()[0].available_at == T0 + 2 + 4
    clock.advance(4)
    assert dispatcher.run_until_idle() == 1
    assert calls == [T0, T0 + 2, T0 + 6]
    [delivery] = bus.deliveries()
    assert (delivery.status, delivery.attempts) == ("done", 3)


def test_backoff_is_capped_and_jitter_is_small(bus, clock):
    def fail(event):
        raise RuntimeError("down")

    delays = []
    dispatcher = Dispatcher(bus, {"audit": fail}, max_attempts=10, backoff_base_s=1.0, backoff_max_s=3.0, jitter=0.1)
    bus.put(ping())
    for _ in range(5):
        dispatcher.run_until_idle()
        delays.append(bus.deliveries()[0].available_at - clock())
        clock.advance(10)
    assert 1.0 <= delays[0] <= 1.1 and 2.0 <= delays[1] <= 2.2
    assert delays[2:] == pytest.approx([3.0, 3.0, 3.0])


def test_after_max_attempts_a_delivery_is_a_dead_letter_until_redriven(bus):
    healthy = threading.Event()
    received = []

    def target(event):
        if not healthy.is_set():
            raise RuntimeError(f"boom {event['detail']['n']}")
        received.append(event["detail"]["n"])

    dispatcher = Dispatcher(bus, {"audit": target}, max_attempts=3, backoff_base_s=0)
    bus.put(ping(5))

    assert dispatcher.run_until_idle() == 0
    [dead] = bus.dlq()
    assert (dead.status, dead.attempts, dead.last_error, dead.target) == ("dead", 3, "RuntimeError: boom 5", "audit")
    assert dispatcher.run_until_idle() == 0  # dead letters are never retried on their own

    healthy.set()
    assert bus.redrive([dead.id + 1000]) == 0
    assert bus.redrive([dead.id]) == 1
    assert (bus.deliveries()[0].status, bus.deliveries()[0].attempts) == ("pending", 0)
    assert dispatcher.run_until_idle() == 1
    assert received == [5] and bus.dlq() == []


def test_an_unknown_target_is_a_dead_letter_at_once(bus):
    bus.put(Envelope("aws.sagemaker", "SageMaker Training Job State Change", {}))
    assert Dispatcher(bus, {"audit": lambda e: None}).run_until_idle() == 0
    [dead] = bus.dlq()
    assert dead.attempts == 1
    assert dead.last_error.startswith("ConfigurationError: no target named 'training_completed'")


def test_a_delayed_delivery_is_not_made_before_its_time(bus, clock):
    received: list[dict[str, Any]] = []
    dispatcher = Dispatcher(bus, {"audit": received.append})
    event_id = bus.put(ping(), deliver_at=datetime(2026, 1, 1, 0, 1))  # naive: UTC, as Scheduler's at()

    assert bus.event(event_id)["time"] == "2026-01-01T00:01:00Z"  # the time the schedule fires
    assert dispatcher.run_until_idle() == 0
    clock.advance(59.9)
    assert dispatcher.run_until_idle() == 0
    clock.advance(0.1)
    assert dispatcher.run_until_idle() == 1
    assert [e["id"] for e in received] == [event_id]


def test_targets_may_put_follow_up_events_and_run_until_idle_delivers_them(bus):
    received: list[dict[str, Any]] = []

    def arrival(event):
        bus.put(ping(1))

    bus.put(s3_put("raw/a.csv"))
    assert Dispatcher(bus, {"data_arrival": arrival, "audit": received.append}).run_until_idle() == 3
    assert [e["source"] for e in received] == ["aws.s3", "nacelle"]


# -- durability --------------------------------------------------------------------------------------
def test_events_and_deliveries_survive_a_restart(tmp_path, clock):
    with EventBus(tmp_path / "bus.db", RULES, clock=clock) as first:
        event_id = first.put(ping(3))
        assert event_id is not None
        expected = first.event(event_id)

    received: list[dict[str, Any]] = []
    with EventBus(tmp_path / "bus.db", RULES, clock=clock) as second:
        assert second.event(event_id) == expected
        assert [d.status for d in second.deliveries()] == ["pending"]
        assert Dispatcher(second, {"audit": received.append}).run_until_idle() == 1
    assert received == [expected]


def test_a_delivery_interrupted_by_a_crash_is_made_again_on_start(tmp_path):
    bus = EventBus(tmp_path / "bus.db", RULES)
    event_id = bus.put(ping(9))
    crashed = run_child("""
        import os, sys
        from pathlib import Path
        from nacelle.local.runtime.bus import Dispatcher, EventBus
        Dispatcher(EventBus(Path(sys.argv[1]), []), {"audit": lambda event: os._exit(3)}).run_until_idle()
        """, str(tmp_path / "bus.db"))
    assert crashed.returncode == 3, crashed.stderr
    assert [(d.status, d.attempts) for d in bus.deliveries()] == [("delivering", 1)]

    received = threading.Event()
    dispatcher = Dispatcher(bus, {"audit": lambda event: received.set()})
    dispatcher.start()
    try:
        assert received.wait(2.0)
    finally:
        dispatcher.stop()
    [delivery] = bus.deliveries(event_id=event_id)
    assert (delivery.status, delivery.attempts) == ("done", 2)
    bus.close()


def test_an_interrupted_delivery_out_of_attempts_is_recovered_as_a_dead_letter(bus, clock):
    bus.put(ping())
    bus.claim(clock(), 10)  # claimed, then the process "dies"
    assert Dispatcher(bus, {"audit": lambda e: None}, max_attempts=1).recover() == 1
    [dead] = bus.dlq()
    assert dead.last_error.startswith("Interrupted")


# -- the running dispatcher ----------------------------------------------------------------------------
@pytest.fixture
def live_bus(tmp_path):
    with EventBus(tmp_path / "bus.db", RULES) as b:
        yield b


def test_a_put_from_another_process_wakes_the_running_dispatcher(live_bus):
    received: list[dict[str, Any]] = []
    delivered = threading.Event()

    def audit(event: dict[str, Any]) -> None:
        received.append(event)
        delivered.set()

    dispatcher = Dispatcher(live_bus, {"audit": audit})
    dispatcher.start()
    try:
        time.sleep(0.1)
        idle_iterations = dispatcher.loop_iterations
        assert idle_iterations <= 2  # one pass at start, then asleep

        child = run_child("""
            import sys
            from pathlib import Path
            from nacelle.local.runtime.bus import EventBus, Rule
            from shared.ports import Envelope
            bus = EventBus(Path(sys.argv[1]), [Rule("audit", "audit", {"source": ["nacelle"]})])
            print(bus.put(Envelope("nacelle", "Ping", {"from": "child"})))
            """, str(live_bus.db_path))
        put_done = time.monotonic()
        assert child.returncode == 0, child.stderr
        assert delivered.wait(1.0)
        assert time.monotonic() - put_done < 1.0
        assert [(e["id"], e["detail"]) for e in received] == [(child.stdout.strip(), {"from": "child"})]

        time.sleep(0.1)  # let the worker record the outcome
        woken = dispatcher.loop_iterations
        assert woken - idle_iterations <= 4  # the datagram and the finished delivery, not a timer
        time.sleep(0.2)
        assert dispatcher.loop_iterations == woken  # asleep again: no polling
    finally:
        dispatcher.stop()
    assert not live_bus.socket_path.exists()


def test_the_running_dispatcher_sleeps_exactly_until_a_delayed_delivery_is_due(live_bus):
    delivered_at: list[float] = []
    done = threading.Event()

    def audit(event: dict[str, Any]) -> None:
        delivered_at.append(time.time())
        done.set()

    dispatcher = Dispatcher(live_bus, {"audit": audit})
    with dispatcher:
        due = time.time() + 0.25
        live_bus.put(ping(), deliver_at=datetime.fromtimestamp(due, UTC))
        assert not done.wait(0.15)
        assert done.wait(1.0)
    assert due <= delivered_at[0] < due + 0.5
    assert dispatcher.loop_iterations <= 5


def test_the_running_dispatcher_retries_failures_after_the_backoff(live_bus):
    calls: list[float] = []
    done = threading.Event()

    def flaky(event):
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RuntimeError("once")
        done.set()

    with Dispatcher(live_bus, {"audit": flaky}, backoff_base_s=0.1, jitter=0):
        live_bus.put(ping())
        assert done.wait(2.0)
    assert calls[1] - calls[0] >= 0.1
    assert [(d.status, d.attempts, d.last_error) for d in live_bus.deliveries()] == [("done", 2, "RuntimeError: once")]


def test_puts_from_many_threads_are_each_delivered(live_bus):
    seen: list[int] = []
    lock = threading.Lock()
    all_done = threading.Event()

    def audit(event):
        with lock:
            seen.append(event["detail"]["n"])
            if len(seen) == 100:
                all_done.set()

    def producer(base):
        for n in range(base, base + 25):
            live_bus.put(ping(n))

    with Dispatcher(live_bus, {"audit": audit}, workers=4):
        threads = [threading.Thread(target=producer, args=(base,)) for base in (0, 25, 50, 75)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all_done.wait(5.0)
    assert sorted(seen) == list(range(100))
    assert live_bus.stats()["done"] == 100


def test_only_one_dispatcher_runs_per_database(live_bus):
    other_bus = EventBus(live_bus.db_path, RULES)
    with Dispatcher(live_bus, {}):
        with pytest.raises(Conflict, match="another dispatcher"):
            Dispatcher(other_bus, {}).start()
        with pytest.raises(Conflict):
            Dispatcher(other_bus, {}).recover()
    Dispatcher(other_bus, {}).recover()  # free again once stopped
    other_bus.close()


def test_stop_without_start_is_a_no_op(live_bus):
    Dispatcher(live_bus, {}).stop()


# -- the wake-up socket ----------------------------------------------------------------------------------
def test_the_socket_sits_next_to_the_database_when_the_path_is_short(tmp_path):
    assert socket_path_for(tmp_path / "bus.db") == Path(f"{(tmp_path / 'bus.db').resolve()}.sock")


def test_a_long_database_path_gets_a_short_hashed_socket_in_tmp(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "bus.db"
    path = socket_path_for(deep)
    assert re.fullmatch(r"/tmp/nacelle-bus-[0-9a-f]{24}\.sock", str(path))
    assert path == socket_path_for(deep) != socket_path_for(deep.with_name("other.db"))

    received = threading.Event()
    bus = EventBus(deep, RULES)
    with Dispatcher(bus, {"audit": lambda e: received.set()}):
        assert path.exists()
        EventBus(deep, RULES).put(ping())  # another instance: wakes through the socket
        assert received.wait(1.0)
    assert not path.exists()
    bus.close()


def test_a_damaged_bus_file_is_named_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "bus.db"
    path.write_bytes(b"GARBAGE" * 200)
    with pytest.raises(NacelleError, match=r"bus\.db: the event bus cannot be read .*move it aside"):
        EventBus(path, [])
