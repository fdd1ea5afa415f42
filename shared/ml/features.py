"""The one feature pipeline: raw columns -> feature matrix -> sliding windows.

Pure numpy, row-wise and window-local: a window's features depend only on the samples inside it,
so a training-length series and the detector's per-message buffer give bit-identical windows (no
series-length-dependent step such as the seed's whole-column wavelet denoising). Training and the
detector call the same functions: feature_matrix, make_windows, operating_mask.
Normalisation and the per-feature error live in the model graph, not here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from shared.ml.spec import FeatureSpec


def quaternion_to_euler(w: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Roll, pitch, yaw in radians (ZYX convention, as the seed). atan2(2a, 1 - 2b) is computed as
    atan2(a, 0.5 - b): halving both arguments is exact in binary floating point, so the angles are the same
    to the bit with fewer array operations."""
    yy = y * y
    roll = np.arctan2(w * x + y * z, 0.5 - (x * x + yy))
    sine = w * y - z * x
    pitch = np.arcsin(np.minimum(np.maximum(sine + sine, -1.0), 1.0))  # np.clip, minus its wrapper's cost
    yaw = np.arctan2(w * z + x * y, 0.5 - (yy + z * z))
    return roll, pitch, yaw


_EULER_INDEX = {"quaternion_roll": 0, "quaternion_pitch": 1, "quaternion_yaw": 2}


@dataclass(frozen=True)
class FeaturePlan:
    """Where each feature comes from, resolved once per spec: a column of the raw input matrix (columns in
    spec.input_columns order), an Euler angle of one of the spec's quaternions, or the difference of two
    columns."""

    n_inputs: int
    n_features: int
    raw: tuple[tuple[int, int], ...]  # (feature, input column) of the features copied from the inputs
    # per quaternion: its (w, x, y, z) input columns and the (feature, angle) pairs taken from it
    quaternions: tuple[tuple[tuple[int, int, int, int], tuple[tuple[int, int], ...]], ...]
    differences: tuple[tuple[int, int, int], ...] = ()  # (feature, value column, reference column)

    @classmethod
    def of(cls, spec: FeatureSpec) -> FeaturePlan:
        inputs = spec.input_columns
        derived = {d.name: d for d in spec.derived}
        raw: list[tuple[int, int]] = []
        quaternions: dict[tuple[int, int, int, int], list[tuple[int, int]]] = {}
        differences: list[tuple[int, int, int]] = []
        for feature, name in enumerate(spec.features):
            d = derived.get(name)
            if d is None:
                raw.append((feature, inputs.index(name)))
            elif d.kind == "difference":
                differences.append((feature, inputs.index(d.inputs["value"]), inputs.index(d.inputs["reference"])))
            else:
                w, x, y, z = (inputs.index(d.inputs[k]) for k in ("w", "x", "y", "z"))
                quaternions.setdefault((w, x, y, z), []).append((feature, _EULER_INDEX[d.kind]))
        return cls(len(inputs), len(spec.features), tuple(raw),
                   tuple((q, tuple(pairs)) for q, pairs in quaternions.items()), tuple(differences))


def feature_matrix(raw: np.ndarray, plan: FeaturePlan) -> np.ndarray:
    """(N, C) float64 raw inputs in spec.input_columns order -> (N, F) float32 features. The one place the
    features are computed (training and the detector both call it), so they agree bit for bit. A value with
    no finite float32 (beyond about 3.4e38, or infinite) is missing, like NaN."""
    out = np.empty((raw.shape[0], plan.n_features), dtype=np.float32)
    for feature, column in plan.raw:
        out[:, feature] = raw[:, column]  # beyond float32: inf (numpy warns once), made NaN below
    for (w, x, y, z), pairs in plan.quaternions:
        angles = quaternion_to_euler(raw[:, w], raw[:, x], raw[:, y], raw[:, z])
        for feature, angle in pairs:
            out[:, feature] = angles[angle]  # float64 -> float32, each value rounded once
    for feature, value, reference in plan.differences:
        out[:, feature] = raw[:, value] - raw[:, reference]  # in float64, rounded once; NaN in either: NaN
    infinite = np.isinf(out)
    if np.logical_or.reduce(infinite, axis=None):
        out[infinite] = np.nan
    return out


def compute_features(values: Mapping[str, np.ndarray], spec: FeatureSpec) -> np.ndarray:
    """Feature matrix (N, F) in spec.features order, float32; NaN inputs give NaN features."""
    raw = np.column_stack([np.asarray(values[c], dtype=np.float64) for c in spec.input_columns])
    return feature_matrix(raw, FeaturePlan.of(spec))


