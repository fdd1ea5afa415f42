"""Golden vectors pin the feature pipeline; the edge detector is tested against the same file."""

import json
from itertools import pairwise
from pathlib import Path

import numpy as np

from shared.ml.features import compute_features, make_windows, quaternion_to_euler, window_starts
from shared.ml.spec import default_spec

GOLDEN = Path(__file__).parent / "golden" / "features.json"


def golden_input():
    rng = np.random.default_rng(42)
    n = 200
    angle = np.linspace(0, 6 * np.pi, n)
    w, x, y, z = np.cos(angle / 2), 0.01 * rng.standard_normal(n), 0.01 * rng.standard_normal(n), np.sin(angle / 2)
    norm = np.sqrt(w * w + x * x + y * y + z * z)
    values = {"qw": w / norm, "qx": x / norm, "qy": y / norm, "qz": z / norm,
              "wind_speed_rps": 2.5 + 0.0625 * np.floor(np.arange(n) / 20),
              "rps": 2.0 + 0.0625 * np.floor(np.arange(n) / 20), "voltage": 70.0 + np.arange(n) % 7}
    t = 1_767_225_600.0 + 0.05 * np.arange(n)
    t[60:] += 2.0  # a gap longer than windows.max_gap_s (1 s) between samples 59 and 60
    return t, values


def test_quaternion_to_euler_known_rotations():
    c, s = np.cos(np.pi / 12), np.sin(np.pi / 12)  # half of a 30 degree turn about one axis
    roll, pitch, yaw = quaternion_to_euler(np.array([1.0, c, c, c]), np.array([0.0, s, 0, 0]),
                                           np.array([0.0, 0, s, 0]), np.array([0.0, 0, 0, s]))
    np.testing.assert_allclose(roll, [0, np.pi / 6, 0, 0], atol=1e-12)
    np.testing.assert_allclose(pitch, [0, 0, np.pi / 6, 0], atol=1e-12)
    np.testing.assert_allclose(yaw, [0, 0, 0, np.pi / 6], atol=1e-12)


def test_quaternion_to_euler_is_the_textbook_formula_to_the_bit():
    rng = np.random.default_rng(7)
    q = rng.standard_normal((4, 200_000))
    q[:, :100_000] /= np.linalg.norm(q[:, :100_000], axis=0)  # unit quaternions, then raw sensor noise
    q[:, -1000:] = np.round(q[:, -1000:], 1)  # exact ties: gimbal lock, zero arguments
    w, x, y, z = q
    textbook = (np.arctan2(2.0 * (w * x + y * z), 1.0 - 2.0 * (x * x + y * y)),
                np.arcsin(np.clip(2.0 * (w * y - z * x), -1.0, 1.0)),
                np.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z)))
    for ours, expected in zip(quaternion_to_euler(w, x, y, z), textbook, strict=True):
        assert np.array_equal(ours, expected, equal_nan=True)


def test_windows_never_cross_a_gap_and_follow_the_stride():
    t, _ = golden_input()
    spec = default_spec()
    starts = window_starts(t, spec)
    # run 1 = samples 0..59 is too short for a 100-sample window; run 2 = 60..199
    assert starts.tolist() == [60, 70, 80, 90, 100]
    t2 = 0.05 * np.arange(250)
    assert window_starts(t2, spec).tolist() == list(range(0, 151, 10))


def test_window_layout_is_feature_by_time():
    feats = np.arange(300, dtype=np.float32).reshape(150, 2)
    w = make_windows(feats, np.array([0, 10]), list(range(100)))
    assert w.shape == (2, 2, 100)
    assert w[1, 0, 0] == feats[10, 0] and w[1, 1, 99] == feats[109, 1]


def test_golden_vectors():
    t, values = golden_input()
    spec = default_spec()
    feats = compute_features(values, spec)
    golden = json.loads(GOLDEN.read_text())
    np.testing.assert_allclose(feats, np.array(golden["features"], dtype=np.float32), rtol=0, atol=1e-6)
    assert window_starts(t, spec).tolist() == golden["starts"]


def test_missing_samples_stay_missing():
    _, values = golden_input()
    values = dict(values)
    values["voltage"] = values["voltage"].copy()
    values["voltage"][5] = np.nan
    values["qx"] = values["qx"].copy()
    values["qx"][7] = np.nan
    feats = compute_features(values, default_spec())
    assert np.isnan(feats[5, 5]) and np.isnan(feats[7, :3]).all()
    assert np.isfinite(np.delete(feats, [5, 7], axis=0)).all()


def test_operating_mask_uses_the_median_and_scores_windows_without_readings():
    from shared.ml.features import operating_mask

    spec = default_spec()
    wind = spec.features.index("wind_speed_rps")
    x = np.zeros((4, 6, 100), dtype=np.float32)
    x[0, wind] = 2.0  # above cut-in
    x[1, wind] = 1.0  # calm
    x[2, wind, :60] = 2.0  # median above cut-in, a few NaN
    x[2, wind, 60:70] = np.nan
    x[3, wind] = np.nan  # no reading at all: scored (the missing flag handles it)
    assert operating_mask(x, spec).tolist() == [True, False, True, True]
    assert operating_mask(x[:2], spec).tolist() == [True, False]  # the no-NaN fast path agrees


