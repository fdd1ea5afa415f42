"""The one feature pipeline: raw columns -> feature matrix -> sliding windows.

Pure numpy, row-wise and window-local: a window's features depend only on the samples inside it,
so a training-length series and the detector's ring buffer give bit-identical windows (no
series-length-dependent step such as the seed's whole-column wavelet denoising, seed-spec §7.2.4).
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
    """Roll, pitch, yaw in radians (ZYX convention, seed-spec §1.2 step 1)."""
    roll = np.arctan2(2.0 * (w * x + y * z), 1.0 - 2.0 * (x * x + y * y))
    pitch = np.arcsin(np.clip(2.0 * (w * y - z * x), -1.0, 1.0))
    yaw = np.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))
    return roll, pitch, yaw


_EULER_INDEX = {"quaternion_roll": 0, "quaternion_pitch": 1, "quaternion_yaw": 2}
# (w,x,y,z) rows of the factor pairs: wx wz xx yy | yz xy yy zz | wy zx (left factors, then right ones),
# so that one add of the first two quarters of the products gives the sums of roll, yaw and both
# denominators, and the last two give pitch
_FACTORS = np.array([0, 0, 1, 2, 2, 1, 2, 3, 0, 3, 1, 3, 1, 2, 3, 2, 2, 3, 2, 1])


def _constant(value: float) -> np.ndarray:
    """A read-only 0-d float64 array: a ufunc takes it faster than a Python float, same arithmetic."""
    out = np.array(value)
    out.flags.writeable = False
    return out


_ONE, _MINUS_ONE = _constant(1.0), _constant(-1.0)


def euler_rows(q: np.ndarray) -> np.ndarray:
    """(4, N) float64 rows w, x, y, z -> (3, N) roll, pitch, yaw with quaternion_to_euler's arithmetic
    (bit for bit: 2.0 * v is written v + v, both exact), one ufunc call per step for all angles."""
    factors = q.take(_FACTORS, axis=0)
    prod = np.multiply(factors[:10], factors[10:])
    sums = prod[0:4] + prod[4:8]  # wx + yz, wz + xy, xx + yy, yy + zz
    sums += sums
    out = np.empty((3, q.shape[1]))
    den = sums[2:4]
    np.arctan2(sums[0:2], np.subtract(_ONE, den, out=den), out=out[0::2])  # roll, yaw
    sin_pitch = prod[8] - prod[9]  # wy - zx
    sin_pitch += sin_pitch
    np.arcsin(np.minimum(np.maximum(sin_pitch, _MINUS_ONE, out=sin_pitch), _ONE, out=sin_pitch), out=out[1])
    return out


Index = slice | np.ndarray  # a contiguous run of rows is a slice: a view, no gather


def _rows(rows: list[int]) -> Index:
    if rows and rows == list(range(rows[0], rows[0] + len(rows))):
        return slice(rows[0], rows[0] + len(rows))
    return np.array(rows, dtype=np.intp)


@dataclass(frozen=True)
class FeaturePlan:
    """Where each feature comes from, resolved once per spec: a row of the raw input matrix (rows
    in spec.input_columns order) or an Euler angle of one of the spec's quaternions."""

    n_inputs: int
    n_features: int
    raw_dst: Index | None  # feature rows copied from the inputs...
    raw_src: Index  # ...and their input rows
    quaternions: tuple[tuple[Index, Index, Index], ...]  # (w,x,y,z) input rows, angles, their feature rows

    @classmethod
    def of(cls, spec: FeatureSpec) -> FeaturePlan:
        inputs = spec.input_columns
        derived = {d.name: d for d in spec.derived}
        raw: list[tuple[int, int]] = []
        quats: dict[tuple[int, ...], list[tuple[int, int]]] = {}
        for row, name in enumerate(spec.features):
            if name in derived:
                d = derived[name]
                key = tuple(inputs.index(d.inputs[k]) for k in ("w", "x", "y", "z"))
                quats.setdefault(key, []).append((_EULER_INDEX[d.kind], row))
            else:
                raw.append((row, inputs.index(name)))
        return cls(len(inputs), len(spec.features), _rows([r for r, _ in raw]) if raw else None,
                   _rows([c for _, c in raw]),
                   tuple((_rows(list(q)), _rows([a for a, _ in pairs]), _rows([r for _, r in pairs]))
                         for q, pairs in quats.items()))


