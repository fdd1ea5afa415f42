"""The episode rule on one anomaly score per window against one threshold; per-feature contributions
explain an episode, missing samples flag a window on their own."""

import numpy as np
import pytest

from shared.ml.episodes import EpisodeRule, EpisodeTracker, explaining, run_episodes
from shared.ml.spec import default_spec

NAMES = ["a", "b"]
THRESHOLD = 2.0
RULE = EpisodeRule(k=3, n=5, m=4)


def window(flagged: bool) -> tuple[float, np.ndarray]:
    """score 3.0 (ratio 1.5, feature a explains it) or 1.0 (clean), with its contributions."""
    score = 3.0 if flagged else 1.0
    return score, np.array([0.9 * score, 0.1 * score])


def feed(flags, rule=RULE, missing=None, dt=0.5):
    """flags: per window, 0 = clean, 1 = score over the threshold."""
    tracker = EpisodeTracker("wt-01", rule, THRESHOLD, NAMES)
    events = []
    for i, f in enumerate(flags):
        score, contributions = window(bool(f))
        miss = np.zeros(2) if missing is None else missing[i]
        events += [(e.kind, e.at) for e in tracker.step(100.0 + i * dt, score, contributions, miss)]
    return tracker, events


def test_opens_on_k_of_n_and_closes_after_m_clean():
    tracker, events = feed([0, 1, 0, 1, 0, 1, 1, 0, 0, 0, 0, 0])
    assert events[0] == ("open", 102.5)  # third flag inside the last five windows
    assert events[-1] == ("close", 105.0)  # fourth consecutive clean window (index 10)
    ep = tracker.closed[0]
    assert ep.started_at == 100.5  # the first flagged window that led to the opening
    assert ep.opened_at == 102.5 and ep.last_flagged_at == 103.0 and ep.closed_at == 105.0
    assert ep.flagged_windows == 4
    assert ep.features == ["a"] and ep.peak_ratio == pytest.approx(1.5)
    assert ep.contributions == {"a": pytest.approx(0.9), "b": pytest.approx(0.1)}
    assert ep.episode_id == "wt-01-100500"


def test_sparse_flags_never_open():
    _, events = feed([1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0])
    assert events == []


def test_a_score_at_the_threshold_is_not_flagged():
    tracker = EpisodeTracker("wt-01", EpisodeRule(k=1, n=1, m=1), THRESHOLD, NAMES)
    assert tracker.step(0.0, THRESHOLD, [1.0, 1.0], [0.0, 0.0]) == []
    assert [e.kind for e in tracker.step(0.5, THRESHOLD * 1.001, [1.0, 1.0], [0.0, 0.0])] == ["open"]


def test_missing_samples_flag_a_feature():
    missing = [np.array([0.0, 0.9])] * 4
    tracker, events = feed([0, 0, 0, 0], missing=missing)
    assert events == [("open", 101.0)]
    assert tracker.current is not None and tracker.current.missing == ["b"]
    assert tracker.current.features == ["b"] and tracker.current.peak_ratio == 0.0  # no score was over


def test_missing_at_the_tolerance_does_not_flag():
    missing = [np.array([0.0, RULE.missing_tolerance])] * 6
    _, events = feed([0] * 6, missing=missing)
    assert events == []


def test_a_window_outside_the_operating_regime_neither_opens_nor_closes_an_episode():
    """A calm spell or a stop says nothing about the fault: no opening on it, and no false "resolved"."""
    tracker = EpisodeTracker("wt-01", EpisodeRule(k=1, n=1, m=2), THRESHOLD, NAMES)
    hot, calm = (10.0, [9.0, 1.0], [0.0, 1.0]), (0.0, [0.0, 0.0], [0.0, 0.0])
    assert tracker.step(0.0, *hot, operating=False) == []  # neither the score nor the missing samples count
    assert [e.kind for e in tracker.step(0.5, *hot)] == ["open"]
    for i in range(20):
        assert tracker.step(1.0 + 0.5 * i, *hot, operating=False) == []
    assert tracker.step(11.0, *calm) == []
    assert tracker.step(11.5, *calm, operating=False) == []  # between two clean judged windows
    assert [e.kind for e in tracker.step(12.0, *calm)] == ["close"]
    assert len(tracker.closed) == 1 and tracker.closed[0].last_flagged_at == 0.5


