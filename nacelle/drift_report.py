"""The end of `nacelle demo drift`: false alarms before the drift, under it (the first model) and after the retrained
model reached the turbines, for the drifted turbines and the others; printed as a table and drawn as a PNG.

The denominators are sample time: the periods each turbine's detector summarised for drift monitoring (its stats
periods that drift_monitor judged, each `period_s` long, with the model version that scored them). No fault is
injected in this demo, so every episode is a false alarm. An episode belongs to the phase of its start: after the
retraining when the retrained (or a later) model opened it, under drift when it started after the onset (a drifted
turbine's own, the earliest one for the other turbines), before the drift otherwise; a period to the phase it lies in
(the one the onset falls in to none).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

BEFORE, UNDER, AFTER = "before drift", "under drift (first model)", "after retraining"
PHASES = (BEFORE, UNDER, AFTER)
DRIFTED, OTHERS = "drifted turbines", "other turbines"
HEADERS = ["turbines", "phase", "turbine-hours", "false alarms", "per turbine-hour"]


@dataclass(frozen=True)
class Period:
    """One judged stats period of a turbine (sample time, epoch s)."""

    turbine: str
    start: float
    seconds: float
    model_version: int


@dataclass(frozen=True)
class FalseAlarm:
    turbine: str
    started_at: float  # sample time, epoch s
    model_version: int | None


@dataclass(frozen=True)
class Cell:
    hours: float
    alarms: int

    @property
    def per_hour(self) -> float | None:
        return self.alarms / self.hours if self.hours > 0 else None


def _onset(turbine: str, onsets: Mapping[str, float]) -> float | None:
    """The turbine's drift onset; for the others the earliest one (the same stretch of sample time)."""
    return onsets.get(turbine, min(onsets.values(), default=None))


def period_phase(p: Period, onsets: Mapping[str, float], retrained: int) -> str | None:
    if p.model_version >= retrained:
        return AFTER
    onset = _onset(p.turbine, onsets)
    if onset is None or p.start + p.seconds <= onset:
        return BEFORE
    return UNDER if p.start >= onset else None


def alarm_phase(a: FalseAlarm, onsets: Mapping[str, float], retrained: int) -> str:
    if a.model_version is not None and a.model_version >= retrained:
        return AFTER
    onset = _onset(a.turbine, onsets)
    return UNDER if onset is not None and a.started_at >= onset else BEFORE


def summarise(periods: Iterable[Period], alarms: Iterable[FalseAlarm], onsets: Mapping[str, float],
              retrained: int) -> dict[tuple[str, str], Cell]:
    """(turbine group, phase) -> turbine-hours and false alarms. `onsets`: the drifted turbines' drift starts."""
    hours: dict[tuple[str, str], float] = {}
    counts: dict[tuple[str, str], int] = {}
    for p in periods:
        phase = period_phase(p, onsets, retrained)
        if phase is not None:
            key = (DRIFTED if p.turbine in onsets else OTHERS, phase)
            hours[key] = hours.get(key, 0.0) + p.seconds / 3600
    for a in alarms:
        key = (DRIFTED if a.turbine in onsets else OTHERS, alarm_phase(a, onsets, retrained))
        counts[key] = counts.get(key, 0) + 1
    return {(group, phase): Cell(round(hours.get((group, phase), 0.0), 4), counts.get((group, phase), 0))
            for group in (DRIFTED, OTHERS) for phase in PHASES}


def rows(cells: Mapping[tuple[str, str], Cell]) -> list[list[object]]:
    return [[group, phase, round(c.hours, 2), c.alarms, None if c.per_hour is None else round(c.per_hour, 2)]
            for (group, phase), c in cells.items()]


def back_to_baseline(cells: Mapping[tuple[str, str], Cell]) -> bool:
    """The drifted turbines' false-alarm rate after retraining is no higher than theirs before the drift (with
    some sample time in both phases)."""
    before, after = cells[(DRIFTED, BEFORE)], cells[(DRIFTED, AFTER)]
    if before.per_hour is None or after.per_hour is None:
        return False
    return after.per_hour <= before.per_hour


def plot(periods: list[Period], alarms: list[FalseAlarm], onsets: Mapping[str, float], retrained: int,
         cells: Mapping[tuple[str, str], Cell], path: Path, drift_alerts: Mapping[str, float] | None = None) -> Path:
    """Top: per turbine, its judged periods coloured by model version, its false alarms, the drift onset and the
    drift alert; bottom: false alarms per turbine-hour by phase, drifted turbines beside the others."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    turbines = sorted({p.turbine for p in periods} | {a.turbine for a in alarms})
    t0 = min([p.start for p in periods] + [a.started_at for a in alarms], default=0.0)
    fig, (lanes, bars) = plt.subplots(2, 1, figsize=(11, 3 + 0.5 * len(turbines)),
                                      gridspec_kw={"height_ratios": [max(2, len(turbines)), 3]})
    colours = {True: "#9ecae1", False: "#c7e9c0"}  # first model / retrained
    for y, thing in enumerate(turbines):
        spans = [((p.start - t0) / 60, p.seconds / 60) for p in periods if p.turbine == thing]
        for retrained_model in (False, True):
            mine = [s for s, p in zip(spans, [p for p in periods if p.turbine == thing], strict=True)
                    if (p.model_version >= retrained) == retrained_model]
            if mine:
                lanes.broken_barh(mine, (y - 0.3, 0.6), color=colours[not retrained_model])
        xs = [(a.started_at - t0) / 60 for a in alarms if a.turbine == thing]
        lanes.plot(xs, [y] * len(xs), "|", color="#d62728", markersize=14, markeredgewidth=2)
        if thing in onsets:
            lanes.axvline((onsets[thing] - t0) / 60, ymin=(y + 0.1) / len(turbines), ymax=(y + 0.9) / len(turbines),
                          color="#ff7f0e", linewidth=3)
        if drift_alerts and thing in drift_alerts:
            lanes.plot([(drift_alerts[thing] - t0) / 60], [y + 0.38], "v", color="#ff7f0e", markersize=9)
    lanes.set_yticks(range(len(turbines)), [f"{t} (drifted)" if t in onsets else t for t in turbines])
    lanes.set_xlabel("sample time since the first period (minutes)")
    lanes.set_title("judged periods (blue: first model, green: retrained), false alarms (red), drift onset "
                    "(orange bar) and drift alert (orange triangle)", fontsize=9)
    width = 0.38
    for i, group in enumerate((DRIFTED, OTHERS)):
        values = [cells[(group, phase)].per_hour or 0.0 for phase in PHASES]
        xs = [k + (i - 0.5) * width for k in range(len(PHASES))]
        drawn = bars.bar(xs, values, width, label=group, color=("#d62728", "#7f7f7f")[i])
        bars.bar_label(drawn, labels=[f"{cells[(group, p)].alarms} in {cells[(group, p)].hours:.2f} h"
                                      for p in PHASES], fontsize=8)
    bars.set_xticks(range(len(PHASES)), PHASES)
    bars.set_ylabel("false alarms per turbine-hour")
    bars.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
