"""One threshold on the anomaly score, calibrated on the k-th largest score of n consecutive windows."""

from __future__ import annotations

import numpy as np
import pytest

from shared.errors import TrainingError
from shared.ml.episodes import EpisodeRule
from training_jobs.calibration import FALLBACK_MARGIN, MIN_BLOCKS, calibrate, rolling_kth

RULE = EpisodeRule(k=4, n=6, m=6)
STRIDE_S = 0.5


def brute_kth(scores: np.ndarray, k: int, n: int) -> np.ndarray:
    out = np.zeros(len(scores))
    for i in range(len(scores)):
        seen = np.sort(scores[max(0, i - n + 1):i + 1])[::-1]
        out[i] = seen[k - 1] if len(seen) >= k else 0.0
    return out


@pytest.mark.parametrize("k, n", [(1, 1), (1, 5), (3, 5), (5, 5), (16, 20)])
def test_rolling_kth_is_the_kth_largest_of_the_last_n(k, n):
    scores = np.random.default_rng(k * 100 + n).gamma(2.0, 1.0, 300)
    np.testing.assert_array_equal(rolling_kth(scores, k, n), brute_kth(scores, k, n))


def test_rolling_kth_is_zero_until_k_windows_were_seen_and_treats_nan_as_clean():
    scores = np.array([5.0, 6.0, 7.0, np.nan, 8.0])
    assert rolling_kth(scores, 3, 4).tolist() == [0.0, 0.0, 5.0, 5.0, 6.0]
    assert rolling_kth(np.zeros(0), 3, 4).shape == (0,)


def normal_scores(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).gamma(4.0, 0.25, n)  # around 1, like a normalised error


def test_an_isolated_spike_shorter_than_k_windows_does_not_raise_the_threshold():
    base = normal_scores(4000)
    spiked = base.copy()
    spiked[2000:2000 + RULE.k - 1] = 50.0  # a bad reading: k - 1 windows far out
    sustained = base.copy()
    sustained[2000:2000 + RULE.k] = 50.0  # k windows: what opens an episode
    quiet = calibrate([base], RULE, STRIDE_S, 0.1).threshold
    with_spike = calibrate([spiked], RULE, STRIDE_S, 0.1)
    with_excursion = calibrate([sustained], RULE, STRIDE_S, 0.1)
    assert with_spike.highest < 50.0 and with_spike.threshold < 50.0
    assert with_spike.threshold == pytest.approx(quiet, rel=0.1)
    assert with_excursion.highest == 50.0 and with_excursion.threshold >= 50.0