def test_silence_closes_and_resets():
    rule = EpisodeRule(k=2, n=3, m=10, max_silence_s=5.0)
    tracker = EpisodeTracker("wt-01", rule, THRESHOLD, NAMES)
    hot, contributions = 6.0, np.array([6.0, 0.0])
    kinds = [e.kind for t in (0.0, 0.5) for e in tracker.step(t, hot, contributions, np.zeros(2))]
    assert kinds == ["open"]
    after_gap = tracker.step(60.0, hot, contributions, np.zeros(2))
    assert [e.kind for e in after_gap] == ["close"]  # one flag after the gap is not yet k=2
    assert tracker.closed[0].closed_at == 0.5


def test_updates_when_features_join_and_periodically():
    rule = EpisodeRule(k=1, n=1, m=3, update_interval_s=2.0)
    tracker = EpisodeTracker("wt-01", rule, THRESHOLD, NAMES)
    kinds = []
    for i in range(8):
        # window 2 peaks a little higher (below 1.25 x the peak) and b explains half of it
        score, contributions = (3.6, [1.8, 1.8]) if i == 2 else (3.0, [2.9, 0.1])
        kinds += [(e.kind, e.at, tuple(e.episode["features"])) for e in tracker.step(i * 0.5, score, contributions,
                                                                                   np.zeros(2))]
    assert kinds[0] == ("open", 0.0, ("a",))
    assert kinds[1] == ("update", 1.0, ("a", "b"))  # feature b joined at window 2
    assert kinds[2] == ("update", 3.0, ("a", "b"))  # and again after update_interval_s
    assert len(kinds) == 3


def test_a_much_higher_peak_is_reported():
    tracker = EpisodeTracker("wt-01", EpisodeRule(k=1, n=1, m=3, update_interval_s=100.0), THRESHOLD, NAMES)
    kinds = []
    for i, score in enumerate([3.0, 3.5, 4.0]):  # ratios 1.5, 1.75 (< 1.25 x 1.5), 2.0 (> 1.25 x 1.5)
        kinds += [(e.kind, e.episode["peak_ratio"]) for e in tracker.step(i * 0.5, score, [score, 0.0], np.zeros(2))]
    assert kinds == [("open", 1.5), ("update", 2.0)]


def test_explaining_names_the_top_feature_and_those_near_it():
    assert explaining({"a": 0.6, "b": 0.3, "c": 0.1}) == ["a", "b"]
    assert explaining({"a": 0.5, "b": 0.2, "c": 0.3}) == ["a", "c"]
    assert explaining({"a": 0.25, "b": 0.25, "c": 0.25, "d": 0.25}) == ["a", "b", "c"]  # at most three
    assert explaining({}) == [] and explaining({"a": 0.0}) == []


def test_run_episodes_matches_streaming_and_flushes():
    flags = [1, 1, 1, 0, 1]
    t = 100.0 + 0.5 * np.arange(len(flags))
    scores = np.array([3.0 if f else 0.4 for f in flags])
    contributions = np.stack([0.9 * scores, 0.1 * scores], axis=1)
    episodes = run_episodes("wt-01", EpisodeRule(k=3, n=5, m=4), THRESHOLD, NAMES, t, scores, contributions,
                            np.zeros_like(contributions))
    assert len(episodes) == 1 and episodes[0].closed_at == 102.0  # closed at the last window
    assert episodes[0].last_flagged_at == 102.0


