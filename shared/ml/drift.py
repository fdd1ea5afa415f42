"""Drift statistics: one compact summary of a distribution, computed the same way by the training job (the
baseline stored in the bundle) and by the detector (one per period), and the distance between two summaries.

What is summarised: the windows the model scores in the operating regime; per feature its value at each window's
last sample, and the window's anomaly score. A summary holds the count, mean, standard deviation and the quantiles at
LEVELS (5 %, 10 %, ..., 95 %).

The distance (docs/fleet.md "Drift monitoring") is the Wasserstein-1 (earth mover's) distance between the central 90 %
of the two distributions, the integral over p in [0.05, 0.95] of |F^-1(p) - G^-1(p)|, taken on LEVELS (the mean
absolute difference of the two sketches' quantiles), divided by the baseline's standard deviation: how far, in
training standard deviations, the probability mass moved. A shift, a change of spread and a change of shape all count;
it stays defined on quantised features (1/16-step counters, 10-bit ADC counts) where the bins of a PSI collapse; and a
fault filling less than 5 % of a period (90 s of 30 min) does not move it.

How far is too far differs per feature: turbines differ from each other (a hub mounted a little askew). The baseline
therefore also records each series' tolerance: the largest distance between one held-out turbine's period and the
pooled held-out data of the other turbines (calibrate).

Standard library and numpy only: the detector imports this module on the device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from shared.errors import BundleError

LEVELS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
BASELINE_KEY = "drift_baseline"  # the manifest's section (training_jobs.baseline writes it)
BASELINE_FORMAT_VERSION = 1
DISTANCE = "wasserstein1/std"
MIN_SCALE = 1e-9  # a feature constant in training: any change of it is a drift
MAX_DISTANCE = 1e12  # distances beyond say no more than 'far' (and stay storable numbers)
DEFAULT_PERIOD_S = 1800.0  # the detector's statsPeriodSeconds default; the baseline's tolerances are measured on it
MIN_CHUNK_WINDOWS = 600  # windows a held-out period needs to measure a tolerance (5 min at the default stride)


@dataclass(frozen=True)
class Summary:
    """count, mean, std (population) and the quantiles at LEVELS of one series of values (NaN left out)."""

    count: int
    mean: float
    std: float
    quantiles: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "std": self.std, "quantiles": list(self.quantiles)}

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> Summary:
        """A summary document, checked (BundleError naming the field): a count >= 1, finite numbers, std >= 0,
        one non-decreasing quantile per level."""
        if not isinstance(raw, Mapping):
            raise BundleError(f"{where}: must be an object with count, mean, std and quantiles")
        count = _integer(raw.get("count"), f"{where}.count", 1)
        mean = _number(raw.get("mean"), f"{where}.mean")
        std = _number(raw.get("std"), f"{where}.std", 0.0)
        quantiles = raw.get("quantiles")
        if not isinstance(quantiles, list) or len(quantiles) != len(LEVELS) or not all(map(_finite, quantiles)):
            raise BundleError(f"{where}.quantiles: must be {len(LEVELS)} finite numbers (one per level)")
        if any(b < a for a, b in pairwise(quantiles)):
            raise BundleError(f"{where}.quantiles: must not decrease")
        return cls(count, mean, std, tuple(float(q) for q in quantiles))


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: Any, where: str, minimum: float | None = None, maximum: float | None = None) -> float:
    """A finite number within the bounds, else BundleError naming the field."""
    if not _finite(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = "" if minimum is None else f" >= {minimum:g}" + ("" if maximum is None else f" and <= {maximum:g}")
        raise BundleError(f"{where}: must be a finite number{bounds}, got {value!r}")
    return float(value)


def _integer(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BundleError(f"{where}: must be an integer >= {minimum}, got {value!r}")
    return value


def summarise(values: np.ndarray) -> Summary | None:
    """The summary of a 1-D series (NaN left out); None when no value is left."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return None
    q = np.quantile(v, LEVELS)
    return Summary(len(v), float(v.mean()), float(v.std()), tuple(float(x) for x in q))


