"""What the cloud notes of each device message: refusals counted per thing and reason, sequence holes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nacelle.local.adapters.state import SqliteStateStore
from shared.messages import HealthRow
from shared.usecases.intake import (
    MAX_MISSING_KEPT,
    REJECTED,
    STREAMS,
    admit,
    missing_messages,
    record_rejected,
    track_sequence,
)


@pytest.fixture
def store(tmp_path: Path) -> SqliteStateStore:
    return SqliteStateStore(tmp_path / "state.db")


def stored(store: SqliteStateStore, table: str, key: str) -> dict[str, Any]:
    """The item at `key`, which the test expects to be there."""
    item = store.get(table, key)
    assert item is not None, f"{table}: no item {key!r}"
    return item


def health(seq: int, thing: str = "wt-01", **change: object) -> dict[str, object]:
    return {"v": 1, "turbine_id": thing, "model_version": 2, "inference_rate_hz": 5.0, "seq": seq,
            "thing_name": thing, "received_at": 1000 * seq, "client_id": thing, **change}


def test_a_hole_is_reported_once_and_filled_by_a_late_message(store: SqliteStateStore) -> None:
    assert track_sequence(store, "wt-01", "health", 7) == []  # the first message seen: nothing known before
    assert track_sequence(store, "wt-01", "health", 8) == []
    assert track_sequence(store, "wt-01", "health", 12) == [9, 10, 11]
    assert track_sequence(store, "wt-01", "health", 12) == []  # duplicate
    assert track_sequence(store, "wt-01", "health", 10) == []  # late: fills its hole
    assert missing_messages(store, "wt-01") == {"health": 2}
    item = stored(store, STREAMS, "wt-01#health")
    assert (item["high"], item["missing"], item["gaps"]) == (12, [9, 11], 1)
    assert missing_messages(store, "wt-02") == {}


def test_streams_and_turbines_are_counted_apart(store: SqliteStateStore) -> None:
    streams = [("wt-01", "health", (1, 3)), ("wt-01", "anomalies", (1, 2)), ("wt-02", "health", (5, 9))]
    for thing, stream, seqs in streams:
        for seq in seqs:
            track_sequence(store, thing, stream, seq)
    assert missing_messages(store, "wt-01") == {"health": 1, "anomalies": 0}
    assert missing_messages(store, "wt-02") == {"health": 3}


def test_a_reset_spool_starts_again_and_a_huge_hole_is_counted_not_listed(store: SqliteStateStore) -> None:
    track_sequence(store, "wt-01", "health", 40)
    assert track_sequence(store, "wt-01", "health", 1) == []  # reinstalled device: numbering restarts
    assert stored(store, STREAMS, "wt-01#health")["high"] == 1
    assert len(track_sequence(store, "wt-01", "health", MAX_MISSING_KEPT + 500)) == MAX_MISSING_KEPT  # the last
    item = stored(store, STREAMS, "wt-01#health")
    assert len(item["missing"]) == MAX_MISSING_KEPT and item["lost_uncounted"] == 498
    assert missing_messages(store, "wt-01") == {"health": MAX_MISSING_KEPT + 498}
    assert track_sequence(store, "wt-01", "health", 0) == []  # unnumbered: ignored


def test_a_huge_jump_in_the_numbering_costs_no_more_than_a_small_one(store: SqliteStateStore) -> None:
    track_sequence(store, "wt-01", "health", 1)
    assert track_sequence(store, "wt-01", "health", 2 ** 53 - 1)[-1] == 2 ** 53 - 2  # not a list of 2**53 numbers
    assert missing_messages(store, "wt-01") == {"health": 2 ** 53 - 3}


def test_message_1_delivered_again_is_a_duplicate_not_a_reset(store: SqliteStateStore) -> None:
    for seq in range(1, 6):
        track_sequence(store, "wt-01", "health", seq, 1000 * seq)
    assert track_sequence(store, "wt-01", "health", 1, 1000) == []  # the same delivery again
    assert track_sequence(store, "wt-01", "health", 6, 6000) == []
    assert missing_messages(store, "wt-01") == {"health": 0}
    assert track_sequence(store, "wt-01", "health", 1, 9000) == []  # numbering restarted after the last one
    assert stored(store, STREAMS, "wt-01#health")["high"] == 1 and missing_messages(store, "wt-01") == {"health": 0}


def test_refusals_are_counted_per_reason(store: SqliteStateStore) -> None:
    record_rejected(store, "wt-01", "anomalies", "quota", "over 100 messages/s", 1.0, count=900)
    record_rejected(store, "wt-01", "anomalies", "schema", "field 'score' must be a finite number", 2.0)
    item = stored(store, REJECTED, "wt-01#anomalies")
    assert (item["count"], item["by_reason"], item["last_reason"], item["last_at"]) == (
        901, {"quota": 900, "schema": 1}, "schema", 2.0)
    assert store.get(REJECTED, "wt-02#anomalies") is None


def test_admit_checks_the_row_then_notes_its_number(store: SqliteStateStore) -> None:
    assert admit(store, HealthRow, health(1), 0.0) is not None
    assert admit(store, HealthRow, health(3), 0.0) is not None
    assert missing_messages(store, "wt-01") == {"health": 1}
    for bad in (health(4, model_version=999.5), health(4, turbine_id="wt-02"), {"thing_name": "wt-01"}, {}):
        assert admit(store, HealthRow, bad, 0.0) is None
    assert stored(store, REJECTED, "wt-01#health")["count"] == 3 and stored(store, REJECTED, "?#health")["count"] == 1
    assert stored(store, STREAMS, "wt-01#health")["high"] == 3  # refused messages never count as received
