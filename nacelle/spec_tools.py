"""`nacelle spec check` and `nacelle spec put`: what a dataset allows under a feature spec, and installing
a spec on the local stack.

The check answers before training what the training job would do with the same files and spec: which
files validate, how many samples the windows can use, what the omitted timescales become, folds or
holdout, the autoencoder's data-sized settings, and whether the job would refuse the data.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from shared.errors import ConfigurationError, DataError, NacelleError, SpecError, ValidationFailed
from shared.ml.dataset import DATA_SUFFIXES, LABELS_FILE, TurbineSeries, data_files
from shared.ml.feasibility import Usable, drifting_features, too_little_data, usable
from shared.ml.features import compute_features, segment_bounds
from shared.ml.metrics import faults_from_label_column, load_labels
from shared.ml.spec import FeatureSpec, parse_spec_text
from shared.ml.validation import Frame, ValidationReport, load_frames

MAX_PROBLEMS = 5  # errors listed per failed file
SPEC_SUFFIXES = (".yaml", ".yml", ".json")  # what the data_arrival use case reads under specs/<group>/
# Keys a spec may leave out (their values then follow from sampling.rate_hz and the windows).
DEFAULTABLE = ("sampling.tolerance", "windows.length_s", "windows.stride_s", "windows.max_gap_s", "drift.features",
               "drift.baseline_s", "episodes.open_after_s", "episodes.within_s", "episodes.close_after_s",
               "episodes.missing_tolerance", "episodes.release_ratio", "evaluation.detection_tolerance_s",
               "validation.max_nan_fraction", "validation.max_gap_s", "validation.min_windows")
V1_WINDOW_KEYS = {"length": "length_s", "stride": "stride_s"}  # version 1 gave these in samples


# -- reading the spec ---------------------------------------------------------------------------------
def read_spec(path: Path) -> tuple[FeatureSpec, str]:
    """The parsed spec and its text; SpecError (a usage error) when unreadable or invalid."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read feature spec: {exc}") from exc
    return parse_spec_text(text, str(path)), text


def defaulted_keys(text: str) -> list[str]:
    """The DEFAULTABLE keys the spec text leaves out (its values are then derived)."""
    raw = yaml.safe_load(text)  # already parsed once by parse_spec_text: valid YAML (JSON is YAML)
    given = set()
    for section, value in raw.items():
        if isinstance(value, dict):
            given |= {f"{section}.{V1_WINDOW_KEYS.get(k, k) if section == 'windows' else k}" for k in value}
    return [k for k in DEFAULTABLE if k not in given]


# -- reading the data ---------------------------------------------------------------------------------
@dataclass
class FileResult:
    path: str
    ok: bool
    rows: int
    turbines: list[str]
    errors: int
    warnings: int
    problems: list[str]  # the first MAX_PROBLEMS error messages (each names the file, line or column)

    @classmethod
    def of(cls, path: Path, report: ValidationReport) -> FileResult:
        return cls(str(path), report.ok, report.rows, list(report.turbines), len(report.errors),
                   len(report.warnings), [p.message for p in report.errors[:MAX_PROBLEMS]])


def files_under(data: Path) -> tuple[list[Path], Path]:
    """The data files a training job would read under `data` (a file or a directory), and their root."""
    if not data.exists():
        raise DataError(f"{data}: no such file or directory")
    if data.is_file():
        return [data], data.parent
    files = data_files(data)
    if not files:
        raise DataError(f"no data files ({', '.join(DATA_SUFFIXES)}) under {data}")
    return files, data


def read_files(files: list[Path], root: Path, spec: FeatureSpec) -> tuple[list[FileResult], list[Frame]]:
    """Validate every file; the per-turbine frames of the valid ones. The turbine of a file without a
    turbine id column is its folder's name below the root, else its name up to the first '_' or '.'."""
    results, frames = [], []
    for path in files:
        hint = path.parent.name if path.parent != root else None
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"{path}: cannot read sensor file: {exc}") from exc
        try:
            parts, report = load_frames(data, str(path), spec, turbine_hint=hint)
        except ValidationFailed as exc:
            if not isinstance(exc.report, ValidationReport):
                raise
            results.append(FileResult.of(path, exc.report))
            continue
        results.append(FileResult.of(path, report))
        frames += parts
    return results, frames


