"""The drift statistics shared by the training job and the detector (shared/ml/drift.py): the sketch, the distance,
the baseline document and its tolerances."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from shared.errors import BundleError
from shared.ml import drift
from training_jobs.bundle_io import read_manifest_from_tar

RNG = np.random.default_rng(5)


def sample(n: int = 3600, shift: float = 0.0, spread: float = 1.0) -> np.ndarray:
    return RNG.normal(10.0 + shift, 2.0 * spread, n)


def summary(values: np.ndarray) -> drift.Summary:
    s = drift.summarise(values)
    assert s is not None
    return s


def test_the_sketch_holds_count_mean_std_and_the_quantiles_and_leaves_nan_out() -> None:
    values = np.r_[np.arange(1.0, 101.0), [np.nan, np.inf]]
    s = summary(values)
    assert s.count == 100 and s.mean == pytest.approx(50.5) and s.std == pytest.approx(np.arange(1, 101).std())
    assert len(s.quantiles) == len(drift.LEVELS) == 19 and s.quantiles[9] == pytest.approx(50.5)  # the median
    assert drift.summarise(np.array([np.nan, np.nan])) is None


def test_the_same_distribution_is_close_and_a_shifted_or_wider_one_is_far() -> None:
    base = summary(sample())
    assert drift.distance(summary(sample()), base) < 0.1  # another sample of the same distribution
    assert drift.distance(summary(sample(shift=2.0)), base) == pytest.approx(1.0, abs=0.1)  # 1 sd
    assert drift.distance(summary(sample(spread=1.8)), base) > 0.5
    # quantised values (a 1/16-step counter) stay comparable
    steps = np.round(sample() * 16) / 16
    assert drift.distance(summary(steps), base) < 0.1


def test_a_short_fault_in_a_period_does_not_move_the_sketch_but_a_long_one_does() -> None:
    base = summary(sample())
    calm = sample()
    short, long = calm.copy(), calm.copy()
    short[:100] = 1e6  # under 5 % of the period: outside the sketch's central 90 %
    long[:800] = 1e6
    assert drift.distance(summary(short), base) < 0.2
    assert drift.distance(summary(long), base) > 10


def test_tiny_samples_are_not_judged() -> None:
    baseline = drift.calibrate([piece("a", 0.0), piece("b", 0.0)], ["x"], 1800, 600)
    few = {"x": summary(sample(n=50, shift=20.0))}
    judged = drift.distances(few, summary(sample(n=50)), baseline, min_count=600)
    assert judged.features == {} and judged.score is None
    enough = drift.distances({"x": summary(sample(shift=20.0))}, None, baseline, min_count=600)
    assert enough.features["x"] > 5 and enough.score is None


def piece(turbine: str, offset: float, n: int = 3600, start: float = 0.0, keep: np.ndarray | None = None
          ) -> drift.Piece:
    t = start + 0.5 * np.arange(n)
    return drift.Piece(turbine, t, sample(n, shift=offset)[:, None], RNG.normal(0.5, 0.1, n),
                       np.ones(n, dtype=bool) if keep is None else keep)


def test_the_tolerance_is_how_far_one_turbine_lies_from_the_others() -> None:
    alike = drift.calibrate([piece("a", 0.0), piece("b", 0.0), piece("c", 0.0)], ["x"], 1800, 600)
    apart = drift.calibrate([piece("a", -1.0), piece("b", 0.0), piece("c", 1.0)], ["x"], 1800, 600)
    assert alike.tolerance["x"] < 0.15 < 0.4 < apart.tolerance["x"]
    assert alike.chunks == 3 and alike.windows == 3 * 3600 and alike.score_tolerance < 0.15


def test_only_kept_windows_count_and_short_data_falls_back_to_the_assumed_tolerance() -> None:
    keep = np.zeros(3600, dtype=bool)
    keep[:400] = True  # fewer than 600 windows in every period
    baseline = drift.calibrate([piece("a", 0.0, keep=keep), piece("b", 3.0, keep=keep)], ["x"], 1800, 600)
    assert baseline.windows == 800 and baseline.operating_share == pytest.approx(800 / 7200)
    assert baseline.chunks == 0 and baseline.tolerance == {"x": drift.TOLERANCE_FALLBACK}
    with pytest.raises(BundleError, match="no held-out normal window"):
        drift.calibrate([piece("a", 0.0, keep=np.zeros(3600, dtype=bool))], ["x"], 1800, 600)


def test_the_baseline_document_round_trips_and_a_bad_one_is_refused_naming_the_field() -> None:
    baseline = drift.calibrate([piece("a", 0.0), piece("b", 0.5)], ["x"], 1800, 600)
    doc = json.loads(json.dumps(baseline.to_dict()))
    assert drift.Baseline.from_dict(doc) == baseline
    bad: list[tuple[str, object, str]] = [
        ("format_version", 2, "format_version"), ("levels", [0.5], "levels"), ("chunks", -1, "chunks"),
        ("operating_share", 1.5, "operating_share"), ("features", {}, "features")]
    for key, value, named in bad:
        with pytest.raises(BundleError, match=named):
            drift.Baseline.from_dict({**doc, key: value})
    broken = json.loads(json.dumps(doc))
    broken["features"]["x"]["quantiles"][3] = -1e9
    with pytest.raises(BundleError, match=r"features\.x\.quantiles: must not decrease"):
        drift.Baseline.from_dict(broken)
    broken = json.loads(json.dumps(doc))
    broken["score"]["tolerance"] = float("nan")
    with pytest.raises(BundleError, match=r"score\.tolerance"):
        drift.Baseline.from_dict(broken)


def test_the_training_job_stores_a_baseline_of_its_held_out_normal_windows_in_the_bundle(trained_pca: Any) -> None:
    manifest = read_manifest_from_tar(trained_pca.model_archive)
    baseline = drift.Baseline.from_dict(manifest[drift.BASELINE_KEY])
    features = manifest["feature_spec"]["features"]
    assert set(baseline.features) == set(baseline.tolerance) == set(features)
    assert baseline.windows > 600 and 0 < baseline.operating_share <= 1
    assert baseline.period_s == drift.DEFAULT_PERIOD_S
    assert baseline.score.count == baseline.windows and baseline.score.quantiles[0] > 0
    # the two training turbines differ a little: the tolerances are measured (on a held-out period of 600+ windows)
    assert baseline.chunks >= 1 and all(0 < t < drift.TOLERANCE_FALLBACK for t in baseline.tolerance.values())
