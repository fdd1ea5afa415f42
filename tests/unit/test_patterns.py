"""EventBridge pattern matching, one operator at a time, with the service's semantics."""

from typing import Any

import pytest

from nacelle.local.runtime.patterns import compile_pattern, matches, validate_pattern
from shared.errors import ConfigurationError

# A real S3 "Object Created" event as EventBridge delivers it (key URL-encoded, as S3 sends it).
S3_OBJECT_CREATED: dict[str, Any] = {
    "version": "0",
    "id": "17793124-05d4-b198-2fde-7ededc63b103",
    "detail-type": "Object Created",
    "source": "aws.s3",
    "account": "123456789012",
    "time": "2021-11-12T00:00:00Z",
    "region": "ca-central-1",
    "resources": ["arn:aws:s3:::b"],
    "detail": {
        "version": "0",
        "bucket": {"name": "b"},
        "object": {"key": "raw/turbine-01/2026-01-01T00%3A00%3A00Z.csv", "size": 5,
                   "etag": "b1946ac92492d2347c6235b4d2611184", "version-id": "IYV3p45BT0ac8hjHg1houSdS1a.Mz8cB",
                   "sequencer": "00617F08299329D189"},
        "request-id": "N4N7GDK58NMKJ12R",
        "requester": "123456789012",
        "source-ip-address": "1.2.3.4",
        "reason": "PutObject",
    },
}
S3_PATTERN = {"source": ["aws.s3"], "detail-type": ["Object Created"],
              "detail": {"bucket": {"name": ["b"]}, "object": {"key": [{"prefix": "raw/"}]}}}


def test_the_s3_object_created_rule_matches_a_real_event():
    assert matches(S3_PATTERN, S3_OBJECT_CREATED)
    other_key = {**S3_OBJECT_CREATED, "detail": {**S3_OBJECT_CREATED["detail"], "object": {"key": "models/x"}}}
    other_bucket = {**S3_OBJECT_CREATED, "detail": {**S3_OBJECT_CREATED["detail"], "bucket": {"name": "c"}}}
    assert not matches(S3_PATTERN, other_key)
    assert not matches(S3_PATTERN, other_bucket)
    assert not matches(S3_PATTERN, {**S3_OBJECT_CREATED, "detail-type": "Object Deleted"})


@pytest.mark.parametrize("alternatives, value, expected", [
    (["a", "b"], "b", True),
    (["a"], "A", False),
    ([5], 5.0, True),  # numbers compare by value
    ([5], "5", False),
    ([True], True, True),
    ([True], 1, False),  # a boolean is not a number
    ([1], True, False),
    ([None], None, True),
    ([None], "null", False),
])
def test_literals(alternatives, value, expected):
    assert matches({"f": alternatives}, {"f": value}) is expected


def test_a_missing_field_matches_no_literal_not_even_null():
    assert not matches({"f": [None]}, {})
    assert not matches({"f": ["x"]}, {"g": "x"})


@pytest.mark.parametrize("matcher, value, expected", [
    ({"prefix": "raw/"}, "raw/a.csv", True),
    ({"prefix": "raw/"}, "models/raw/a", False),
    ({"prefix": "raw/"}, 5, False),
    ({"prefix": {"equals-ignore-case": "RAW/"}}, "raw/a.csv", True),
    ({"suffix": ".json"}, "manifest.json", True),
    ({"suffix": ".json"}, "manifest.json.bak", False),
    ({"suffix": {"equals-ignore-case": ".JSON"}}, "a.json", True),
    ({"equals-ignore-case": "Approved"}, "APPROVED", True),
    ({"equals-ignore-case": "Approved"}, "Approve", False),
    ({"wildcard": "compiled/*/manifest.json"}, "compiled/g/3/manifest.json", True),
    ({"wildcard": "compiled/*/manifest.json"}, "compiled/manifest.json", False),
    ({"wildcard": "*.csv"}, "raw/a.csv", True),
    ({"wildcard": "a\\*b"}, "a*b", True),  # an escaped star is literal
    ({"wildcard": "a\\*b"}, "axxb", False),
    ({"wildcard": "a.c"}, "abc", False),  # regex characters are literal
])
def test_string_matchers(matcher, value, expected):
    assert matches({"f": [matcher]}, {"f": value}) is expected


@pytest.mark.parametrize("operand, value, expected", [
    (["Failed", "Stopped"], "Completed", True),
    (["Failed", "Stopped"], "Failed", False),
    ("Failed", "Completed", True),
    ("Failed", "Failed", False),
    ([0, 1], 2, True),
    ([0, 1], 1.0, False),
    ({"prefix": "tmp/"}, "raw/a", True),
    ({"prefix": "tmp/"}, "tmp/a", False),
    ({"suffix": [".tmp", ".part"]}, "a.part", False),
    ({"equals-ignore-case": ["failed"]}, "FAILED", False),
    ({"wildcard": "tmp/*"}, "tmp/x", False),
])
def test_anything_but(operand, value, expected):
    assert matches({"f": [{"anything-but": operand}]}, {"f": value}) is expected


def test_anything_but_does_not_match_a_missing_field():
    assert not matches({"f": [{"anything-but": "x"}]}, {})