def join_frames(frames: list[Frame], spec: FeatureSpec) -> tuple[list[TurbineSeries], list[str]]:
    """One series per turbine (as the training job joins them) and the problems that stop the job."""
    by_turbine: dict[str, list[Frame]] = defaultdict(list)
    for f in frames:
        by_turbine[f.turbine_id].append(f)
    series, problems = [], []
    for turbine, parts in sorted(by_turbine.items()):
        parts = sorted(parts, key=lambda f: float(f.t[0]))
        overlaps = [(a, b) for a, b in pairwise(parts) if b.t[0] <= a.t[-1]]
        if overlaps:
            problems += [f"{b.source}: turbine {turbine} overlaps {a.source} in time" for a, b in overlaps]
            continue
        t = np.concatenate([f.t for f in parts])
        features = np.concatenate([compute_features(f.values, spec) for f in parts])
        faults = [x for f in parts if f.labels is not None for x in faults_from_label_column(turbine, f.t, f.labels)]
        series.append(TurbineSeries(turbine, t, features, [f.source for f in parts], faults))
    return series, problems


def count_labels(data: Path, series: list[TurbineSeries]) -> tuple[int, list[str]]:
    """Labelled faults (labels.json files under a data directory, plus the label column) and label problems."""
    count, problems = sum(len(s.label_faults) for s in series), []
    for path in sorted(data.rglob(LABELS_FILE)) if data.is_dir() else []:
        try:
            count += len(load_labels(path))
        except DataError as exc:
            problems.append(str(exc))
    return count, problems


# -- what the data allows -----------------------------------------------------------------------------
@dataclass
class TurbineResult:
    turbine_id: str
    samples: int
    start: float
    end: float
    rate_hz: float | None  # 1 / median positive sample interval
    gaps: int  # longer than windows.max_gap_s: windows never span them
    longest_gap_s: float | None
    usable: Usable

    @classmethod
    def of(cls, s: TurbineSeries, spec: FeatureSpec) -> TurbineResult:
        d = np.diff(s.t)
        positive = d[d > 0]
        long = d[d > spec.windows.max_gap_s]
        return cls(s.turbine_id, len(s.t), float(s.t[0]), float(s.t[-1]),
                   float(1.0 / np.median(positive)) if positive.size else None, int(long.size),
                   float(long.max()) if long.size else None, usable([s], spec))

    @property
    def duration_s(self) -> float:
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        return {"turbine_id": self.turbine_id, "samples": self.samples, "start": _iso(self.start),
                "end": _iso(self.end), "duration_s": self.duration_s, "rate_hz": self.rate_hz,
                "gaps": self.gaps, "longest_gap_s": self.longest_gap_s, "usable_samples": self.usable.samples,
                "usable_windows": self.usable.windows}


def resolve_drift(spec: FeatureSpec, series: list[TurbineSeries]) -> FeatureSpec:
    """`drift.features: auto` resolved on the data, as the training job does (unchanged without data)."""
    if spec.drift.features is not None or not series:
        return spec
    return spec.with_drift(drifting_features(series, spec))


