"""The turbine timeline's periods and captured files, and the captured samples of a range
(GET /api/turbines/{turbine}/signals) on seeded local stores: bounded and decimated with spikes kept, overlapping
files counted once, bad ranges refused naming the parameter, and captured files that must not be shown left out with
the reason."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

import pytest

import shared
from benchmarks.console_seed import PERIOD_S, Seeded, seed, seed_capture
from shared.capture import CaptureName, capture_key
from shared.jsonview import as_datetime
from shared.ml.spec import default_spec
from shared.usecases import operator_signals
from shared.usecases.operator_signals import MAX_FILES, MAX_POINTS, MAX_RANGE_S
from tests.console.conftest import Caller
from tests.console.test_api import ISO_Z


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    """One seeded home for the module (seeding costs about a second); tests that add files use their own ranges."""
    return seed(tmp_path_factory.mktemp("signals") / "home")


@pytest.fixture(scope="module")
def call(seeded: Seeded) -> Caller:
    return Caller(seeded.stack.operator_deps())


def epoch(iso: str) -> float:
    moment = as_datetime(iso)
    assert moment is not None
    return moment.timestamp()


def signals_path(turbine: str, start: float | str, end: float | str) -> str:
    return f"/api/turbines/{turbine}/signals?start={quote(str(start))}&end={quote(str(end))}"


def test_the_timeline_has_periods_relative_to_the_threshold_and_the_captured_files(call: Caller,
                                                                                   seeded: Seeded) -> None:
    t = call.get("/api/turbines/turbine-01/timeline")
    periods = t["periods"]
    assert len(periods) == 24 and [p["started_at"] for p in periods] == sorted(p["started_at"] for p in periods)
    first = periods[0]
    assert first["model_version"] == seeded.deployed and first["score_threshold"] == 0.05
    assert epoch(first["ended_at"]) - epoch(first["started_at"]) == PERIOD_S
    assert set(first["score"]) == {"p05", "p25", "p50", "p75", "p95"}
    assert first["score"]["p05"] <= first["score"]["p50"] <= first["score"]["p95"]
    assert max(p["score"]["p95"] for p in periods) > 1.0 > min(p["score"]["p50"] for p in periods)  # over, under
    assert set(first["features"]) == set(default_spec().features)
    assert set(first["features"]["rps"]) == {"p05", "p50", "p95", "mean"}
    assert [c["key"] for c in t["captures"]] == seeded.captures
    assert [c["kind"] for c in t["captures"]] == ["normal", "episode"] and t["captures"][1]["episode_id"] == "ep00010"
    assert t["first_at"] <= first["started_at"] and t["last_at"] >= periods[-1]["ended_at"]


def test_signals_of_a_range_are_decimated_keeping_the_spike_and_break_at_gaps(call: Caller, seeded: Seeded) -> None:
    t = call.get("/api/turbines/turbine-01/timeline")
    start, end = t["captures"][0]["started_at"], t["captures"][-1]["ended_at"]
    doc = call.get(signals_path("turbine-01", start, end))
    assert doc["start_at"] == start and doc["origin_at"] == start and doc["end_at"] == end
    assert doc["samples"] == 1800 + 1200 and doc["decimated"] is True
    assert [f["key"] for f in doc["files"]] == seeded.captures and doc["problems"] == [] and doc["skipped"] == []
    assert doc["features"] == list(default_spec().features)
    rps = doc["series"]["rps"]
    assert len(rps["t"]) == len(rps["v"]) <= MAX_POINTS
    values = [v for v in rps["v"] if v is not None]
    assert max(values) == pytest.approx(4.6) and min(values) == pytest.approx(1.6)  # the spike survives decimation
    gap = rps["v"].index(None)  # between the two files
    assert rps["t"][gap + 1] - rps["t"][gap - 1] > 60 and rps["t"] == sorted(rps["t"])
    # an inner range: only its samples, from one file
    episode = epoch(t["captures"][1]["started_at"])
    inner = call.get(signals_path("turbine-01", episode + 10, episode + 20))
    assert inner["samples"] in (200, 201) and [f["kind"] for f in inner["files"]] == ["episode"]  # 10 s at 20 Hz
    assert inner["decimated"] is False and all(0 <= x <= 10 for x in inner["series"]["voltage"]["t"])
    assert re.match(ISO_Z, inner["files"][0]["started_at"]) and re.match(ISO_Z, inner["start_at"])


@pytest.mark.parametrize(("query", "field", "reason"), [
    ("end=2026-03-01T00:00:00Z", "start", "is required"),
    ("start=2026-03-01T00:00:00Z&end=yesterday", "end", "is not an ISO 8601 time"),
    ("start=2026-03-01T01:00:00Z&end=2026-03-01T01:00:00Z", "end", "must be after start"),
    ("start=2026-03-01T00:00:00Z&end=2026-03-01T07:00:01Z", "end", "at most 6 h"),
    ("start=nan&end=2026-03-01T07:00:01Z", "start", "is not an ISO 8601 time"),
])
def test_bad_ranges_are_400_naming_the_parameter(call: Caller, query: str, field: str, reason: str) -> None:
    reply = call("GET", f"/api/turbines/turbine-01/signals?{query}")
    assert reply.status == 400, reply.text
    error = reply.json()["error"]
    assert error["field"] == field and reason in error["message"]
    assert MAX_RANGE_S == 6 * 3600


def test_an_unknown_turbine_is_404_and_a_range_without_captures_is_empty(call: Caller) -> None:
    for turbine in ("nope", quote("turbine-01/..", safe="")):
        reply = call("GET", signals_path(turbine, "2026-03-01T00:00:00Z", "2026-03-01T01:00:00Z"))
        assert reply.status == 404 and reply.json()["error"]["code"] == "not_found"
    empty = call.get(signals_path("turbine-01", "2026-03-01T00:00:00Z", "2026-03-01T01:00:00Z"))
    assert empty["samples"] == 0 and empty["files"] == [] and empty["series"]["rps"] == {"t": [], "v": []}


def test_files_that_must_not_be_shown_are_left_out_naming_the_reason(call: Caller, seeded: Seeded) -> None:
    stack, spec = seeded.stack, default_spec()
    t0 = 1_772_323_200.0 - 86400  # a day no other test writes to
    foreign = seed_capture(stack, spec, "turbine-02", t0, 5.0, 2)  # turbine-02's samples...
    stolen = capture_key("turbine-01", CaptureName(t0, t0 + 5, "normal", 2))  # ...under turbine-01's name
    stack.store.put(stolen, stack.store.get(foreign))
    garbage = capture_key("turbine-01", CaptureName(t0 + 10, t0 + 20, "normal", 2, part=2))
    stack.store.put(garbage, b"\x00\xffnot a csv")
    again = seed_capture(stack, spec, "turbine-01", t0 + 30, 10.0, 2)  # the same samples twice, under two names
    stack.store.put(capture_key("turbine-01", CaptureName(t0 + 30, t0 + 40, "normal", 2, part=3)),
                    stack.store.get(again))
    stack.store.put(f"raw/capture/turbine-01/sub/{CaptureName(t0, t0 + 5, 'normal', 2).file_name}", b"x")  # not ours
    doc = call.get(signals_path("turbine-01", t0, t0 + 60))
    problems = "\n".join(doc["problems"])
    assert f"{stolen}: holds samples of turbine-02" in problems and f"{garbage}: left out" in problems
    assert len(doc["problems"]) == 2 and "sub/" not in problems
    assert doc["samples"] == 200 and len(doc["files"]) == 2  # the duplicated file's samples count once


def test_reads_are_bounded_in_files(call: Caller, seeded: Seeded) -> None:
    t0, spec = 1_772_323_200.0, default_spec()
    for k in range(MAX_FILES + 3):
        seed_capture(seeded.stack, spec, "turbine-01", t0 + 10 * k, 6.0, 2)  # a window is 5 s
    doc = call.get(signals_path("turbine-01", t0, t0 + 600))
    assert len(doc["files"]) == MAX_FILES and len(doc["skipped"]) == 3
    assert doc["skipped"][0]["started_at"] > doc["files"][-1]["started_at"]  # the earliest are read


def test_unreadable_and_oversized_files_count_against_the_bounds(call: Caller, seeded: Seeded,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    t0, store = 1_772_323_200.0 + 86400, seeded.stack.store  # a day no other test writes to
    for k in range(MAX_FILES + 2):  # a flood of garbage: at most MAX_FILES are even read
        store.put(capture_key("turbine-01", CaptureName(t0 + k, t0 + k + 1, "normal", 2, part=k + 1)), b"x,y\n")
    doc = call.get(signals_path("turbine-01", t0, t0 + 60))
    assert len(doc["problems"]) == MAX_FILES and len(doc["skipped"]) == 2 and doc["samples"] == 0
    monkeypatch.setattr(operator_signals, "MAX_BYTES", 3)  # every file is larger than what a request may read
    doc = call.get(signals_path("turbine-01", t0, t0 + 60))
    assert doc["problems"] == [] and len(doc["skipped"]) == MAX_FILES + 2


def test_the_groups_own_feature_spec_reads_the_files(tmp_path: Path) -> None:
    """specs/<group>/ (as training reads it) decides the features; a changed spec is read again."""
    fresh = seed(tmp_path / "home", devices=2, alerts=2, periods=1)
    caller, store = Caller(fresh.stack.operator_deps()), fresh.stack.store
    start, end = (CaptureName.parse(k.rsplit("/", 1)[-1]) for k in fresh.captures)
    assert start is not None and end is not None
    path = signals_path("turbine-01", start.start, end.end)
    assert caller.get(path)["features"] == list(default_spec().features)
    text = (Path(shared.__file__).parent / "specs" / "mini-turbine.yaml").read_text()
    spec_key = f"specs/{fresh.stack.settings.group}/spec.yaml"
    store.put(spec_key, re.sub(r"(?m)^features: .*$", "features: [wind_speed_rps, rps]", text).encode())
    doc = caller.get(path)
    assert doc["features"] == ["wind_speed_rps", "rps"] and set(doc["series"]) == {"wind_speed_rps", "rps"}
    store.put(spec_key, re.sub(r"(?m)^features: .*$", "features: [wind_speed_rps, voltage]", text).encode())
    assert caller.get(path)["features"] == ["wind_speed_rps", "voltage"]
