"""The mission's summary rules: detection within [start, end + tolerance], delay from the fault start,
episodes opening outside every fault counted as false."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nacelle.mission_report import (
    DETECTION_TOLERANCE_S,
    AlertMark,
    EpisodeMark,
    ModelSwap,
    ScoreSegment,
    TurbineTimeline,
    match,
    plot_timeline,
    read_jsonl,
    score_segments,
    summary_rows,
    timeline_figure,
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
    segment = ScoreSegment(3, np.array([1005.0, 1010.0]), np.array([0.5, 2.0]))
    out = plot_timeline(tl, [segment], tmp_path / "t1.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_model_scores_only_from_its_swap_to_the_next() -> None:
    """The device scored nothing before its first model, and the early part with the early model."""
    samples = [{"ts": float(t)} for t in range(100)]
    seen: dict[int, list[float]] = {}

    def score(given: list[dict], bundle: Path) -> tuple[np.ndarray, np.ndarray]:
        version = int(bundle.name)
        seen[version] = [s["ts"] for s in given]
        t = np.array(seen[version])  # one window ending at every sample
        return t, np.full(len(t), float(version))

    v1, v2 = score_segments(samples, [ModelSwap(60.0, 2), ModelSwap(10.0, 1)], lambda v: Path(str(v)), score)
    assert (v1.version, v1.t.min(), v1.t.max()) == (1, 10.0, 59.0) and set(v1.ratio) == {1.0}
    assert (v2.version, v2.t.min(), v2.t.max()) == (2, 60.0, 99.0) and set(v2.ratio) == {2.0}
    assert max(seen[1]) == 59.0  # the first model never saw what came after the swap


def test_the_timeline_reads_in_clock_time_with_units_named_faults_swaps_and_a_legend() -> None:
    import matplotlib.pyplot as plt
    from matplotlib.dates import DateFormatter, num2date

    t0 = 1_772_323_200.0  # 2026-03-01T00:00:00Z
    samples = [{"ts": t0 + i * 0.05, "wind_speed_rps": 2.0, "rps": 2.0, "voltage": 80} for i in range(2400)]
    tl = TurbineTimeline("turbine-02", samples, [Fault("turbine-02", "generator_fault", "high", t0 + 60, t0 + 90)],
                         [episode(t0 + 62)], [AlertMark(t0 + 70, "high", "[HIGH] turbine-02")], model_version=2,
                         swaps=[ModelSwap(t0 + 5, 1), ModelSwap(t0 + 50, 2)])
    segments = [ScoreSegment(1, np.array([t0 + 10, t0 + 40]), np.array([0.2, 0.3])),
                ScoreSegment(2, np.array([t0 + 55, t0 + 80]), np.array([0.4, 3.0]))]
    fig = timeline_figure(tl, segments)
    try:
        *signals, score_ax = fig.axes
        assert [ax.get_ylabel() for ax in signals] == ["wind speed\n(anemometer rev/s)", "rotor speed\n(rev/s)",
                                                       "generator voltage\n(ADC count, 0-1023)"]
        formatter = score_ax.xaxis.get_major_formatter()
        assert isinstance(formatter, DateFormatter) and "UTC" in score_ax.get_xlabel()
        assert "2026-03-01" in score_ax.get_xlabel()
        assert num2date(score_ax.get_lines()[0].get_xdata()[0]).timestamp() == t0 + 10  # clock time, not offsets
        assert "generator_fault (high)" in [t.get_text() for t in signals[0].texts]
        assert [t.get_text().strip() for t in score_ax.texts] == ["v1", "v2"]  # where each model took over
        (legend,) = fig.legends
        labels = [t.get_text() for t in legend.get_texts()]
        for wanted in ("v1: score / threshold", "v2: score / threshold", "injected fault", "detector episode",
                       "alert sent", "model swapped on the device"):
            assert wanted in labels
        fault_band, episode_band = score_ax.patches[0], score_ax.patches[-1]
        assert fault_band.get_alpha() >= 0.25 and fault_band.get_zorder() < episode_band.get_zorder()
        assert episode_band.get_facecolor()[3] == 0.0  # hatched, unfilled: the fault stays visible under it
    finally:
        plt.close(fig)


def test_read_jsonl_skips_a_line_cut_short(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{"a": 2')
    assert read_jsonl(path) == [{"a": 1}] and read_jsonl(tmp_path / "missing.jsonl") == []


def test_the_alert_printer_prints_what_landed_just_before_the_demo_moved_on(tmp_path: Path, capsys) -> None:
    from nacelle.demo import AlertPrinter

    log = tmp_path / "notifications.jsonl"
    alert = '{"topic": "alerts", "time": "2026-12-05T11:56:19Z", "subject": "[HIGH] turbine-01: score 9x"}\n'
    log.write_text('{"topic": "approvals", "time": "2026-12-05T11:56:18Z", "subject": "v2"}\n' + alert
                   + '{"topic": "alerts", "time": "2026-12-05T11:5')  # the last line is still being written
    with AlertPrinter(log):  # the block ends before the first tick (every 0.5 s)
        pass
    assert capsys.readouterr().out == "   ALERT 11:56:19 [HIGH] turbine-01: score 9x\n"