def settings_of(spec: FeatureSpec, requested: FeatureSpec, defaulted: list[str]) -> dict[str, Any]:
    """The spec's timescales in seconds, samples and windows, after defaults and drift resolution."""
    g, rule, rate = spec.geometry, spec.rule(), spec.sampling.rate_hz
    w, e, v = spec.windows, spec.episodes, spec.validation
    declared = "auto" if requested.drift.features is None else list(requested.drift.features)
    return {
        "sampling": {"rate_hz": rate, "interval_s": 1.0 / rate, "tolerance": spec.sampling.tolerance},
        "windows": {"length_s": w.length_s, "length_samples": g.length, "stride_s": w.stride_s,
                    "stride_samples": g.stride, "max_gap_s": w.max_gap_s, "context_samples": g.context,
                    "total_samples": g.total},
        "drift": {"declared": declared,
                  "features": None if spec.drift.features is None else list(spec.drift.features),
                  "baseline_s": spec.drift.baseline_s, "baseline_samples": round(spec.drift.baseline_s * rate)},
        "episodes": {"open_after_s": e.open_after_s, "within_s": e.within_s, "close_after_s": e.close_after_s,
                     "missing_tolerance": e.missing_tolerance, "release_ratio": e.release_ratio,
                     "k": rule.k, "n": rule.n, "m": rule.m},
        "evaluation": {"detection_tolerance_s": spec.evaluation.detection_tolerance_s},
        "validation": {"max_nan_fraction": v.max_nan_fraction, "max_gap_s": v.max_gap_s,
                       "min_windows": v.min_windows},
        "operating": asdict(spec.operating) if spec.operating else None,
        "turbine_levels": list(spec.turbine_levels),
        "context_features": list(spec.context_features),
        "frozen_behind": spec.hidden_columns,
        "defaulted": list(defaulted),
    }


def stride_windows(series: list[TurbineSeries], spec: FeatureSpec, stride: int) -> int:
    """Windows at `stride` samples over the gap-free runs long enough for one."""
    g = spec.geometry
    return sum((b - a - g.length) // stride + 1 for s in series for a, b in segment_bounds(s.t, g.max_gap_s)
               if b - a >= g.length)


def training_of(series: list[TurbineSeries], spec: FeatureSpec, hp: Any, available: Usable,
                labelled: int) -> dict[str, Any]:
    """What the training job would do: folds or holdout, candidates, the autoencoder's data-sized settings
    (from the windows one fit trains on: before the operating filter and labelled faults, so at most)."""
    from training_jobs.fit import autoencoder_settings
    from training_jobs.selection import threshold_margin

    folds = available.samples < hp.fold_below_samples
    if folds:
        stride, share = hp.train_stride or 1, (hp.folds - 1) / hp.folds
    else:
        stride, share = hp.train_stride or spec.geometry.stride, 1.0 - hp.val_fraction - hp.test_fraction
    windows = min(hp.max_train_windows, math.floor(stride_windows(series, spec, stride) * share))
    return {
        "mode": "folds" if folds else "holdout", "usable_samples": available.samples,
        "fold_below_samples": hp.fold_below_samples, "min_samples": hp.min_samples,
        "folds": hp.folds if folds else None,
        "slices": None if folds else {"train": round(1.0 - hp.val_fraction - hp.test_fraction, 6),
                                      "validation": hp.val_fraction, "test": hp.test_fraction},
        "families": list(hp.candidates),
        "validation_faults": "labelled" if labelled else "injected",
        "threshold_margin": threshold_margin(hp, "folds" if folds else "holdout"),
        "autoencoder": {"train_windows": windows,
                        **autoencoder_settings(hp, windows, spec.n_features, spec.geometry.length)},
    }


@dataclass
class CheckResult:
    spec_source: str
    requested: FeatureSpec
    spec: FeatureSpec  # drift resolved on the valid data
    defaulted: list[str]
    files: list[FileResult]
    problems: list[str]  # beyond single files: overlapping files, unreadable labels
    turbines: list[TurbineResult]
    usable: Usable
    labelled_faults: int
    training: dict[str, Any] | None
    reasons: list[str] = field(default_factory=list)  # why the job would refuse; empty: trainable

    @property
    def trainable(self) -> bool:
        return not self.reasons

    def verdict(self) -> str:
        if self.trainable:
            assert self.training is not None
            return (f"enough data: {self.usable.samples} usable samples (training needs at least "
                    f"{self.training['min_samples']}); the job would use {self.training['mode']}")
        return "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": {"source": self.spec_source, "name": self.requested.name, "version": self.requested.version,
                     "spec_version": self.requested.spec_version, "digest": self.requested.digest()},
            "files": [asdict(f) for f in self.files],
            "problems": list(self.problems),
            "turbines": [t.to_dict() for t in self.turbines],
            "usable": asdict(self.usable),
            "labelled_faults": self.labelled_faults,
            "settings": settings_of(self.spec, self.requested, self.defaulted),
            "training": self.training,
            "verdict": {"trainable": self.trainable, "reasons": list(self.reasons), "summary": self.verdict()},
        }


