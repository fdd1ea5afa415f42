"""`nacelle demo drift`'s pieces: its stack configuration (valid for the stack and the detector, never the product
defaults), the before/after accounting, the table and the PNG."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from nacelle.demo_drift import PERIOD_S, demo_config
from nacelle.drift_report import (
    AFTER,
    BEFORE,
    DRIFTED,
    HEADERS,
    OTHERS,
    UNDER,
    FalseAlarm,
    Period,
    back_to_baseline,
    plot,
    rows,
    summarise,
)
from nacelle.local.runtime.stack import LocalSettings
from shared import settings as defaults

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "greengrass_components" / "nacelle.detector" / "src"))
from detector.capture import CaptureConfig
from detector.config import DetectorConfig

ONSET = 1000.0 + 5 * 60  # turbine-02 drifts after five one-minute periods


def periods() -> list[Period]:
    """Two turbines, 5 periods on v1 before the drift, 5 under it, 5 on v2 (turbine-02 drifted)."""
    out = []
    for thing in ("turbine-01", "turbine-02"):
        for k in range(15):
            out.append(Period(thing, 1000.0 + 60 * k, 60.0, 1 if k < 10 else 2))
    out.append(Period("turbine-02", ONSET - 30, 60.0, 1))  # a period astride the onset counts nowhere
    return out


def test_the_demo_configures_its_own_data_dir_and_the_stack_and_detector_accept_it(tmp_path):
    config = demo_config()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    local = LocalSettings.load(tmp_path / "config.yaml")
    assert local.drift_auto_approve_canary and not defaults.DRIFT_AUTO_APPROVE_CANARY
    assert local.drift_policy().retrain_after_s < defaults.DRIFT_RETRAIN_AFTER_S
    detector = local.detector_config()  # what every deployment merges into the detector's configuration
    assert detector["statsPeriodSeconds"] == PERIOD_S
    DetectorConfig.from_dict({**detector, "model": {"component": "nacelle.model", "version": ""}}, "turbine-01")
    capture = CaptureConfig.from_dict(detector["capture"])
    assert capture.segments_per_period * capture.segment_s == capture.period_s  # every normal minute is kept
    # the history the demo generates (3 turbines x 1.5 h) trains v1; the captures alone (4 turbines, well under an
    # hour each before the drift request) never reach the minimum of new data
    assert 3 * 1.5 > local.min_new_turbine_hours > 1.0


def test_phases_count_periods_and_false_alarms_where_they_belong():
    alarms = [FalseAlarm("turbine-02", ONSET - 100, 1), FalseAlarm("turbine-02", ONSET + 10, 1),
              FalseAlarm("turbine-02", ONSET + 70, 1), FalseAlarm("turbine-02", ONSET + 400, 2),
              FalseAlarm("turbine-01", ONSET + 20, 1), FalseAlarm("turbine-01", ONSET + 500, None)]
    cells = summarise(periods(), alarms, {"turbine-02": ONSET}, retrained=2)
    assert (cells[(DRIFTED, BEFORE)].hours, cells[(DRIFTED, UNDER)].hours, cells[(DRIFTED, AFTER)].hours) == (
        pytest.approx(5 / 60, abs=1e-3), pytest.approx(5 / 60, abs=1e-3), pytest.approx(5 / 60, abs=1e-3))
    assert [cells[(DRIFTED, p)].alarms for p in (BEFORE, UNDER, AFTER)] == [1, 2, 1]
    # the other turbines' phases follow the (earliest) onset too: the same stretch of sample time
    assert (cells[(OTHERS, BEFORE)].hours, cells[(OTHERS, UNDER)].hours) == (
        pytest.approx(5 / 60, abs=1e-3), pytest.approx(5 / 60, abs=1e-3))
    assert [cells[(OTHERS, p)].alarms for p in (BEFORE, UNDER, AFTER)] == [0, 2, 0]
    assert cells[(DRIFTED, UNDER)].per_hour == pytest.approx(24.0, rel=1e-3)
    assert not back_to_baseline(summarise(periods(), [*alarms, FalseAlarm("turbine-02", ONSET + 500, 2)],
                                          {"turbine-02": ONSET}, retrained=2))
    assert back_to_baseline(cells)
    table = rows(cells)
    assert len(table) == 6 and all(len(r) == len(HEADERS) for r in table)


def test_without_time_on_the_retrained_model_the_loop_is_not_called_closed():
    only_v1 = [p for p in periods() if p.model_version == 1]
    assert not back_to_baseline(summarise(only_v1, [], {"turbine-02": ONSET}, retrained=2))


def test_the_figure_is_written(tmp_path):
    alarms = [FalseAlarm("turbine-02", ONSET + 10, 1), FalseAlarm("turbine-01", ONSET + 20, 1)]
    cells = summarise(periods(), alarms, {"turbine-02": ONSET}, retrained=2)
    path = plot(periods(), alarms, {"turbine-02": ONSET}, 2, cells, tmp_path / "report" / "drift.png",
                {"turbine-02": ONSET + 120})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_the_cli_runs_the_drift_demo_in_its_own_data_dir(monkeypatch, tmp_path):
    import nacelle.demo_drift
    from nacelle.cli import build_parser, main

    ran: list[Path] = []
    def run(home: Path) -> int:
        ran.append(home)
        return 0

    monkeypatch.setattr(nacelle.demo_drift, "run_drift_demo", run)
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "drift"]) == 0 and ran == [tmp_path / ".nacelle" / "demo-drift"]
    assert build_parser().parse_args(["demo"]).which == "mission"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "nonsense"])