def summarise_columns(matrix: np.ndarray, names: Sequence[str]) -> dict[str, Summary]:
    """One summary per column of an (N, K) matrix, by name; a column without any value is left out."""
    out = {}
    for j, name in enumerate(names):
        summary = summarise(matrix[:, j])
        if summary is not None:
            out[name] = summary
    return out


def scale(baseline: Summary) -> float:
    return max(baseline.std, MIN_SCALE * max(1.0, abs(baseline.mean)))


def distance(current: Summary, baseline: Summary) -> float:
    """Wasserstein-1 between the two sketches, in baseline standard deviations (module docstring)."""
    return sketch_distance(current.quantiles, baseline.quantiles, scale(baseline))


def sketch_distance(a: Sequence[float], b: Sequence[float], unit: float) -> float:
    """The mean absolute difference of two quantile sketches, in `unit`, at most MAX_DISTANCE: finite however
    large the (finite) quantiles, so that it can be stored and compared."""
    with np.errstate(over="ignore", invalid="ignore"):  # huge values: inf, capped below
        value = float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean() / unit)
    return value if value <= MAX_DISTANCE else MAX_DISTANCE


@dataclass(frozen=True)
class Baseline:
    """The training data's summaries and tolerances, stored in the bundle manifest under BASELINE_KEY."""

    features: dict[str, Summary]
    score: Summary
    tolerance: dict[str, float]  # per feature: the largest distance of a held-out turbine's period to the others
    score_tolerance: float
    windows: int  # windows summarised (held-out, normal, in the operating regime)
    operating_share: float  # of the held-out normal windows
    period_s: float  # the period the tolerances were measured on
    chunks: int  # held-out periods that measured them (0: TOLERANCE_FALLBACK assumed)

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": BASELINE_FORMAT_VERSION, "levels": list(LEVELS), "distance": DISTANCE,
                "source": SOURCE, "windows": self.windows, "operating_share": self.operating_share,
                "period_s": self.period_s, "chunks": self.chunks,
                "features": {name: {**s.to_dict(), "tolerance": self.tolerance[name]}
                             for name, s in self.features.items()},
                "score": {**self.score.to_dict(), "tolerance": self.score_tolerance}}

    @classmethod
    def from_dict(cls, raw: Any, where: str = BASELINE_KEY) -> Baseline:
        """A baseline document, checked; BundleError naming the field otherwise (an unknown format version,
        other quantile levels, a malformed summary or tolerance)."""
        if not isinstance(raw, Mapping):
            raise BundleError(f"{where}: must be an object")
        if raw.get("format_version") != BASELINE_FORMAT_VERSION:
            raise BundleError(f"{where}.format_version: {raw.get('format_version')!r} is not supported (this code "
                              f"reads {BASELINE_FORMAT_VERSION})")
        levels = raw.get("levels")
        if not isinstance(levels, list) or tuple(levels) != LEVELS:
            raise BundleError(f"{where}.levels: the sketch levels differ from this code's {list(LEVELS)}")
        features = raw.get("features")
        if not isinstance(features, Mapping) or not features:
            raise BundleError(f"{where}.features: must map each feature to its summary")
        windows = _integer(raw.get("windows"), f"{where}.windows", 1)
        chunks = _integer(raw.get("chunks"), f"{where}.chunks", 0)
        share = _number(raw.get("operating_share"), f"{where}.operating_share", 0.0, 1.0)
        period = _number(raw.get("period_s"), f"{where}.period_s", 1.0)
        summaries = {str(n): Summary.from_dict(f, f"{where}.features.{n}") for n, f in features.items()}
        tolerance = {str(n): _tolerance(f, f"{where}.features.{n}") for n, f in features.items()}
        score = Summary.from_dict(raw.get("score"), f"{where}.score")
        return cls(summaries, score, tolerance, _tolerance(raw["score"], f"{where}.score"), windows, share, period,
                   chunks)


