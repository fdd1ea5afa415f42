"""The episode rule, shared by the evaluator and the edge detector.

A window is flagged when its anomaly score exceeds the model's one threshold, or when a feature misses
more than `missing_tolerance` of its samples. An episode opens when at least k of the last n windows
are flagged and closes after m consecutive clean windows; windows outside the operating regime are not
judged (clean for opening, not counted for closing), unless the feature the regime is read from is itself
missing or frozen there: a failed sensor cannot say the machine is idle. All times are sample timestamps
(the end of each window), never the wall clock. The per-feature contributions of the peak window say
which sensors explain the episode.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from numbers import Integral, Real
from typing import Any, Literal

import numpy as np

EventKind = Literal["open", "update", "close", "interrupt"]
MAX_EXPLAINING = 3  # features named as the explanation of one window
EXPLAINING_SHARE = 0.5  # ...each with at least this fraction of the top feature's share
KEEP_CLOSED = 100  # closed episodes a streaming tracker keeps (run_episodes keeps them all)
MAX_SCORE = float(np.finfo(np.float32).max)  # an overflowed (infinite) score or contribution counts as this


# The rule's real-valued fields: name, condition, check. A max_silence_s <= 0 would close every episode at the
# next window (a deaf detector); an update_interval_s of 0 would re-report an open episode on every window.
_REAL_FIELDS: tuple[tuple[str, str, Callable[[float], bool]], ...] = (
    ("missing_tolerance", "0 <= missing_tolerance < 1", lambda v: 0 <= v < 1),
    ("max_silence_s", "max_silence_s > 0", lambda v: v > 0),
    ("update_interval_s", "update_interval_s > 0", lambda v: v > 0),
    ("release_ratio", "0 < release_ratio <= 1", lambda v: 0 < v <= 1),
)


@dataclass(frozen=True)
class EpisodeRule:
    k: int = 3
    n: int = 5
    m: int = 10
    missing_tolerance: float = 0.2
    max_silence_s: float = 60.0  # a longer pause between windows closes the episode and resets history
    update_interval_s: float = 30.0  # an open episode re-reports at least this often while flagged
    # While an episode is open, a window stays flagged down to this share of the threshold (hysteresis; 1: none,
    # as in bundles written before the field existed).
    release_ratio: float = 1.0

    def __post_init__(self) -> None:
        for name in ("k", "n", "m"):  # counts of windows
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
                raise ValueError(f"episode rule {name} must be a whole number >= 1, got {value!r}")
        if self.k > self.n:
            raise ValueError(f"episode rule needs k <= n, got k={self.k}, n={self.n}")
        for name, condition, ok in _REAL_FIELDS:
            value = getattr(self, name)
            real = not isinstance(value, bool) and isinstance(value, Real) and math.isfinite(value)
            if not (real and ok(float(value))):
                raise ValueError(f"episode rule needs a finite {condition}, got {name}={value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> EpisodeRule:
        return cls(**raw)


def explaining(shares: dict[str, float]) -> list[str]:
    """The features that explain a window: the top one and those with at least half its share (<= 3)."""
    ranked = sorted(shares.items(), key=lambda kv: (-kv[1], kv[0]))
    if not ranked or ranked[0][1] <= 0:
        return []
    top = ranked[0][1]
    return [name for name, share in ranked[:MAX_EXPLAINING] if share >= EXPLAINING_SHARE * top]


@dataclass
class Episode:
    episode_id: str
    turbine_id: str
    started_at: float  # end of the first flagged window that led to the opening
    opened_at: float  # decision time: end of the window that completed k-of-n
    last_flagged_at: float  # end of the last flagged window: the episode spans [started_at, last_flagged_at]
    closed_at: float | None = None  # decision time of the close (m clean windows later)
    flagged_windows: int = 0
    peak_ratio: float = 0.0  # max score / threshold over the flagged windows
    contributions: dict[str, float] = field(default_factory=dict)  # feature -> share of the peak window's score
    missing: list[str] = field(default_factory=list)  # features flagged for missing samples

    @property
    def features(self) -> list[str]:
        return sorted(set(explaining(self.contributions)) | set(self.missing))

    def snapshot(self) -> dict[str, Any]:
        out = asdict(self)
        out["features"] = self.features
        return out


@dataclass(frozen=True)
class EpisodeEvent:
    kind: EventKind
    at: float  # sample time of the decision
    episode: dict[str, Any]


# One window in the k-of-n history: end time, score / threshold if above 1 (else 0), the contribution
# row of a flagged window, the features over the missing tolerance.
_Entry = tuple[float, float, Sequence[float] | None, list[str]]


class EpisodeTracker:
    """Turns a stream of per-window (score, contributions, missing) into episode open/update/close events."""

    def __init__(self, turbine_id: str, rule: EpisodeRule, threshold: float,
                 feature_names: list[str] | tuple[str, ...], regime_feature: str | None = None,
                 keep_closed: int | None = KEEP_CLOSED) -> None:
        """`regime_feature`: the feature the operating regime is read from (FeatureSpec.regime_feature), if any;
        `keep_closed`: how many of the latest closed episodes `closed` holds (None: all)."""
        if not threshold > 0:
            raise ValueError(f"the score threshold must be positive, got {threshold!r}")
        self.turbine_id = turbine_id
        self.rule = rule
        self.threshold = float(threshold)
        self.feature_names = list(feature_names)
        self.regime_feature = regime_feature
        self.current: Episode | None = None
        self.closed: list[Episode] = []  # the latest `keep_closed`
        self.keep_closed = keep_closed
        self._recent: deque[_Entry] = deque(maxlen=rule.n)
        self._clean_run = 0
        self._last_t: float | None = None
        self._last_report: tuple[float, int, float] = (0.0, 0, 0.0)  # time, feature count, peak

    def step(self, t_end: float, score: float, contributions: Sequence[float] | np.ndarray,
             missing: Sequence[float] | np.ndarray, operating: bool = True) -> list[EpisodeEvent]:
        """One scored window. A window outside the operating regime is not judged: it enters the k-of-n
        history as clean (it cannot open an episode) but does not count towards closing one, so a fault
        that outlasts a calm spell or a stop stays one episode, not a false "resolved" and a new alert.
        When the regime feature is missing or frozen in the window, the regime is unknown: it is judged.
        A window opens an episode above the threshold; once one is open, it is flagged above
        rule.release_ratio of it, so a condition whose score wavers around the threshold stays one episode.
        An infinite score or contribution (the model overflowed on a huge reading) counts as MAX_SCORE."""
        gone = [self.feature_names[i] for i, v in enumerate(np.asarray(missing).tolist())
                if v > self.rule.missing_tolerance]
        if not operating and self.regime_feature not in gone:
            return self._advance(float(t_end), 0.0, None, [], judged=False)
        ratio = min(float(score), MAX_SCORE) / self.threshold  # NaN stays NaN: not flagged
        over = ratio > (1.0 if self.current is None else self.rule.release_ratio)
        row = [min(v, MAX_SCORE) for v in np.asarray(contributions).tolist()] if over else None
        return self._advance(float(t_end), ratio if over else 0.0, row, gone)

    def step_many(self, t_end: Sequence[float], scores: np.ndarray, contributions: np.ndarray,
                  missing: np.ndarray, operating: Sequence[bool] | np.ndarray) -> list[EpisodeEvent]:
        """`step` over W windows in time order; the events of all of them, in order.

        When no window is flagged and no episode is open (the usual case), each window only enters the
        k-of-n history."""
        if not len(t_end):
            return []
        scores, missing = np.asarray(scores), np.asarray(missing)
        quiet = (max(scores.tolist()) / self.threshold <= 1.0  # max of a list: np.max costs more on a few windows
                 and max(missing.ravel().tolist()) <= self.rule.missing_tolerance)
        if not quiet or self.current is not None:
            events: list[EpisodeEvent] = []
            for i, t in enumerate(t_end):
                events += self.step(t, scores[i], contributions[i], missing[i], bool(operating[i]))
            return events
        silence, recent = self.rule.max_silence_s, self._recent
        for t in t_end:
            if self._last_t is not None and t - self._last_t > silence:
                recent.clear()
            self._last_t = t
            recent.append((t, 0.0, None, []))
        return []

    def _advance(self, t_end: float, ratio: float, row: Sequence[float] | None, gone: list[str],
                 judged: bool = True) -> list[EpisodeEvent]:
        events: list[EpisodeEvent] = []
        if self._last_t is not None and t_end - self._last_t > self.rule.max_silence_s:
            events += self._close(self._last_t)
            self._recent.clear()
        self._last_t = t_end
        flagged = ratio > 0.0 or bool(gone)
        self._recent.append((t_end, ratio, row, gone))
        if self.current is None:
            if flagged and sum(1 for _, r, _, g in self._recent if r > 0.0 or g) >= self.rule.k:
                events.append(self._open(t_end))
            return events
        if flagged:
            self._clean_run = 0
            self._absorb(self.current, t_end, ratio, row, gone)
            if self._worth_reporting(t_end):
                events.append(self._event("update", t_end))
        elif judged:
            self._clean_run += 1
            if self._clean_run >= self.rule.m:
                events += self._close(t_end)
                self._recent.clear()
        return events

    def flush(self) -> list[EpisodeEvent]:
        """Close the open episode at the last window seen (the end of the data)."""
        return self._close(self._last_t) if self._last_t is not None else []

    def interrupt(self) -> list[EpisodeEvent]:
        """Give up the open episode without ending it (the detector stops or changes model): the
        condition was still on when last seen, so this is no resolution."""
        if self.current is None or self._last_t is None:
            return []
        event = self._event("interrupt", self._last_t)
        self.current, self._clean_run = None, 0
        self._recent.clear()
        return [event]

    # -- internals ---------------------------------------------------------------------------
    def _open(self, t_end: float) -> EpisodeEvent:
        first = next(t for t, r, _, g in self._recent if r > 0.0 or g)
        episode = Episode(episode_id=f"{self.turbine_id}-{round(first * 1000)}", turbine_id=self.turbine_id,
                          started_at=first, opened_at=t_end, last_flagged_at=t_end)
        for t, r, row, g in self._recent:
            if r > 0.0 or g:
                self._absorb(episode, t, r, row, g)
        self.current, self._clean_run = episode, 0
        self._last_report = (t_end, len(episode.features), episode.peak_ratio)
        return self._event("open", t_end)

    def _absorb(self, episode: Episode, t: float, ratio: float, row: Sequence[float] | None,
                gone: list[str]) -> None:
        episode.flagged_windows += 1
        episode.last_flagged_at = t
        if row is not None and ratio > episode.peak_ratio:
            episode.peak_ratio = ratio
            total = sum(v for v in row if v > 0)
            episode.contributions = ({name: round(v / total, 4) for name, v in zip(self.feature_names, row, strict=True)
                                      if v > 0} if total > 0 else {})
        episode.missing.extend(g for g in gone if g not in episode.missing)

    def _worth_reporting(self, t_end: float) -> bool:
        assert self.current is not None
        last_t, last_count, last_peak = self._last_report
        peak = self.current.peak_ratio
        due = (len(self.current.features) > last_count or peak > 1.25 * last_peak
               or t_end - last_t >= self.rule.update_interval_s)
        if due:
            self._last_report = (t_end, len(self.current.features), peak)
        return due

    def _close(self, t_end: float | None) -> list[EpisodeEvent]:
        if self.current is None or t_end is None:
            return []
        self.current.closed_at = t_end
        event = self._event("close", t_end)
        self.closed.append(self.current)
        if self.keep_closed is not None and len(self.closed) > self.keep_closed:
            del self.closed[0]
        self.current = None
        return [event]

    def _event(self, kind: EventKind, t_end: float) -> EpisodeEvent:
        assert self.current is not None
        return EpisodeEvent(kind=kind, at=t_end, episode=self.current.snapshot())


def run_episodes(turbine_id: str, rule: EpisodeRule, threshold: float, feature_names: list[str],
                 t_end: np.ndarray, scores: np.ndarray, contributions: np.ndarray, missing: np.ndarray,
                 operating: np.ndarray | None = None, regime_feature: str | None = None) -> list[Episode]:
    """Every episode of one turbine's scored windows (in time order), the last one closed at the end."""
    tracker = EpisodeTracker(turbine_id, rule, threshold, feature_names, regime_feature, keep_closed=None)
    on = np.ones(len(t_end), dtype=bool) if operating is None else np.asarray(operating, dtype=bool)
    tracker.step_many(np.asarray(t_end, dtype=np.float64).tolist(), scores, contributions, missing, on)
    tracker.flush()
    return tracker.closed
