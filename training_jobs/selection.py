"""Held-out data, the candidate families, their calibration and the documented choice between them.

Two ways to hold data out, both in time order per turbine:
* "holdout" (enough data): train | validation | test slices with gaps; candidates are fitted on train,
  calibrated and compared on validation; the gate reads test.
* "folds" (short data, below `fold_below_samples` usable samples): K blocked folds; each fold's model
  is fitted on the other blocks and scores its own block, so thresholds are calibrated on every normal
  window. A block is judged with the threshold calibrated on the other blocks (so its false alarms are
  honest); the delivered model is refitted on all data with the threshold of all blocks. Every threshold
  calibrated on folds is widened by SHORT_DATA_MARGIN (hyperparameter `threshold_margin`).

The choice: the highest detection score on the validation faults (labelled, else at least 20 injected
ones at full, half and quarter size in turn: every family finds the full-size ones, the smaller ones
show which family sees a fault while it is still small), the mean of event F1 (are the faults found,
without false episodes) and point F1 (is each fault covered for its duration: a model that catches a
fault's first minutes and then loses it scores low);
candidates within 0.05 of it are ranked by fewer false alarms per turbine-day, then the simpler family
(PCA before the autoencoder): a more complex model must be clearly better on the validation faults.
A family the rule can no longer choose (a simpler one already scores within 0.05 of a perfect detection
score with no false alarm) is not fitted: the choice is the same, the job is shorter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.ml.dataset import TurbineSeries, overlaps_fault, windows_at
from shared.ml.features import make_windows, window_starts
from shared.ml.metrics import Allowance, Fault, headline
from shared.ml.spec import FeatureSpec
from training_jobs.calibration import Calibration, calibrate
from training_jobs.evaluation import Detector, EvalSet, eval_set, evaluate, score_series
from training_jobs.fit import Fitted, fit_autoencoder, fit_pca, score_windows
from training_jobs.hyperparameters import Hyperparameters
from training_jobs.model import FAMILIES

Log = Callable[[str], None]
WINDOW_CHUNK = 65_536  # windows judged at once while choosing the normal ones
DETECTION_TIE = 0.05
VALIDATION_SIZES = (1.0, 0.5, 0.25)  # injected validation faults, times the gate's size
# Short data (folds): minutes of a process show little of its slower variation, and the target rate lies far
# beyond what they can show (the fit extrapolates at most calibration.MAX_EXTRAPOLATION times the data's span).
SHORT_DATA_MARGIN = 1.3
CHOICE_RULE = ("highest validation detection score, the mean of event F1 and point F1; within 0.05 of it, fewer "
               "false alarms per turbine-day, then the "
               "simpler family (pca before conv1d)")


@dataclass
class Split:
    train: list[TurbineSeries]
    held: list[TurbineSeries]


@dataclass
class Plan:
    mode: str  # "holdout" | "folds"
    splits: list[Split]
    test: list[TurbineSeries] = field(default_factory=list)  # holdout only


@dataclass
class Candidate:
    family: str
    fits: list[Fitted]  # one per split
    calibration: Calibration  # on every split's normal held-out windows
    detectors: list[Detector]  # one per split, each with the threshold it is judged with
    validation: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return {"family": self.family, "validation": headline(self.validation),
                "validation_labels": self.validation.get("labels"), "calibration": self.calibration.to_dict(),
                "settings": [f.settings for f in self.fits]}


def plan(series: list[TurbineSeries], spec: FeatureSpec, hp: Hyperparameters, usable_samples: int) -> Plan:
    if usable_samples >= hp.fold_below_samples:
        # no window of a later slice holds a sample of the slice before (a drift baseline's context starts
        # empty at a slice's start and fills as the slice goes on)
        gap_s = spec.window_seconds + spec.geometry.max_gap_s
        train, val, test = [], [], []
        for s in series:
            t0, span = float(s.t[0]), s.duration_s
            a = t0 + span * (1 - hp.val_fraction - hp.test_fraction)
            b = t0 + span * (1 - hp.test_fraction)
            train.append(s.between(t0, a))
            val.append(s.between(a + gap_s, b))
            test.append(s.between(b + gap_s, t0 + span + 1.0))
        return Plan("holdout", [Split(train, val)], test)
    splits = []
    for k in range(hp.folds):
        train, held = [], []
        for s in series:
            edges = np.linspace(float(s.t[0]), float(s.t[-1]) + 1e-6, hp.folds + 1)
            lo, hi = float(edges[k]), float(edges[k + 1])
            held.append(s.between(lo, hi))
            train += [s.between(float(s.t[0]), lo), s.between(hi, float(s.t[-1]) + 1.0)]
        splits.append(Split([p for p in train if len(p.t)], [p for p in held if len(p.t)]))
    return Plan("folds", splits)


def normal_windows(pieces: list[TurbineSeries], spec: FeatureSpec, faults: list[Fault], margin_s: float,
                   stride: int | None = None, limit: int | None = None) -> np.ndarray:
    """Operating windows that touch no labelled fault (labels decide what is normal, never a threshold), in
    time order; beyond `limit`, that many evenly spaced among them. Windows are judged WINDOW_CHUNK at a time
    and only the kept ones are built, so months of data never sit in memory as windows."""
    kept: list[np.ndarray] = []  # per piece: the starts of its normal windows
    for s in pieces:
        starts = window_starts(s.t, spec, stride)
        normal = []
        for i in range(0, len(starts), WINDOW_CHUNK):
            w = windows_at(s, spec, starts[i:i + WINDOW_CHUNK])
            normal.append(starts[i:i + WINDOW_CHUNK][w.operating & ~overlaps_fault(w, faults, margin_s)])
        kept.append(np.concatenate(normal) if normal else starts)
    total = sum(len(k) for k in kept)
    if limit is not None and total > limit:
        pick = np.linspace(0, total - 1, limit).astype(np.int64)  # positions in the time-ordered whole
        first = np.cumsum([0] + [len(k) for k in kept])
        kept = [k[pick[(pick >= a) & (pick < b)] - a] for k, a, b in zip(kept, first[:-1], first[1:], strict=True)]
    g = spec.geometry
    chunks = [make_windows(s.features, k, g.offsets()) for s, k in zip(pieces, kept, strict=True)]
    return np.concatenate(chunks) if chunks else np.zeros((0, spec.n_features, g.width), np.float32)


def normal_segments(pieces: list[TurbineSeries], detector: Detector, faults: list[Fault],
                    margin_s: float) -> list[np.ndarray]:
    """Scores of the held-out windows in time order, split at gaps and around labelled faults; windows
    outside the operating regime score 0 (the episode rule cannot open an episode on them)."""
    out = []
    for scored in score_series(pieces, detector):
        w_start = scored.t_end - detector.spec.window_seconds
        bad = np.zeros(len(scored.t_end), dtype=bool)
        for f in faults:
            if f.turbine_id == scored.turbine_id:
                bad |= (scored.t_end >= f.start - margin_s) & (w_start <= f.end + margin_s)
        values = np.where(scored.operating, scored.scores.astype(np.float64), 0.0)
        breaks = np.flatnonzero(np.diff(scored.t_end) > detector.rule.max_silence_s) + 1
        for part, flags in zip(np.split(values, breaks), np.split(bad, breaks), strict=True):
            edges = np.flatnonzero(np.diff(np.concatenate([[1], flags.astype(np.int8), [1]])))
            out += [part[a:b] for a, b in zip(edges[::2], edges[1::2], strict=True) if b > a]
    return out


def fit_family(family: str, spec: FeatureSpec, train_x: np.ndarray, val_x: np.ndarray, hp: Hyperparameters,
               log: Log, mode: str) -> Fitted:
    """Short data (folds) filters lone bad readings: among a few hundred rows one glitch inflates its feature's
    scale, and two a few seconds apart open an episode. With more data the calibration sees them as part of
    normal operation, and the filter would only reshape rare true extremes (fast vibration)."""
    if family == "pca":
        return fit_pca(spec, train_x, hp, log, glitch_filter=mode == "folds")
    return fit_autoencoder(spec, train_x, val_x, hp, log, glitch_filter=mode == "folds")


def detector_of(fitted: Fitted, spec: FeatureSpec, threshold: float) -> Detector:
    scorer = fitted.scorer
    return Detector(spec, lambda x: score_windows(scorer, x), threshold, spec.rule())


def run_candidates(the_plan: Plan, spec: FeatureSpec, faults: list[Fault], hp: Hyperparameters, log: Log
                   ) -> tuple[list[Candidate], EvalSet, list[dict[str, str]]]:
    """Fit, calibrate and validate every candidate family on the plan's held-out data; also the families
    left unfitted because the choice rule could no longer pick them (family and reason)."""
    margin = hp.label_margin_s if hp.label_margin_s >= 0 else spec.evaluation.detection_tolerance_s
    rule, stride_s = spec.rule(), spec.geometry.stride / spec.sampling.rate_hz
    train_stride = hp.train_stride or (1 if the_plan.mode == "folds" else None)
    held = [p for split in the_plan.splits for p in split.held]
    group = [k for k, split in enumerate(the_plan.splits) for _ in split.held]
    validation = eval_set(held, faults, spec, hp.injection_seed, group, VALIDATION_SIZES)
    sizes = (f" (sized {', '.join(f'{s:g}' for s in VALIDATION_SIZES)} times the gate's, in turn)"
             if validation.labels == "injected" else "")
    log(f"{the_plan.mode}: {len(the_plan.splits)} split(s); validation on {len(held)} held-out piece(s) with "
        f"{len(validation.faults)} {validation.labels} fault(s){sizes}")
    allowance = Allowance.of(spec)
    factor = threshold_margin(hp, the_plan.mode)
    candidates: list[Candidate] = []
    skipped: list[dict[str, str]] = []
    for family in hp.candidates:
        winner = unbeatable(candidates, family)
        if winner is not None:
            reason = (f"{winner.family} scores {detection(winner):.3f} with no false alarm: the choice rule "
                      f"cannot pick {family}")
            log(f"candidate {family}: not fitted ({reason})")
            skipped.append({"family": family, "reason": reason})
            continue
        fits, per_split = [], []
        for k, split in enumerate(the_plan.splits):
            train_x = normal_windows(split.train, spec, faults, margin, train_stride, hp.max_train_windows)
            val_x = normal_windows(split.held, spec, faults, margin, limit=hp.max_train_windows)  # early stopping
            log(f"{family} split {k + 1}/{len(the_plan.splits)}: {len(train_x)} train, {len(val_x)} held-out "
                "normal windows")
            fitted = fit_family(family, spec, train_x, val_x, hp, log, the_plan.mode)
            fits.append(fitted)
            per_split.append(normal_segments(split.held, detector_of(fitted, spec, 1.0), faults, margin))
        every = [s for segments in per_split for s in segments]
        calibration = calibrate(every, rule, stride_s, hp.target_false_alarms_per_day, factor)
        detectors = []
        for k, fitted in enumerate(fits):
            own = calibration
            if len(fits) > 1:  # judge each block with a threshold that never saw it
                others = [s for j, segments in enumerate(per_split) if j != k for s in segments]
                own = calibrate(others, rule, stride_s, hp.target_false_alarms_per_day, factor)
            detectors.append(detector_of(fitted, spec, own.threshold))
        metrics = evaluate(validation, detectors, allowance)
        candidate = Candidate(family, fits, calibration, detectors, metrics)
        figures = headline(metrics)
        log(f"candidate {family}: threshold {calibration.threshold:.4g} ({calibration.method}); validation "
            + ", ".join(f"{k}={_fmt(figures[k])}" for k in ("event_f1", "point_f1", "false_alarms_per_turbine_day")))
        candidates.append(candidate)
    return candidates, validation, skipped


def threshold_margin(hp: Hyperparameters, mode: str) -> float:
    """The factor on every calibrated threshold: hp.threshold_margin, else SHORT_DATA_MARGIN with folds."""
    if hp.threshold_margin > 0:
        return hp.threshold_margin
    return SHORT_DATA_MARGIN if mode == "folds" else 1.0


def detection(c: Candidate) -> float:
    """The validation detection score: the mean of event F1 and point F1."""
    figures = headline(c.validation)
    return ((figures["event_f1"] or 0.0) + (figures["point_f1"] or 0.0)) / 2


def _false_alarms(c: Candidate) -> float:
    value = headline(c.validation)["false_alarms_per_turbine_day"]
    return float("inf") if value is None else value


def _simplicity(family: str) -> int:
    return FAMILIES.index(family) if family in FAMILIES else len(FAMILIES)


def unbeatable(candidates: list[Candidate], family: str) -> Candidate | None:
    """A candidate that CHOICE_RULE prefers to `family` whatever `family` would score: within the tie of a
    perfect detection score (so always a contender), no false alarm (the fewest possible) and simpler."""
    for c in candidates:
        if (detection(c) >= 1.0 - DETECTION_TIE and _false_alarms(c) == 0
                and _simplicity(c.family) < _simplicity(family)):
            return c
    return None


def choose(candidates: list[Candidate]) -> tuple[Candidate, str]:
    """CHOICE_RULE, with the reason in words."""
    best = max(detection(c) for c in candidates)
    contenders = [c for c in candidates if detection(c) >= best - DETECTION_TIE]
    chosen = min(contenders, key=lambda c: (_false_alarms(c), _simplicity(c.family)))
    others = ", ".join(f"{c.family} {detection(c):.3f}" for c in candidates if c is not chosen)
    figures = headline(chosen.validation)
    reason = (f"{chosen.family}: validation detection {detection(chosen):.3f} (event F1 "
              f"{figures['event_f1'] or 0.0:.3f}, point F1 {figures['point_f1'] or 0.0:.3f}), "
              f"{_false_alarms(chosen):.2f} false alarms/turbine-day")
    if others:
        reason += f" (others: {others}; rule: {CHOICE_RULE})"
    return chosen, reason


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"
