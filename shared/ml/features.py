"""The one feature pipeline: raw columns -> feature matrix -> sliding windows.

Pure numpy, row-wise and window-local: a window's features depend only on the samples inside it,
so a training-length series and the detector's ring buffer give bit-identical windows (no
series-length-dependent step such as the seed's whole-column wavelet denoising).
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
    """Roll, pitch, yaw in radians (ZYX convention, as the seed)."""
    roll = np.arctan2(2.0 * (w * x + y * z), 1.0 - 2.0 * (x * x + y * y))
    pitch = np.arcsin(np.clip(2.0 * (w * y - z * x), -1.0, 1.0))
    yaw = np.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))
    return roll, pitch, yaw


_EULER_INDEX = {"quaternion_roll": 0, "quaternion_pitch": 1, "quaternion_yaw": 2}
# (w,x,y,z) rows of the factor pairs: wx wz xx yy wy | yz xy yy zz zx (left factors, then right ones);
# the last right factor is negated first, so one add of the two halves of the products gives the sums
# of roll, yaw, both denominators and pitch (a + (-z)x is a - zx, bit for bit)
_FACTORS = np.array([0, 0, 1, 2, 0, 2, 1, 2, 3, 3, 1, 3, 1, 2, 2, 3, 2, 2, 3, 1])


def _constant(value: float) -> np.ndarray:
    """A read-only 0-d float64 array: a ufunc takes it faster than a Python float, same arithmetic."""
    out = np.array(value)
    out.flags.writeable = False
    return out


_ONE, _MINUS_ONE = _constant(1.0), _constant(-1.0)
try:  # the ufunc behind np.clip: one call instead of maximum + minimum, same values (NaN passes through)
    from numpy._core.umath import clip as _clip  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - numpy < 2
    def _clip(a: np.ndarray, lo: np.ndarray, hi: np.ndarray, out: np.ndarray) -> np.ndarray:
        return np.minimum(np.maximum(a, lo, out=out), hi, out=out)


class EulerBuffers:
    """euler_rows' intermediate arrays for N samples and the views of them it uses, made once: calls
    on the same N (the detector's messages) then allocate and slice nothing."""

    __slots__ = ("den", "factors", "halves", "left", "negated", "nums", "pitch", "prod", "right", "sums")

    def __init__(self, n: int) -> None:
        self.factors = np.empty((20, n))
        self.left, self.right, self.negated = self.factors[:10], self.factors[10:], self.factors[19]
        self.prod = np.empty((10, n))
        self.sums, self.halves = self.prod[:5], self.prod[5:]
        self.nums, self.den, self.pitch = self.sums[0:2], self.sums[2:4], self.sums[4]


def euler_rows(q: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(4, N) float64 rows w, x, y, z -> (3, N) float64 roll, pitch, yaw (into `out` if given) with
    quaternion_to_euler's arithmetic (bit for bit: 2.0 * v is written v + v, both exact), one ufunc
    call per step for all angles."""
    if out is None:
        out = np.empty((3, q.shape[1]))
    _euler(q, EulerBuffers(q.shape[1]), out[0::2], out[1])
    return out


def _euler(q: np.ndarray, b: EulerBuffers, roll_yaw: np.ndarray, pitch: np.ndarray) -> None:
    """euler_rows into float64 rows roll_yaw (2, N) and pitch (N,); `out` arguments positionally, the
    cheaper way to pass them."""
    q.take(_FACTORS, 0, b.factors)
    np.negative(b.negated, b.negated)
    np.multiply(b.left, b.right, b.prod)
    sums = b.sums
    np.add(sums, b.halves, sums)  # wx + yz, wz + xy, xx + yy, yy + zz, wy - zx
    np.add(sums, sums, sums)
    np.arctan2(b.nums, np.subtract(_ONE, b.den, b.den), roll_yaw)  # roll, yaw
    np.arcsin(_clip(b.pitch, _MINUS_ONE, _ONE, b.pitch), pitch)


Index = slice | np.ndarray  # a contiguous run of rows is a slice: a view, no gather
_ALL_ANGLES = slice(0, 3)


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
    # (w,x,y,z) input rows, angles, their feature rows, whether those are roll, pitch, yaw in consecutive rows
    quaternions: tuple[tuple[Index, Index, Index, bool], ...]

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
                   tuple(_quaternion(q, pairs) for q, pairs in quats.items()))


def _quaternion(q: tuple[int, ...], pairs: list[tuple[int, int]]) -> tuple[Index, Index, Index, bool]:
    angles, rows = _rows([a for a, _ in pairs]), _rows([r for _, r in pairs])
    return _rows(list(q)), angles, rows, angles == _ALL_ANGLES and isinstance(rows, slice)


class FeatureScratch:
    """feature_rows' float64 workspace for N samples: the features before their one rounding into a
    float32 `out`, and per quaternion in order its Euler buffers and output rows (None: the general way)."""

    __slots__ = ("euler", "features", "n")

    def __init__(self, plan: FeaturePlan, n: int) -> None:
        self.n = n
        self.features = np.empty((plan.n_features, n))
        self.euler: list[tuple[EulerBuffers, np.ndarray, np.ndarray] | None] = [
            (EulerBuffers(n), self.features[rows][0::2], self.features[rows][1]) if in_order else None
            for _, _, rows, in_order in plan.quaternions]


def feature_rows(raw: np.ndarray, plan: FeaturePlan, out: np.ndarray | None = None,
                 scratch: FeatureScratch | None = None) -> np.ndarray:
    """(C, N) float64 raw inputs -> (F, N) features, written into `out` (any float dtype; a float32
    `out` rounds exactly like compute_features' astype) or a new float64 array. `scratch` (made for
    this plan and N): where the features are built before the one copy into `out`."""
    if scratch is None:
        dst = out = np.empty((plan.n_features, raw.shape[1])) if out is None else out
        euler: list[tuple[EulerBuffers, np.ndarray, np.ndarray] | None] = [None] * len(plan.quaternions)
    else:
        dst, euler = scratch.features, scratch.euler
        if out is None:
            out = np.empty((plan.n_features, raw.shape[1]))
    if plan.raw_dst is not None:
        dst[plan.raw_dst] = raw[plan.raw_src]
    for (q, angles, rows, _), into in zip(plan.quaternions, euler, strict=True):
        if into is None:
            dst[rows] = euler_rows(raw[q])[angles]  # float64, rounded once into `dst`
        else:
            _euler(raw[q], *into)
    if dst is not out:
        out[...] = dst  # float64 -> out's dtype, each value rounded once
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


def make_windows(features: np.ndarray, starts: np.ndarray, offsets: list[int] | np.ndarray) -> np.ndarray:
    """Model inputs as (W, F, len(offsets)) float32: channel = feature, the samples at `offsets` from each
    window's first scored sample (spec.geometry.offsets()); NaN before the first sample of the data."""
    offsets = np.asarray(offsets, dtype=np.int64)
    if len(starts) == 0:
        return np.zeros((0, features.shape[1], len(offsets)), dtype=np.float32)
    rows = np.asarray(starts, dtype=np.int64)[:, None] + offsets[None, :]  # (W, P)
    x = np.ascontiguousarray(features[np.maximum(rows, 0)].transpose(0, 2, 1), dtype=np.float32)
    before = rows < 0
    if before.any():
        x[np.broadcast_to(before[:, None, :], x.shape)] = np.nan
    return x


def operating_mask(windows: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """(W,) True for windows the model should score (see FeatureSpec.operating), judged on the scored
    samples (the last spec.geometry.length of each window)."""
    if spec.operating is None or len(windows) == 0:
        return np.ones(len(windows), dtype=bool)
    column = windows[:, spec.features.index(spec.operating.feature), -spec.geometry.length:]
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
