import numpy as np
import pytest

from shared.ml.episodes import Episode
from shared.ml.metrics import Fault, evaluate_episodes, faults_from_label_column


def ep(turbine, opened, closed):
    return Episode(f"{turbine}-{opened}", turbine, opened, opened, closed, closed)


def coverage(turbines, seconds=86_400.0):
    t = np.arange(0.0, seconds, 1.0)
    return dict.fromkeys(turbines, (t, seconds))


def test_event_level_detection_window_and_false_alarms():
    faults = [Fault("a", "overspeed", "high", 1000, 1100), Fault("a", "generator_fault", "low", 5000, 5060),
              Fault("b", "overspeed", "medium", 2000, 2100)]
    episodes = [ep("a", 1010, 1200),  # detects the first fault after 10 s
                ep("a", 5115, 5200),  # opens 55 s after the end: still inside the 60 s tolerance
                ep("b", 1990, 2050),  # opened before the fault started: a false alarm, not a detection
                ep("b", 9000, 9100)]  # false alarm
    m = evaluate_episodes(episodes, faults, coverage(["a", "b"]))
    assert m["event"]["recall"] == pytest.approx(2 / 3)
    assert m["event"]["precision"] == pytest.approx(2 / 4)
    assert m["event"]["f1"] == pytest.approx(2 * (0.5 * 2 / 3) / (0.5 + 2 / 3))
    assert m["event"]["mean_delay_s"] == pytest.approx((10 + 115) / 2)
    assert m["event"]["per_fault"]["overspeed"] == {"count": 2, "detected": 1, "recall": 0.5,
                                                    "mean_delay_s": 10.0}
    assert m["event"]["per_severity"]["medium"]["detected"] == 0
    assert m["false_alarms_per_turbine_day"] == pytest.approx(1.0)  # 2 false alarms over 2 turbine-days


def test_late_episode_is_not_a_detection():
    m = evaluate_episodes([ep("a", 1161, 1200)], [Fault("a", "x", "low", 1000, 1100)], coverage(["a"]))
    assert m["event"]["recall"] == 0 and m["event"]["precision"] == 0


def test_no_labels_gives_null_event_and_point_metrics():
    m = evaluate_episodes([ep("a", 10, 20)], [], coverage(["a"], seconds=43_200.0))
    assert m["event"] is None and m["point"] is None
    assert m["false_alarms_per_turbine_day"] == pytest.approx(2.0)


def test_pointwise_counts_samples_inside_episodes():
    faults = [Fault("a", "x", "low", 100, 199)]
    m = evaluate_episodes([ep("a", 150, 249)], faults, coverage(["a"], seconds=1000.0))
    assert m["point"]["precision"] == pytest.approx(0.5) and m["point"]["recall"] == pytest.approx(0.5)


def test_label_column_runs_become_faults():
    t = np.arange(10.0)
    faults = faults_from_label_column("a", t, np.array([0, 1, 1, 0, 0, 1, 1, 1, 0, 0], dtype=float))
    assert [(f.start, f.end) for f in faults] == [(1.0, 2.0), (5.0, 7.0)]