def check(data: Path, spec_path: Path, hp: Any) -> CheckResult:
    """Validate the files under `data` against the spec, then judge the valid ones as the training job
    would (`hp`: training_jobs.hyperparameters.Hyperparameters)."""
    requested, text = read_spec(spec_path)
    files, root = files_under(data)
    results, frames = read_files(files, root, requested)
    series, problems = join_frames(frames, requested)
    labelled, label_problems = count_labels(data, series)
    problems += label_problems
    spec = resolve_drift(requested, series)
    available = usable(series, spec)
    reasons = []
    failed = [f for f in results if not f.ok]
    if failed:
        reasons.append(f"{len(failed)} of {len(results)} file(s) failed validation (`nacelle train` stops at "
                       "the first invalid file; the stack quarantines them): fix them or move them out of the data")
    reasons += problems
    refusal = too_little_data(available, spec, hp.min_samples)
    if refusal:
        reasons.append(refusal if series else "no valid data to train on")
    training = training_of(series, spec, hp, available, labelled) if series else None
    return CheckResult(str(spec_path), requested, spec, defaulted_keys(text), results, problems,
                       [TurbineResult.of(s, spec) for s in series], available, labelled, training, reasons)


# -- the text report ----------------------------------------------------------------------------------
def _file_format(spec: FeatureSpec) -> str:
    """How a file's cells are read: delimiter, decimal mark, times, the turbine."""
    times = {"iso8601": "ISO 8601 times (UTC without an offset)", "epoch_s": "epoch seconds",
             "epoch_ms": "epoch milliseconds"}[spec.time_format]
    turbine = (f"the turbine from column {spec.turbine_id_column!r}" if spec.turbine_id_column
               else "the turbine from the file's folder (or name)")
    return (f"delimiter {spec.delimiter!r}, decimal {spec.decimal!r}, {times} in {spec.time_column!r}, {turbine}")


def render(result: CheckResult) -> str:
    from nacelle.console import table

    spec = result.requested
    out = [f"spec {spec.name!r} version {spec.version} (format {spec.spec_version}, digest {spec.digest()[:12]}) "
           f"from {result.spec_source}", f"reads       {_file_format(spec)}", "", f"files ({len(result.files)}):"]
    for f in result.files:
        if f.ok:
            out.append(f"  ok      {f.path}: {f.rows} rows, turbine(s) {', '.join(f.turbines) or '-'}, "
                       f"{f.warnings} warning(s)")
        else:
            out.append(f"  FAILED  {f.path}: {f.errors} error(s), {f.warnings} warning(s)")
            out += [f"          {p}" for p in f.problems]
            if f.errors > len(f.problems):
                out.append(f"          ... and {f.errors - len(f.problems)} more")
    out += [f"  problem: {p}" for p in result.problems]
    out.append("")
    if result.turbines:
        gap = f"gaps > {_num(result.spec.windows.max_gap_s)} s"
        out.append("turbines (valid files):")
        out.append(table(["turbine", "samples", "duration", "rate Hz", gap, "longest gap", "usable samples",
                          "usable windows"],
                         [[t.turbine_id, t.samples, _span(t.duration_s), _num(t.rate_hz, 4), t.gaps,
                           _span(t.longest_gap_s) if t.longest_gap_s else "-", t.usable.samples, t.usable.windows]
                          for t in result.turbines]))
        u = result.usable
        out.append(f"total: {u.samples} usable samples, {u.windows} windows in {u.runs - u.short_runs} of {u.runs} "
                   f"gap-free run(s); labelled faults: {result.labelled_faults}")
    else:
        out.append("turbines: none (no valid file)")
    out += ["", *_render_settings(settings_of(result.spec, result.requested, result.defaulted))]
    if result.training:
        out += ["", *_render_training(result.training)]
    out += ["", ("verdict: trainable: " if result.trainable else "verdict: NOT trainable: ") + result.verdict()]
    return "\n".join(out)


