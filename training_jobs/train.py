"""Training job entry point: `python -m training_jobs.train` under the SageMaker contract.

Reads the train channel (sensor CSV files and labels.json), the optional spec, validation and
champion channels; writes the model bundle to SM_MODEL_DIR, the report and evaluation to
SM_OUTPUT_DATA_DIR, metrics as `name=value` lines, and a short reason to the failure file on error.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import NacelleError, TrainingError
from shared.ml.bundle import EVALUATION_FILE
from shared.ml.dataset import TurbineSeries, load_all_labels, load_dataset, overlaps_fault, series_windows
from shared.ml.metrics import Fault, headline
from shared.ml.spec import FeatureSpec, default_spec, load_spec
from shared.version import code_version
from training_jobs.bundle_io import load_model, save_model_dir
from training_jobs.contract import JobEnvironment, from_environ
from training_jobs.evaluation import evaluate, torch_scorer
from training_jobs.fit import fit, thresholds_from
from training_jobs.hyperparameters import Hyperparameters
from training_jobs.report import write_report

SPEC_SUFFIXES = (".yaml", ".yml", ".json")
METRIC_KEYS = ("event_f1", "event_precision", "event_recall", "recall_medium_high", "mean_delay_s",
               "point_f1", "false_alarms_per_turbine_day")


def log(line: str) -> None:
    print(line, flush=True)


def find_spec(env: JobEnvironment) -> FeatureSpec:
    channel = env.channel("spec")
    if channel is None:
        return default_spec()
    files = sorted(p for p in channel.rglob("*") if p.suffix in SPEC_SUFFIXES)
    if len(files) != 1:
        raise TrainingError(f"the spec channel must hold exactly one spec file, found {len(files)}")
    return load_spec(files[0])


def chronological_split(series: list[TurbineSeries], hp: Hyperparameters, gap_s: float
                        ) -> dict[str, list[TurbineSeries]]:
    """Per turbine: train | gap | validation | gap | test, in time order (no window spans two parts)."""
    parts: dict[str, list[TurbineSeries]] = {"train": [], "val": [], "test": []}
    for s in series:
        t0, span = float(s.t[0]), s.duration_s
        a = t0 + span * (1 - hp.val_fraction - hp.test_fraction)
        b = t0 + span * (1 - hp.test_fraction)
        parts["train"].append(s.between(t0, a))
        parts["val"].append(s.between(a + gap_s, b))
        parts["test"].append(s.between(b + gap_s, t0 + span + 1.0))
    return parts


def normal_windows(parts: list[TurbineSeries], spec: FeatureSpec, faults: list[Fault], margin_s: float,
                   stride: int | None = None) -> np.ndarray:
    """Operating windows that touch no labelled fault (labels decide what is normal, never a threshold)."""
    chunks = []
    for s in parts:
        w = series_windows(s, spec, stride)
        chunks.append(w.x[w.operating & ~overlaps_fault(w, faults, margin_s)])
    x = np.concatenate(chunks) if chunks else np.zeros((0, spec.n_features, spec.windows.length), np.float32)
    return x


def subsample(x: np.ndarray, limit: int) -> np.ndarray:
    if len(x) <= limit:
        return x
    return x[np.linspace(0, len(x) - 1, limit).astype(np.int64)]


def train(env: JobEnvironment) -> dict[str, Any]:
    started = datetime.now(UTC)
    hp = Hyperparameters.from_mapping(env.hyperparameters)
    spec = find_spec(env)
    roots = [env.channels["train"]]
    log(f"job {env.job_name}: spec {spec.name} {spec.version} ({spec.digest()[:12]}), data {roots[0]}")
    series = load_dataset(roots, spec)
    faults = load_all_labels(roots, series)
    log(f"loaded {sum(len(s.t) for s in series)} samples of {len(series)} turbine(s), "
        f"{len(faults)} labelled fault episode(s)")

    gap_s = spec.window_seconds + spec.windows.max_gap_s
    parts = chronological_split(series, hp, gap_s)
    test_series, test_faults = parts["test"], faults
    validation_root = env.channel("validation")
    if validation_root is not None:  # a separate held-out set replaces the test slice
        test_series = load_dataset([validation_root], spec)
        test_faults = load_all_labels([validation_root], test_series)

    train_x = subsample(normal_windows(parts["train"], spec, faults, hp.label_margin_s,
                                       hp.train_stride or None), hp.max_train_windows)
    val_x = normal_windows(parts["val"], spec, faults, hp.label_margin_s)
    log(f"windows: {len(train_x)} train, {len(val_x)} validation (normal only)")
    result = fit(train_x, val_x, hp, log)
    score = torch_scorer(result.scoring)
    val_errors, _ = score(val_x)
    thresholds = thresholds_from(val_errors, hp.threshold_quantile, hp.threshold_margin)
    rule = hp.rule()

    candidate = evaluate(test_series, test_faults, spec, score, thresholds, rule, hp.injection_seed)
    evaluation: dict[str, Any] = {"candidate": candidate, "champion": None,
                                  "data": {"turbines": [s.turbine_id for s in test_series],
                                           "labels": candidate["labels"]}}
    champion_root = env.channel("champion")
    if champion_root is not None:
        evaluation["champion"] = score_champion(champion_root, test_series, test_faults, hp)

    manifest = {
        "format_version": 1,
        "feature_spec": spec.to_dict(),
        "architecture": {"name": hp.architecture, "channels": hp.channels, "latent": hp.latent,
                         "n_features": spec.n_features, "length": spec.windows.length,
                         "inputs": {"windows": ["batch", spec.n_features, spec.windows.length]},
                         "outputs": {"error": ["batch", spec.n_features],
                                     "missing": ["batch", spec.n_features]}},
        "normalisation": {"mean": result.scoring.mean.flatten().tolist(),
                          "std": result.scoring.std.flatten().tolist()},
        "thresholds": {"values": thresholds.tolist(), "quantile": hp.threshold_quantile,
                       "margin": hp.threshold_margin, "features": list(spec.features)},
        "episode_rule": rule.to_dict(),
        "metrics": {"headline": headline(candidate), "evaluation": candidate,
                    "history": result.history, "best_epoch": result.best_epoch},
        "lineage": {"dataset_hash": hp.dataset_hash or None, "job_name": env.job_name,
                    "code_version": code_version(), "spec_digest": spec.digest(),
                    "turbines": [s.turbine_id for s in series], "files": sum(len(s.sources) for s in series),
                    "samples": int(sum(len(s.t) for s in series)), "train_windows": len(train_x),
                    "started_at": started.isoformat(), "finished_at": datetime.now(UTC).isoformat()},
        "hyperparameters": hp.to_dict(),
    }
    save_model_dir(env.model_dir, result.scoring, manifest)
    for folder in (env.model_dir, env.output_data_dir):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / EVALUATION_FILE).write_text(json.dumps(evaluation, indent=2))
    report = write_report(env.output_data_dir / "report.png", result.history, val_errors, thresholds,
                          list(spec.features), f"{env.job_name}: training report")
    figures = headline(candidate)
    for key in METRIC_KEYS:
        value = figures.get(key)
        log(f"{key}={'nan' if value is None else f'{value:.6g}'}")
    log(f"report={report}")
    return {"headline": figures, "evaluation": evaluation, "report": str(report)}


def score_champion(root: Path, series: list[TurbineSeries], faults: list[Fault],
                   hp: Hyperparameters) -> dict[str, Any] | None:
    """Score the champion bundle on the candidate's test data (same faults, same injection seed)."""
    archives = sorted(root.rglob("model.tar.gz")) or ([root] if (root / "manifest.json").is_file() else [])
    if not archives:
        log(f"champion channel {root} holds no model.tar.gz; skipping the comparison")
        return None
    champion = load_model(archives[0])
    m = champion.manifest
    metrics = evaluate(series, faults, m.spec, torch_scorer(champion.scoring), m.thresholds, m.rule,
                       hp.injection_seed)
    for key, value in headline(metrics).items():
        log(f"champion_{key}={'nan' if value is None else f'{value:.6g}'}")
    return {"metrics": metrics, "lineage": m.lineage}


def main() -> int:
    env = None
    try:
        env = from_environ()
        started = time.perf_counter()
        train(env)
        log(f"train_seconds={time.perf_counter() - started:.2f}")
        return 0
    except Exception as exc:  # the contract: a short reason in the failure file, details in the log
        reason = str(exc) if isinstance(exc, NacelleError) else f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        if env is not None:
            env.output_dir.mkdir(parents=True, exist_ok=True)
            env.failure_file.write_text(reason[:1000])
        print(f"training failed: {reason}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
