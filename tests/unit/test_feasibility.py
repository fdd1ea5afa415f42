"""What a dataset allows under a spec: usable samples, the refusal message, drifting features."""

from __future__ import annotations

import numpy as np

from shared.ml.dataset import TurbineSeries
from shared.ml.feasibility import (
    DRIFT_R2,
    DRIFT_STEPS,
    drift_statistics,
    drifting_features,
    too_little_data,
    usable,
    without_glitches,
)
from shared.ml.features import window_starts
from shared.ml.spec import FeatureSpec, default_spec


def spec_1hz(features=("temp", "still", "load"), **extra) -> FeatureSpec:
    return FeatureSpec.from_dict({"name": "p", "time_column": "t", "columns": ["t", *features],
                                  "features": list(features), "sampling": {"rate_hz": 1.0}, **extra})


def series(t: np.ndarray, columns: list[np.ndarray], turbine: str = "m1") -> TurbineSeries:
    return TurbineSeries(turbine, t, np.stack(columns, axis=1).astype(np.float32))


def plant(seed: int, n: int = 3600, turbine: str = "m1") -> TurbineSeries:
    """A motor warming up over the run, a stationary channel, and a load that swings with the process."""
    rng = np.random.default_rng(seed)
    t = 1_767_225_600.0 + np.arange(n)
    warming = 40 + 15 * (1 - np.exp(-np.arange(n) / 2000)) + rng.normal(0, 0.2, n)
    still = 5 + rng.normal(0, 0.3, n)
    load = 50 + 20 * np.sin(2 * np.pi * np.arange(n) / 600) + rng.normal(0, 1.0, n)  # six process cycles
    return series(t, [warming, still, load], turbine)


def test_drifting_features_pick_a_warming_temperature_only():
    spec = spec_1hz()
    assert drifting_features([plant(1), plant(2, turbine="m2")], spec) == ("temp",)
    r2, steps = drift_statistics(plant(1).t, plant(1).features[:, 0])
    assert r2 >= 0.5 and steps >= 5
    for j in (1, 2):
        r2, _ = drift_statistics(plant(1).t, plant(1).features[:, j])
        assert r2 < DRIFT_R2 / 3


def test_a_trend_in_fewer_than_half_of_the_turbines_is_not_drift():
    spec = spec_1hz()
    cold = plant(3, turbine="m3")
    cold.features[:, 0] = 40 + np.random.default_rng(3).normal(0, 0.2, len(cold.t))
    other = plant(4, turbine="m4")
    other.features[:, 0] = cold.features[:, 0]
    assert drifting_features([plant(1), cold, other], spec) == ()
    assert drifting_features([plant(1), cold], spec) == ("temp",)  # one of two is half
    assert drifting_features([], spec) == ()


def test_drift_statistics_ignore_missing_samples_and_flat_signals():
    t = np.arange(100.0)
    x = 0.5 * t + np.random.default_rng(0).normal(0, 0.1, 100)
    x[[3, 50]] = np.nan
    r2, steps = drift_statistics(t, x)
    assert r2 > 0.99 and steps > 100
    assert drift_statistics(t, np.full(100, 3.0)) == (0.0, 0.0)
    assert drift_statistics(t[:2], x[:2]) == (0.0, 0.0)


def gapped_20hz(runs: list[int], gap_s: float = 5.0) -> TurbineSeries:
    t, start = [], 0.0
    for n in runs:
        t.append(start + 0.05 * np.arange(n))
        start = t[-1][-1] + gap_s
    times = np.concatenate(t)
    return series(times, [np.zeros(len(times))] * 6)


def test_usable_counts_samples_windows_runs_and_gaps():
    spec = default_spec()  # 100-sample windows every 10 samples, gaps over 1 s split runs
    s = gapped_20hz([250, 60, 100])
    u = usable([s], spec)
    assert (u.samples, u.runs, u.short_runs, u.gaps) == (350, 3, 1, 2)
    assert u.windows == (250 - 100) // 10 + 1 + 1 == len(window_starts(s.t, spec))
    both = usable([s, gapped_20hz([120])], spec)
    assert (both.samples, both.windows, both.runs, both.gaps) == (470, 20, 4, 2)
    assert usable([], spec).samples == 0


def test_too_little_data_names_the_samples_the_window_the_gaps_and_what_to_change():
    spec = default_spec()
    u = usable([gapped_20hz([250, 60, 100])], spec)
    assert too_little_data(u, spec, minimum=350) is None
    reason = too_little_data(u, spec, minimum=300 * 2)
    assert reason is not None
    for fragment in ("only 350 usable sample(s)", "at least 600 samples", "at least 100 samples",
                     "a window of 5 s", "3 run(s), 1 of them shorter", "2 gap(s) longer than windows.max_gap_s = 1 s",
                     "Add data", "shorten windows.length_s", "raise windows.max_gap_s", "sampling interval is 0.05 s"):
        assert fragment in reason, (fragment, reason)


def test_runs_cut_by_gaps_can_leave_no_usable_sample():
    spec = default_spec()
    u = usable([gapped_20hz([90] * 10)], spec)  # 900 samples, none in a run of 100
    assert (u.samples, u.windows, u.short_runs, u.gaps) == (0, 0, 10, 9)
    assert "only 0 usable sample(s)" in (too_little_data(u, spec, 300) or "")


def test_a_few_bad_readings_do_not_hide_a_warming_trend():
    """A logger's occasional bad reading (5 % off, as real loggers glitch) would hold most of a slow warm-up's
    variance and noise steps; the statistics leave glitches out, as the model does before scoring."""
    rng = np.random.default_rng(6)
    t = np.arange(400.0)
    x = 70 + 0.6 * t / 400 + rng.normal(0, 0.06, 400)  # a motor warming by 0.6 degrees over 400 s
    clean = drift_statistics(t, x)
    x[[57, 210, 333]] *= [1.05, 0.95, 1.04]
    assert clean[0] >= DRIFT_R2 and clean[1] >= DRIFT_STEPS
    np.testing.assert_allclose(drift_statistics(t, x), clean, rtol=0.05)
    kept = without_glitches(x)
    assert np.abs(kept[[57, 210, 333]] - (70 + 0.6 * t[[57, 210, 333]] / 400)).max() < 0.3
    np.testing.assert_array_equal(np.delete(kept, [57, 210, 333]), np.delete(x, [57, 210, 333]))