SOURCE = "held-out normal windows in the operating regime"
TOLERANCE_FALLBACK = 0.5  # assumed when no held-out period was long enough to measure one


def _tolerance(raw: Mapping[str, Any], where: str) -> float:
    return _number(raw.get("tolerance"), f"{where}.tolerance", 0.0)


@dataclass(frozen=True)
class Piece:
    """Held-out normal windows of one turbine: (W,) end times, (W, F) feature values at each window's last sample,
    (W,) scores, (W,) windows to summarise (normal and in the operating regime)."""

    turbine_id: str
    t_end: np.ndarray
    last_samples: np.ndarray
    scores: np.ndarray
    keep: np.ndarray


def calibrate(pieces: Sequence[Piece], names: Sequence[str], period_s: float, min_count: int) -> Baseline:
    """The baseline of the pooled pieces and each series' tolerance: the largest distance between a period (of at
    least `min_count` windows) of one turbine and the pooled pieces of the other turbines (of all pieces, with one
    turbine only); TOLERANCE_FALLBACK when no period is long enough. BundleError when no window is kept."""
    pooled = _pool(pieces, names)
    if pooled is None:
        raise BundleError("no held-out normal window in the operating regime: no drift baseline")
    features, score = pooled
    turbines = sorted({p.turbine_id for p in pieces})
    worst = dict.fromkeys(features, 0.0)
    worst_score, chunks = 0.0, 0
    for turbine in turbines:
        others = [p for p in pieces if p.turbine_id != turbine] if len(turbines) > 1 else list(pieces)
        reference = _pool(others, names)
        if reference is None:
            continue
        ref_features, ref_score = reference
        for piece in (p for p in pieces if p.turbine_id == turbine):
            bucket = np.floor(piece.t_end / period_s)
            for b in np.unique(bucket[piece.keep]):
                sel = piece.keep & (bucket == b)
                if sel.sum() < min_count:
                    continue
                chunks += 1
                for j, name in enumerate(names):
                    s = summarise(piece.last_samples[sel, j])
                    if s is not None and name in ref_features and s.count >= min_count:
                        worst[name] = max(worst.get(name, 0.0), distance(s, ref_features[name]))
                chunk_score = summarise(piece.scores[sel])
                if chunk_score is not None:
                    worst_score = max(worst_score, distance(chunk_score, ref_score))
    if not chunks:
        worst, worst_score = dict.fromkeys(features, TOLERANCE_FALLBACK), TOLERANCE_FALLBACK
    keep = np.concatenate([p.keep for p in pieces])
    return Baseline(features, score, {n: round(worst.get(n, 0.0), 6) for n in features}, round(worst_score, 6),
                    int(keep.sum()), float(keep.mean()) if len(keep) else 0.0, float(period_s), chunks)


def _pool(pieces: Sequence[Piece], names: Sequence[str]) -> tuple[dict[str, Summary], Summary] | None:
    if not pieces:
        return None
    last = np.concatenate([p.last_samples[p.keep] for p in pieces])
    score = summarise(np.concatenate([p.scores[p.keep] for p in pieces]))
    return None if score is None else (summarise_columns(last, names), score)


@dataclass(frozen=True)
class Distances:
    """How far a period's summaries are from the baseline: per feature, and for the anomaly score."""

    features: dict[str, float]
    score: float | None


def distances(features: Mapping[str, Summary], score: Summary | None, baseline: Baseline,
              min_count: int) -> Distances:
    """The distance of every summary with at least `min_count` values to the baseline's of the same name (a
    feature the baseline lacks is left out)."""
    judged = {name: distance(s, baseline.features[name]) for name, s in sorted(features.items())
              if s.count >= min_count and name in baseline.features}
    return Distances(judged, distance(score, baseline.score) if score is not None and score.count >= min_count
                     else None)
