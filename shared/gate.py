"""The quality gate: absolute thresholds, and no regression against the champion on the same data, nor on the
episodes operators called false alarms (hard examples, training_jobs/field_data.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared import settings as defaults
from shared.ml.metrics import hard_examples, headline


@dataclass(frozen=True)
class GatePolicy:
    min_event_f1: float = defaults.GATE_MIN_EVENT_F1
    min_recall_medium_high: float = defaults.GATE_MIN_RECALL_MEDIUM_HIGH
    max_false_alarms_per_day: float = defaults.GATE_MAX_FALSE_ALARMS_PER_DAY
    regression_tolerance: float = defaults.GATE_REGRESSION_TOLERANCE  # the candidate's F1 may trail the champion's
    min_faults: int = defaults.GATE_MIN_FAULTS  # fewer scored faults cannot judge F1 and recall: reported only


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reasons: list[str]
    figures: dict[str, float | None]
    champion_figures: dict[str, float | None] | None = None
    notes: list[str] = field(default_factory=list)
    hard_examples: str | None = None  # "the candidate fires on k of n episodes operators called false alarms ..."


def apply_gate(evaluation: dict[str, Any], policy: GatePolicy) -> GateDecision:
    """`evaluation` is the job's evaluation.json: {"candidate": metrics, "champion": {"metrics": ...} | None}."""
    candidate = evaluation["candidate"]
    figures = headline(candidate)
    reasons: list[str] = []
    counts = candidate.get("counts") or {}
    faults = int(counts.get("faults", 0))
    on = f"on {faults} {candidate.get('labels', 'scored')} fault(s)"

    def check_min(name: str, floor: float) -> None:
        value = figures.get(name)
        if value is None:
            reasons.append(f"{name} is missing (no faults to score)")
        elif value < floor:
            reasons.append(f"{name} {value:.3f} is below the minimum {floor:.3f} ({on}; the model detected "
                           f"too few of them or raised false alarms, see the report)")

    notes = []
    if faults >= policy.min_faults:
        check_min("event_f1", policy.min_event_f1)
        check_min("recall_medium_high", policy.min_recall_medium_high)
    else:
        notes.append(f"only {faults} scored fault(s) (< {policy.min_faults}): F1 and recall are reported, not enforced")
    fa = figures.get("false_alarms_per_turbine_day")
    if fa is None:
        reasons.append("false_alarms_per_turbine_day is missing")
    elif fa > policy.max_false_alarms_per_day:
        days = float(counts.get("turbine_days") or 0.0)
        reasons.append(f"false_alarms_per_turbine_day {fa:.2f} is above the maximum "
                       f"{policy.max_false_alarms_per_day:.2f} ({counts.get('false_alarms', '?')} false alarm(s) in "
                       f"{days:.3g} turbine-day(s) of normal held-out data)")

    champion = evaluation.get("champion")
    champion_figures = headline(champion["metrics"]) if champion else None
    if champion_figures is not None:
        ours, theirs = figures.get("event_f1"), champion_figures.get("event_f1")
        if ours is not None and theirs is not None:
            if ours < theirs - policy.regression_tolerance:
                reasons.append(f"event_f1 {ours:.3f} regresses against the champion's {theirs:.3f} "
                               f"(tolerance {policy.regression_tolerance:.3f})")
            else:
                notes.append(f"event_f1 {ours:.3f} vs champion {theirs:.3f}")
    else:
        notes.append("no champion to compare with")
    hard = hard_examples(evaluation.get("hard_examples"))
    if hard is not None:
        text, regression = hard
        (reasons if regression else notes).append(text)
    return GateDecision(not reasons, reasons, figures, champion_figures, notes, hard[0] if hard else None)
