"""False alarms before drift, under drift and after retraining on captured data (the field loop's figures; printed by
bench_drift).

Every step is the product's own code: the model is the real training job's (`nacelle train`, training_jobs.train) on
simulator history; scoring and episodes are `nacelle evaluate`'s (training_jobs.evaluation.evaluate_model_on: the
bundle's threshold and episode rule, windows only in the operating regime); the drifts are the simulator's
(nacelle/simulator/drifts.py); the captured data is written the way the detector writes it (detector/capture_csv.py's
spec_csv, shared/capture.py's file names, under capture/<thing>/ as the dataset manifest lays out raw/capture/) as a
reservoir of one-minute normal segments, among those the first model's episodes (with the capture's context) leave
free, as the detector's reservoir does, plus the episode captures around those episodes with an operator's
false-alarm verdict on each (labels as capture_labels.py writes them: the drift is no fault); the retraining is the
same training job on the history plus those captures. Without the verdicts the episode captures stay out of training
and a drift that keeps the first model alarming leaves the reservoir little normal data: measured once, component
replacement 1,034 false alarms per turbine-day under drift, 644 after such a retraining (sensor recalibration 46 -> 0).

Per drift kind, DRIFTED turbines drift from the start; after the drift has developed (RAMP_H), CAPTURE_H hours of
their stream give CAPTURED_SEGMENTS one-minute normal segments each; the EVAL_H hours after that are held out.
CALM turbines never drift. Fault-free throughout.

- false_alarms_per_turbine_day_before_drift: the first model on the calm turbines' EVAL_H hours;
- false_alarms_per_turbine_day_under_drift_<kind>: the first model on the drifted turbines' held-out hours;
- false_alarms_per_turbine_day_after_retrain_<kind> and ..._after_retrain (all kinds): the retrained model on the
  same held-out hours (goal: after <= before);
- false_alarms_per_turbine_day_after_retrain_calm: the retrained model on the calm turbines (what the retraining costs
  the turbines that did not drift).
Each rate is episodes / turbine-days scored; with rates near one a day the counts are small (printed beside them).
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from nacelle.simulator.drifts import DRIFTS, DriftEpisode
from nacelle.simulator.faults import stable_int
from nacelle.simulator.generate import csv_bytes
from nacelle.simulator.physics import TurbineModel
from nacelle.train_runner import run_training_job
from shared.capture import EPISODE, NORMAL, CaptureName
from shared.ml.spec import FeatureSpec, default_spec
from training_jobs.evaluation import evaluate_model_on

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "greengrass_components" / "nacelle.detector" / "src"))
from detector.capture_csv import spec_csv

START = datetime(2026, 3, 2, tzinfo=UTC)
DRIFTED, CALM = 2, 4  # turbines per drift kind, turbines without drift
RAMP_H, CAPTURE_H, EVAL_H = 1.0, 2.0, 6.0
CAPTURED_SEGMENTS, SEGMENT_S = 30, 60.0  # per drifted turbine: 30 one-minute segments of its CAPTURE_H hours
Span = tuple[float, float]  # epoch seconds, start and end
EPISODE_CONTEXT_S = 60.0  # the detector's episodeBeforeSeconds / episodeAfterSeconds (recipe defaults)
EPISODE_MAX_S = 1800.0  # its episodeMaxSeconds


@dataclass(frozen=True)
class Rate:
    episodes: int
    turbine_days: float

    @property
    def per_day(self) -> float:
        return self.episodes / self.turbine_days if self.turbine_days else 0.0

    def __add__(self, other: Rate) -> Rate:
        return Rate(self.episodes + other.episodes, self.turbine_days + other.turbine_days)


def _model(thing: str, kind: str | None) -> TurbineModel:
    model = TurbineModel(thing, stable_int("drift-figures", thing) % 2**31, START)
    if kind is not None:
        model.add_drift(DriftEpisode(thing, kind, START))
    return model


def _write_csv(path: Path, cols: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(csv_bytes(cols))


def capture_segments(cols: dict[str, np.ndarray], thing: str, spec: FeatureSpec, out: Path, count: int,
                     rng: np.random.Generator, busy: list[Span]) -> int:
    """`count` one-minute segments of `cols` picked uniformly among those no episode capture covers (`busy`: the
    first model's episodes with the capture's context around them; the detector's reservoir evicts those), each a
    capture file `out/capture/<thing>/<name>` in the spec's CSV as the detector writes it; returns the files."""
    ts = np.asarray(cols["ts"], dtype=np.float64)
    values = np.column_stack([np.asarray(cols[c], dtype=np.float64) for c in spec.input_columns])
    starts = ts[0] + SEGMENT_S * np.arange(int((ts[-1] - ts[0]) // SEGMENT_S))
    free = np.array([not any(a < s + SEGMENT_S and s < b for a, b in busy) for s in starts.tolist()], dtype=bool)
    starts = starts[free]
    picked = np.sort(rng.choice(len(starts), size=min(count, len(starts)), replace=False))
    for i in picked.tolist():
        inside = (ts >= starts[i]) & (ts < starts[i] + SEGMENT_S)
        name = CaptureName(float(ts[inside][0]), float(ts[inside][-1]), NORMAL, 1)
        path = out / "capture" / thing / name.file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(spec_csv(spec, thing, ts[inside], values[inside]))
    return len(picked)


def capture_false_alarms(cols: dict[str, np.ndarray], thing: str, spec: FeatureSpec, out: Path,
                         busy: list[Span]) -> int:
    """The detector's episode captures of `busy` (overlapping spans merged: consecutive episodes never share samples;
    parts of at most EPISODE_MAX_S) with an operator's false-alarm verdict on each, as capture_labels.py writes it
    (`out/labels/capture/<thing>/<file without .csv>/labels.json`); returns the files."""
    ts = np.asarray(cols["ts"], dtype=np.float64)
    values = np.column_stack([np.asarray(cols[c], dtype=np.float64) for c in spec.input_columns])
    merged: list[list[float]] = []
    for a, b in sorted(busy):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    files = 0
    for a, b in merged:
        for part, lo in enumerate(np.arange(a, b, EPISODE_MAX_S).tolist(), start=1):
            inside = (ts >= lo) & (ts < min(b, lo + EPISODE_MAX_S))
            if inside.sum() < 2:
                continue
            first, last = float(ts[inside][0]), float(ts[inside][-1])
            name = CaptureName(first, last, EPISODE, 1, f"{thing}-{int(a * 1000)}", part)
            path = out / "capture" / thing / name.file_name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(spec_csv(spec, thing, ts[inside], values[inside]))
            label = out / "labels" / "capture" / thing / name.file_name.removesuffix(".csv") / "labels.json"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text(json.dumps({"episodes": [], "false_alarms": [
                {"turbine_id": thing, "start": name.start, "end": name.end}]}))
            files += 1
    return files


def fleet_data(root: Path, spec: FeatureSpec, model_archive: Path) -> tuple[dict[str, Path], Path, int]:
    """Held-out data per condition ("calm", each kind) and the captures folder; returns (held-out dirs, captures,
    captured files)."""
    held: dict[str, Path] = {}
    captures, files = root / "captures", 0
    rng = np.random.default_rng(stable_int("drift-figures", "reservoir") % 2**31)
    for kind in (None, *DRIFTS):
        name = kind or "calm"
        held[name] = root / "held-out" / name
        for k in range(1, (CALM if kind is None else DRIFTED) + 1):
            thing = f"field-{name.replace('_', '-')}-{k}"
            model = _model(thing, kind)
            model.step(RAMP_H * 3600)  # the drift develops (seasonal_temperature ramps over an hour)
            captured = model.step(CAPTURE_H * 3600)
            if kind is not None:
                busy = episode_spans(model_archive, captured, thing, root / "scratch")
                files += capture_segments(captured, thing, spec, captures, CAPTURED_SEGMENTS, rng, busy)
                files += capture_false_alarms(captured, thing, spec, captures, busy)
            _write_csv(held[name] / thing / f"{thing}.csv", model.step(EVAL_H * 3600))
    return held, captures, files


def episode_spans(model_archive: Path, cols: dict[str, np.ndarray], thing: str, scratch: Path) -> list[Span]:
    """What the detector's capture keeps out of the normal reservoir: the first model's episodes on `cols` with the
    capture's default context (EPISODE_CONTEXT_S before the start and after the close)."""
    shutil.rmtree(scratch, ignore_errors=True)
    _write_csv(scratch / thing / f"{thing}.csv", cols)
    episodes = evaluate_model_on(model_archive, scratch)[2]
    return [(e.started_at - EPISODE_CONTEXT_S, (e.closed_at or e.last_flagged_at) + EPISODE_CONTEXT_S)
            for e in episodes]


def false_alarms(model_archive: Path, data: Path) -> Rate:
    """`nacelle evaluate` on fault-free data: every episode is a false alarm."""
    metrics = evaluate_model_on(model_archive, data)[0]
    return Rate(int(metrics["counts"]["episodes"]), float(metrics["counts"]["turbine_days"]))


def retrain(root: Path, history: Path, captures: Path) -> Path:
    """The training job on the history plus the captured data (one channel, as the dataset manifest lists them)."""
    data = root / "retrain-data"
    if not data.is_dir():
        shutil.copytree(history, data)
        shutil.copytree(captures / "capture", data / "capture")
        if (captures / "labels").is_dir():
            shutil.copytree(captures / "labels", data / "labels")
    archive = root / "retrain-job" / "output" / "model.tar.gz"
    if archive.is_file():  # a --workdir kept from an earlier run
        return archive
    job = run_training_job(root / "retrain-job", "bench-drift-retrain", {"train": data}, {"threads": "1"}, echo=None)
    if job.model_archive is None:
        raise SystemExit(f"retraining failed: {job.failure_reason}")
    return job.model_archive


def report(root: Path, model_archive: Path, history: Path) -> bool:
    """Print the figures; True when the goal (after <= before) is met."""
    spec = default_spec()
    held, captures, files = fleet_data(root / "fleet", spec, model_archive)
    print(f"drift_captured_files={files}", flush=True)
    before = false_alarms(model_archive, held["calm"])
    retrained = retrain(root, history, captures)
    under, after = Rate(0, 0.0), Rate(0, 0.0)
    for kind in DRIFTS:
        old, new = false_alarms(model_archive, held[kind]), false_alarms(retrained, held[kind])
        under, after = under + old, after + new
        print(f"false_alarms_per_turbine_day_under_drift_{kind}={old.per_day:.2f} "
              f"({old.episodes} in {old.turbine_days:.2f} turbine-days)")
        print(f"false_alarms_per_turbine_day_after_retrain_{kind}={new.per_day:.2f} "
              f"({new.episodes} in {new.turbine_days:.2f} turbine-days)", flush=True)
    calm_after = false_alarms(retrained, held["calm"])
    print(f"false_alarms_per_turbine_day_before_drift={before.per_day:.2f} "
          f"({before.episodes} in {before.turbine_days:.2f} turbine-days)")
    print(f"false_alarms_per_turbine_day_under_drift={under.per_day:.2f}")
    print(f"false_alarms_per_turbine_day_after_retrain={after.per_day:.2f}")
    print(f"false_alarms_per_turbine_day_after_retrain_calm={calm_after.per_day:.2f} "
          f"({calm_after.episodes} in {calm_after.turbine_days:.2f} turbine-days)", flush=True)
    return after.per_day <= before.per_day

