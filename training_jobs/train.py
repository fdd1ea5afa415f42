"""Training job entry point: `python -m training_jobs.train` under the SageMaker contract.

Reads the train channel (sensor CSV files and labels.json), the optional spec, validation and
champion channels; writes the model bundle to SM_MODEL_DIR, the report and evaluation to
SM_OUTPUT_DATA_DIR, metrics as `name=value` lines, and a short reason to the failure file on error.

The job resolves the spec's automatic choices (drifting features), refuses data too short for its
windows, fits each candidate family the rule could still pick on held-out splits
(training_jobs.selection), calibrates one threshold per candidate, picks one by the documented rule,
and scores the chosen model (and the champion) on the same held-out data for the quality gate.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import traceback
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from shared.errors import BundleError, NacelleError, TrainingError
from shared.ml.bundle import BUNDLE_FORMAT_VERSION, EVALUATION_FILE
from shared.ml.dataset import TurbineSeries, load_all_labels, load_dataset
from shared.ml.drift import BASELINE_KEY
from shared.ml.feasibility import drifting_features, too_little_data, usable
from shared.ml.levels import at_turbine_level, relevel, turbine_offsets
from shared.ml.metrics import Allowance, Fault, hard_examples, headline
from shared.ml.spec import FeatureSpec, default_spec, load_spec
from shared.version import code_version
from training_jobs.baseline import drift_baseline
from training_jobs.bundle_io import load_model, save_model_dir
from training_jobs.contract import JobEnvironment, from_environ
from training_jobs.evaluation import Detector, EvalSet, eval_set, evaluate
from training_jobs.field_data import (
    candidate_judge,
    captured_summary,
    champion_detector,
    false_alarm_spans,
    hard_example_report,
    unverified_captures,
)
from training_jobs.fit import Fitted, score_windows
from training_jobs.hyperparameters import Hyperparameters
from training_jobs.model import feature_settings
from training_jobs.onnx_export import INPUT_NAME
from training_jobs.report import write_report
from training_jobs.selection import (
    CHOICE_RULE,
    Candidate,
    choose,
    detector_of,
    fit_family,
    normal_windows,
    plan,
    run_candidates,
)

SPEC_SUFFIXES = (".yaml", ".yml", ".json")
METRIC_KEYS = ("event_f1", "event_precision", "event_recall", "recall_medium_high", "mean_delay_s",
               "point_f1", "point_far", "point_mar", "false_alarms_per_turbine_day")
MAX_LOGGED_TURBINES = 20  # turbines whose level offsets the training log lists (all are in the manifest)


def log(line: str) -> None:
    print(line, flush=True)


def find_spec(env: JobEnvironment) -> FeatureSpec:
    channel = env.channel("spec")
    if channel is None:
        return default_spec()
    files = sorted(p for p in channel.rglob("*") if p.suffix in SPEC_SUFFIXES)
    if len(files) != 1:
        raise TrainingError(f"the spec channel {channel} must hold exactly one spec file "
                            f"({', '.join(SPEC_SUFFIXES)}), found {len(files)}")
    return load_spec(files[0])


def resolve_spec(spec: FeatureSpec, series: list[TurbineSeries]) -> FeatureSpec:
    """The spec the model carries: `drift.features: auto` replaced by the features that drift."""
    if spec.drift.features is not None:
        return spec
    chosen = drifting_features(series, spec)
    log(f"drift.features auto: {list(chosen) or 'none'}"
        + (f" (judged against their median over the {spec.drift.baseline_s:g} s before each window)" if chosen else ""))
    return spec.with_drift(chosen)


def train(env: JobEnvironment) -> dict[str, Any]:
    started = datetime.now(UTC)
    hp = Hyperparameters.from_mapping(env.hyperparameters)
    if hp.threads > 0:
        torch.set_num_threads(hp.threads)
    requested = find_spec(env)
    roots = [env.channels["train"]]
    log(f"job {env.job_name}: spec {requested.name} {requested.version} ({requested.digest()[:12]}), data {roots[0]}, "
        f"{torch.get_num_threads()} thread(s)")
    left_out = unverified_captures(roots)  # captured episodes no operator verdict labels (field_data.py)
    if left_out:
        log(f"left out {len(left_out)} captured episode file(s) that no operator verdict labels")
    series = load_dataset(roots, requested, skip=left_out)
    faults = load_all_labels(roots, series)
    log(f"loaded {sum(len(s.t) for s in series)} samples of {len(series)} turbine(s), "
        f"{len(faults)} labelled fault episode(s)")
    spec = resolve_spec(requested, series)
    offsets = turbine_offsets(series, spec)
    if offsets:
        series = at_turbine_level(series, offsets)
        shown = list(offsets.items())[:MAX_LOGGED_TURBINES]
        more = f"; {len(offsets) - len(shown)} more in the manifest" if len(offsets) > len(shown) else ""
        log("turbine levels (offsets from the fleet's): " + "; ".join(
            f"{turbine} " + ", ".join(f"{spec.features[j]} {row[j]:+.3g}" for j in range(spec.n_features)
                                      if spec.features[j] in spec.turbine_levels)
            for turbine, row in shown) + more)
    g = spec.geometry
    available = usable(series, spec)
    refusal = too_little_data(available, spec, hp.min_samples)
    if refusal:
        raise TrainingError(refusal)
    if spec.context_features:
        log(f"context features (the others are judged by them; never an alarm by themselves): "
            f"{', '.join(spec.context_features)}")
    rule = spec.rule()
    log(f"windows: {g.length} samples ({spec.windows.length_s:g} s) + {g.context} context, stride {g.stride}; "
        f"episodes open at {rule.k} of {rule.n} windows, close after {rule.m}; {available.samples} usable samples")

    the_plan = plan(series, spec, hp, available.samples)
    candidates, validation, skipped = run_candidates(the_plan, spec, faults, hp, log)
    chosen, reason = choose(candidates)
    log(f"chosen: {reason}")
    baseline = drift_baseline(validation, chosen.detectors, spec, _margin(hp, spec), log)
    final, evaluation_set, metrics = _deliver(the_plan.mode, chosen, the_plan.test, validation, spec, faults,
                                              series, hp, env, offsets)
    checked = frozen_checked(spec, final.scorer.prep.frozen_check.flatten().tolist())
    log(f"frozen-sensor check: {checked or 'none'} (the features that never held one value over a training window)")
    per_feature = feature_settings(final.scorer, spec.features)
    log("per feature (tail power, glitch limit): " + ", ".join(
        f"{name} {v['tail_power']:.3g}, {'-' if v['glitch_limit'] is None else format(v['glitch_limit'], '.3g')}"
        for name, v in per_feature.items()))
    threshold = chosen.calibration.threshold
    allowance = Allowance.of(spec)
    evaluation: dict[str, Any] = {
        "candidate": metrics, "champion": None,
        "data": {"turbines": sorted({p.turbine_id for p in evaluation_set.clean}), "labels": metrics["labels"],
                 "mode": the_plan.mode},
        "selection": {"chosen": chosen.family, "reason": reason, "rule": CHOICE_RULE,
                      "candidates": [c.summary() for c in candidates], "skipped": skipped},
    }
    champion_root = env.channel("champion")
    if champion_root is not None:
        evaluation["champion"] = score_champion(champion_root, evaluation_set, spec, allowance, offsets)
    evaluation["data"].update(captured_summary(roots, left_out))
    hard = hard_example_report(false_alarm_spans(roots), series,
                               candidate_judge(the_plan, chosen, detector_of(final, spec, threshold)),
                               champion_detector(champion_root, spec), offsets)
    if hard is not None:  # operators' false-alarm verdicts: the gate reports on them
        evaluation["hard_examples"] = hard
        log((hard_examples(hard) or ("no false-alarm verdict covers the data",))[0])

    scorer = final.scorer
    prep = scorer.prep
    manifest = {
        "format_version": BUNDLE_FORMAT_VERSION,
        "feature_spec": spec.to_dict(),
        "model": {**scorer.describe(), "n_features": spec.n_features, "context": g.context_inputs,
                  "context_step": g.context_step, "length": g.length, "per_feature": per_feature,
                  "inputs": {INPUT_NAME: ["batch", spec.n_features, g.width]},
                  "outputs": {"score": ["batch"], "contributions": ["batch", spec.n_features],
                              "missing": ["batch", spec.n_features]}},
        "normalisation": {"mean": prep.mean.flatten().tolist(), "std": prep.std.flatten().tolist(),
                          **({"turbine_offsets": offsets} if offsets else {})},
        "threshold": {"value": threshold, "calibration": chosen.calibration.to_dict()},
        "episode_rule": rule.to_dict(),
        "metrics": {"headline": headline(metrics), "evaluation": metrics, "history": final.history,
                    "best_epoch": final.best_epoch},
        "selection": evaluation["selection"],
        "lineage": {"dataset_hash": hp.dataset_hash or None, "job_name": env.job_name,
                    "code_version": code_version(), "spec_digest": requested.digest(),
                    "model_spec_digest": spec.digest(), "drift_features": list(spec.drift.features or ()),
                    "turbines": [s.turbine_id for s in series], "files": sum(len(s.sources) for s in series),
                    "samples": int(sum(len(s.t) for s in series)), "usable_samples": available.samples,
                    "mode": the_plan.mode, "started_at": started.isoformat(),
                    "finished_at": datetime.now(UTC).isoformat()},
        "hyperparameters": hp.to_dict(),
        **({BASELINE_KEY: baseline} if baseline is not None else {}),
    }
    save_model_dir(env.model_dir, scorer, manifest)
    for folder in (env.model_dir, env.output_data_dir):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / EVALUATION_FILE).write_text(json.dumps(evaluation, indent=2))
    report = write_report(env.output_data_dir / "report.png", f"{env.job_name}: training report", candidates,
                          chosen.family, final.history, threshold)
    figures = headline(metrics)
    for key in METRIC_KEYS:
        value = figures.get(key)
        log(f"{key}={'nan' if value is None else f'{value:.6g}'}")
    log(f"family={chosen.family}")
    log(f"report={report}")
    return {"headline": figures, "evaluation": evaluation, "report": str(report)}


def _deliver(mode: str, chosen: Candidate, test: list[TurbineSeries], validation: EvalSet, spec: FeatureSpec,
             faults: list[Fault], series: list[TurbineSeries], hp: Hyperparameters, env: JobEnvironment,
             offsets: dict[str, list[float]]) -> tuple[Fitted, EvalSet, dict[str, Any]]:
    """The delivered model, the data the gate judges it on, and its metrics there.

    holdout: the model fitted on the train slice, judged on the test slice (or the validation channel).
    folds: refitted on all data for the median of the folds' best epochs; judged by the folds' models on
    their own blocks, with injected faults at the gate's (full) size."""
    allowance = Allowance.of(spec)
    if mode == "holdout":
        final = chosen.fits[0]
        validation_root = env.channel("validation")
        if validation_root is not None:  # a separate held-out set replaces the test slice
            test = at_turbine_level(load_dataset([validation_root], spec), offsets)
            faults = load_all_labels([validation_root], test)
        test_set = eval_set(test, faults, spec, hp.injection_seed)
        detector = detector_of(final, spec, chosen.calibration.threshold)
        return final, test_set, evaluate(test_set, [detector], allowance)
    margin = hp.label_margin_s if hp.label_margin_s >= 0 else spec.evaluation.detection_tolerance_s
    train_x = normal_windows(series, spec, faults, margin, hp.train_stride or 1, hp.max_train_windows)
    refit = hp
    if chosen.family != "pca":
        epochs = max(1, round(statistics.median(f.best_epoch for f in chosen.fits)))
        refit = replace(hp, epochs=epochs, patience=epochs + 1)
    log(f"refit {chosen.family} on all {len(train_x)} normal windows")
    final = fit_family(chosen.family, spec, train_x, train_x[:0], refit, log, mode)
    if validation.labels == "labelled":
        return final, validation, chosen.validation
    gate_set = eval_set(validation.clean, faults, spec, hp.injection_seed, validation.group)
    return final, gate_set, evaluate(gate_set, chosen.detectors, allowance)


