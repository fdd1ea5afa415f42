"""Score held-out data with a model, run the shared episode rule, and compute the metrics.

One path serves the job's model choice (validation), the quality gate (test), the champion comparison
(the same pieces and faults) and `nacelle evaluate`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.ml.dataset import TurbineSeries, load_all_labels, load_dataset, series_windows
from shared.ml.episodes import Episode, EpisodeRule, run_episodes
from shared.ml.injection import copy_id, inject_generic
from shared.ml.levels import at_turbine_level
from shared.ml.metrics import Allowance, Fault, evaluate_episodes, scorable
from shared.ml.spec import FeatureSpec

ScoreFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
MIN_INJECTED = 20  # injected faults to judge on: more copies of short held-out data until there are
MAX_COPIES = 8


@dataclass(frozen=True)
class Detector:
    """What scoring needs of a model: its spec (windows), its scores, its threshold and rule."""

    spec: FeatureSpec
    score: ScoreFn
    threshold: float
    rule: EpisodeRule


@dataclass
class Scored:
    turbine_id: str
    t: np.ndarray  # every sample time (for point-wise metrics)
    duration_s: float
    t_end: np.ndarray  # window end times
    scores: np.ndarray  # (W,)
    contributions: np.ndarray  # (W, F)
    missing: np.ndarray  # (W, F)
    operating: np.ndarray  # (W,)


@dataclass(frozen=True)
class EvalSet:
    """Held-out pieces and the faults they are judged against: the labelled ones when the pieces hold a
    scorable one, else generic faults injected into copies (the false-alarm rate then comes from the
    untouched pieces). `group[i]`: which model (fold) scores piece i; with injected faults, `faulty_group`
    for the copies (short data gets several copies, each its own pseudo-turbine `<turbine>~<copy>`)."""

    clean: list[TurbineSeries]
    faulty: list[TurbineSeries]
    faults: list[Fault]
    labels: str  # "labelled" | "injected"
    group: list[int]
    labelled: list[Fault]  # the real faults (none scorable when injected: an episode they cause is no false alarm)
    faulty_group: list[int] | None = None  # None: as `group`


def coverage_of(pieces: Sequence[TurbineSeries]) -> dict[str, tuple[np.ndarray, float]]:
    out: dict[str, tuple[np.ndarray, float]] = {}
    for p in pieces:  # pieces of one turbine are disjoint: their coverage adds up
        t, duration = out.get(p.turbine_id, (np.zeros(0), 0.0))
        out[p.turbine_id] = (np.concatenate([t, p.t]), duration + p.duration_s)
    return {k: (np.sort(t), d) for k, (t, d) in out.items()}


def eval_set(pieces: list[TurbineSeries], faults: list[Fault], spec: FeatureSpec, seed: int,
             group: list[int] | None = None, sizes: Sequence[float] = (1.0,)) -> EvalSet:
    """Labelled faults when the pieces hold a scorable one, else injected ones whose magnitudes take
    `sizes` in turn, continued across pieces and copies."""
    group = group if group is not None else [0] * len(pieces)
    allowance = Allowance.of(spec)
    coverage = coverage_of(pieces)
    if any(scorable(f, coverage, allowance) for f in faults):
        return EvalSet(pieces, pieces, faults, "labelled", group, faults)
    copies: list[TurbineSeries] = []
    injected_faults: list[Fault] = []
    copy_group: list[int] = []
    for k in range(MAX_COPIES):
        for piece, g in zip(pieces, group, strict=True):
            source = piece if k == 0 else TurbineSeries(copy_id(piece.turbine_id, k), piece.t, piece.features,
                                                        piece.sources)
            turn = len(injected_faults) % len(sizes)
            copy, fs = inject_generic(source, spec, seed + k, [*sizes[turn:], *sizes[:turn]])
            copies.append(copy)
            injected_faults += fs
            copy_group.append(g)
        if len(injected_faults) >= MIN_INJECTED or not injected_faults:
            break
    return EvalSet(pieces, copies, injected_faults + faults, "injected", group, faults, copy_group)


def score_series(series: Sequence[TurbineSeries], detector: Detector) -> list[Scored]:
    out = []
    for s in series:
        w = series_windows(s, detector.spec)
        scores, contributions, missing = detector.score(w.x)
        out.append(Scored(s.turbine_id, s.t, s.duration_s, w.t_end, scores, contributions, missing, w.operating))
    return out


def detect(scored: Sequence[Scored], detector: Detector) -> list[Episode]:
    spec = detector.spec
    names = list(spec.features)
    return [ep for s in scored
            for ep in run_episodes(s.turbine_id, detector.rule, detector.threshold, names, s.t_end, s.scores,
                                   s.contributions, s.missing, s.operating, spec.regime_feature)]


def _episodes(pieces: list[TurbineSeries], group: list[int], detectors: Sequence[Detector]) -> list[Episode]:
    return [ep for piece, g in zip(pieces, group, strict=True)
            for ep in detect(score_series([piece], detectors[g]), detectors[g])]


def evaluate(es: EvalSet, detectors: Sequence[Detector], allowance: Allowance) -> dict[str, Any]:
    """Metrics of the pieces, each scored by its group's detector."""
    faulty_group = es.group if es.faulty_group is None else es.faulty_group
    result = evaluate_episodes(_episodes(es.faulty, faulty_group, detectors), es.faults, coverage_of(es.faulty),
                               allowance)
    if es.labels == "injected":
        clean = evaluate_episodes(_episodes(es.clean, es.group, detectors), es.labelled, coverage_of(es.clean),
                                  allowance)
        result["false_alarms_per_turbine_day"] = clean["false_alarms_per_turbine_day"]
        result["counts"]["false_alarms"] = clean["counts"]["false_alarms"]
        result["counts"]["clean_episodes"] = clean["counts"]["episodes"]
    result["labels"] = es.labels
    return result


def evaluate_model_on(model_path: Path, data_dir: Path) -> tuple[dict[str, Any], list[Scored], list[Episode],
                                                                 list[Fault], Detector]:
    """`nacelle evaluate`: the bundle's own spec, threshold and rule on a data directory (labels optional,
    never injected): the metrics, the scored windows, the episodes, the labelled faults, the detector."""
    from training_jobs.bundle_io import load_model  # torch model loading stays out of import time
    from training_jobs.fit import score_windows

    model = load_model(model_path)
    m = model.manifest
    detector = Detector(m.spec, lambda x: score_windows(model.scorer, x), m.threshold, m.rule)
    series = at_turbine_level(load_dataset([data_dir], m.spec), m.turbine_offsets)
    faults = load_all_labels([data_dir], series)
    scored = score_series(series, detector)
    episodes = detect(scored, detector)
    result = evaluate_episodes(episodes, faults, coverage_of(series), Allowance.of(m.spec))
    if result["event"] is not None:
        keep = ("precision", "recall", "f1", "per_fault", "per_severity", "mean_delay_s")
        result["event"] = {k: result["event"][k] for k in keep}
    return result, scored, episodes, faults, detector
