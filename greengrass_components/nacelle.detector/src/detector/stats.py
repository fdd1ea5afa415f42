"""Drift statistics of what the detector scores: one `turbines/<thing>/stats` message per period (docs/fleet.md
"Drift monitoring").

Each scored window in the operating regime adds a row: the raw inputs of its last sample (a sample of the message
that completed it) and its anomaly score; at the period's close the rows become features through the shared feature
code (row-wise, so exactly the values training computes). Periods are aligned to multiples of
`period_s` of sample time; when a window ends in a later period, or comes from another model version (a swap: the
score belongs to the model), the period is summarised with the code the training job summarises its baseline with
(shared.ml.drift) and becomes a StatsMessage. `flush` (at a stop) sends the period so far.

A period keeps at most `max_rows` rows: beyond, each new row replaces a kept one with the probability that keeps the
kept rows a uniform sample of the period (reservoir sampling), so a long period costs bounded memory. Per message the
cost is an append to a list: the rows are taken every PENDING messages in a few numpy calls; features and the summary
(sorting a few thousand rows) are paid once per period.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict
from typing import Any

import numpy as np

from shared.messages import StatsMessage, validate
from shared.ml.drift import LEVELS, Summary, summarise, summarise_columns
from shared.ml.features import FeaturePlan, feature_matrix
from shared.ml.spec import FeatureSpec

from .messages import SampleBatch
from .pipeline import Result, WindowRecords

log = logging.getLogger("detector.stats")

MAX_ROWS = 8192  # rows kept per period (a 30-min period at the default stride has 3600 windows)
PENDING = 64  # messages whose windows are taken into the period together
DIGITS = 7  # significant digits of the numbers sent


class PeriodStats:
    def __init__(self, thing: str, period_s: float, max_rows: int = MAX_ROWS, seed: int = 0) -> None:
        self.thing = thing
        self.period_s = float(period_s)  # a change applies from the next period on
        self.max_rows = max_rows
        self._rng = np.random.default_rng(seed)
        self._spec: FeatureSpec | None = None  # the open period's spec
        self._start: float | None = None  # the open period's start (sample time)
        self._end = 0.0
        self._version: int | None = None
        self._levels: np.ndarray | None = None  # the open period's turbine offsets (Pipeline.levels)
        self._windows = 0
        self._seen = 0  # operating windows of the period
        self._rows = np.zeros((0, 0))  # raw inputs at the kept windows' ends (features are computed at the close)
        self._scores = np.zeros(0)
        self._pending: list[tuple[np.ndarray, np.ndarray, list[float], np.ndarray, list[bool]]] = []
        self.periods_sent = 0

    # -- input ------------------------------------------------------------------------------------------
    def observe(self, result: Result, spec: FeatureSpec, levels: np.ndarray | None = None) -> list[dict[str, Any]]:
        """Add the windows of one handled message; returns the messages of the periods it closed. `levels`: the
        offsets the pipeline subtracts from this turbine's features (the training baseline summarises them so)."""
        windows, batch = result.windows, result.batch
        if not len(windows) or batch is None:
            return []
        if isinstance(windows, WindowRecords):
            t_end, scores, operating = windows.ends_scores_operating
        else:
            t_end, scores, operating = ([w.t_end for w in windows], np.array([w.score for w in windows]),
                                        [w.operating for w in windows])
        version, out = result.model_version, []
        if self._start is not None and (version != self._version or spec is not self._spec or t_end[0] >= self._end):
            out += self._close()
        if self._start is not None and t_end[-1] < self._end:  # the usual case: one period, already open
            self._add(batch, t_end, scores, operating)
            return out
        ends, cut = np.asarray(t_end), 0
        while cut < len(ends):  # windows in one or more periods
            if self._start is None:
                self._open(float(np.floor(ends[cut] / self.period_s) * self.period_s), version, spec)
                self._levels = levels
            stop = int(np.searchsorted(ends, self._end))  # the first window past the open period
            self._add(batch, t_end[cut:stop], scores[cut:stop], operating[cut:stop])
            if stop < len(ends):
                out += self._close()
            cut = stop
        return out

    def flush(self) -> list[dict[str, Any]]:
        """The open period so far (a stop), as a message; nothing when it holds no window."""
        return self._close()

    def _open(self, start: float, version: int | None, spec: FeatureSpec) -> None:
        self._start, self._end, self._version, self._spec = start, start + self.period_s, version, spec
        self._rows = np.zeros((min(self.max_rows, 1024), len(spec.input_columns)))
        self._scores = np.zeros(len(self._rows))

    def _add(self, batch: SampleBatch, t_end: list[float], scores: np.ndarray, operating: list[bool]) -> None:
        """Note the windows; their rows are taken PENDING messages at a time (a few numpy calls per message would
        cost more than the row copies themselves)."""
        if not t_end:
            return
        self._windows += len(t_end)
        self._pending.append((batch.ts, batch.values, t_end, scores, operating))
        if len(self._pending) >= PENDING:
            self._take()

    def _take(self) -> None:
        """The pending windows' rows (raw inputs at their ends), operating ones only, into the period's sample."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        ts = np.concatenate([p[0] for p in pending])
        ends = np.concatenate([p[2] for p in pending])
        rows = np.concatenate([p[1] for p in pending])[np.searchsorted(ts, ends)]
        scores = np.concatenate([p[3] for p in pending])
        keep = np.concatenate([p[4] for p in pending]).astype(bool)
        if not keep.all():
            rows, scores = rows[keep], scores[keep]
        n = len(rows)
        if self._seen + n <= len(self._rows):  # room left: one block copy
            self._rows[self._seen:self._seen + n] = rows
            self._scores[self._seen:self._seen + n] = scores
            self._seen += n
            return
        for row, score in zip(rows, scores, strict=True):
            self._keep(row, float(score))

    def _keep(self, row: np.ndarray, score: float) -> None:
        """One row past the free room: grow up to max_rows, then reservoir sampling."""
        if self._seen < len(self._rows):
            slot = self._seen
        elif len(self._rows) < self.max_rows:
            grown = min(self.max_rows, 2 * len(self._rows))
            self._rows = np.concatenate([self._rows, np.zeros((grown - len(self._rows), self._rows.shape[1]))])
            self._scores = np.concatenate([self._scores, np.zeros(grown - len(self._scores))])
            slot = self._seen
        else:
            slot = int(self._rng.integers(0, self._seen + 1))
        if slot < len(self._rows):
            self._rows[slot], self._scores[slot] = row, score
        self._seen += 1

    # -- output -----------------------------------------------------------------------------------------
    def _close(self) -> list[dict[str, Any]]:
        self._take()
        if self._start is None or self._spec is None or not self._windows:
            self._start = None
            return []
        kept = min(self._seen, len(self._rows))
        spec = self._spec
        values = feature_matrix(self._rows[:kept], FeaturePlan.of(spec))
        if self._levels is not None:
            values = values - self._levels
        values = values.astype(np.float64)  # as in training
        features = summarise_columns(values, spec.features)
        score = summarise(self._scores[:kept])
        message = StatsMessage(
            v=StatsMessage.VERSION, turbine_id=self.thing, model_version=self._version,
            period_start=self._start, period_s=self._end - self._start, windows=self._windows,
            operating_windows=self._seen, levels=list(LEVELS), count={n: s.count for n, s in features.items()},
            mean={n: _round(s.mean) for n, s in features.items()}, std={n: _round(s.std) for n, s in features.items()},
            quantiles={n: _sketch(s) for n, s in features.items()}, score_count=0 if score is None else score.count,
            score_mean=None if score is None else _round(score.mean),
            score_std=None if score is None else _round(score.std),
            score_quantiles=[] if score is None else _sketch(score))
        self._start, self._windows, self._seen = None, 0, 0
        self.periods_sent += 1
        log.info("stats of period %s (%d windows, %d in the operating regime)", message.period_start, message.windows,
                 message.operating_windows)
        return [asdict(validate(StatsMessage, asdict(message)))]  # the cloud's own check, before it is spooled


def _round(x: float) -> float:
    return float(f"{x:.{DIGITS}g}") if math.isfinite(x) else x


def _sketch(s: Summary) -> list[float]:
    return [_round(q) for q in s.quantiles]
