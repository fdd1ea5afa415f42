"""The one feature pipeline: raw columns -> feature matrix -> sliding windows.

Pure numpy, row-wise and window-local: a window's features depend only on the samples inside it,
so a training-length series and the detector's ring buffer give bit-identical windows (no
series-length-dependent step such as the seed's whole-column wavelet denoising, seed-spec §7.2.4).
Normalisation and the per-feature error live in the model graph, not here.
"""

from __future__ import annotations

from collections.abc import Mapping
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


def compute_features(values: Mapping[str, np.ndarray], spec: FeatureSpec) -> np.ndarray:
    """Feature matrix (N, F) in spec.features order, float32; NaN inputs give NaN features."""
    derived = {d.name: d for d in spec.derived}
    euler_cache: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    columns: list[np.ndarray] = []
    for name in spec.features:
        if name in derived:
            d = derived[name]
            key = (d.inputs["w"], d.inputs["x"], d.inputs["y"], d.inputs["z"])
            if key not in euler_cache:
                w, x, y, z = (np.asarray(values[c], dtype=np.float64) for c in key)
                euler_cache[key] = quaternion_to_euler(w, x, y, z)
            columns.append(euler_cache[key][_EULER_INDEX[d.kind]])
        else:
            columns.append(np.asarray(values[name], dtype=np.float64))
    return np.stack(columns, axis=1).astype(np.float32)


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
    nan = np.isnan(column)
    if not nan.any():  # the common case; nanmedian is an order of magnitude slower on small arrays
        return np.asarray(np.median(column, axis=1) >= spec.operating.min)
    median = np.full(len(windows), np.inf)  # an entirely missing feature: scored (and flagged as missing)
    partial = ~nan.all(axis=1)
    median[partial] = np.nanmedian(column[partial], axis=1)
    return np.asarray(median >= spec.operating.min)
