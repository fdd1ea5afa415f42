"""Score windows with a model, run the shared episode rule, and compute the metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.ml.dataset import TurbineSeries, load_all_labels, load_dataset, series_windows
from shared.ml.episodes import Episode, EpisodeRule, run_episodes
from shared.ml.injection import inject_generic
from shared.ml.metrics import Fault, evaluate_episodes, scorable
from shared.ml.spec import FeatureSpec

Scorer = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def torch_scorer(model: torch.nn.Module, batch_size: int = 4096) -> Scorer:
    """(W, F, L) windows -> per-feature (errors, missing), both (W, F) float32."""
    model.eval()

    def score(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        errors, missing = [], []
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                e, m = model(torch.from_numpy(x[i:i + batch_size]))
                errors.append(e.numpy())
                missing.append(m.numpy())
        if not errors:
            n = x.shape[1]
            return np.zeros((0, n), np.float32), np.zeros((0, n), np.float32)
        return np.concatenate(errors), np.concatenate(missing)

    return score


@dataclass
class Scored:
    turbine_id: str
    t: np.ndarray  # every sample time (for point-wise metrics)
    duration_s: float
    t_end: np.ndarray  # window end times
    errors: np.ndarray
    missing: np.ndarray
    operating: np.ndarray


def score_series(series: list[TurbineSeries], spec: FeatureSpec, scorer: Scorer) -> list[Scored]:
    out = []
    for s in series:
        w = series_windows(s, spec)
        errors, missing = scorer(w.x)
        out.append(Scored(s.turbine_id, s.t, s.duration_s, w.t_end, errors, missing, w.operating))
    return out


def detect(scored: list[Scored], thresholds: np.ndarray, rule: EpisodeRule,
           feature_names: list[str]) -> list[Episode]:
    return [ep for s in scored
            for ep in run_episodes(s.turbine_id, rule, thresholds, feature_names, s.t_end, s.errors, s.missing,
                                   s.operating)]


def metrics_for(scored: list[Scored], thresholds: np.ndarray, rule: EpisodeRule,
                feature_names: list[str], faults: list[Fault]) -> dict[str, Any]:
    episodes = detect(scored, thresholds, rule, feature_names)
    coverage = {s.turbine_id: (s.t, s.duration_s) for s in scored}
    return evaluate_episodes(episodes, faults, coverage)


def evaluate(series: list[TurbineSeries], faults: list[Fault], spec: FeatureSpec, scorer: Scorer,
             thresholds: np.ndarray, rule: EpisodeRule, seed: int = 1234) -> dict[str, Any]:
    """Metrics on labelled data, or, without labels, on generic faults injected into a copy.

    Without labels the event metrics come from the injected copy and the false-alarm rate from the
    untouched original, so the quality gate always has numbers.
    """
    names = list(spec.features)
    coverage = {s.turbine_id: (s.t, s.duration_s) for s in series}
    if any(scorable(f, coverage) for f in faults):
        result = metrics_for(score_series(series, spec, scorer), thresholds, rule, names, faults)
        result["labels"] = "labelled"
        return result
    injected, injected_faults = [], []
    for s in series:
        copy, fs = inject_generic(s, seed)
        injected.append(copy)
        injected_faults += fs
    result = metrics_for(score_series(injected, spec, scorer), thresholds, rule, names, injected_faults)
    clean = metrics_for(score_series(series, spec, scorer), thresholds, rule, names, faults)  # real faults: no FA
    result["false_alarms_per_turbine_day"] = clean["false_alarms_per_turbine_day"]
    result["counts"]["false_alarms"] = clean["counts"]["false_alarms"]
    result["labels"] = "injected"
    return result


def evaluate_model_on(model_path: Path, data_dir: Path) -> dict[str, Any]:
    """`nacelle evaluate`: the bundle's own spec, thresholds and rule on a labelled directory.

    No injection here: with no labelled episodes the event and point values are None.
    """
    from training_jobs.bundle_io import load_model  # torch model loading stays out of import time

    model = load_model(model_path)
    m = model.manifest
    series = load_dataset([data_dir], m.spec)
    faults = load_all_labels([data_dir], series)
    scored = score_series(series, m.spec, torch_scorer(model.scoring))
    result = metrics_for(scored, m.thresholds, m.rule, list(m.spec.features), faults)
    if result["event"] is not None:
        keep = ("precision", "recall", "f1", "per_fault", "per_severity", "mean_delay_s")
        result["event"] = {k: result["event"][k] for k in keep}
    return result