def frozen_checked(spec: FeatureSpec, flags: list[float]) -> list[str]:
    """The features the frozen-sensor check watches, each difference with the input it hides."""
    hidden = spec.hidden_columns
    return [f"{name} (and {hidden[name]} behind it)" if name in hidden else name
            for name, on in zip(spec.features, flags, strict=True) if on]


def _margin(hp: Hyperparameters, spec: FeatureSpec) -> float:
    """How far from a labelled fault a window counts as normal (the hyperparameter, else the spec's tolerance)."""
    return hp.label_margin_s if hp.label_margin_s >= 0 else spec.evaluation.detection_tolerance_s


def score_champion(root: Path, pieces: EvalSet, spec: FeatureSpec, allowance: Allowance,
                   offsets: dict[str, list[float]]) -> dict[str, Any] | None:
    """Score the champion bundle on the candidate's held-out pieces and faults (its own windows, threshold,
    rule and turbine levels; the pieces are at the candidate's, `offsets`)."""
    archives = sorted(root.rglob("model.tar.gz")) or ([root] if (root / "manifest.json").is_file() else [])
    if not archives:
        log(f"champion channel {root} holds no model.tar.gz; skipping the comparison")
        return None
    try:
        champion = load_model(archives[0])
    except BundleError as exc:
        log(f"champion not comparable: {exc}")
        return None
    m = champion.manifest
    if (m.spec.features, m.spec.derived) != (spec.features, spec.derived):
        log(f"champion not comparable: it reads features {list(m.spec.features)}")
        return None
    detector = Detector(m.spec, lambda x: score_windows(champion.scorer, x), m.threshold, m.rule)
    pieces = replace(pieces, clean=relevel(pieces.clean, offsets, m.turbine_offsets),
                     faulty=relevel(pieces.faulty, offsets, m.turbine_offsets))
    metrics = evaluate(pieces, [detector] * (max(pieces.group, default=0) + 1), allowance)
    for key, value in headline(metrics).items():
        log(f"champion_{key}={'nan' if value is None else f'{value:.6g}'}")
    return {"metrics": metrics, "lineage": m.lineage, "family": m.family}


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