def _render_settings(s: dict[str, Any]) -> list[str]:
    defaulted = set(s["defaulted"])

    def src(*keys: str) -> str:
        hits = [k for k in keys if k in defaulted]
        return "" if not hits else "  [default: " + ", ".join(k.split(".")[1] for k in hits) + "]"

    w, d, e, sampling = s["windows"], s["drift"], s["episodes"], s["sampling"]
    samples = f"{w['length_samples']} samples"
    if w["context_samples"]:
        samples += f" (drifting features: against their median over the {w['context_samples']} samples before)"
    if d["features"] is None:
        features = "auto (resolved on the training data; no valid data here)"
    elif d["declared"] == "auto":
        features = f"auto -> {', '.join(d['features']) or 'none'} (on this data)"
    else:
        features = ", ".join(d["features"]) or "none"
    hold = (f"a window stays in alarm down to {e['release_ratio']:.0%} of the threshold" if e["release_ratio"] < 1
            else "a window under the threshold counts as clear (no hysteresis)")
    lines = [
        f"settings (omitted ones derive from sampling.rate_hz = {_num(sampling['rate_hz'])} Hz, "
        f"interval {_seconds(sampling['interval_s'])}):",
        f"  window           {_seconds(w['length_s'])} = {samples}{src('windows.length_s')}",
        f"  stride           {_seconds(w['stride_s'])} = {w['stride_samples']} sample(s){src('windows.stride_s')}",
        f"  window max gap   {_seconds(w['max_gap_s'])} (windows never span a longer gap){src('windows.max_gap_s')}",
        f"  drift features   {features}{src('drift.features')}",
        f"  drift baseline   {_seconds(d['baseline_s'])} = {d['baseline_samples']} samples{src('drift.baseline_s')}",
        f"  episode opens    after {_seconds(e['open_after_s'])} of alarm within {_seconds(e['within_s'])}: "
        f"k = {e['k']} of n = {e['n']} windows{src('episodes.open_after_s', 'episodes.within_s')}",
        f"  episode closes   after {_seconds(e['close_after_s'])} clear: m = {e['m']} windows"
        f"{src('episodes.close_after_s')}",
        f"  while open       {hold}{src('episodes.release_ratio')}",
        f"  missing          a feature missing > {e['missing_tolerance']:.0%} of a window flags it"
        f"{src('episodes.missing_tolerance')}",
        f"  detection        a fault counts as detected when an episode opens before its end + "
        f"{_seconds(s['evaluation']['detection_tolerance_s'])}{src('evaluation.detection_tolerance_s')}",
        f"  validation       gaps up to {_seconds(s['validation']['max_gap_s'])}, NaN up to "
        f"{s['validation']['max_nan_fraction']:.1%} per column, {s['validation']['min_windows']} window(s) per file"
        f"{src('validation.max_gap_s', 'validation.max_nan_fraction', 'validation.min_windows')}",
    ]
    if s["operating"]:
        top = s["operating"].get("max")
        lines.append(f"  operating        windows scored while median {s['operating']['feature']} >= "
                     f"{_num(s['operating']['min'])}" + ("" if top is None else f" and every value < {_num(top)}"))
    if s["turbine_levels"]:
        lines.append(f"  turbine levels   {', '.join(s['turbine_levels'])}: each turbine's against its own level "
                     "in the training data")
    if s["context_features"]:
        lines.append(f"  context          {', '.join(s['context_features'])}: inputs the others are judged by, never "
                     "an alarm by themselves (still flagged when missing or stuck)")
    if s["frozen_behind"]:
        lines.append("  stuck sensors    also seen behind " + ", ".join(
            f"{name} ({column})" for name, column in s["frozen_behind"].items()))
    return lines


