"""Generic fault injection for data without labels (real farm data).

The quality gate always needs numbers: when held-out data has no labelled faults, evaluation injects
these generic faults into a copy of it (fixed seed) and counts false alarms on the untouched original.
Durations are in windows of the spec (a 10-minute SCADA fault lasts hours, a 20 Hz one a minute) and
shrink to fit short data; magnitudes are relative to each feature's own scale (for a drifting feature,
its spread within a window, not its drift), times a size factor the caller chooses per fault.
Faults go into the features that may alarm, never into a context feature alone.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from shared.ml.dataset import TurbineSeries
from shared.ml.metrics import Fault
from shared.ml.spec import FeatureSpec

COPY_MARK = "~"  # an injected copy of a turbine's data is scored as the pseudo-turbine `<turbine>~<k>`


def copy_id(turbine_id: str, k: int) -> str:
    """The pseudo-turbine id of the k-th injected copy of a turbine's data."""
    return f"{turbine_id}{COPY_MARK}{k}"


def source_turbine(series_id: str) -> str:
    """The turbine a series belongs to: itself, or the turbine an injected copy (copy_id) was made from."""
    turbine, mark, k = series_id.rpartition(COPY_MARK)
    return turbine if mark and k.isdigit() else series_id

GENERIC_FAULTS = ("level_shift", "drift", "stuck_at", "noise_burst", "dropout")
DURATION_WINDOWS = {"level_shift": 12.0, "drift": 24.0, "stuck_at": 12.0, "noise_burst": 12.0, "dropout": 6.0}
SHRINK_TO = 0.7  # in short data a fault takes at most this share of the room it has
MIN_DECISIONS = 1.5  # ...and at least this many times the rule's decision time, else none is injected


def inject_generic(series: TurbineSeries, spec: FeatureSpec, seed: int = 1234, sizes: Sequence[float] = (1.0,)
                   ) -> tuple[TurbineSeries, list[Fault]]:
    """A copy of the series with generic faults injected, and the faults as labels; the k-th fault's
    magnitude is scaled by sizes[k % len(sizes)].

    The first fault starts once a full window and half a drift baseline lie before it; each leaves room
    after its onset for the episode rule to decide, and the next one waits for the close and the
    detection allowance of the one before."""
    rng = np.random.default_rng([seed, zlib.crc32(series.turbine_id.encode()),
                                 int(series.t[0]) if len(series.t) else 0])
    x = series.features.copy()
    t = series.t
    faults: list[Fault] = []
    if len(t) < 2:
        return TurbineSeries(series.turbine_id, t, x, series.sources), faults
    window_s = spec.geometry.length / spec.sampling.rate_hz
    decision_s = window_s + spec.episodes.open_after_s
    lead_s = spec.window_seconds + spec.context_seconds / 2
    after_s = spec.episodes.close_after_s + spec.evaluation.detection_tolerance_s
    scale = feature_scales(x, spec)
    alarming = np.flatnonzero(spec.alarm_mask)  # a fault in a context feature alone is not one to find
    start, end, i = float(t[0]) + lead_s, float(t[-1]), int(rng.integers(len(GENERIC_FAULTS)))
    while end - start >= 2 * decision_s:
        kind = GENERIC_FAULTS[i % len(GENERIC_FAULTS)]
        duration = min(DURATION_WINDOWS[kind] * window_s, SHRINK_TO * (end - start))
        if duration < MIN_DECISIONS * decision_s:
            break
        feature = int(alarming[rng.integers(len(alarming))])
        a, b = np.searchsorted(t, start), np.searchsorted(t, start + duration)
        if b - a >= 2:
            size = sizes[len(faults) % len(sizes)]
            _apply(kind, x[a:b, feature], float(scale[feature]) * size, rng)
            faults.append(Fault(series.turbine_id, kind, "medium" if size >= 1 else "low", float(t[a]),
                                float(t[b - 1])))
        start += duration + after_s + lead_s
        i += 1
    return TurbineSeries(series.turbine_id, t, x, series.sources), faults


def feature_scales(x: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """(F,) scale per feature: its standard deviation, or for a drifting feature the median spread
    inside a window (so the drift does not inflate it); 1 where it cannot be measured."""
    scale = np.nanstd(x, axis=0).astype(np.float64) if len(x) else np.ones(x.shape[1])
    length = spec.geometry.length
    for j, drifting in enumerate(spec.drift_mask):
        if drifting and len(x) >= 2 * length:
            blocks = x[: len(x) // length * length, j].reshape(-1, length)
            with np.errstate(all="ignore"):
                spreads = np.nanstd(blocks, axis=1)
            spreads = spreads[np.isfinite(spreads)]
            if len(spreads):
                scale[j] = float(np.median(spreads))
    scale[~np.isfinite(scale) | (scale <= 0)] = 1.0
    return scale


def _apply(kind: str, segment: np.ndarray, sigma: float, rng: np.random.Generator) -> None:
    n = len(segment)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    if kind == "level_shift":
        segment += sign * 3.0 * sigma
    elif kind == "drift":
        segment += sign * np.linspace(0.0, 4.0 * sigma, n, dtype=np.float32)
    elif kind == "stuck_at":
        segment[:] = segment[0] + sign * 2.0 * sigma
    elif kind == "noise_burst":
        segment += rng.normal(0.0, 3.0 * sigma, n).astype(np.float32)
    elif kind == "dropout":
        segment[:] = np.nan
