"""One turbine's streaming pipeline: samples -> features -> windows -> ONNX scores -> episodes.

Windows are aligned exactly like shared.ml.features.window_starts on the whole series: a run of
samples restarts after a gap longer than spec.windows.max_gap_s, the first window ends at the
run's `length`-th sample and then one every `stride` samples. So the detector scores the same
windows as `nacelle evaluate` does offline, and every sample takes part. All times are sample
timestamps; the wall clock is used only to measure latency and to refuse sample times implausibly far
ahead of it (messages.MAX_AHEAD_S).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import sub
from typing import NamedTuple, overload

import numpy as np

from shared.ml.episodes import EpisodeEvent, EpisodeTracker
from shared.ml.features import FeaturePlan, feature_matrix, make_windows, operating_mask
from shared.ml.spec import FeatureSpec

from .messages import MAX_AHEAD_S, MAX_MESSAGE_BYTES, BadMessage, Sample, SampleBatch, parse_sensor_batch
from .scoring import EdgeModel

LATENCY_HISTORY = 4096  # per-window latencies kept for the p50/p99 of health messages


class WindowRecord(NamedTuple):  # a tuple: built per window on the hot path
    t_end: float  # timestamp of the window's last sample
    score: float  # the model's anomaly score (compared with its one threshold)
    contributions: np.ndarray  # (F,) each feature's part of the score
    missing: np.ndarray  # (F,) per-feature fraction of missing samples
    operating: bool  # inside the spec's operating regime (else counted as a clean window)
    model_version: int | None
    latency_s: float  # from the start of handling the message to the episode decisions of its windows


class WindowRecords(Sequence[WindowRecord]):
    """The windows one message completed, made into WindowRecords on first access: most callers only
    count them (len, truth), so the per-window tuples are not built on the hot path."""

    __slots__ = ("_columns", "_records")

    def __init__(self, t_end: list[float], scores: np.ndarray, contributions: np.ndarray, missing: np.ndarray,
                 operating: list[bool], model_version: int | None, latency_s: float) -> None:
        self._columns = (t_end, scores, contributions, missing, operating, model_version, latency_s)
        self._records: list[WindowRecord] | None = None

    def _list(self) -> list[WindowRecord]:
        if self._records is None:
            t_end, scores, contributions, missing, operating, version, latency = self._columns
            k = len(t_end)
            self._records = list(map(WindowRecord, t_end, scores.tolist(), contributions, missing, operating,
                                     [version] * k, [latency] * k))
        return self._records

    def __len__(self) -> int:
        return len(self._columns[0])

    @property
    def ends_scores_operating(self) -> tuple[list[float], np.ndarray, list[bool]]:
        """The windows' end times, scores and operating flags as columns (drift statistics, stats.py)."""
        return self._columns[0], self._columns[1], self._columns[4]

    @overload
    def __getitem__(self, i: int) -> WindowRecord: ...
    @overload
    def __getitem__(self, i: slice) -> list[WindowRecord]: ...
    def __getitem__(self, i: int | slice) -> WindowRecord | list[WindowRecord]:
        return self._list()[i]

    def __iter__(self) -> Iterator[WindowRecord]:
        return iter(self._list())

    def __eq__(self, other: object) -> bool:
        return self._list() == (list(other) if isinstance(other, WindowRecords) else other)

    def __repr__(self) -> str:
        return repr(self._list())


@dataclass
class Result:
    windows: Sequence[WindowRecord] = field(default_factory=list)  # a WindowRecords when windows were scored
    events: list[EpisodeEvent] = field(default_factory=list)
    model_version: int | None = None
    accepted: int = 0  # samples taken into the buffer
    stale: int = 0  # samples at or before the last one seen (redelivered, or the sensor clock went back), dropped
    # the samples taken in (raw inputs), for data capture (capture.py)
    batch: SampleBatch | None = field(default=None, compare=False, repr=False)


def pipeline_key(spec: FeatureSpec) -> tuple[object, ...]:
    """What must match for a buffer of features to stay valid across a model swap."""
    return (spec.features, spec.derived, spec.input_columns, spec.geometry)