def _render_training(t: dict[str, Any]) -> list[str]:
    if t["mode"] == "folds":
        mode = (f"{t['usable_samples']} usable samples < fold_below_samples {t['fold_below_samples']}: "
                f"{t['folds']} blocked time-series folds, then a refit on all data")
    else:
        sl = t["slices"]
        mode = (f"{t['usable_samples']} usable samples >= fold_below_samples {t['fold_below_samples']}: holdout "
                f"train | validation | test = {sl['train']:.0%} | {sl['validation']:.0%} | {sl['test']:.0%} "
                "per turbine")
    ae = t["autoencoder"]
    return ["training:", f"  mode             {mode}",
            f"  families         {', '.join(t['families'])}: each fitted and validated on "
            f"{t['validation_faults']} faults, one chosen",
            f"  threshold        calibrated for the false-alarm target on held-out normal windows, "
            f"x {t['threshold_margin']:g}" + (" (short data)" if t["mode"] == "folds" else ""),
            f"  autoencoder      about {ae['train_windows']} training windows per fit -> batch {ae['batch_size']}, "
            f"epochs {ae['epochs']} (patience {ae['patience']}), latent {ae['latent']}"]


def _num(value: float | None, digits: int = 6) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _seconds(value: float) -> str:
    text = f"{_num(value)} s"
    return text if value < 120 else f"{text} ({_span(value)})"


def _span(seconds: float | None) -> str:
    """12 s, 3 min 20 s, 2 h 05 min, 7 d 0 h."""
    if seconds is None:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{_num(seconds, 3)} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _iso(t: float) -> str:
    return str(np.datetime_as_string(np.datetime64(round(t * 1e6), "us"), unit="s", timezone="UTC"))


# -- spec put -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpecFile:
    path: Path
    spec: FeatureSpec
    data: bytes

    @classmethod
    def read(cls, path: Path) -> SpecFile:
        """A spec file the stack can use; SpecError when it does not parse, ConfigurationError for a name
        the data_arrival use case would not read."""
        if not path.name.endswith(SPEC_SUFFIXES):
            raise ConfigurationError(f"{path}: a spec file name must end with one of {', '.join(SPEC_SUFFIXES)} "
                                     "(the stack reads no other)")
        spec, text = read_spec(path)
        return cls(path, spec, text.encode("utf-8"))

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class Installed:
    key: str
    unchanged: bool  # the same bytes were already installed under this key
    replaced: list[str]  # other spec files removed from the group's folder


def install_spec(store: Any, group: str, spec_file: SpecFile) -> Installed:
    """Install the spec as the group's only one: specs/<group>/<file name> in the local object store
    (`store.path` gives an object's file, to remove the other spec files). Idempotent."""
    if not group or "/" in group:
        raise ConfigurationError(f"--group must be one folder name, got {group!r}")
    key = f"specs/{group}/{spec_file.path.name}"
    others = [o.key for o in store.list(f"specs/{group}/") if o.key != key and o.key.endswith(SPEC_SUFFIXES)]
    unchanged = store.exists(key) and bytes(store.get(key)) == spec_file.data
    if not unchanged:
        kind = "application/json" if key.endswith(".json") else "application/yaml"
        store.put(key, spec_file.data, kind)
    for other in others:  # after the put: the folder never falls back to the default spec
        try:
            store.path(other).unlink(missing_ok=True)
        except OSError as exc:
            raise NacelleError(f"installed {key} but cannot remove {other}: {exc}") from exc
    return Installed(key, unchanged, others)