@pytest.mark.parametrize("release", [1.0, 0.6])
def test_step_many_gives_the_same_episodes_as_step(release):
    rng = np.random.default_rng(7)
    n = 600
    t = 0.5 * np.arange(n)
    t[300:] += 100.0  # a silence longer than max_silence_s
    scores = np.where(rng.random(n) < 0.35, 3.0 * rng.uniform(0.8, 1.2, n), rng.uniform(0.4, 1.9, n))
    scores[100:160] = 0.1  # quiet stretches take the fast path
    contributions = np.stack([scores * 0.7, scores * 0.3], axis=1)
    missing = np.zeros((n, 2))
    missing[400:405, 1] = 0.5
    operating = rng.random(n) > 0.05
    rule = EpisodeRule(k=3, n=5, m=4, max_silence_s=20.0, release_ratio=release)
    batched = run_episodes("wt-01", rule, THRESHOLD, NAMES, t, scores, contributions, missing, operating)
    tracker = EpisodeTracker("wt-01", rule, THRESHOLD, NAMES)
    for i in range(n):
        tracker.step(t[i], scores[i], contributions[i], missing[i], bool(operating[i]))
    tracker.flush()
    assert len(batched) > 3
    assert [e.snapshot() for e in batched] == [e.snapshot() for e in tracker.closed]
    if release < 1:  # the hold made a difference here
        plain = run_episodes("wt-01", EpisodeRule(k=3, n=5, m=4, max_silence_s=20.0), THRESHOLD, NAMES, t, scores,
                             contributions, missing, operating)
        assert len(batched) < len(plain)


def test_the_threshold_must_be_positive():
    with pytest.raises(ValueError, match="threshold"):
        EpisodeTracker("wt-01", RULE, 0.0, NAMES)


def test_an_open_episode_holds_while_the_score_stays_above_the_release_ratio():
    """Heat that grows with load wavers around the threshold: below it, but above release_ratio of it, an
    open episode stays open (and its windows flagged), so the fault stays one alert; only m windows under
    release_ratio close it. Before an episode opens the threshold itself counts."""
    ratios = [1.5, 1.5, 1.5, 0.7, 0.7, 0.7, 0.7, 0.7, 1.5, 0.5, 0.5, 0.5, 0.5]
    outcomes = {}
    for release in (1.0, 0.6):
        tracker = EpisodeTracker("wt-01", EpisodeRule(k=3, n=5, m=4, release_ratio=release), THRESHOLD, NAMES)
        for i, ratio in enumerate(ratios):
            tracker.step(100.0 + i, ratio * THRESHOLD, [ratio, 0.0], [0.0, 0.0])
        tracker.flush()
        outcomes[release] = [(e.started_at, e.last_flagged_at, e.closed_at) for e in tracker.closed]
    assert outcomes[1.0] == [(100.0, 102.0, 106.0)]  # the lull closed it; the flag at 108 alone opens nothing
    assert outcomes[0.6] == [(100.0, 108.0, 112.0)]  # one episode over the lull
    quiet = EpisodeTracker("wt-01", EpisodeRule(k=1, n=1, m=1, release_ratio=0.6), THRESHOLD, NAMES)
    assert quiet.step(0.0, 0.9 * THRESHOLD, [1.0, 0.0], [0.0, 0.0]) == []  # opening still needs the threshold


@pytest.mark.parametrize("kwargs", [{"k": 0}, {"k": 6, "n": 5}, {"m": 0}, {"missing_tolerance": 1.0},
                                    {"release_ratio": 0.0}, {"release_ratio": 1.2}])
def test_rule_is_checked(kwargs):
    with pytest.raises(ValueError):
        EpisodeRule(**kwargs)


def test_rule_round_trips_through_a_dict():
    rule = EpisodeRule(k=16, n=20, m=20, missing_tolerance=0.2, max_silence_s=15.0, update_interval_s=30.0,
                       release_ratio=0.6)
    assert EpisodeRule.from_dict(rule.to_dict()) == rule
    written_before = {k: v for k, v in rule.to_dict().items() if k != "release_ratio"}
    assert EpisodeRule.from_dict(written_before).release_ratio == 1.0  # older bundles keep the rule they were judged by