@pytest.mark.parametrize("operand, value, expected", [
    ([">", 0, "<=", 5], 5, True),
    ([">", 0, "<=", 5], 0, False),
    ([">", 0, "<=", 5], 5.5, False),
    ([">=", 0.5], 0.5, True),
    (["=", 3], 3.0, True),
    (["<", 10], "3", False),  # only numbers compare numerically
    (["<", 10], True, False),
])
def test_numeric(operand, value, expected):
    assert matches({"f": [{"numeric": operand}]}, {"f": value}) is expected


@pytest.mark.parametrize("event, exists, expected", [
    ({"f": "x"}, True, True),
    ({"f": None}, True, True),  # null is a value
    ({}, True, False),
    ({}, False, True),
    ({"f": "x"}, False, False),
    ({"f": {"g": 1}}, True, False),  # exists looks at leaves only, as on AWS
    ({"f": []}, True, False),
])
def test_exists(event, exists, expected):
    assert matches({"f": [{"exists": exists}]}, event) is expected


def test_exists_false_matches_below_a_missing_parent():
    assert matches({"detail": {"FailureReason": [{"exists": False}]}}, {"detail": {}})
    assert matches({"detail": {"a": {"b": [{"exists": False}]}}}, {"detail": {}})
    assert not matches({"detail": {"a": {"b": [{"exists": True}]}}}, {"detail": {}})


def test_alternatives_are_or_and_fields_are_and():
    pattern = {"source": ["aws.sagemaker", "nacelle"], "detail": {"status": ["Completed", {"prefix": "Fail"}]}}
    assert matches(pattern, {"source": "nacelle", "detail": {"status": "Failed"}})
    assert matches(pattern, {"source": "aws.sagemaker", "detail": {"status": "Completed"}})
    assert not matches(pattern, {"source": "aws.s3", "detail": {"status": "Completed"}})
    assert not matches(pattern, {"source": "nacelle", "detail": {"status": "Stopped"}})


def test_an_array_in_the_event_matches_when_any_element_does():
    assert matches({"resources": [{"suffix": "/job-2"}]}, {"resources": ["arn:a/job-1", "arn:a/job-2"]})
    assert not matches({"resources": ["x"]}, {"resources": ["a", "b"]})
    assert not matches({"resources": ["x"]}, {"resources": []})
    assert matches({"f": [{"numeric": [">", 2]}]}, {"f": [1, 3]})


def test_a_nested_pattern_over_an_array_of_objects_needs_one_element_to_match_all_of_it():
    event = {"detail": {"tags": [{"k": "team", "v": "ml"}, {"k": "env", "v": "prod"}]}}
    assert matches({"detail": {"tags": {"k": ["env"], "v": ["prod"]}}}, event)
    assert not matches({"detail": {"tags": {"k": ["env"], "v": ["ml"]}}}, event)


def test_a_nested_pattern_does_not_match_a_scalar():
    assert not matches({"detail": {"bucket": {"name": ["b"]}}}, {"detail": {"bucket": "b"}})


def test_compiled_patterns_are_reusable():
    test = compile_pattern(S3_PATTERN)
    assert test(S3_OBJECT_CREATED)
    assert not test({})


@pytest.mark.parametrize("pattern, fragment", [
    ({}, "non-empty JSON object"),
    ([], "non-empty JSON object"),
    ({"source": "aws.s3"}, "source: expected a list"),
    ({"source": []}, "at least one alternative"),
    ({"detail": {}}, "detail: a nested pattern must not be empty"),
    ({"detail": {"key": [{"prefx": "raw/"}]}}, "detail.key[0]: unknown matcher 'prefx'"),
    ({"f": [{"prefix": "a", "suffix": "b"}]}, "exactly one key"),
    ({"f": [{"prefix": 5}]}, "prefix takes a string"),
    ({"f": [{"prefix": {"wildcard": "a"}}]}, "prefix takes a string or"),
    ({"f": [{"exists": "yes"}]}, "exists takes true or false"),
    ({"f": [{"numeric": [">", "0"]}]}, "bad numeric comparison"),
    ({"f": [{"numeric": ["!=", 0]}]}, "bad numeric comparison"),
    ({"f": [{"numeric": [">"]}]}, "numeric takes"),
    ({"f": [{"anything-but": {"exists": True}}]}, "anything-but cannot hold 'exists'"),
    ({"f": [{"anything-but": [True]}]}, "anything-but takes strings or numbers"),
    ({"f": [{"anything-but": []}]}, "anything-but takes strings or numbers"),
    ({"f": [["nested"]]}, "expected a literal or a matcher object"),
    ({"f": [{"wildcard": 1}]}, "wildcard takes a string"),
    ({"f": [{"equals-ignore-case": None}]}, "equals-ignore-case takes a string"),
])
def test_validate_pattern_rejects_malformed_patterns(pattern, fragment):
    with pytest.raises(ConfigurationError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        validate_pattern(pattern)


def test_matching_with_a_malformed_pattern_raises_rather_than_answering():
    with pytest.raises(ConfigurationError):
        matches({"f": [{"prefx": "a"}]}, {"f": "a"})


def test_validate_pattern_accepts_every_operator():
    validate_pattern({
        "source": ["aws.s3", None, 1, True],
        "detail": {"a": [{"prefix": "x"}], "b": [{"suffix": "y"}], "c": [{"anything-but": ["z"]}],
                   "d": [{"exists": True}], "e": [{"numeric": [">", 0, "<=", 5]}],
                   "f": [{"equals-ignore-case": "q"}], "g": [{"wildcard": "a*b"}]},
    })
