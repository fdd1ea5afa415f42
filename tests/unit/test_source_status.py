"""A turbine's signal source as the cloud sees it: the `sensors` block of the device's health message (HealthMessage
v2) is checked, stored with the device record by the health handler, judged ok / down / stale, and shown by
`nacelle fleet status`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nacelle.commands import source_cell, source_note
from shared.messages import BadMessage, HealthRow, validate
from shared.records import DeviceRecord, load
from shared.source_status import source_status
from shared.usecases.rollout import on_health
from shared.usecases.rollout_state import DEVICES_PK
from tests.unit.test_rollout import Harness

T = 1_780_000_000.0
BLOCK = {"source": "modbus", "state": "connected", "rate_hz": 20.0, "last_sample_age_s": 0.05, "report_age_s": 12.0,
         "report_interval_s": 60.0, "samples": 24000, "samples_missing": 112, "values_missing": 0,
         "samples_repeated": 2, "reconnects": 1, "last_error": None, "component_version": "1.0.0"}


def status(**over: Any) -> dict[str, Any]:
    out = source_status({**BLOCK, **over}, T)
    assert out is not None
    return out


def test_ok_down_stale_and_finished() -> None:
    assert status()["status"] == "ok" and status()["since"] is None and status()["last_error"] is None
    down = status(state="disconnected", last_sample_age_s=42.0, last_error="cannot connect to modbus://...: refused")
    assert (down["status"], down["since"], down["last_error"]) == ("down", T - 42.0,
                                                                   "cannot connect to modbus://...: refused")
    # connected, but no value for longer than 3 sample intervals (at least 10 s): a controller answering errors,
    # or a sample counter that stopped moving
    assert status(last_sample_age_s=9.0)["status"] == "ok"
    assert status(last_sample_age_s=11.0)["status"] == "down"
    assert status(rate_hz=1 / 600, last_sample_age_s=1500.0)["status"] == "ok"  # 10-minute SCADA: 3 intervals
    assert status(rate_hz=1 / 600, last_sample_age_s=1900.0)["status"] == "down"
    never = status(state="connecting", last_sample_age_s=None)
    assert (never["status"], never["since"]) == ("down", None)
    # the component stopped reporting: its last report is over 3 intervals (+10 s) old
    stale = status(report_age_s=191.0)
    assert (stale["status"], stale["since"]) == ("stale", T - 191.0)
    assert status(report_age_s=189.0)["status"] == "ok"
    assert status(report_interval_s=600.0, report_age_s=900.0)["status"] == "ok"
    assert status(state="finished", last_sample_age_s=3600.0)["status"] == "finished"  # a replay at its end
    assert source_status(None, T) is None and source_status({}, T) is None and source_status(BLOCK, None) is None


def test_the_health_handler_stores_the_block_and_refuses_a_bad_one(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    row = {**h.health("turbine-02", None, 0.0, T), "v": 2,
           "sensors": {**BLOCK, "state": "disconnected", "last_sample_age_s": 30.0}}
    on_health(validate(HealthRow, row), h.deps)
    record = load(DeviceRecord, h.deps.state.get(DEVICES_PK, "turbine-02"))
    assert record is not None and record.sensors is not None
    assert record.sensors["state"] == "disconnected" and record.sensors["samples_repeated"] == 2
    view = source_status(record.sensors, record.last_health_at)
    assert view is not None and (view["status"], view["since"]) == ("down", pytest.approx(T - 30.0))
    old = h.health("turbine-03", None, 0.0, T)  # v1, from a detector that predates the block
    on_health(validate(HealthRow, old), h.deps)
    record = load(DeviceRecord, h.deps.state.get(DEVICES_PK, "turbine-03"))
    assert record is not None and record.sensors is None
    for bad, field in (({**BLOCK, "state": "on fire"}, "sensors.state"), ({**BLOCK, "samples": -1}, "sensors.samples"),
                       ({**BLOCK, "rate_hz": "20"}, "sensors.rate_hz"), ([BLOCK], "sensors"),
                       ({**BLOCK, "last_error": "x" * 201}, "sensors.last_error")):
        with pytest.raises(BadMessage, match=field.replace(".", r"\.")):
            validate(HealthRow, {**row, "sensors": bad})
    with pytest.raises(BadMessage, match=r"sensors\.password"):
        validate(HealthRow, {**row, "sensors": {**BLOCK, "password": "x"}})
    with pytest.raises(BadMessage, match="needs schema version v=2"):
        validate(HealthRow, {**row, "v": 1})


def test_fleet_status_shows_the_source() -> None:
    assert source_cell(None, T) == "-"
    assert source_cell(status(), T) == "ok"
    down = status(state="disconnected", last_sample_age_s=300.0, last_error="no answer")
    assert source_cell(down, T) == "down 5m ago"
    assert source_note(down) == "modbus source down (disconnected) since 2026-05-28T20:21:40Z: no answer"
    assert source_note(status()) == ""
    assert source_cell(status(report_age_s=600.0), T) == "stale 10m ago"
    assert source_note(status(report_age_s=600.0)).startswith("modbus source stopped reporting since ")


def test_the_consoles_fleet_api_shows_the_source(tmp_path: Path) -> None:
    from benchmarks.console_seed import seed
    from tests.console.conftest import Caller

    seeded = seed(tmp_path / "home", devices=2, versions=3, alerts=1, stale=0)
    stack, (ok, down) = seeded.stack, seeded.things
    for thing, block in ((ok, BLOCK), (down, {**BLOCK, "state": "disconnected", "last_sample_age_s": 95.0,
                                              "last_error": "cannot connect to modbus://10.0.0.5:502/1: refused"})):
        record = load(DeviceRecord, stack.state.get(DEVICES_PK, thing))
        assert record is not None
        stack.state.put(DEVICES_PK, thing, DeviceRecord(
            thing, record.last_health_at, record.received_at_ms, record.model_version, record.inference_rate_hz,
            health={**record.health, "v": 2, "sensors": block}).to_item())
    rows = {d["thing"]: d for d in Caller(stack.operator_deps()).get("/api/fleet")["items"]}
    assert rows[ok]["source"]["status"] == "ok" and rows[ok]["source"]["since"] is None
    source = rows[down]["source"]
    assert (source["status"], source["source"], source["state"]) == ("down", "modbus", "disconnected")
    assert source["since"].endswith("Z") and "refused" in source["last_error"]  # an ISO time, as every time here
