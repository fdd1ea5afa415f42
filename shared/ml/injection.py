"""Generic fault injection for data without labels (real farm data).

The quality gate always needs numbers: when a held-out segment has no labelled faults, evaluation
injects these generic faults into a copy of it (fixed seed) and counts false alarms on the
untouched original. Magnitudes are relative to each feature's own standard deviation.
"""

from __future__ import annotations

import zlib

import numpy as np

from shared.ml.dataset import TurbineSeries
from shared.ml.metrics import Fault

GENERIC_FAULTS = ("spike", "level_shift", "drift", "stuck_at", "noise_burst", "dropout")
SPACING_S = 360.0  # one injected fault every 6 minutes
LEAD_S = 120.0  # none in the first 2 minutes
DURATION_S = {"spike": 3.0, "level_shift": 60.0, "drift": 120.0, "stuck_at": 60.0,
              "noise_burst": 60.0, "dropout": 30.0}


def inject_generic(series: TurbineSeries, seed: int = 1234) -> tuple[TurbineSeries, list[Fault]]:
    """A copy of the series with generic faults injected, and the faults as labels."""
    rng = np.random.default_rng([seed, zlib.crc32(series.turbine_id.encode())])
    x = series.features.copy()
    t = series.t
    sigma = np.nanstd(x, axis=0)
    sigma[~np.isfinite(sigma) | (sigma == 0)] = 1.0
    faults: list[Fault] = []
    start = float(t[0]) + LEAD_S if len(t) else 0.0
    i = 0
    while len(t) and start + SPACING_S <= t[-1]:
        kind = GENERIC_FAULTS[i % len(GENERIC_FAULTS)]
        feature = int(rng.integers(x.shape[1]))
        a, b = np.searchsorted(t, start), np.searchsorted(t, start + DURATION_S[kind])
        _apply(kind, x[a:b, feature], float(sigma[feature]), rng)
        faults.append(Fault(series.turbine_id, kind, "medium", float(t[a]), float(t[max(b - 1, a)])))
        start += SPACING_S
        i += 1
    return TurbineSeries(series.turbine_id, t, x, series.sources), faults


def _apply(kind: str, segment: np.ndarray, sigma: float, rng: np.random.Generator) -> None:
    n = len(segment)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    if n == 0:
        return
    if kind == "spike":
        segment += sign * 6.0 * sigma
    elif kind == "level_shift":
        segment += sign * 3.0 * sigma
    elif kind == "drift":
        segment += sign * np.linspace(0.0, 4.0 * sigma, n, dtype=np.float32)
    elif kind == "stuck_at":
        segment[:] = segment[0] + sign * 2.0 * sigma
    elif kind == "noise_burst":
        segment += rng.normal(0.0, 3.0 * sigma, n).astype(np.float32)
    elif kind == "dropout":
        segment[:] = np.nan
