import numpy as np
import pytest

from shared.ml.episodes import EpisodeRule, EpisodeTracker, run_episodes

NAMES = ["a", "b"]
THRESHOLDS = np.array([1.0, 2.0])


RULE = EpisodeRule(k=3, n=5, m=4)


def feed(flags, rule=RULE, missing=None, dt=0.5):
    """flags: per window, 0 = clean, 1 = feature a over its threshold."""
    tracker = EpisodeTracker("wt-01", rule, THRESHOLDS, NAMES)
    events = []
    for i, f in enumerate(flags):
        errors = np.array([1.5 if f else 0.5, 0.1])
        miss = np.zeros(2) if missing is None else missing[i]
        events += [(e.kind, e.at) for e in tracker.step(100.0 + i * dt, errors, miss)]
    return tracker, events


def test_opens_on_k_of_n_and_closes_after_m_clean():
    tracker, events = feed([0, 1, 0, 1, 0, 1, 1, 0, 0, 0, 0, 0])
    assert events[0] == ("open", 102.5)  # third flag inside the last five windows
    assert events[-1] == ("close", 105.0)  # fourth consecutive clean window (index 10)
    ep = tracker.closed[0]
    assert ep.started_at == 100.5  # the first flagged window that led to the opening
    assert ep.features == ["a"] and ep.peak_ratio["a"] == pytest.approx(1.5)
    assert ep.episode_id == "wt-01-100500"


def test_sparse_flags_never_open():
    _, events = feed([1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0])
    assert events == []


def test_missing_samples_flag_a_feature():
    missing = [np.array([0.0, 0.9])] * 4
    tracker, events = feed([0, 0, 0, 0], missing=missing)
    assert events == [("open", 101.0)]
    assert tracker.current is not None and tracker.current.missing == ["b"]


def test_silence_closes_and_resets():
    rule = EpisodeRule(k=2, n=3, m=10, max_silence_s=5.0)
    tracker = EpisodeTracker("wt-01", rule, THRESHOLDS, NAMES)
    hot = np.array([3.0, 0.0])
    kinds = [e.kind for t in (0.0, 0.5) for e in tracker.step(t, hot, np.zeros(2))]
    assert kinds == ["open"]
    after_gap = tracker.step(60.0, hot, np.zeros(2))
    assert [e.kind for e in after_gap] == ["close"]  # one flag after the gap is not yet k=2
    assert tracker.closed[0].closed_at == 0.5


def test_updates_when_features_join_and_periodically():
    rule = EpisodeRule(k=1, n=1, m=3, update_interval_s=2.0)
    tracker = EpisodeTracker("wt-01", rule, THRESHOLDS, NAMES)
    kinds = []
    for i in range(8):
        errors = np.array([1.5, 3.0 if i == 2 else 0.1])
        kinds += [e.kind for e in tracker.step(i * 0.5, errors, np.zeros(2))]
    assert kinds[0] == "open" and kinds[1] == "update"  # feature b joined at window 2
    assert kinds.count("update") >= 2  # and again after update_interval_s


def test_run_episodes_matches_streaming_and_flushes():
    flags = [1, 1, 1, 0, 1]
    t = 100.0 + 0.5 * np.arange(len(flags))
    errors = np.array([[1.5 if f else 0.2, 0.1] for f in flags])
    episodes = run_episodes("wt-01", EpisodeRule(k=3, n=5, m=4), THRESHOLDS, NAMES, t, errors,
                            np.zeros_like(errors))
    assert len(episodes) == 1 and episodes[0].closed_at == 102.0  # closed at the last window


@pytest.mark.parametrize("kwargs", [{"k": 0}, {"k": 6, "n": 5}, {"m": 0}, {"missing_tolerance": 1.0}])
def test_rule_is_checked(kwargs):
    with pytest.raises(ValueError):
        EpisodeRule(**kwargs)
