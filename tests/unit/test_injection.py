"""Generic faults for data without labels, scaled to the spec's timescales and shrunk to fit short data."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from shared.ml.dataset import TurbineSeries
from shared.ml.injection import DURATION_WINDOWS, GENERIC_FAULTS, feature_scales, inject_generic
from shared.ml.metrics import Allowance, scorable
from shared.ml.spec import FeatureSpec
from training_jobs.evaluation import eval_set


def spec_at(rate_hz: float, drift: list[str] | None = None) -> FeatureSpec:
    return FeatureSpec.from_dict({"name": "p", "time_column": "t", "columns": ["t", "a", "b", "c"],
                                  "features": ["a", "b", "c"], "sampling": {"rate_hz": rate_hz},
                                  **({} if drift is None else {"drift": {"features": drift}})})


def piece(rate_hz: float, n: int, seed: int = 0, turbine: str = "m1") -> TurbineSeries:
    rng = np.random.default_rng(seed)
    t = 1_767_225_600.0 + np.arange(n) / rate_hz
    return TurbineSeries(turbine, t, rng.normal(10.0, 1.0, (n, 3)).astype(np.float32))


@pytest.mark.parametrize("rate, n", [(20.0, 40_000), (1.0, 4000), (1 / 600, 4000)])
def test_durations_are_windows_of_the_spec(rate, n):
    spec = spec_at(rate)
    s = piece(rate, n)
    copy, faults = inject_generic(s, spec, seed=7)
    window_s, interval = spec.window_seconds, 1 / rate
    assert len(faults) >= 4 and {f.fault for f in faults} <= set(GENERIC_FAULTS)
    full = 0
    for f in faults:
        nominal = DURATION_WINDOWS[f.fault] * window_s
        span = f.end - f.start + interval  # the fault covers [start, end] sample by sample
        assert span <= nominal + interval * 1.01
        full += abs(span - nominal) <= interval * 1.01
    assert full >= len(faults) - 1  # only the last one may be shrunk to the room left
    allowance = Allowance.of(spec)
    coverage = {"m1": (s.t, s.duration_s)}
    assert all(scorable(f, coverage, allowance) for f in faults)  # each leaves the rule time to decide
    # a whole window and half the drift baseline before it, so the baseline's median stays normal
    assert faults[0].start >= s.t[0] + spec.window_seconds + spec.context_seconds / 2
    gaps = [b.start - a.end for a, b in pairwise(faults)]
    assert min(gaps) >= spec.episodes.close_after_s + spec.evaluation.detection_tolerance_s
    changed = np.flatnonzero(np.any(~(copy.features == s.features), axis=1))
    assert s.t[changed].min() >= faults[0].start and s.t[changed].max() <= faults[-1].end


def test_a_short_1hz_piece_gets_a_shrunk_fault_with_the_default_spec():
    spec = spec_at(1.0)  # 10-sample windows, drift "auto" (a 20 s baseline before each window)
    s = piece(1.0, 100)
    _, faults = inject_generic(s, spec, seed=1)
    assert len(faults) == 1
    [f] = faults
    assert f.end - f.start + 1 < DURATION_WINDOWS[f.fault] * spec.window_seconds  # shrunk to fit
    assert scorable(f, {"m1": (s.t, s.duration_s)}, Allowance.of(spec))


@pytest.mark.parametrize("rate, n", [(1.0, 50), (20.0, 200), (1 / 600, 40), (1.0, 1)])
def test_no_fault_when_the_data_is_too_short(rate, n):
    s = piece(rate, n)
    copy, faults = inject_generic(s, spec_at(rate), seed=1)
    assert faults == [] and np.array_equal(copy.features, s.features)


def test_injection_is_deterministic_for_a_seed_and_leaves_the_original_alone():
    spec = spec_at(1.0)
    s = piece(1.0, 3000)
    before = s.features.copy()
    a, fa = inject_generic(s, spec, seed=5)
    b, fb = inject_generic(s, spec, seed=5)
    assert fa == fb and np.array_equal(a.features, b.features, equal_nan=True)
    assert np.array_equal(s.features, before)
    c, fc = inject_generic(s, spec, seed=6)
    assert fc != fa or not np.array_equal(c.features, a.features, equal_nan=True)
    other_turbine = piece(1.0, 3000, turbine="m2")
    _, fd = inject_generic(other_turbine, spec, seed=5)
    assert [(f.fault, f.start) for f in fd] != [(f.fault, f.start) for f in fa]  # turbines differ


def test_feature_scales_of_a_drifting_feature_ignore_the_drift():
    spec = spec_at(1.0, drift=["a"])
    n = 3000
    rng = np.random.default_rng(0)
    x = np.stack([np.linspace(0, 300, n) + rng.normal(0, 0.5, n), rng.normal(0, 2.0, n), np.full(n, 4.0)],
                 axis=1).astype(np.float32)
    scale = feature_scales(x, spec)
    assert scale[0] < 2.0  # the spread within a window, not the 300-unit drift
    assert scale[1] == pytest.approx(2.0, rel=0.1)
    assert scale[2] == 1.0  # constant: no scale to measure


def test_sizes_scale_each_fault_in_turn():
    spec = spec_at(1.0, drift=[])
    s = TurbineSeries("m1", 1_767_225_600.0 + np.arange(3000.0), np.full((3000, 3), 10.0, np.float32))
    full, faults = inject_generic(s, spec, seed=3)
    graded, graded_faults = inject_generic(s, spec, seed=3, sizes=(1.0, 0.5))
    assert len(faults) >= 4 and [(f.fault, f.start) for f in graded_faults] == [(f.fault, f.start) for f in faults]
    assert [f.severity for f in graded_faults] == [("medium", "low")[k % 2] for k in range(len(faults))]
    for k, f in enumerate(faults):
        inside = (s.t >= f.start) & (s.t <= f.end)
        delta, graded_delta = full.features[inside] - 10.0, graded.features[inside] - 10.0
        assert np.any(delta != 0)  # every kind moves a constant signal (a dropout to NaN)
        np.testing.assert_allclose(graded_delta, delta * (1.0, 0.5)[k % 2], atol=1e-5)


def test_the_evaluation_set_carries_the_sizes_on_across_pieces_and_copies():
    spec = spec_at(1.0)
    pieces = [piece(1.0, 150, seed=k, turbine=f"m{k}") for k in range(4)]  # room for one fault each
    held = eval_set(pieces, [], spec, seed=1, sizes=(1.0, 0.5, 0.25))
    assert held.labels == "injected" and len(held.faults) >= 20  # short pieces: several copies of each
    assert [f.severity for f in held.faults[:6]] == ["medium", "low", "low"] * 2
    assert all(f.severity == "medium" for f in eval_set(pieces, [], spec, seed=1).faults)  # the gate's size