def test_the_threshold_is_never_below_the_highest_rolling_value():
    segments = [normal_scores(500, seed) for seed in range(6)]
    rolled = np.concatenate([rolling_kth(s, RULE.k, RULE.n) for s in segments])
    # a strict target: the data holds far fewer blocks than one false alarm's return period, so the level
    # is extrapolated, and never below what the data already showed
    for target in (0.1, 10.0):
        c = calibrate(segments, RULE, STRIDE_S, target)
        assert c.highest == rolled.max()
        assert c.method not in ("max", "empirical") and c.threshold >= c.highest
        assert c.windows == 3000 and c.blocks == 6 * (500 // RULE.n)
        assert c.location is not None and c.scale is not None and c.scale > 0
    short = calibrate([normal_scores(RULE.n * 3)], RULE, STRIDE_S, 0.1)
    assert short.method == "max" and short.threshold >= short.highest


def test_with_enough_blocks_the_rate_is_read_off_the_data():
    segments = [normal_scores(6000, seed) for seed in range(3)]  # 3000 blocks of n = 6 windows
    target = 2000.0  # false alarms per day: one per 14.4 blocks of 3 s
    c = calibrate(segments, RULE, STRIDE_S, target)
    blocks_per_day = 86_400.0 / (RULE.n * STRIDE_S)
    maxima = np.concatenate([rolling_kth(s, RULE.k, RULE.n)[:len(s) // RULE.n * RULE.n].reshape(-1, RULE.n).max(1)
                             for s in segments])
    assert c.blocks == len(maxima) == 3000
    assert np.mean(maxima > c.threshold) <= target / blocks_per_day + 1e-3  # exceeded at most at the target rate


def test_the_rate_is_read_off_the_data_only_where_it_shows_at_least_ten_exceedances():
    """The (1 - 1/R) quantile of N block maxima rests on N/R values above it: one or two are noise."""
    segments = [normal_scores(6000, seed) for seed in range(3)]  # 3000 blocks
    blocks_per_day = 86_400.0 / (RULE.n * STRIDE_S)
    assert calibrate(segments, RULE, STRIDE_S, blocks_per_day * 10 / 3000).method == "empirical"
    sparse = calibrate(segments, RULE, STRIDE_S, blocks_per_day * 3 / 3000)  # 3 exceedances expected
    assert sparse.method == "gumbel" and sparse.threshold >= sparse.highest


def test_blocks_outside_the_operating_regime_neither_inflate_nor_skew_the_fit():
    """A block of windows all outside the operating regime scores 0 (the rule counts them as clean): the law
    is fitted to the scored blocks, and the rate asked of them rises with the share they do not fill."""
    operating = [normal_scores(3000, seed) for seed in range(2)]
    idle = [np.zeros(3000) for _ in range(2)]  # as long again, every window outside the regime
    alone = calibrate(operating, RULE, STRIDE_S, 1.0)
    mixed = calibrate(operating + idle, RULE, STRIDE_S, 1.0)
    assert mixed.method == alone.method == "gumbel"
    assert (mixed.location, mixed.scale) == (alone.location, alone.scale)
    assert mixed.highest == alone.highest <= mixed.threshold < alone.threshold  # idle time: fewer scored blocks a day
    only_idle = calibrate([*idle, normal_scores(RULE.n * 3)], RULE, STRIDE_S, 1.0)  # 3 scored blocks: no fit
    assert only_idle.method == "max" and only_idle.threshold == pytest.approx(only_idle.highest * FALLBACK_MARGIN)


def test_a_lower_false_alarm_target_gives_a_higher_threshold():
    segments = [normal_scores(3000)]  # 500 blocks of 3 s
    thresholds = [calibrate(segments, RULE, STRIDE_S, target).threshold for target in (100.0, 10.0, 1.0)]
    assert thresholds[0] < thresholds[1] < thresholds[2]
    widened = calibrate(segments, RULE, STRIDE_S, 10.0, margin=1.5)
    assert widened.threshold == pytest.approx(1.5 * thresholds[1]) and widened.to_dict()["margin"] == 1.5


def test_the_extrapolation_reaches_at_most_a_hundred_times_the_data():
    """25 minutes of held-out windows cannot tell a once-a-year level from a once-a-month one."""
    from training_jobs.calibration import MAX_EXTRAPOLATION

    segments = [normal_scores(3000)]  # 500 blocks: the fit reaches 50,000 blocks (about 1.7 days)
    assert MAX_EXTRAPOLATION == 100.0
    far = [calibrate(segments, RULE, STRIDE_S, target).threshold for target in (0.1, 0.001)]
    assert far[0] == far[1] > calibrate(segments, RULE, STRIDE_S, 1.0).threshold


def test_few_blocks_fall_back_to_the_highest_value_with_a_margin():
    short = normal_scores(RULE.n * (MIN_BLOCKS - 1))
    c = calibrate([short], RULE, STRIDE_S, 0.1)
    assert c.method == "max" and c.blocks == MIN_BLOCKS - 1
    assert c.threshold == pytest.approx(c.highest * FALLBACK_MARGIN)
    assert c.location is None and c.target_false_alarms_per_day == 0.1
    assert calibrate([short], RULE, STRIDE_S, 0.1, margin=2.0).threshold == pytest.approx(2 * c.threshold)
    flat = calibrate([np.ones(RULE.n * 20)], RULE, STRIDE_S, 0.1)  # maxima without spread: no fit either
    assert flat.method == "max" and flat.threshold == pytest.approx(FALLBACK_MARGIN)


def test_segments_shorter_than_n_still_count_for_the_highest_value():
    c = calibrate([np.array([3.0, 3.0, 3.0, 3.0]), normal_scores(RULE.n * 3)], RULE, STRIDE_S, 0.1)
    assert c.method == "max" and c.highest >= 3.0 and c.threshold >= 3.0 * FALLBACK_MARGIN


def test_no_segments_is_a_training_error():
    with pytest.raises(TrainingError, match="no normal held-out windows"):
        calibrate([], RULE, STRIDE_S, 0.1)
    with pytest.raises(TrainingError):
        calibrate([np.zeros(0)], RULE, STRIDE_S, 0.1)


def test_calibration_is_json_ready():
    import json

    c = calibrate([normal_scores(2000)], RULE, STRIDE_S, 0.1)
    assert json.loads(json.dumps(c.to_dict()))["method"] == "gumbel"
