"""Event-level detection metrics (primary) and point-wise metrics (secondary). Never point-adjusted.

A labelled fault counts as detected when an episode of its turbine OPENS within
[start, end + tolerance] (the spec's evaluation.detection_tolerance_s). An episode that opens inside no
such interval is a false alarm. Event precision counts each detected fault once: detected / (detected +
false alarms), so a fault split into several episodes does not outweigh a false alarm. Point-wise, a
sample is flagged when it lies inside an episode.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.errors import DataError
from shared.ml.episodes import Episode
from shared.unique_keys import unique_keys

if TYPE_CHECKING:
    from shared.ml.spec import FeatureSpec

SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class Fault:
    turbine_id: str
    fault: str
    severity: str
    start: float  # epoch seconds
    end: float


def parse_time(value: str | float) -> float:
    if isinstance(value, int | float):
        return float(value)
    text = value.replace("Z", "+00:00")
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError(f"time {value!r} has no UTC offset")
    return parsed.timestamp()


def load_labels(path: Path) -> list[Fault]:
    """Fault episodes from a labels.json: {"episodes": [{turbine_id, fault, severity, start, end}]}."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a valid labels file ({type(exc).__name__}: {exc})") from exc
    return parse_labels(text, str(path))


def parse_labels(text: str, source: str) -> list[Fault]:
    """parse_labels of a labels.json's text; DataError names the source, the episode and the field."""
    raw = _labels_document(text, source)
    episodes = raw.get("episodes") if isinstance(raw, dict) else raw
    if not isinstance(episodes, list):
        raise DataError(f"{source}: expected {{\"episodes\": [...]}} or a list of episodes")
    return _spans(episodes, f"{source}: episodes")


def parse_false_alarms(text: str, source: str) -> list[Fault]:
    """The spans a labels.json calls normal operation (`false_alarms`: an operator's verdict on an alert)."""
    raw = _labels_document(text, source)
    spans = raw.get("false_alarms", []) if isinstance(raw, dict) else []
    if not isinstance(spans, list):
        raise DataError(f"{source}: false_alarms must be a list of spans")
    return _spans(spans, f"{source}: false_alarms")


def _labels_document(text: str, source: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=unique_keys(
            lambda key: DataError(f"{source}: duplicate key {key!r}")))
    except ValueError as exc:
        raise DataError(f"{source}: not JSON ({exc})") from exc


def _spans(items: list[Any], where_all: str) -> list[Fault]:
    faults = []
    for i, e in enumerate(items):
        where = f"{where_all}[{i}]"
        if not isinstance(e, dict):
            raise DataError(f"{where}: not an object")
        for name in ("turbine_id", "start", "end"):
            if e.get(name) in (None, ""):
                raise DataError(f"{where}: {name} is missing")
        try:
            start, end = parse_time(e["start"]), parse_time(e["end"])
        except (ValueError, TypeError) as exc:
            raise DataError(f"{where}: start/end: {exc}") from exc
        if not (math.isfinite(start) and math.isfinite(end)) or end < start:
            raise DataError(f"{where}: end {e['end']!r} is before start {e['start']!r}")
        faults.append(Fault(turbine_id=str(e["turbine_id"]), fault=str(e.get("fault", "unknown")),
                            severity=str(e.get("severity", "unknown")), start=start, end=end))
    return faults


