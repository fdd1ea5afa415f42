"""Each turbine's recent periods for the operator console's timeline: what its detector scored, period by period, as
the stats messages (turbines/<thing>/stats) summarised it. drift_monitor (shared/usecases/drift.py) keeps them.

One state item per turbine (pk "periods", sk <thing>, shared.records.PeriodHistory) holds its latest KEEP periods,
and never more than MAX_ITEM_BYTES of JSON (the oldest go first), so it stays well inside DynamoDB's 400 KB item.
Each period keeps what the timeline draws (PeriodSummary): the anomaly score's quantiles at SCORE_LEVELS divided by
the threshold of the model version that scored it (read from its compiled manifest, `threshold.value`; the
detector sends raw scores), and per feature its p05, p50, p95 and mean.

Exactly once and O(1) per message: one read of the item and one write conditional on its revision. A period is keyed
by its start and model version (a model swap splits a period in two). A redelivered message changes nothing; a
reordered one takes its place in time order; one older than every kept period of a full item is left out. Two
messages of the same period and version (the detector stopped and resumed within the period) are not merged: the
one with more scored windows is kept (then the later seq), whichever arrives first.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from shared.errors import ConfigurationError
from shared.messages import StatsRow
from shared.ml.drift import LEVELS
from shared.ports import StateStore
from shared.records import PeriodHistory, PeriodSummary, load
from shared.usecases.outcome import Outcome

PERIODS = "periods"  # pk of the turbines' period histories (state table), sk <thing>
KEEP = 48  # periods kept per turbine: a day at the detector's default 30-min period
MAX_ITEM_BYTES = 200_000  # JSON bytes of one history (DynamoDB counts fewer for the same item)
SCORE_LEVELS = (0.05, 0.25, 0.5, 0.75, 0.95)  # the score band: p05-p95, p25-p75 and the median
FEATURE_VALUES = ("p05", "p50", "p95", "mean")  # what a feature keeps, in this order
DIGITS = 6  # significant digits kept
MAX_ATTEMPTS = 20  # optimistic-concurrency retries of the item
_SCORE_INDEX = tuple(LEVELS.index(level) for level in SCORE_LEVELS)
_FEATURE_INDEX = (LEVELS.index(0.05), LEVELS.index(0.5), LEVELS.index(0.95))


def manifest_threshold(manifest: Any) -> float | None:
    """A compiled manifest's threshold on the raw score (`threshold.value`), None when it has no usable one."""
    section = manifest.get("threshold") if isinstance(manifest, dict) else None
    value = section.get("value") if isinstance(section, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


def period_key(start: float, version: int | None) -> str:
    """Sorts by time as text; a swap's two parts of one period differ by version."""
    return f"{start:015.3f}#m{'-' if version is None else version}"


def summary_of(row: StatsRow, threshold: float | None) -> PeriodSummary:
    """What the timeline keeps of one stats row (the message definition checked its shapes and levels)."""
    score: tuple[float, ...] = ()
    if threshold is not None and row.score_count and len(row.score_quantiles) == len(LEVELS):
        score = tuple(_round(row.score_quantiles[i] / threshold) for i in _SCORE_INDEX)
    features = {}
    if len(row.levels) == len(LEVELS):
        features = {name: (*(_round(row.quantiles[name][i]) for i in _FEATURE_INDEX), _round(row.mean[name]))
                    for name in sorted(row.count)}
    return PeriodSummary(start=row.period_start, period_s=row.period_s, model_version=row.model_version,
                         seq=row.seq, windows=row.windows, operating_windows=row.operating_windows,
                         threshold=threshold, score=score, features=features)


def remember_period(state: StateStore, row: StatsRow, threshold: float | None) -> Outcome:
    """The row's period into its turbine's history (idempotent, order-independent; module docstring)."""
    thing, key = row.thing_name, period_key(row.period_start, row.model_version)
    summary = summary_of(row, threshold)
    for _ in range(MAX_ATTEMPTS):
        item = state.get(PERIODS, thing)
        before = load(PeriodHistory, item) or PeriodHistory(thing)
        periods = merged(before.periods, key, summary)
        if periods == dict(before.periods):
            return Outcome("duplicate", f"{thing}: period {key} already kept (or older than every kept one)")
        after = PeriodHistory(thing, periods, before.rev + 1)
        written = (state.put(PERIODS, thing, after.to_item(), if_absent=True) if item is None else
                   state.update_if(PERIODS, thing, after.to_item(), {"rev": before.rev if "rev" in item else None}))
        if written:
            return Outcome("kept", f"{thing}: period {key} kept ({len(periods)} periods)")
    raise ConfigurationError(f"{PERIODS}/{thing}: too much contention after {MAX_ATTEMPTS} attempts")


def merged(periods: Mapping[str, PeriodSummary], key: str, summary: PeriodSummary) -> dict[str, PeriodSummary]:
    """`periods` with `summary` at `key` (the better of two for one key), the newest KEEP within MAX_ITEM_BYTES."""
    kept = dict(periods)
    current = kept.get(key)
    if current is None or _rank(summary) > _rank(current):
        kept[key] = summary
    newest = sorted(kept)[-KEEP:]
    sizes = {k: len(json.dumps(kept[k].to_item(), separators=(",", ":"))) + len(k) + 6 for k in newest}
    total = sum(sizes.values())
    while len(newest) > 1 and total > MAX_ITEM_BYTES:
        total -= sizes[newest.pop(0)]
    return {k: kept[k] for k in newest}


def history(state: StateStore, thing: str) -> list[PeriodSummary]:
    """The turbine's kept periods in time order (oldest first)."""
    record = load(PeriodHistory, state.get(PERIODS, thing))
    return [] if record is None else [p for _, p in sorted(record.periods.items())]


def _rank(p: PeriodSummary) -> tuple[int, int, int]:
    return (p.operating_windows, p.windows, p.seq)


def _round(x: float) -> float:
    return float(f"{x:.{DIGITS}g}")