def test_make_windows_puts_nan_where_the_context_reaches_before_the_data():
    feats = np.arange(40, dtype=np.float32).reshape(20, 2)
    offsets = [-4, -2, 0, 1, 2]  # a sampled context of two, then three scored samples
    w = make_windows(feats, np.array([0, 3, 5]), offsets)
    assert w.shape == (3, 2, 5) and w.dtype == np.float32
    assert np.isnan(w[0, :, :2]).all() and (w[0, :, 2:] == feats[0:3].T).all()
    assert np.isnan(w[1, :, 0]).all()  # sample -1
    assert (w[1, :, 1:] == feats[[1, 3, 4, 5]].T).all()
    assert (w[2] == feats[[1, 3, 5, 6, 7]].T).all()
    assert make_windows(feats, np.zeros(0, dtype=np.int64), offsets).shape == (0, 2, 5)


def test_windows_follow_the_spec_geometry_with_a_drift_baseline():
    from shared.ml.spec import FeatureSpec

    spec = FeatureSpec.from_dict({"name": "p", "time_column": "t", "columns": ["t", "a"], "features": ["a"],
                                  "sampling": {"rate_hz": 1.0}, "drift": {"features": ["a"], "baseline_s": 20}})
    g = spec.geometry
    t = np.arange(60.0)
    feats = np.arange(60, dtype=np.float32).reshape(60, 1)
    starts = window_starts(t, spec)
    assert starts[0] == 0 and starts[-1] == 60 - g.length  # scored samples need only `length` samples
    w = make_windows(feats, starts, g.offsets())
    assert w.shape == (len(starts), 1, g.width) == (51, 1, 30)
    assert np.isnan(w[0, 0, :g.context_inputs]).all()  # no data before the first sample
    assert (w[-1, 0] == feats[np.array(g.offsets()) + starts[-1], 0]).all()


def test_window_starts_never_let_scored_samples_cross_a_gap():
    spec = default_spec()
    g = spec.geometry
    rng = np.random.default_rng(3)
    steps = np.full(5000, 0.05)
    steps[rng.choice(5000, 25, replace=False)] = rng.uniform(0.5, 30.0, 25)  # gaps shorter and longer than 1 s
    t = np.cumsum(steps)
    starts = window_starts(t, spec)
    assert len(starts) > 0
    for s in starts:
        assert np.diff(t[s:s + g.length]).max() <= g.max_gap_s
    # ...and every gap-free run long enough for a window is used from its start, every stride
    expected = []
    edges = [0, *(np.flatnonzero(np.diff(t) > g.max_gap_s) + 1).tolist(), len(t)]
    for a, b in pairwise(edges):
        expected += list(range(a, b - g.length + 1, g.stride))
    assert starts.tolist() == expected


def test_a_value_beyond_float32_is_missing():
    """A reading with no finite float32 (a huge glitch, inf) is missing, as NaN is, in training and on the edge;
    float32's own maximum (a Modbus FLT_MAX register) stays a value."""
    spec = default_spec()
    _, values = golden_input()
    values = {c: v[:4].copy() for c, v in values.items()}
    values["voltage"][:4] = [1e39, -np.inf, float(np.finfo(np.float32).max), 70.0]
    values["qw"][0] = 1e39  # a quaternion angle is never infinite
    voltage = spec.features.index("voltage")
    features = compute_features(values, spec)
    assert np.isnan(features[:2, voltage]).all()
    assert features[2, voltage] == np.finfo(np.float32).max and features[3, voltage] == 70.0
    others = np.delete(features, voltage, axis=1)
    assert not np.isinf(others).any()


def test_a_difference_feature_is_the_float64_difference_rounded_once():
    from shared.ml.spec import FeatureSpec

    raw = default_spec().to_dict()
    raw.update(features=["rps", "voltage_over_wind"], operating=None, derived=[
        {"name": "voltage_over_wind", "kind": "difference",
         "inputs": {"value": "voltage", "reference": "wind_speed_rps"}}])
    spec = FeatureSpec.from_dict(raw)
    rng = np.random.default_rng(3)
    voltage, wind = 70.0 + rng.standard_normal(50), 2.5 + rng.standard_normal(50) * 1e-3
    voltage[4], wind[9] = np.nan, np.nan
    feats = compute_features({"rps": np.ones(50), "voltage": voltage, "wind_speed_rps": wind}, spec)
    expected = (voltage - wind).astype(np.float32)
    assert feats.dtype == np.float32
    assert np.array_equal(feats[:, 1], expected, equal_nan=True)  # bit for bit, NaN where either is missing
    assert np.isnan(feats[[4, 9], 1]).all() and np.isfinite(np.delete(feats[:, 1], [4, 9])).all()
    assert (feats[:, 1] != voltage.astype(np.float32) - wind.astype(np.float32)).any()  # not two roundings
