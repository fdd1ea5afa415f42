"""Per-turbine levels: the spec's `turbine_levels` features, each turbine's taken relative to its own.

Turbines of one fleet differ in level for no fault: a temperature sensor reads two degrees high, one
gearbox runs a little warmer. A fleet model would call the warm one's normal days anomalous, or learn a
range so wide that a real overheating hides in it. Training reads each turbine's level of these
features (the median over its samples in the operating regime) and stores its offset from the fleet's
level (the median of the turbines' levels) in the model; scoring subtracts a turbine's offsets from its
features, the same float32 subtraction in training, `nacelle evaluate` and the edge detector. A turbine
the training never saw keeps its level (offset 0). Unlike a drift baseline, the offset is fixed at
training: a fault that lasts days cannot pull it along.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from shared.ml.bundle import offsets_row
from shared.ml.dataset import TurbineSeries
from shared.ml.injection import source_turbine
from shared.ml.spec import FeatureSpec

Offsets = Mapping[str, Sequence[float]]  # turbine -> one offset per feature (0 outside turbine_levels)


def operating_samples(series: TurbineSeries, spec: FeatureSpec) -> np.ndarray:
    """(N,) the samples whose operating feature lies in the regime (all of them without one)."""
    if spec.operating is None:
        return np.ones(len(series.t), dtype=bool)
    value = series.features[:, spec.features.index(spec.operating.feature)]
    inside = value >= spec.operating.min
    if spec.operating.max is not None:
        inside &= value < spec.operating.max
    return inside


def turbine_offsets(series: Sequence[TurbineSeries], spec: FeatureSpec) -> dict[str, list[float]]:
    """Per turbine, its level minus the fleet's for each `turbine_levels` feature (0 where a turbine has no
    sample of it in the regime); {} when the spec lists none."""
    if not spec.turbine_levels or not series:
        return {}
    columns = [spec.features.index(name) for name in spec.turbine_levels]
    levels = np.full((len(series), len(columns)), np.nan)
    for k, s in enumerate(series):
        rows = s.features[operating_samples(s, spec)][:, columns].astype(np.float64)
        seen = np.isfinite(rows).any(axis=0)
        if seen.any():
            levels[k, seen] = np.nanmedian(rows[:, seen], axis=0)
    with np.errstate(all="ignore"):
        fleet = np.nanmedian(levels, axis=0)
    offsets = np.nan_to_num(levels - fleet, nan=0.0)
    out: dict[str, list[float]] = {}
    for k, s in enumerate(series):
        row = np.zeros(spec.n_features)
        row[columns] = offsets[k]
        out[s.turbine_id] = [float(np.float32(v)) for v in row]
    return out


def at_turbine_level(series: Sequence[TurbineSeries], offsets: Offsets) -> list[TurbineSeries]:
    """The series with each turbine's offsets subtracted (new arrays; the input is left as it was)."""
    if not offsets:
        return list(series)
    return [replace(s, features=s.features - offsets_row(offsets, s.turbine_id, s.features.shape[1]))
            for s in series]


def relevel(series: Sequence[TurbineSeries], current: Offsets, wanted: Offsets) -> list[TurbineSeries]:
    """Series at the `current` offsets moved to the `wanted` ones (a model trained with others: the champion);
    an injected copy counts as its turbine."""
    if dict(current) == dict(wanted):
        return list(series)
    out = []
    for s in series:
        base = source_turbine(s.turbine_id)
        n = s.features.shape[1]
        shift = offsets_row(wanted, base, n) - offsets_row(current, base, n)
        out.append(replace(s, features=s.features - shift) if shift.any() else s)
    return out
