"""The episode rule, shared by the evaluator and the edge detector.

Per window, a feature is flagged when its reconstruction error exceeds its threshold or when more
than `missing_tolerance` of its samples are missing. An episode opens when at least k of the last n
windows are flagged and closes after m consecutive clean windows. All times are sample timestamps
(the end of each window), never the wall clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import chain
from operator import le
from typing import Any, Literal

import numpy as np

EventKind = Literal["open", "update", "close"]


@dataclass(frozen=True)
class EpisodeRule:
    k: int = 3
    n: int = 5
    m: int = 10
    missing_tolerance: float = 0.2
    max_silence_s: float = 60.0  # a longer pause between windows closes the episode and resets history
    update_interval_s: float = 30.0  # an open episode re-reports at least this often while flagged

    def __post_init__(self) -> None:
        if not (1 <= self.k <= self.n and self.m >= 1 and 0 <= self.missing_tolerance < 1):
            raise ValueError(f"episode rule needs 1 <= k <= n, m >= 1, 0 <= missing_tolerance < 1: {self}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> EpisodeRule:
        return cls(**{k: type(getattr(cls, k))(v) for k, v in raw.items()})


@dataclass
class Episode:
    episode_id: str
    turbine_id: str
    started_at: float  # end of the first flagged window that led to the opening
    opened_at: float  # decision time: end of the window that completed k-of-n
    last_flagged_at: float
    closed_at: float | None = None
    flagged_windows: int = 0
    peak_ratio: dict[str, float] = field(default_factory=dict)  # feature -> max error/threshold
    missing: list[str] = field(default_factory=list)  # features flagged for missing samples

    @property
    def features(self) -> list[str]:
        return sorted(set(self.peak_ratio) | set(self.missing))

    def snapshot(self) -> dict[str, Any]:
        out = asdict(self)
        out["features"] = self.features
        return out


@dataclass(frozen=True)
class EpisodeEvent:
    kind: EventKind
    at: float  # sample time of the decision
    episode: dict[str, Any]


class EpisodeTracker:
    """Turns a stream of per-window (errors, missing) into episode open/update/close events."""

    def __init__(self, turbine_id: str, rule: EpisodeRule, thresholds: np.ndarray,
                 feature_names: list[str] | tuple[str, ...]) -> None:
        self.turbine_id = turbine_id
        self.rule = rule
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self._threshold_list: list[float] = self.thresholds.tolist()
        self.feature_names = list(feature_names)
        self.current: Episode | None = None
        self.closed: list[Episode] = []
        self._recent: deque[tuple[float, dict[str, float], list[str]]] = deque(maxlen=rule.n)
        self._clean_run = 0
        self._last_t: float | None = None
        self._last_report: tuple[float, int, float] = (0.0, 0, 0.0)  # time, feature count, peak

    def flags(self, errors: np.ndarray, missing: np.ndarray) -> np.ndarray:
        """Per-feature flags of one window (vectorised over leading axes too)."""
        return (np.asarray(errors) > self.thresholds) | (np.asarray(missing) > self.rule.missing_tolerance)

    def step(self, t_end: float, errors: np.ndarray, missing: np.ndarray, operating: bool = True
             ) -> list[EpisodeEvent]:
        """One scored window; a window outside the operating regime counts as clean."""
        ratios = np.asarray(errors, dtype=np.float64) / self.thresholds
        over = ratios > 1.0
        lacking = np.asarray(missing) > self.rule.missing_tolerance
        hit = {self.feature_names[i]: float(ratios[i]) for i in np.flatnonzero(over)} if operating else {}
        gone = [self.feature_names[i] for i in np.flatnonzero(lacking)] if operating else []
        return self._advance(t_end, hit, gone)

    def step_many(self, t_end: Sequence[float], errors: np.ndarray, missing: np.ndarray,
                  operating: Sequence[bool] | np.ndarray) -> list[EpisodeEvent]:
        """`step` over (W, F) windows in time order; the events of all of them, in order.

        Flags are computed for all windows at once; when none is flagged and no episode is open (the
        usual case), each window only enters the k-of-n history."""
        if not len(t_end):
            return []
        errors, missing = np.asarray(errors), np.asarray(missing)
        # Python floats, exactly the arrays' values: error <= threshold makes the correctly rounded ratio
        # <= 1.0, and missing <= tolerance compared in float64 is never flagged by step()'s comparison
        # in missing's dtype. A NaN flags nothing either way. On a few windows this beats numpy.
        if not (all(map(le, chain.from_iterable(errors.tolist()), self._threshold_list * len(errors)))
                and max(chain.from_iterable(missing.tolist())) <= self.rule.missing_tolerance):
            ratios = np.divide(errors, self.thresholds, dtype=np.float64)  # as step(): exact float64 inputs
            return self._step_flagged(t_end, ratios, missing, operating)
        events: list[EpisodeEvent] = []
        silence, recent = self.rule.max_silence_s, self._recent
        for t in t_end:
            if self.current is None and (self._last_t is None or t - self._last_t <= silence):
                self._last_t = t
                recent.append((t, {}, []))
            else:
                events += self._advance(t, {}, [])
        return events

    def _step_flagged(self, t_end: Sequence[float], ratios: np.ndarray, missing: np.ndarray,
                      operating: Sequence[bool] | np.ndarray) -> list[EpisodeEvent]:
        names = self.feature_names
        lacking = (missing > self.rule.missing_tolerance).tolist()  # in missing's dtype, as step()
        events: list[EpisodeEvent] = []
        for t, row, gaps, on in zip(t_end, ratios.tolist(), lacking, operating, strict=True):
            if on:  # Python floats of the float64 ratios, as float(ratios[i, j])
                events += self._advance(t, {names[j]: r for j, r in enumerate(row) if r > 1.0},
                                        [names[j] for j, g in enumerate(gaps) if g])
            else:
                events += self._advance(t, {}, [])
        return events

    def _advance(self, t_end: float, hit: dict[str, float], gone: list[str]) -> list[EpisodeEvent]:
        events: list[EpisodeEvent] = []
        if self._last_t is not None and t_end - self._last_t > self.rule.max_silence_s:
            events += self._close(self._last_t)
            self._recent.clear()
        self._last_t = t_end
        flagged = bool(hit or gone)
        self._recent.append((t_end, hit, gone))
        if self.current is None:
            if flagged and sum(1 for _, h, g in self._recent if h or g) >= self.rule.k:
                events.append(self._open(t_end))
            return events
        if flagged:
            self._clean_run = 0
            self._absorb(self.current, t_end, hit, gone)
            if self._worth_reporting(t_end):
                events.append(self._event("update", t_end))
        else:
            self._clean_run += 1
            if self._clean_run >= self.rule.m:
                events += self._close(t_end)
                self._recent.clear()
        return events

    def flush(self) -> list[EpisodeEvent]:
        """Close the open episode at the last window seen (end of data or shutdown)."""
        return self._close(self._last_t) if self._last_t is not None else []

    # -- internals ---------------------------------------------------------------------------
    def _open(self, t_end: float) -> EpisodeEvent:
        first = next(t for t, h, g in self._recent if h or g)
        episode = Episode(episode_id=f"{self.turbine_id}-{round(first * 1000)}", turbine_id=self.turbine_id,
                          started_at=first, opened_at=t_end, last_flagged_at=t_end)
        for t, h, g in self._recent:
            if h or g:
                self._absorb(episode, t, h, g)
        self.current, self._clean_run = episode, 0
        self._last_report = (t_end, len(episode.features), max(episode.peak_ratio.values(), default=0.0))
        return self._event("open", t_end)

    @staticmethod
    def _absorb(episode: Episode, t: float, hit: dict[str, float], gone: list[str]) -> None:
        episode.flagged_windows += 1
        episode.last_flagged_at = t
        for name, ratio in hit.items():
            episode.peak_ratio[name] = max(ratio, episode.peak_ratio.get(name, 0.0))
        episode.missing.extend(g for g in gone if g not in episode.missing)

    def _worth_reporting(self, t_end: float) -> bool:
        assert self.current is not None
        last_t, last_count, last_peak = self._last_report
        peak = max(self.current.peak_ratio.values(), default=0.0)
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
        self.current = None
        return [event]

    def _event(self, kind: EventKind, t_end: float) -> EpisodeEvent:
        assert self.current is not None
        return EpisodeEvent(kind=kind, at=t_end, episode=self.current.snapshot())


def run_episodes(turbine_id: str, rule: EpisodeRule, thresholds: np.ndarray, feature_names: list[str],
                 t_end: np.ndarray, errors: np.ndarray, missing: np.ndarray,
                 operating: np.ndarray | None = None) -> list[Episode]:
    """Every episode of one turbine's scored windows (in time order), the last one closed at the end."""
    tracker = EpisodeTracker(turbine_id, rule, thresholds, feature_names)
    for i in range(len(t_end)):
        tracker.step(float(t_end[i]), errors[i], missing[i], True if operating is None else bool(operating[i]))
    tracker.flush()
    return tracker.closed
