"""The durable outbox: order, bound and drop policy, persistence, seq across restarts."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TypeVar

import pytest
from detector.spool import Spool

from shared.errors import ConfigurationError

T = TypeVar("T")


def written(result: T | None) -> T:
    assert result is not None, "not written"
    return result


def drain(spool: Spool) -> list[tuple[str, str, bytes]]:
    out = []
    while (entry := spool.peek()) is not None:
        out.append((entry.topic, entry.kind, entry.payload))
        spool.ack(entry.id)
    return out


def test_order_peek_and_ack(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", 100)
    ids = [written(spool.append("a/anomalies", f"m{i}".encode(), "open")) for i in range(5)]
    assert ids == sorted(ids) and spool.depth() == 5
    first = spool.peek()
    assert first is not None and first.payload == b"m0"
    assert spool.peek() == first  # peek does not consume
    spool.ack(first.id)
    spool.ack(first.id)  # acking twice is harmless
    assert [p for _, _, p in drain(spool)] == [b"m1", b"m2", b"m3", b"m4"]
    assert spool.peek() is None and spool.depth() == 0 and spool.dropped == 0


def test_drop_policy_health_then_update_then_oldest(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", 4)
    spool.append("t/anomalies", b"open1", "open")
    spool.append("t/health", b"h1", "health")
    spool.append("t/anomalies", b"upd1", "update")
    spool.append("t/health", b"h2", "health")
    spool.append("t/anomalies", b"close1", "close")  # full: h1 goes
    spool.append("t/anomalies", b"open2", "open")  # h2 goes
    spool.append("t/anomalies", b"upd2", "update")  # no health left: upd1 goes
    assert [p for _, _, p in _all(spool)] == [b"open1", b"close1", b"open2", b"upd2"]
    spool.append("t/anomalies", b"close2", "close")  # upd2 goes
    spool.append("t/health", b"h3", "health")  # nothing droppable first: the oldest of all (open1)
    assert spool.dropped == 5 and spool.depth() == 4
    assert [p for _, _, p in drain(spool)] == [b"close1", b"open2", b"close2", b"h3"]


def test_stats_go_after_health_and_updates_but_before_episode_opens_and_closes(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", 3)
    spool.append("t/stats", b"s1", "stats")
    spool.append("t/anomalies", b"upd1", "update")
    spool.append("t/health", b"h1", "health")
    spool.append("t/anomalies", b"open1", "open")  # h1 goes
    spool.append("t/anomalies", b"close1", "close")  # upd1 goes
    assert [p for _, _, p in _all(spool)] == [b"s1", b"open1", b"close1"]
    spool.append("t/stats", b"s2", "stats")  # s1 goes, not an episode message
    assert [p for _, _, p in drain(spool)] == [b"open1", b"close1", b"s2"] and spool.dropped == 3


def _all(spool: Spool) -> list[tuple[int, str, bytes]]:
    rows = spool._db.execute("SELECT id, kind, payload FROM outbox ORDER BY id").fetchall()
    return [(r[0], r[1], bytes(r[2])) for r in rows]


def test_persistence_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "work" / "spool.db"
    spool = Spool(path, 3)
    for i in range(5):
        spool.append("t/health", f"h{i}".encode(), "health")
    spool.append_message("t/anomalies", "open", "anomalies", {"v": 1, "kind": "open"})
    spool.close()
    again = Spool(path, 3)
    assert again.depth() == 3 and again.dropped == 3  # the drop count is persisted too
    assert [p for _, _, p in drain(again)][:2] == [b"h3", b"h4"]


def test_seq_keeps_increasing_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path, 10)
    seqs = [written(spool.append_message("t/anomalies", "open", "anomalies", {"v": 1, "seq": 1}))[1] for _ in range(3)]
    health = written(spool.append_message("t/health", "health", "health", {"v": 1}))[1]
    drain(spool)
    spool.close()
    again = Spool(path, 10)
    more = [written(again.append_message("t/anomalies", "update", "anomalies", {"v": 1}))[1] for _ in range(2)]
    assert seqs + more == [1, 2, 3, 4, 5] and health == 1
    assert again.seq("anomalies") == 5 and again.seq("health") == 1
    payloads = [json.loads(p) for _, _, p in drain(again)]
    assert [m["seq"] for m in payloads] == [4, 5]


def test_concurrent_appends_keep_one_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", 10_000)

    def produce(stream: str) -> None:
        for _ in range(200):
            spool.append_message(f"t/{stream}", "open", stream, {"v": 1})

    threads = [threading.Thread(target=produce, args=(s,)) for s in ("anomalies", "health")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    by_topic: dict[str, list[int]] = {}
    for topic, _, payload in drain(spool):
        by_topic.setdefault(topic, []).append(json.loads(payload)["seq"])
    assert by_topic == {"t/anomalies": list(range(1, 201)), "t/health": list(range(1, 201))}


def test_discard_counts_a_drop(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", 10)
    entry_id = written(spool.append("t/anomalies", b"x", "open"))
    spool.discard(entry_id, "broker refused: NOT_AUTHORIZED")
    spool.discard(entry_id, "again")  # already gone: not counted twice
    assert spool.depth() == 0 and spool.dropped == 1


def test_bound_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="maxMessages"):
        Spool(tmp_path / "spool.db", 0)


def _fill_the_disk(spool: Spool) -> None:
    """SQLite's page limit makes writes fail as a full disk does ("database or disk is full")."""
    pages = spool._db.execute("PRAGMA page_count").fetchone()[0]
    spool._db.execute(f"PRAGMA max_page_count = {pages}")


def test_a_full_disk_drops_and_counts_and_the_spool_recovers(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", 1000)
    spool.append_message("t/anomalies", "open", "anomalies", {"kind": "open"})
    _fill_the_disk(spool)
    lost = [spool.append_message("t/health", "health", "health", {"pad": "x" * 3000}) for _ in range(5)]
    assert lost.count(None) >= 3 and spool.failures == lost.count(None)
    assert spool.dropped == lost.count(None)  # never silently: what could not be written counts as dropped
    spool._db.execute("PRAGMA max_page_count = 1000000")  # space is back
    assert written(spool.append_message("t/anomalies", "close", "anomalies", {"kind": "close"}))[1] == 2  # no seq lost
    spool.close()
    reopened = Spool(tmp_path / "spool.db", 1000)
    assert reopened.dropped == lost.count(None)  # stored with the first write that succeeded
    assert [json.loads(p)["seq"] for t, _, p in drain(reopened) if t == "t/anomalies"] == [1, 2]


def test_an_ack_that_cannot_delete_is_not_sent_again(tmp_path: Path) -> None:
    import sqlite3

    spool = Spool(tmp_path / "spool.db", 10)
    first, second = written(spool.append("t/a", b"m1", "open")), written(spool.append("t/a", b"m2", "close"))
    spool._db.set_authorizer(lambda op, *_: sqlite3.SQLITE_DENY if op == sqlite3.SQLITE_DELETE else sqlite3.SQLITE_OK)
    spool.ack(first)  # sent, but the delete fails
    entry = spool.peek()
    assert spool.failures == 1 and entry is not None and entry.id == second and spool.depth() == 1
    spool._db.set_authorizer(None)
    spool.append("t/a", b"m3", "open")  # the next write deletes it for good
    spool.close()
    assert [p for _, _, p in drain(Spool(tmp_path / "spool.db", 10))] == [b"m2", b"m3"]
