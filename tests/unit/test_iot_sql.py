"""The IoT SQL subset the local rule engine evaluates (shared/iot_sql.py), including the template's own rules."""

from __future__ import annotations

import json

import pytest

from nacelle.local.runtime.template import load_template, topic_rules
from shared.errors import ConfigurationError, DataError
from shared.iot_sql import parse, topic_matches

ANOMALY_SQL = ("SELECT *, topic(2) AS thing_name, timestamp() AS received_at, clientid() AS client_id "
               "FROM 'turbines/+/anomalies'")


def run(sql: str, payload: dict[str, object] | bytes, topic: str = "turbines/wt-01/anomalies",
        client_id: str = "wt-01", now_ms: int = 1_700_000_000_123) -> dict[str, object] | None:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return parse(sql).evaluate(topic, data, client_id, now_ms)


def test_the_anomaly_rule_adds_thing_receive_time_and_client_id() -> None:
    row = run(ANOMALY_SQL, {"v": 1, "kind": "open", "episode_id": "e1"})
    assert row == {"v": 1, "kind": "open", "episode_id": "e1", "thing_name": "wt-01",
                   "received_at": 1_700_000_000_123, "client_id": "wt-01"}


def test_a_payload_field_of_the_same_name_is_overridden_by_the_later_select_item() -> None:
    row = run(ANOMALY_SQL, {"thing_name": "spoofed", "x": 1})
    assert row is not None and row["thing_name"] == "wt-01"


def test_topic_filter_must_match() -> None:
    assert run(ANOMALY_SQL, {"v": 1}, topic="turbines/wt-01/health") is None
    assert run(ANOMALY_SQL, {"v": 1}, topic="turbines/wt-01/anomalies/extra") is None


@pytest.mark.parametrize(("flt", "topic", "expected"), [
    ("turbines/+/anomalies", "turbines/a/anomalies", True),
    ("turbines/+/anomalies", "turbines/a/b/anomalies", False),
    ("turbines/#", "turbines/a/b/c", True),
    ("turbines/#", "turbines", True),
    ("turbines/a/#", "turbines/b/x", False),
    ("+/+", "a/b", True),
    ("a/b", "a/b/c", False),
])
def test_topic_filters(flt: str, topic: str, expected: bool) -> None:
    assert topic_matches(flt, topic) is expected


def test_select_fields_paths_and_aliases() -> None:
    row = run("SELECT kind, contributions.rpm AS rpm, contributions.nope AS gone, topic() AS t, 'x' AS lit "
              "FROM 'turbines/#'", {"kind": "open", "contributions": {"rpm": 0.64}, "other": 1})
    assert row == {"kind": "open", "rpm": 0.64, "t": "turbines/wt-01/anomalies", "lit": "x"}  # undefined is left out


@pytest.mark.parametrize(("where", "expected"), [
    ("kind = 'open'", True),
    ("kind <> 'open'", False),
    ("kind != 'close'", True),
    ("seq > 3 AND seq <= 5", True),
    ("seq >= 6 OR kind = 'open'", True),
    ("NOT kind = 'open'", False),
    ("NOT (seq < 2 OR contributions.rpm < 0.5)", True),
    ("contributions.rpm > 0.6 AND score >= 2.5", True),
    ("missing_field = 1", False),  # undefined never compares true
    ("NOT missing_field = 1", True),
    ("kind > 3", False),  # unlike types
    ("flag", True),
    ("flag = true AND nothing = null", True),
    ("topic(2) = 'wt-01' AND clientid() = 'wt-01'", True),
    ("kind = 'it''s'", False),
])
def test_where_clauses(where: str, expected: bool) -> None:
    payload = {"kind": "open", "seq": 5, "score": 2.5, "contributions": {"rpm": 0.64}, "flag": True, "nothing": None}
    row = run(f"SELECT * FROM 'turbines/+/anomalies' WHERE {where}", payload)
    assert (row is not None) is expected


def test_keywords_are_case_insensitive() -> None:
    assert run("select * from 'turbines/+/anomalies' where kind = 'open' and not seq = 1", {"kind": "open"}) == \
        {"kind": "open"}


@pytest.mark.parametrize("sql", [
    "SELECT FROM 'a'",
    "SELECT * 'a'",
    "SELECT * FROM a",
    "SELECT * FROM 'a/#/b'",
    "SELECT * FROM 'a/b+'",
    "SELECT * FROM 'a' WHERE",
    "SELECT * FROM 'a' WHERE (x = 1",
    "SELECT upper(x) FROM 'a'",
    "SELECT * FROM 'a' extra",
    "SELECT * FROM 'a' WHERE x = ;",
])
def test_malformed_sql_is_a_configuration_error(sql: str) -> None:
    with pytest.raises(ConfigurationError, match="IoT SQL"):
        parse(sql)


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", b"\xff\xfe"])
def test_a_payload_that_is_not_a_json_object_is_a_data_error(payload: bytes) -> None:
    with pytest.raises(DataError, match="turbines/wt-01/anomalies"):
        run(ANOMALY_SQL, payload)


def test_the_templates_rules_parse_and_invoke_their_functions() -> None:
    rules = {r.rule: r for r in topic_rules(load_template())}
    assert rules["AnomalyRule"].function == "AnomalyAlertFunction"
    assert rules["AnomalyRule"].sql == ANOMALY_SQL  # docs/fleet.md
    for rule in rules.values():
        assert parse(rule.sql).topic_filter.startswith("turbines/+/")