def segment_bounds(t: np.ndarray, max_gap_s: float) -> list[tuple[int, int]]:
    """[start, stop) index ranges of the runs of samples with no gap longer than max_gap_s."""
    if len(t) == 0:
        return []
    breaks = np.flatnonzero(np.diff(t) > max_gap_s) + 1
    edges = [0, *breaks.tolist(), len(t)]
    return list(pairwise(edges))


def window_starts(t: np.ndarray, spec: FeatureSpec, stride: int | None = None) -> np.ndarray:
    """Index of each window's first scored sample: every `stride` samples from the start of each gap-free
    run of at least `length` samples.

    The scored samples never cross a gap longer than spec.windows.max_gap_s; a drift baseline's context
    (the samples before them) may. The detector aligns its windows the same way (reset at a gap, first
    window when the run holds `length` samples, then every stride).
    """
    geometry = spec.geometry
    length = geometry.length
    step = stride or geometry.stride
    starts = [np.arange(a, b - length + 1, step) for a, b in segment_bounds(t, geometry.max_gap_s)
              if b - a >= length]
    return np.concatenate(starts).astype(np.int64) if starts else np.zeros(0, dtype=np.int64)


def make_windows(features: np.ndarray, starts: np.ndarray | list[int], offsets: list[int] | np.ndarray) -> np.ndarray:
    """Model inputs as (W, F, len(offsets)) float32: channel = feature, the samples at `offsets` from each
    window's first scored sample (spec.geometry.offsets()); NaN before the first sample of the data."""
    offsets = np.asarray(offsets, dtype=np.int64)
    if len(starts) == 0:
        return np.zeros((0, features.shape[1], len(offsets)), dtype=np.float32)
    rows = np.add.outer(np.asarray(starts, dtype=np.int64), offsets)  # (W, P)
    before = np.minimum.reduce(rows, axis=None) < 0  # a window reaches before the first sample
    # ndarray.take: the same rows as features[...], at a fraction of fancy indexing's cost on a few windows
    x = np.ascontiguousarray(features.take(np.maximum(rows, 0) if before else rows, axis=0).transpose(0, 2, 1),
                             dtype=np.float32)
    if before:
        x[np.broadcast_to((rows < 0)[:, None, :], x.shape)] = np.nan
    return x


def operating_mask(windows: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """(W,) True for windows the model should score (see FeatureSpec.operating), judged on the scored
    samples (the last spec.geometry.length of each window): the median of the operating feature is at least
    `min` and, when the spec sets `max`, no sample reaches it (a cut-out stops the machine at once: a window
    holding a stop and a restart is not normal operation, while below `min` it idles into it). A window whose
    feature is entirely missing is scored."""
    if spec.operating is None or len(windows) == 0:
        return np.ones(len(windows), dtype=bool)
    column = windows[:, spec.features.index(spec.operating.feature), -spec.geometry.length:]
    inside = _median_at_least(column, spec.operating.min)
    if spec.operating.max is not None:
        inside &= ~np.logical_or.reduce(np.greater_equal(column, spec.operating.max), axis=1)
    return inside


def _median_at_least(column: np.ndarray, level: float) -> np.ndarray:
    """(W,) per row of (W, L): its (nan)median >= level; True for a row without any value."""
    # More than half the samples >= level puts both middle ones there, so the (nan)median too: the
    # usual case, decided by counting (float rounding of the middle pair's mean cannot undo it).
    # ufunc methods, not ndarray.all(): their Python wrappers cost more than the work on a few windows.
    count = np.add.reduce(np.greater_equal(column, level), axis=1, dtype=np.intp)
    sure = count > column.shape[1] // 2
    if np.logical_and.reduce(sure):
        return sure
    if not np.isnan(np.add.reduce(column, axis=None)):  # no NaN (inf - inf only sends it the slow way)
        if not np.logical_or.reduce(count, axis=None):
            return sure  # no sample reaches the level (calm)
        return np.asarray(_median(column) >= level)  # nanmedian is far slower on small arrays
    nan = np.isnan(column)
    median = np.full(len(column), np.inf)
    partial = ~nan.all(axis=1)
    median[partial] = np.nanmedian(column[partial], axis=1)
    return np.asarray(median >= level)


def _median(rows: np.ndarray) -> np.ndarray:
    """np.median(rows, axis=1) without NaN, bit for bit (same partition, same float32 mean of the middle
    pair), minus np.median's per-call overhead, which dominates on the detector's few windows."""
    half = rows.shape[1] // 2
    part = rows.copy()  # the method sorts in place and skips np.partition's wrapper
    if rows.shape[1] % 2:
        part.partition(half, axis=1)
        return part[:, half]
    part.partition((half - 1, half), axis=1)
    return np.asarray((part[:, half - 1] + part[:, half]) / 2)