def test_a_window_outside_the_regime_is_judged_when_its_regime_sensor_failed():
    """A wind sensor stuck below cut-in puts every window outside the regime by its own reading: the window
    still counts when that sensor is missing or frozen there, so the failure cannot hide itself. Another
    feature missing while the machine idles is not judged."""
    names = ["wind", "temp"]

    def events_with_missing(feature: int) -> list[str]:
        tracker = EpisodeTracker("wt-01", EpisodeRule(k=2, n=3, m=2), THRESHOLD, names, regime_feature="wind")
        missing = [0.0, 0.0]
        missing[feature] = 1.0
        return [e.kind for i in range(4) for e in tracker.step(float(i), 0.1, [0.0, 0.0], missing, operating=False)]

    assert events_with_missing(0) == ["open"]
    assert events_with_missing(1) == []
    tracker = EpisodeTracker("wt-01", EpisodeRule(k=2, n=3, m=2), THRESHOLD, names)  # no regime declared
    assert [e for i in range(4) for e in tracker.step(float(i), 0.1, [0.0, 0.0], [1.0, 0.0], operating=False)] == []


def test_the_mini_turbine_reports_a_sensor_losing_a_fifth_of_its_readings_for_twelve_seconds():
    """At 20 Hz a sensor losing 22 % of its readings at random for 12 s (a low-severity dropout) flags enough
    windows under the spec's missing tolerance to open an episode naming it; a clean stream opens none."""
    spec = default_spec()
    g, rate = spec.geometry, spec.sampling.rate_hz
    names = list(spec.features)
    voltage = names.index("voltage")
    n = round(60 * rate)
    lost = np.zeros(n, dtype=bool)
    start, stop = round(20 * rate), round(32 * rate)
    lost[start:stop] = np.random.default_rng(3).random(stop - start) < 0.22

    def episodes(lost: np.ndarray) -> list:
        tracker = EpisodeTracker("wt-01", spec.rule(), 1.0, names)
        for end in range(g.length, n + 1, g.stride):
            missing = np.zeros(len(names))
            missing[voltage] = lost[end - g.length:end].mean()
            tracker.step(end / rate, 0.1, np.zeros(len(names)), missing)
        tracker.flush()
        return tracker.closed

    (episode,) = episodes(lost)
    assert episode.missing == ["voltage"] and 20.0 <= episode.opened_at <= 32.0
    assert episodes(np.zeros(n, dtype=bool)) == []


def test_an_infinite_score_opens_an_episode_with_a_finite_peak():
    """A model that overflows on a huge reading scores inf: the window is flagged, and the episode's peak and
    shares stay numbers a message can carry."""
    tracker = EpisodeTracker("wt-01", EpisodeRule(k=1, n=1, m=1), THRESHOLD, NAMES)
    [opened] = tracker.step(100.0, np.inf, np.array([np.inf, 1.0]), np.zeros(2))
    episode = opened.episode
    assert opened.kind == "open" and np.isfinite(episode["peak_ratio"]) and episode["peak_ratio"] > 1e30
    assert episode["contributions"]["a"] == 1.0 and episode["features"] == ["a"]
    [closed] = tracker.step(100.5, np.nan, np.array([np.nan, np.nan]), np.zeros(2))  # NaN: not flagged
    assert closed.kind == "close"


def test_a_streaming_tracker_keeps_only_the_latest_closed_episodes():
    """A flapping condition on a detector that runs for months must not grow memory; offline evaluation still gets
    every episode, the same ones."""
    from shared.ml.episodes import KEEP_CLOSED

    flags = [1, 0] * (KEEP_CLOSED + 20)
    t = 100.0 + 0.5 * np.arange(len(flags))
    scores = np.array([3.0 if f else 0.4 for f in flags])
    contributions = np.stack([0.9 * scores, 0.1 * scores], axis=1)
    rule = EpisodeRule(k=1, n=1, m=1)
    episodes = run_episodes("wt-01", rule, THRESHOLD, NAMES, t, scores, contributions, np.zeros_like(contributions))
    tracker = EpisodeTracker("wt-01", rule, THRESHOLD, NAMES)
    opened = 0
    for i in range(len(flags)):
        opened += sum(e.kind == "open" for e in tracker.step(t[i], scores[i], contributions[i], np.zeros(2)))
    assert opened == len(episodes) == KEEP_CLOSED + 20
    assert len(tracker.closed) == KEEP_CLOSED
    assert [e.snapshot() for e in tracker.closed] == [e.snapshot() for e in episodes[-KEEP_CLOSED:]]
