"""What a dataset allows under a spec: usable samples and windows, gaps, and which features drift.

Used by the training job (refuse too little data, resolve `drift.features: auto`, choose folds) and
by `nacelle spec check`, so a user sees before training what the defaults become.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.ml.dataset import TurbineSeries
from shared.ml.features import segment_bounds
from shared.ml.spec import FeatureSpec

# A straight line explains at least 30 % of the feature's variance and moves it by at least 2.5 times its
# sample-to-sample noise over the data: a warm-up of minutes shows that much within a few hundred samples.
DRIFT_R2 = 0.3
DRIFT_STEPS = 2.5
# A glitch: a sample further from the median of it and its neighbours than GLITCH_RATIO times that distance's
# GLITCH_QUANTILE over the data (on short data the model replaces them by the same rule before scoring).
GLITCH_QUANTILE, GLITCH_RATIO = 0.99, 4.0


def glitch_distance(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Along the last axis, for every sample but the two ends: its distance from the median of it and its two
    neighbours (NaN where one of them is missing), and that median."""
    median = np.median(np.stack([x[..., :-2], x[..., 1:-1], x[..., 2:]]), axis=0)
    return np.abs(x[..., 1:-1] - median), median


def glitch_limit(distance: np.ndarray, axis: int | None = None) -> np.ndarray:
    """GLITCH_RATIO times the GLITCH_QUANTILE of the distances (NaN ignored); inf (nothing is a glitch) where
    that is 0 or there is no distance."""
    with np.errstate(all="ignore"):
        q = np.nanquantile(distance, GLITCH_QUANTILE, axis=axis)
    return np.where(np.isfinite(q) & (q > 0), GLITCH_RATIO * q, np.inf)


def without_glitches(x: np.ndarray) -> np.ndarray:
    """A copy of the 1-D series (no NaN) with each glitch replaced by the median of it and its neighbours;
    the two ends are kept. A few bad readings would otherwise hide a trend from the statistics below."""
    if len(x) < 3:
        return x
    distance, median = glitch_distance(x)
    glitch = distance > glitch_limit(distance)
    out = x.copy()
    out[1:-1][glitch] = median[glitch]
    return out


@dataclass(frozen=True)
class Usable:
    samples: int  # samples inside gap-free runs long enough for one window
    windows: int  # windows at the spec's stride
    runs: int  # gap-free runs
    short_runs: int  # runs too short for a window
    gaps: int  # gaps longer than windows.max_gap_s


def usable(series: list[TurbineSeries], spec: FeatureSpec) -> Usable:
    g = spec.geometry
    samples = windows = runs = short = gaps = 0
    for s in series:
        bounds = segment_bounds(s.t, g.max_gap_s)
        gaps += max(len(bounds) - 1, 0)
        for a, b in bounds:
            runs += 1
            if b - a >= g.length:
                samples += b - a
                windows += (b - a - g.length) // g.stride + 1
            else:
                short += 1
    return Usable(samples, windows, runs, short, gaps)


def too_little_data(u: Usable, spec: FeatureSpec, minimum: int) -> str | None:
    """Why training must refuse, naming the cause and what to change; None when there is enough."""
    if u.samples >= minimum:
        return None
    g, rate = spec.geometry, spec.sampling.rate_hz
    text = (f"only {u.samples} usable sample(s): training needs at least {minimum} samples in gap-free runs of "
            f"at least {g.length} samples (a window of {spec.windows.length_s:g} s); the data has {u.runs} "
            f"run(s), {u.short_runs} of them shorter than that, split by {u.gaps} gap(s) longer than "
            f"windows.max_gap_s = {g.max_gap_s:g} s. Add data, shorten windows.length_s, or raise "
            f"windows.max_gap_s (the sampling interval is {1 / rate:g} s)")
    return text


def drift_statistics(t: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    """(R² of a straight line through the feature over time, the line's total change in units of the
    feature's sample-to-sample noise), glitches left out."""
    ok = np.isfinite(x)
    t, x = t[ok], without_glitches(x[ok].astype(np.float64))
    if len(x) < 3 or not np.std(x) > 0:
        return 0.0, 0.0
    tc = t - t.mean()
    slope = float(np.dot(tc, x - x.mean()) / max(float(np.dot(tc, tc)), 1e-12))
    residual = x - x.mean() - slope * tc
    r2 = 1.0 - float(np.var(residual)) / float(np.var(x))
    noise = float(np.std(np.diff(x))) / np.sqrt(2.0)
    change = abs(slope) * float(t[-1] - t[0])
    return r2, change / noise if noise > 0 else float("inf")


def drifting_features(series: list[TurbineSeries], spec: FeatureSpec) -> tuple[str, ...]:
    """`drift.features: auto`: the features that follow a trend (R² >= DRIFT_R2 and a change of >= DRIFT_STEPS
    noise steps) in at least half of the series, e.g. temperatures warming up. Features that swing with the
    process (wind, load) have no such trend over the data and keep their level."""
    votes = np.zeros(spec.n_features)
    counted = 0
    for s in series:
        if len(s.t) < 3:
            continue
        counted += 1
        for j in range(spec.n_features):
            r2, steps = drift_statistics(s.t, s.features[:, j])
            votes[j] += r2 >= DRIFT_R2 and steps >= DRIFT_STEPS
    if not counted:
        return ()
    return tuple(name for name, v in zip(spec.features, votes, strict=True) if v >= counted / 2)