def window_ends(t: list[float], prev: float | None, run_len: int, length: int, stride: int,
                max_gap: float) -> tuple[list[int], int]:
    """Indices of the new samples `t` (increasing) that end a window, and the run length after the last one.

    A run restarts after a gap longer than `max_gap`; within a run the first window ends at its
    `length`-th sample and then one every `stride` samples (shared.ml.features.window_starts)."""
    if prev is not None and t[0] - prev > max_gap:
        run_len = 0
    ends: list[int] = []
    begin = 0
    steps = list(map(sub, t[1:], t))  # steps[i - 1] = t[i] - t[i - 1]
    gaps = [i for i, step in enumerate(steps, 1) if step > max_gap] if steps and max(steps) > max_gap else []
    for stop in [*gaps, len(t)]:  # each gap-free stretch t[begin:stop] of the run
        if begin:  # t[begin] follows a gap: a new run
            run_len = 0
        after = run_len + 1  # the run's length at t[begin]
        # the first end: where the run reaches `length` samples, else the next multiple of `stride` past that
        first = begin + (length - after if after <= length else (length - after) % stride)
        ends += range(first, stop, stride)
        run_len += stop - begin
        begin = stop
    return ends, run_len


class TurbinePipeline:
    """Not tied to any transport: feed it payloads (`handle`) or parsed samples (`handle_samples`).

    Thread-safe: `handle`, `swap` and `flush` serialise on one lock, so a swap always falls
    between two windows.

    The features of the last geometry.total samples are kept (a window reaches back that far, across
    gaps); a message's features are appended to them, its windows cut with make_windows and judged with
    operating_mask (shared.ml.features, as in training), and the buffer replaced only on commit.
    """

    def __init__(self, turbine_id: str, model: EdgeModel, clock: Callable[[], float] = time.time) -> None:
        """`clock`: the device's epoch clock, against which sample times are judged (messages.MAX_AHEAD_S)."""
        self.turbine_id = turbine_id
        self.model = model
        self.clock = clock
        self._lock = threading.Lock()
        self.tracker = self._new_tracker(model)
        self._levels = self._levels_of(model)
        self._reset_buffer(FeaturePlan.of(model.spec))
        self.windows_scored = 0
        self.samples_seen = 0
        self.stale_samples = 0
        self.bad_messages = 0
        self.swaps = 0
        self.latencies: deque[float] = deque(maxlen=LATENCY_HISTORY)
        self._decisions: deque[float] = deque(maxlen=LATENCY_HISTORY)  # perf_counter time of each window

    # -- state -------------------------------------------------------------------------------------
    def _new_tracker(self, model: EdgeModel) -> EpisodeTracker:
        spec = model.spec
        return EpisodeTracker(self.turbine_id, model.rule, model.threshold, list(spec.features), spec.regime_feature)

    def _levels_of(self, model: EdgeModel) -> np.ndarray | None:
        """(F,) float32: this turbine's offsets from the fleet's level (shared.ml.levels), None if all 0."""
        offsets = model.offsets(self.turbine_id)
        return offsets if offsets.any() else None

    @property
    def levels(self) -> np.ndarray | None:
        """The offsets subtracted from this turbine's features before scoring (None: none)."""
        return self._levels

    def _reset_buffer(self, plan: FeaturePlan) -> None:
        spec = self.model.spec
        self._plan = plan
        self._offsets = np.asarray(spec.geometry.offsets(), dtype=np.int64)
        self._features = np.zeros((0, spec.n_features), dtype=np.float32)  # (<= geometry.total, F)
        self._run_len = 0  # samples in the current gap-free run
        self._last_ts: float | None = None

    @property
    def model_version(self) -> int | None:
        return self.model.model_version

    def snapshot(self) -> tuple[object, ...]:
        """The scoring state (buffer, alignment, episode history), for tests and diagnostics."""
        t = self.tracker
        history = tuple((a, r, None if row is None else tuple(row), tuple(g)) for a, r, row, g in t._recent)
        return (self._features.tobytes(), self._features.shape, self._run_len, self._last_ts, self.windows_scored,
                self.samples_seen, t._last_t, history, t.current.snapshot() if t.current else None, len(t.closed),
                self.model_version)

    # -- input ---------------------------------------------------------------------------------------
    def handle(self, payload: bytes, max_bytes: int | None = None) -> Result:
        """Parse one sensor message and process its samples. BadMessage leaves the scoring state as
        it was (only the bad_messages counter moves)."""
        start = time.perf_counter()
        with self._lock:
            try:
                batch = parse_sensor_batch(payload, self.model.spec, self.turbine_id,
                                           MAX_MESSAGE_BYTES if max_bytes is None else max_bytes,
                                           self.clock() + MAX_AHEAD_S)
            except BadMessage:
                self.bad_messages += 1
                raise
            return self._process(batch, start)

    def handle_samples(self, samples: list[Sample]) -> Result:
        start = time.perf_counter()
        with self._lock:
            return self._process(SampleBatch.from_samples(samples, len(self.model.spec.input_columns)), start)

    def _process(self, batch: SampleBatch, start: float) -> Result:
        model = self.model
        spec, version = model.spec, model.model_version
        g = spec.geometry
        times, last = batch.ts.tolist(), self._last_ts
        stale = 0
        if last is not None and min(times) <= last:  # samples at or before the newest one seen: redelivered, dropped
            fresh = batch.ts > last
            batch = SampleBatch(batch.seq[fresh], batch.ts[fresh], batch.values[fresh])
            stale = len(times) - len(batch.ts)
            times = batch.ts.tolist()
        n = len(times)
        if not n:
            self.stale_samples += stale
            return Result(model_version=version, stale=stale)
        kept = self._features
        features = np.concatenate((kept, feature_matrix(batch.values, self._plan)))
        ends, run_len = window_ends(times, last, self._run_len, g.length, g.stride, g.max_gap_s)
        if ends:
            first = len(kept) - g.length + 1  # the first scored sample of a window ending at times[0]
            x = make_windows(features, [first + e for e in ends], self._offsets)  # NaN before the first sample kept
            if self._levels is not None:  # the buffer keeps raw features: a swap may bring other levels
                x -= self._levels[:, None]
            scores, contributions, missing = model.score(x)
            operating = operating_mask(x, spec).tolist()

        # Commit: nothing above touched the state, so a failure there leaves it as it was.
        self._features = features[-g.total:]
        self._run_len, self._last_ts = run_len, times[-1]
        self.samples_seen += n
        self.stale_samples += stale
        if not ends:
            return Result(model_version=version, accepted=n, stale=stale, batch=batch)
        t_ends = [times[e] for e in ends]
        events = self.tracker.step_many(t_ends, scores, contributions, missing, operating)
        now = time.perf_counter()
        latency = now - start
        k = len(ends)
        self.latencies.extend([latency] * k)
        self._decisions.extend([now] * k)
        self.windows_scored += k
        windows = WindowRecords(t_ends, scores, contributions, missing, operating, version, latency)
        return Result(windows, events, version, n, stale, batch)

    # -- model swap and shutdown -------------------------------------------------------------------
    def swap(self, new_model: EdgeModel) -> Result:
        """Score from the next window on with `new_model` (load and warm it up first: EdgeModel.load).

        An open episode is interrupted (its threshold belongs to the old model; the condition has not
        ended) and the episode tracker restarts with the new threshold and rule. The feature buffer is kept
        when the feature pipeline is the same (features, inputs, window geometry), so no sample is
        scored twice or skipped; otherwise the run restarts. Returns the interrupt event (if any),
        attributed to the outgoing model's version. A model the pipeline cannot take (its tracker or
        feature plan fails) raises before anything changes."""
        with self._lock:
            tracker, plan = self._new_tracker(new_model), FeaturePlan.of(new_model.spec)
            levels = self._levels_of(new_model)
            result = Result(events=self.tracker.interrupt(), model_version=self.model.model_version)
            keep = pipeline_key(new_model.spec) == pipeline_key(self.model.spec)
            self.model, self.tracker, self._levels = new_model, tracker, levels
            if not keep:
                self._reset_buffer(plan)
            self.swaps += 1
            return result

    def flush(self) -> Result:
        """Close the open episode (the end of a finite stream, as `nacelle evaluate` does)."""
        with self._lock:
            return Result(events=self.tracker.flush(), model_version=self.model.model_version)

    def stop(self) -> Result:
        """Interrupt the open episode (shutdown, detection paused): it has not ended, so it is not closed."""
        with self._lock:
            return Result(events=self.tracker.interrupt(), model_version=self.model.model_version)

    # -- health --------------------------------------------------------------------------------------
    def latency_ms(self) -> tuple[float | None, float | None]:
        if not self.latencies:
            return None, None
        ms = np.asarray(self.latencies, dtype=np.float64) * 1000.0
        return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))

    def inference_rate_hz(self, horizon_s: float = 60.0) -> float:
        """Windows scored per second of wall time over the last `horizon_s`."""
        if not self._decisions:
            return 0.0
        now = time.perf_counter()
        recent = [d for d in self._decisions if now - d <= horizon_s]
        return len(recent) / horizon_s
