"""Field data in training: what the turbines' detectors captured (shared/capture.py) and what operators said of it.

* A captured episode file that no operator verdict covers is left out of the data: nobody said whether the detector
  was right, so it is neither normal data nor a labelled fault. A verdict makes it one of the two (data_arrival
  labels the whole file: shared/usecases/capture_labels.py): `fault` keeps all its windows out of the normal data
  and the evaluation counts the fault; `false-alarm` makes it normal operation. Captured normal-operation files
  need no label: they are normal data.
* Hard examples: the spans operators called false alarms (`false_alarms` in labels.json), overlapping ones of a
  turbine merged into one episode. `hard_example_report` says on how many of them with data the candidate opens an
  episode ("fires on k of n"), each judged by a model that did not train on it where the plan has one (the fold
  that held it out; in holdout mode the delivered model, which trained on the train slice only: spans there are
  reported as seen in training), and on how many the champion fires. The quality gate (shared/gate.py) reports the
  sentence and refuses a candidate that fires on more of them than the champion.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shared.capture import EPISODE, CaptureName
from shared.errors import BundleError, DataError
from shared.ml.dataset import LABELS_FILE, TurbineSeries, data_files
from shared.ml.levels import Offsets, relevel
from shared.ml.metrics import Fault, parse_false_alarms, parse_labels
from shared.ml.spec import FeatureSpec
from training_jobs.evaluation import Detector, detect, score_series
from training_jobs.selection import Candidate, Plan

Judge = Callable[[Fault], tuple[Detector, bool]]  # span -> (the model to judge it with, did that model train on it)
MAX_LISTED = 50  # hard examples listed one by one in evaluation.json


def _label_spans(roots: Sequence[Path]) -> tuple[list[Fault], list[Fault]]:
    """(faults, false-alarm spans) of every labels.json under the roots."""
    faults: list[Fault] = []
    normal: list[Fault] = []
    for root in roots:
        for path in sorted(root.rglob(LABELS_FILE)):
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, ValueError) as exc:
                raise DataError(f"{path}: not a valid labels file ({type(exc).__name__}: {exc})") from exc
            faults += parse_labels(text, str(path))
            normal += parse_false_alarms(text, str(path))
    return faults, normal


def captured_episode(path: Path) -> tuple[str, CaptureName] | None:
    """(thing, name) of a file the detector captured around an episode (`.../capture/<thing>/<name>`), else None."""
    name = CaptureName.parse(path.name)
    if name is None or name.kind != EPISODE or path.parent.parent.name != "capture":
        return None
    return path.parent.name, name


def unverified_captures(roots: Sequence[Path]) -> list[Path]:
    """The captured episode files no operator verdict (a fault or a false-alarm span of their turbine) overlaps."""
    faults, normal = _label_spans(roots)
    verdicts = faults + normal
    out = []
    for root in roots:
        for path in data_files(root):
            captured = captured_episode(path)
            if captured is None:
                continue
            thing, name = captured
            if not any(v.turbine_id == thing and v.start <= name.end and name.start <= v.end for v in verdicts):
                out.append(path)
    return out


def false_alarm_spans(roots: Sequence[Path]) -> list[Fault]:
    """What operators called false alarms, overlapping spans of one turbine merged (an alert's own label and the
    label of the data captured around it are one episode)."""
    merged: list[Fault] = []
    for span in sorted(_label_spans(roots)[1], key=lambda f: (f.turbine_id, f.start)):
        last = merged[-1] if merged else None
        if last is not None and last.turbine_id == span.turbine_id and span.start <= last.end:
            merged[-1] = Fault(last.turbine_id, "false-alarm", "none", last.start, max(last.end, span.end))
        else:
            merged.append(Fault(span.turbine_id, "false-alarm", "none", span.start, span.end))
    return merged


def candidate_judge(the_plan: Plan, chosen: Candidate, final: Detector) -> Judge:
    """Folds: the fold model that held the span out (the refitted model trained on everything); holdout: the
    delivered model, which trained on the train slice."""
    def covers(pieces: Sequence[TurbineSeries], span: Fault) -> bool:
        return any(p.turbine_id == span.turbine_id and len(p.t) and p.t[0] <= span.end and span.start <= p.t[-1]
                   for p in pieces)

    def judge(span: Fault) -> tuple[Detector, bool]:
        if the_plan.mode == "folds":
            for k, split in enumerate(the_plan.splits):
                if covers(split.held, span) and not covers(split.train, span):
                    return chosen.detectors[k], False
            return final, True
        return final, covers(the_plan.splits[0].train, span)

    return judge


def fires(detector: Detector, series: TurbineSeries, span: Fault) -> bool | None:
    """Does the model open an episode overlapping the span? None when the data does not cover the span."""
    spec: FeatureSpec = detector.spec
    rate = spec.sampling.rate_hz
    lead = (spec.geometry.total + spec.geometry.stride) / rate + spec.episodes.within_s  # full first windows
    piece = series.between(span.start - lead, span.end + spec.episodes.close_after_s + spec.window_seconds)
    inside = piece.t[(piece.t >= span.start) & (piece.t <= span.end)]
    if len(inside) < spec.geometry.length:
        return None
    episodes = detect(score_series([piece], detector), detector)
    return any(ep.started_at <= span.end and span.start <= ep.last_flagged_at for ep in episodes)


def hard_example_report(spans: Sequence[Fault], series: Sequence[TurbineSeries], judge: Judge,
                        champion: tuple[Detector, Offsets] | None, offsets: Offsets) -> dict[str, Any] | None:
    """evaluation.json's `hard_examples` (None without any false-alarm verdict). `series` are at the candidate's
    turbine levels (`offsets`); `champion`: its detector and its own levels."""
    if not spans:
        return None
    by_turbine = {s.turbine_id: s for s in series}
    rows: list[dict[str, Any]] = []
    without = 0
    for span in spans:
        s = by_turbine.get(span.turbine_id)
        detector, seen = judge(span)
        fired = fires(detector, s, span) if s is not None else None
        if fired is None:
            without += 1
            continue
        rows.append({"turbine_id": span.turbine_id, "start": span.start, "end": span.end, "fired": fired,
                     "seen_in_training": seen,
                     "champion_fired": None if champion is None or s is None
                     else fires(champion[0], relevel([s], offsets, champion[1])[0], span)})
    fired = sum(r["fired"] for r in rows)
    held = [r for r in rows if not r["seen_in_training"]]
    return {
        "episodes": len(rows), "fired": fired, "without_data": without,
        "held_out": len(held), "fired_held_out": sum(r["fired"] for r in held),
        "champion_fired": sum(bool(r["champion_fired"]) for r in rows) if champion is not None else None,
        "spans": rows[:MAX_LISTED],
    }


def champion_detector(root: Path | None, spec: FeatureSpec) -> tuple[Detector, Offsets] | None:
    """The champion bundle of the `champion` channel as a Detector (its own windows, threshold and rule) and its
    turbine levels, when it reads the same features."""
    if root is None:
        return None
    from training_jobs.bundle_io import load_model
    from training_jobs.fit import score_windows

    archives = sorted(root.rglob("model.tar.gz")) or ([root] if (root / "manifest.json").is_file() else [])
    if not archives:
        return None
    try:
        champion = load_model(archives[0])
    except BundleError:
        return None
    m = champion.manifest
    if (m.spec.features, m.spec.derived) != (spec.features, spec.derived):
        return None
    return Detector(m.spec, lambda x: score_windows(champion.scorer, x), m.threshold, m.rule), m.turbine_offsets


def captured_summary(roots: Sequence[Path], left_out: Sequence[Path]) -> dict[str, Any]:
    """What evaluation.json's `data` says of the captured files."""
    episodes = normal = 0
    for root in roots:
        for path in data_files(root):
            name = CaptureName.parse(path.name)
            if name is not None and path.parent.parent.name == "capture":
                episodes += name.kind == EPISODE
                normal += name.kind != EPISODE
    return {"captured_episode_files": episodes, "captured_normal_files": normal,
            "captured_left_out": [str(p.name) for p in left_out][:MAX_LISTED]}
