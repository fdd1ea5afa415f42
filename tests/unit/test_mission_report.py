"""The mission's summary rules: detection within [start, end + tolerance], delay from the fault start,
episodes opening outside every fault counted as false."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nacelle.mission_report import (
    DETECTION_TOLERANCE_S,
    EpisodeMark,
    TurbineTimeline,
    match,
    plot_timeline,
    read_jsonl,
    summary_rows,
)
from shared.ml.metrics import Fault


def episode(opened: float, started: float | None = None) -> EpisodeMark:
    return EpisodeMark(f"e{opened}", opened, opened if started is None else started, opened + 30, ["voltage"], 2)


def test_a_fault_is_detected_by_an_episode_opening_inside_it_or_within_the_tolerance() -> None:
    tl = TurbineTimeline("t1", faults=[Fault("t1", "overspeed", "high", 100.0, 140.0),
                                       Fault("t1", "generator_fault", "high", 500.0, 540.0)],
                         episodes=[episode(112.0), episode(540.0 + DETECTION_TOLERANCE_S + 1)], model_version=2)
    m = match(tl)
    assert (m["faults"], m["detected"], m["mean_delay_s"], m["false_episodes"]) == (2, 1, 12.0, 1)


def test_an_episode_opening_before_the_fault_is_false_and_does_not_detect_it() -> None:
    tl = TurbineTimeline("t1", faults=[Fault("t1", "overspeed", "high", 100.0, 140.0)], episodes=[episode(90.0)])
    assert match(tl) == {"faults": 1, "detected": 0, "mean_delay_s": None, "false_episodes": 1}


def test_summary_rows_and_a_timeline_png(tmp_path: Path) -> None:
    samples = [{"ts": 1000.0 + i * 0.05, "wind_speed_rps": 2.0, "rps": None, "voltage": 500} for i in range(400)]
    tl = TurbineTimeline("t1", samples, [Fault("t1", "overspeed", "high", 1005.0, 1010.0)], [episode(1007.0)],
                         model_version=3)
    assert summary_rows([tl]) == [["t1", "v3", "1", "1", "2 s", "0", "0"]]
    out = plot_timeline(tl, (np.array([1005.0, 1010.0]), np.array([0.5, 2.0])), tmp_path / "t1.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_read_jsonl_skips_a_line_cut_short(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{"a": 2')
    assert read_jsonl(path) == [{"a": 1}] and read_jsonl(tmp_path / "missing.jsonl") == []