def faults_from_label_column(turbine_id: str, t: np.ndarray, labels: np.ndarray) -> list[Fault]:
    """Runs of label 1 in a per-row label column become fault episodes."""
    on = np.nan_to_num(labels) > 0.5
    if not on.any():
        return []
    edges = np.diff(np.concatenate([[0], on.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    return [Fault(turbine_id, "labelled", "unknown", float(t[a]), float(t[b]))
            for a, b in zip(starts, stops, strict=True)]


@dataclass(frozen=True)
class Allowance:
    """How long after a fault's onset an episode may open and still detect it (the spec's timescales)."""

    tolerance_s: float  # after the fault's end
    decision_s: float  # the least time the episode rule needs to open (window + open_after_s)

    @classmethod
    def of(cls, spec: FeatureSpec) -> Allowance:
        return cls(spec.evaluation.detection_tolerance_s,
                   spec.geometry.length / spec.sampling.rate_hz + spec.episodes.open_after_s)


def scorable(f: Fault, coverage: dict[str, tuple[np.ndarray, float]], allowance: Allowance) -> bool:
    """A fault counts for recall when the data covers its onset and enough time after it for the rule to
    open an episode (twice the decision time, or up to the end of the detection allowance)."""
    t = coverage.get(f.turbine_id, (np.zeros(0), 0.0))[0]
    needed = min(f.end + allowance.tolerance_s, f.start + 2 * allowance.decision_s)
    return len(t) > 0 and t[0] <= f.start and needed <= t[-1]


def _prf(tp: float, fp: float, fn: float) -> dict[str, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def evaluate_episodes(episodes: list[Episode], faults: list[Fault], coverage: dict[str, tuple[np.ndarray, float]],
                      allowance: Allowance) -> dict[str, Any]:
    """The metrics object of `nacelle evaluate` and evaluation.json.

    `coverage` maps each scored turbine to (its sample timestamps, scored duration in seconds).
    Recall counts the faults whose onset and detection allowance lie inside the scored data; an
    episode that opens during any labelled fault, even one cut by the data's edges, is no false alarm.
    """
    tolerance_s = allowance.tolerance_s
    by_turbine: dict[str, list[Fault]] = defaultdict(list)
    for f in faults:  # every fault, also those cut by the data's edges: an episode they cause is no false alarm
        by_turbine[f.turbine_id].append(f)
    labelled = list(faults)
    faults = [f for f in faults if scorable(f, coverage, allowance)]
    turbine_days = sum(duration for _, duration in coverage.values()) / SECONDS_PER_DAY

    true_alarms = 0
    for ep in episodes:
        if any(f.start <= ep.opened_at <= f.end + tolerance_s for f in by_turbine[ep.turbine_id]):
            true_alarms += 1
    false_alarms = len(episodes) - true_alarms
    result: dict[str, Any] = {
        "event": None, "point": point_metrics(episodes, labelled, coverage),
        "false_alarms_per_turbine_day": false_alarms / turbine_days if turbine_days else None,
        "counts": {"episodes": len(episodes), "false_alarms": false_alarms, "faults": len(faults),
                   "turbine_days": turbine_days},
        "allowance": {"detection_tolerance_s": tolerance_s, "decision_s": allowance.decision_s},
    }
    if not faults:
        return result

    delays: dict[Fault, float] = {}
    for f in faults:
        opened = [ep.opened_at for ep in episodes if ep.turbine_id == f.turbine_id
                  and f.start <= ep.opened_at <= f.end + tolerance_s]
        if opened:
            delays[f] = min(opened) - f.start
    detected = len(delays)  # a fault counts once, however many episodes it opened
    precision = detected / (detected + false_alarms) if detected + false_alarms else 0.0
    recall = detected / len(faults)
    event: dict[str, Any] = {
        "precision": precision, "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "mean_delay_s": float(np.mean(list(delays.values()))) if delays else None,
        "per_fault": _group(faults, delays, lambda f: f.fault),
        "per_severity": _group(faults, delays, lambda f: f.severity),
    }
    result["event"] = event
    return result


def _group(faults: list[Fault], delays: dict[Fault, float], key: Any) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[Fault]] = defaultdict(list)
    for f in faults:
        groups[key(f)].append(f)
    out = {}
    for name, members in sorted(groups.items()):
        hit = [delays[f] for f in members if f in delays]
        out[name] = {"count": len(members), "detected": len(hit), "recall": len(hit) / len(members),
                     "mean_delay_s": float(np.mean(hit)) if hit else None}
    return out


def flagged_samples(t: np.ndarray, episodes: list[Episode]) -> np.ndarray:
    """Per sample: inside an episode, i.e. between its first and its last flagged window's end."""
    return _inside(t, [(e.started_at, e.last_flagged_at) for e in episodes])


def faulty_samples(t: np.ndarray, faults: list[Fault]) -> np.ndarray:
    """Per sample: inside a labelled fault [start, end]."""
    return _inside(t, [(f.start, f.end) for f in faults])


def point_metrics(episodes: list[Episode], faults: list[Fault],
                  coverage: dict[str, tuple[np.ndarray, float]]) -> dict[str, Any]:
    """Per sample, never point-adjusted: predicted = flagged_samples, true = faulty_samples.

    far = FP / (FP + TN) (normal samples flagged), mar = FN / (FN + TP) (faulty samples missed); None
    when there is no normal, respectively no faulty, sample. `confusion` lets callers sum over runs."""
    tp = fp = fn = tn = 0
    for turbine, (t, _) in coverage.items():
        predicted = flagged_samples(t, [e for e in episodes if e.turbine_id == turbine])
        actual = faulty_samples(t, [f for f in faults if f.turbine_id == turbine])
        tp += int(np.sum(predicted & actual))
        fp += int(np.sum(predicted & ~actual))
        fn += int(np.sum(~predicted & actual))
        tn += int(np.sum(~predicted & ~actual))
    return point_summary({"tp": tp, "fp": fp, "fn": fn, "tn": tn})


def point_summary(confusion: dict[str, int]) -> dict[str, Any]:
    tp, fp, fn, tn = (confusion[k] for k in ("tp", "fp", "fn", "tn"))
    out: dict[str, Any] = _prf(tp, fp, fn)
    out["far"] = fp / (fp + tn) if fp + tn else None
    out["mar"] = fn / (fn + tp) if fn + tp else None
    out["confusion"] = dict(confusion)
    return out


def _inside(t: np.ndarray, intervals: list[tuple[float, float]]) -> np.ndarray:
    mask = np.zeros(len(t), dtype=bool)
    for a, b in intervals:
        mask[np.searchsorted(t, a, "left"):np.searchsorted(t, b, "right")] = True
    return mask


def headline(metrics: dict[str, Any]) -> dict[str, float | None]:
    """The figures the quality gate and the registry use, from a full metrics object."""
    event = metrics.get("event") or {}
    severities = (event.get("per_severity") or {})
    mh = [severities[s] for s in ("medium", "high") if s in severities]
    count = sum(g["count"] for g in mh)
    return {
        "event_f1": event.get("f1"), "event_precision": event.get("precision"),
        "event_recall": event.get("recall"),
        "recall_medium_high": sum(g["detected"] for g in mh) / count if count else None,
        "mean_delay_s": event.get("mean_delay_s"),
        "point_f1": (metrics.get("point") or {}).get("f1") if event else None,
        "point_far": (metrics.get("point") or {}).get("far"),
        "point_mar": (metrics.get("point") or {}).get("mar") if event else None,
        "false_alarms_per_turbine_day": metrics.get("false_alarms_per_turbine_day"),
    }


def hard_examples(report: dict[str, Any] | None) -> tuple[str, bool] | None:
    """The sentence on the operators' false alarms, and whether the candidate fires on more of them than the
    champion (a regression). None when no such episode could be scored."""
    if not report or not report.get("episodes"):
        return None
    k, n, champion = int(report["fired"]), int(report["episodes"]), report.get("champion_fired")
    text = f"the candidate fires on {k} of {n} episodes operators called false alarms"
    seen = n - int(report.get("held_out", n))
    if seen:
        text += f" ({seen} of them in its training data)"
    if champion is None:
        return text, False
    if k > int(champion):
        return f"{text}, more than the champion's {int(champion)}", True
    return f"{text}; the champion on {int(champion)}", False
