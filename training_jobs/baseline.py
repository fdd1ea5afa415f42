"""The drift baseline the training job stores in the bundle manifest (shared.ml.drift.BASELINE_KEY).

It summarises the held-out normal windows the threshold was calibrated on, scored by the model that calibrated it
(each fold's own model with folds), in the operating regime and away from labelled faults: per feature its value at
each window's last sample, and the anomaly score. These are exactly what the detector summarises each period
(detector/stats.py), with the same code, so the cloud can compare the two (docs/fleet.md "Drift monitoring").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from shared.errors import BundleError
from shared.ml import drift
from shared.ml.dataset import overlaps_fault, series_windows
from shared.ml.spec import FeatureSpec
from training_jobs.evaluation import Detector, EvalSet


def drift_baseline(validation: EvalSet, detectors: Sequence[Detector], spec: FeatureSpec, margin_s: float,
                   log: Callable[[str], None]) -> dict[str, Any] | None:
    """The baseline document, or None (logged) when no held-out normal window is in the operating regime."""
    pieces = []
    for piece, group in zip(validation.clean, validation.group, strict=True):
        w = series_windows(piece, spec)
        if not len(w.t_end):
            continue
        scores = detectors[group].score(w.x)[0]
        keep = w.operating & ~overlaps_fault(w, validation.labelled, margin_s)
        pieces.append(drift.Piece(piece.turbine_id, w.t_end, w.x[:, :, -1], scores, keep))
    try:
        baseline = drift.calibrate(pieces, spec.features, drift.DEFAULT_PERIOD_S, drift.MIN_CHUNK_WINDOWS)
    except BundleError as exc:
        log(f"drift baseline: none ({exc})")
        return None
    tolerances = ", ".join(f"{name} {t:.2f}" for name, t in baseline.tolerance.items())
    log(f"drift baseline: {baseline.windows} held-out windows; tolerances over {baseline.chunks} period(s): "
        f"{tolerances}, score {baseline.score_tolerance:.2f}")
    return baseline.to_dict()
