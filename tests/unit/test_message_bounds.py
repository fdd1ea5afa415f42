"""Numbers a device row may not carry: times no date holds (or in ms or ns), integers past what a float or a JSON
number holds. Each is a BadMessage naming the field, so the intake refuses and counts the row; what the stores
already hold shows as an unknown time, and the local state store refuses text no store takes. On the wire, a key
given twice in one object is a BadMessage too (JSON parsers disagree on which value counts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nacelle.local.adapters.state import SqliteStateStore
from shared.errors import ConfigurationError
from shared.jsonview import as_datetime, json_ready
from shared.messages import BadMessage, EpisodeRow, HealthRow, StatsRow, decode, validate
from shared.usecases.intake import admit, rejected

EVENTS = Path(__file__).parents[1] / "events"
NOW = 1_772_323_200.0  # 2026-03-01T00:00:00Z


def anomaly_row(**change: Any) -> dict[str, Any]:
    return {**json.loads((EVENTS / "iot_anomaly_row.json").read_text()), **change}


def health_row(**change: Any) -> dict[str, Any]:
    return {"v": 2, "turbine_id": "wt-01", "seq": 1, "thing_name": "wt-01", "received_at": int(NOW * 1000),
            **change}


def stats_row(**change: Any) -> dict[str, Any]:
    return {"v": 1, "turbine_id": "wt-01", "seq": 1, "period_start": NOW, "period_s": 1800.0, "levels": [0.5],
            "thing_name": "wt-01", "received_at": int((NOW + 1800) * 1000), **change}  # when its period ended


@pytest.mark.parametrize("field", ["started_at", "opened_at", "last_flagged_at", "ended_at"])
@pytest.mark.parametrize("value", [NOW * 1e9, NOW * 1e3, 1e20, -1.0, 10**30])
def test_an_anomaly_row_time_outside_epoch_seconds_is_refused_naming_it(field: str, value: float) -> None:
    with pytest.raises(BadMessage, match=f"field '{field}' must be epoch seconds before 2100"):
        validate(EpisodeRow, anomaly_row(**{field: value}))


def test_times_of_other_rows_are_bounded_too() -> None:
    with pytest.raises(BadMessage, match="field 'period_start'"):
        validate(StatsRow, stats_row(period_start=NOW * 1e3))
    with pytest.raises(BadMessage, match="field 'period_s'"):
        validate(StatsRow, stats_row(period_s=1e300))
    with pytest.raises(BadMessage, match="field 'received_at'"):
        validate(HealthRow, health_row(received_at=int(NOW * 1e9)))
    assert validate(StatsRow, stats_row()).period_start == NOW  # a plausible row passes
    assert validate(EpisodeRow, anomaly_row(started_at=101.0, opened_at=102.0)).started_at == 101.0  # a replay's


def test_the_intake_refuses_and_counts_a_row_with_a_time_in_nanoseconds(tmp_path: Path) -> None:
    store = SqliteStateStore(tmp_path / "state.db")
    assert admit(store, EpisodeRow, anomaly_row(kind="close", ended_at=NOW * 1e9), NOW) is None
    [count] = rejected(store)
    assert (count["thing_name"], count["count"], count["last_reason"]) == ("turbine-03", 1, "schema")
    assert "ended_at" in count["last_detail"]


@pytest.mark.parametrize(("row_type", "row", "field"), [
    (EpisodeRow, anomaly_row(score=10**400), "score"),
    (EpisodeRow, anomaly_row(contributions={"rps": 10**400}), "contributions.rps"),
    (HealthRow, health_row(latency_p50_ms=10**400), "latency_p50_ms"),
])
def test_an_integer_past_the_float_range_in_a_number_field_is_refused_naming_it(row_type: Any, row: dict[str, Any],
                                                                                  field: str) -> None:
    with pytest.raises(BadMessage, match=f"field '{field}' must be a finite number"):
        validate(row_type, row)


def test_seq_is_at_most_the_largest_exact_json_integer() -> None:
    assert validate(EpisodeRow, anomaly_row(seq=2**53 - 1)).seq == 2**53 - 1
    with pytest.raises(BadMessage, match="field 'seq' must be <= "):
        validate(EpisodeRow, anomaly_row(seq=2**53))
    with pytest.raises(BadMessage, match="field 'seq'"):
        validate(HealthRow, health_row(seq=10**400))


def test_an_integer_of_too_many_digits_on_the_wire_is_a_bad_message() -> None:
    payload = json.dumps(anomaly_row()).replace('"seq": 17', '"seq": ' + "9" * 5000).encode()
    with pytest.raises(BadMessage, match="not UTF-8 JSON"):
        decode(EpisodeRow, payload)


def test_a_key_given_twice_on_the_wire_is_a_bad_message_naming_it() -> None:
    text = json.dumps(anomaly_row())
    assert decode(EpisodeRow, text.encode()).turbine_id == "turbine-03"
    # the last value alone would pass: the repeat itself is refused
    top = text.replace('"turbine_id": "turbine-03"', '"turbine_id": "turbine-04", "turbine_id": "turbine-03"')
    with pytest.raises(BadMessage, match=r"^duplicate key 'turbine_id' in a message on anomalies$"):
        decode(EpisodeRow, top.encode())
    nested = text.replace('"contributions": {', '"contributions": {"rps": 0.9, ')
    with pytest.raises(BadMessage, match=r"^duplicate key 'rps' in a message on anomalies$"):
        decode(EpisodeRow, nested.encode())


@pytest.mark.parametrize("value", [1e20, -1e20, NOW * 1e9, 10**400, float("nan")],
                         ids=["1e20", "-1e20", "ns", "10**400", "nan"])
def test_a_stored_time_no_date_holds_is_shown_as_unknown(value: Any) -> None:
    assert as_datetime(value) is None
    assert json_ready({"ended_at": value, "score": 2.0}) == {"ended_at": None, "score": 2.0}
    assert json_ready({"ended_at": NOW})["ended_at"] == "2026-03-01T00:00:00.000Z"


def test_the_state_store_refuses_a_lone_surrogate_and_keeps_what_it_had(tmp_path: Path) -> None:
    store = SqliteStateStore(tmp_path / "state.db")
    store.put("a", "1", {"note": "kept"})
    with pytest.raises(ConfigurationError, match="note is not Unicode text"):
        store.put("a", "1", {"note": "x\ud800"})
    with pytest.raises(ConfigurationError, match="not Unicode text"):
        store.update_if("a", "1", {"acks": [{"\udfff": 1}]}, {})
    assert store.get("a", "1") == {"pk": "a", "sk": "1", "note": "kept"}
