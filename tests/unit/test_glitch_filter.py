"""A lone bad reading (a logger glitch) is replaced by the median of it and its neighbours before scoring;
a step, a trend, a run of bad readings or an oscillation passes unchanged."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shared.ml.feasibility import GLITCH_RATIO
from training_jobs.fit import glitch_limits
from training_jobs.model import Preprocess, median_of_three


def filtered(values: list[float], limit: float = 1.0) -> list[float]:
    prep = Preprocess(torch.zeros(1), torch.ones(1), torch.zeros(1), 0, len(values))
    prep.glitch_limit.fill_(limit)
    return prep.filter_glitches(torch.tensor([[values]], dtype=torch.float32))[0, 0].tolist()


@pytest.mark.parametrize(("values", "want"), [
    ([0, 0, 0, 9, 0, 0], [0, 0, 0, 0, 0, 0]),  # a glitch inside the window
    ([9, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]),  # at either end: against the line through the two inward
    ([0, 0, 0, 0, 0, -9], [0, 0, 0, 0, 0, 0]),  # (a step in the last reading waits for the next one)
    ([0, 9, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]),  # beside an end: the end does not inherit it
    ([0, 0, 0, 0, -9, 0], [0, 0, 0, 0, 0, 0]),
    ([0, 0, 9], [0, 0, 0]),  # three samples are enough
    ([0, 0, 0, 5, 5, 5], [0, 0, 0, 5, 5, 5]),  # a step
    ([0, 2, 4, 6, 8, 10], [0, 2, 4, 6, 8, 10]),  # a trend, to its ends
    ([0, 0, 9, 9, 0, 0], [0, 0, 9, 9, 0, 0]),  # two bad readings in a row are not a glitch
    ([0, 0, 0.5, 0, 0, 0], [0, 0, 0.5, 0, 0, 0]),  # within the limit
])
def test_only_a_lone_reading_beyond_the_limit_is_replaced(values, want):
    assert filtered([float(v) for v in values]) == want


def test_a_reading_beside_a_missing_one_is_left_as_it_is_and_missing_stays_missing():
    got = filtered([0.0, math.nan, 9.0, 0.0, 0.0, 9.0])
    assert math.isnan(got[1]) and got[2] == 9.0 and got[5] == 0.0
    assert filtered([0.0, 0.0, 9.0, 0.0], limit=math.inf) == [0.0, 0.0, 9.0, 0.0]  # no limit: no filter


def test_an_overflowing_reading_is_a_glitch_too_and_infinities_in_a_row_stay():
    """A register glitch reading float32's maximum or infinity is replaced; held over readings, it is no glitch
    (and the arithmetic at the ends, inf - inf, never turns a reading into NaN)."""
    big = float(np.finfo(np.float32).max)
    assert filtered([0.0, 0.0, math.inf, 0.0, 0.0]) == [0.0] * 5
    assert filtered([0.0, -big, 0.0, 0.0]) == [0.0] * 4
    assert filtered([0.0, 0.0, math.inf, math.inf]) == [0.0, 0.0, math.inf, math.inf]
    assert filtered([math.inf, math.inf, math.inf]) == [math.inf] * 3


def test_median_of_three_zeroes_nan_before_comparing_and_says_where_all_three_were_present():
    median, ok = median_of_three(torch.tensor([1.0, math.nan, 3.0]), torch.tensor([2.0, 2.0, 7.0]),
                                 torch.tensor([5.0, 0.0, math.nan]))
    assert ok.tolist() == [True, False, False] and median[0] == 2.0
    assert not torch.isnan(median).any()


def test_the_limit_is_a_multiple_of_the_usual_distance_from_the_median_of_three():
    rng = np.random.default_rng(5)
    noise = rng.normal(0.0, 1.0, (400, 1, 10))
    alternating = np.tile([5.0, -5.0], 5) + 0.1 * noise  # an oscillation of two samples' period
    scored = np.concatenate([noise, 10 * noise, np.full_like(noise, 3.0), alternating], axis=1).astype(np.float32)
    limits = glitch_limits(scored).flatten().tolist()
    assert 2.0 * GLITCH_RATIO < limits[0] < 4.0 * GLITCH_RATIO  # white noise: its 99th percentile is 2-4 sigma
    assert limits[1] == pytest.approx(10 * limits[0], rel=1e-5)  # in the feature's own units
    assert limits[2] == math.inf  # a feature that never moves has no glitch to tell apart
    assert filtered(alternating[0, 0].tolist(), limits[3]) == pytest.approx(alternating[0, 0].tolist())
    assert glitch_limits(scored[..., :2]).flatten().tolist() == [math.inf] * 4  # too short for a median of three


def test_the_job_filters_glitches_on_short_data_only():
    """Folds (a few hundred rows): one glitch inflates its feature's scale, so the job filters them; with more
    data, the calibration sees them as part of normal operation and the models stay as they were."""
    from shared.ml.spec import FeatureSpec
    from training_jobs.hyperparameters import Hyperparameters
    from training_jobs.selection import fit_family

    spec = FeatureSpec.from_dict({"name": "g", "time_column": "t", "columns": ["t", "a", "b"], "features": ["a", "b"],
                                  "sampling": {"rate_hz": 1.0}, "drift": {"features": []}})
    rng = np.random.default_rng(7)
    train = rng.normal(0.0, 1.0, (300, 2, spec.geometry.width)).astype(np.float32)
    for family in ("pca", "conv1d"):
        short = fit_family(family, spec, train, train[:30], Hyperparameters(epochs=1), lambda _: None, "folds")
        long = fit_family(family, spec, train, train[:30], Hyperparameters(epochs=1), lambda _: None, "holdout")
        assert np.isfinite(short.scorer.prep.glitch_limit.numpy()).all()
        assert long.scorer.prep.glitch_limit.flatten().tolist() == [math.inf, math.inf]