def feature_rows(raw: np.ndarray, plan: FeaturePlan, out: np.ndarray | None = None) -> np.ndarray:
    """(C, N) float64 raw inputs -> (F, N) features, written into `out` (any float dtype; a float32
    `out` rounds exactly like compute_features' astype) or a new float64 array."""
    if out is None:
        out = np.empty((plan.n_features, raw.shape[1]))
    if plan.raw_dst is not None:
        out[plan.raw_dst] = raw[plan.raw_src]
    for q, angles, dst in plan.quaternions:
        out[dst] = euler_rows(raw[q])[angles]  # float64, rounded once into `out`
    return out


def compute_features(values: Mapping[str, np.ndarray], spec: FeatureSpec) -> np.ndarray:
    """Feature matrix (N, F) in spec.features order, float32; NaN inputs give NaN features."""
    plan = FeaturePlan.of(spec)
    raw = np.array([np.asarray(values[c], dtype=np.float64) for c in spec.input_columns], dtype=np.float64)
    return np.ascontiguousarray(feature_rows(raw.reshape(plan.n_inputs, -1), plan).T, dtype=np.float32)


def segment_bounds(t: np.ndarray, max_gap_s: float) -> list[tuple[int, int]]:
    """[start, stop) index ranges of the runs of samples with no gap longer than max_gap_s."""
    if len(t) == 0:
        return []
    breaks = np.flatnonzero(np.diff(t) > max_gap_s) + 1
    edges = [0, *breaks.tolist(), len(t)]
    return list(pairwise(edges))


def window_starts(t: np.ndarray, spec: FeatureSpec, stride: int | None = None) -> np.ndarray:
    """Start indices of the windows: every `stride` samples from the start of each gap-free run.

    A window never crosses a gap longer than spec.windows.max_gap_s. The detector aligns its
    windows the same way (reset at a gap, first window when its buffer is full, then every stride).
    """
    length = spec.windows.length
    step = stride or spec.windows.stride
    starts = [np.arange(a, b - length + 1, step) for a, b in segment_bounds(t, spec.windows.max_gap_s)
              if b - a >= length]
    return np.concatenate(starts).astype(np.int64) if starts else np.zeros(0, dtype=np.int64)


def make_windows(features: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """Windows as (W, F, L) float32: channel = feature, the layout the model expects."""
    if len(starts) == 0:
        return np.zeros((0, features.shape[1], length), dtype=np.float32)
    view = np.lib.stride_tricks.sliding_window_view(features, length, axis=0)  # (N-L+1, F, L)
    return np.ascontiguousarray(view[starts], dtype=np.float32)


def operating_mask(windows: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """(W,) True for windows the model should score (see FeatureSpec.operating)."""
    if spec.operating is None or len(windows) == 0:
        return np.ones(len(windows), dtype=bool)
    column = windows[:, spec.features.index(spec.operating.feature), :]
    # More than half the samples >= min puts both middle ones there, so the (nan)median too: the
    # usual case, decided by counting (float rounding of the middle pair's mean cannot undo it).
    # ufunc methods, not ndarray.all(): their Python wrappers cost more than the work on a few windows.
    sure = np.add.reduce(np.greater_equal(column, spec.operating.min), axis=1, dtype=np.intp) > column.shape[1] // 2
    if np.logical_and.reduce(sure):
        return sure
    if not np.isnan(np.add.reduce(column, axis=None)):  # no NaN (inf - inf only sends it the slow way)
        return np.asarray(_median(column) >= spec.operating.min)  # nanmedian is far slower on small arrays
    nan = np.isnan(column)
    median = np.full(len(windows), np.inf)  # an entirely missing feature: scored (and flagged as missing)
    partial = ~nan.all(axis=1)
    median[partial] = np.nanmedian(column[partial], axis=1)
    return np.asarray(median >= spec.operating.min)


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
