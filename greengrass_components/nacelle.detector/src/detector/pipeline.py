"""One turbine's streaming pipeline: samples -> features -> windows -> ONNX scores -> episodes.

Windows are aligned exactly like shared.ml.features.window_starts on the whole series: a run of
samples restarts after a gap longer than spec.windows.max_gap_s, the first window ends at the
run's `length`-th sample and then one every `stride` samples. So the detector scores the same
windows as `nacelle evaluate` does offline, and every sample takes part. All times are sample
timestamps; the wall clock is used only to measure latency.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, overload

import numpy as np

from shared.ml.episodes import EpisodeEvent, EpisodeTracker
from shared.ml.features import FeaturePlan, FeatureScratch, feature_rows, operating_mask
from shared.ml.spec import FeatureSpec

from .messages import MAX_MESSAGE_BYTES, BadMessage, Sample, SampleBatch, parse_sensor_batch
from .scoring import EdgeModel

LATENCY_HISTORY = 4096  # per-window latencies kept for the p50/p99 of health messages
RING_WINDOWS = 4  # ring capacity in window lengths: one compaction (a <= length-row move) per ~3 windows
SMALL_BATCH = 64  # up to this many samples, the gap scan runs in Python
REUSED_BATCH = 64  # model input arrays up to this many windows are allocated once and reused


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
    stale: int = 0  # samples at or before the last one seen (redelivered), dropped


def pipeline_key(spec: FeatureSpec) -> tuple[object, ...]:
    """What must match for a ring buffer of features to stay valid across a model swap."""
    return (spec.features, spec.derived, spec.input_columns, spec.geometry)


def window_ends(t: list[float], prev: float | None, run_len: int, length: int, stride: int, max_gap: float,
                ordered: bool = False) -> tuple[list[int], int]:
    """Indices of the new samples `t` that end a window, and the run length after the last one.

    A run restarts after a gap longer than `max_gap`; within a run the first window ends at its
    `length`-th sample and then one every `stride` samples (shared.ml.features.window_starts).
    `ordered`: `t` is strictly increasing, so a span within max_gap has no gap inside."""
    n = len(t)
    if ordered and t[-1] - t[0] <= max_gap:
        starts = []
    elif n <= SMALL_BATCH:  # a few samples: a Python pass beats three numpy calls
        starts = [j for j in range(1, n) if t[j] - t[j - 1] > max_gap]
    else:
        starts = (np.flatnonzero(np.diff(t) > max_gap) + 1).tolist()
    if prev is not None and t[0] - prev > max_gap:
        run_len = 0
    first = run_len + 1  # run length at the first new sample
    if not starts:  # one run (the usual case)
        return list(range(length - first if first <= length else -(first - length) % stride, n, stride)), run_len + n
    ends: list[int] = []
    for a, b in zip([0, *starts], [*starts, n], strict=True):
        first = run_len + 1  # run length at sample a
        ends += range(a + (length - first if first <= length else -(first - length) % stride), b, stride)
        run_len += b - a
        if b < n:
            run_len = 0
    return ends, run_len


class TurbinePipeline:
    """Not tied to any transport: feed it payloads (`handle`) or parsed samples (`handle_samples`).

    Thread-safe: `handle`, `swap` and `flush` serialise on one lock, so a swap always falls
    between two windows.

    Features live in a preallocated feature-major ring (F, capacity): the valid rows of the current
    run are columns [lo, hi), new samples are written after hi and become state only on commit.
    """

    def __init__(self, turbine_id: str, model: EdgeModel) -> None:
        self.turbine_id = turbine_id
        self.model = model
        self._lock = threading.Lock()
        self.tracker = self._new_tracker(model)
        self._bind_operating()
        self._reset_buffer()
        self.windows_scored = 0
        self.samples_seen = 0
        self.stale_samples = 0
        self.bad_messages = 0
        self.swaps = 0
        self.latencies: deque[float] = deque(maxlen=LATENCY_HISTORY)
        self._decisions: deque[float] = deque(maxlen=LATENCY_HISTORY)  # perf_counter time of each window

    # -- state -------------------------------------------------------------------------------------
    def _new_tracker(self, model: EdgeModel) -> EpisodeTracker:
        return EpisodeTracker(self.turbine_id, model.rule, model.threshold, list(model.spec.features))

    def _bind_operating(self) -> None:
        """The model's version, and its operating regime as (feature row, minimum), None without one. The
        minimum is a 0-d float32 array: the float32 comparison operating_mask makes with a Python float (NEP 50)."""
        op = self.model.spec.operating
        self._version = self.model.model_version
        self._regime = None if op is None else (self.model.spec.features.index(op.feature),
                                                np.array(op.min, dtype=np.float32))

    def _reset_buffer(self) -> None:
        spec = self.model.spec
        self._plan = FeaturePlan.of(spec)
        g = spec.geometry
        self._geometry = (g.length, g.stride, g.max_gap_s, spec.n_features)
        self._keep = g.total  # samples kept: a drift baseline's context reaches back across gaps
        self._offsets = np.asarray(g.offsets(), dtype=np.intp) - (g.length - 1)  # model inputs, from a window's end
        self._ring = np.zeros((spec.n_features, RING_WINDOWS * g.total), dtype=np.float32)
        self._lo = self._hi = 0  # the last <= total feature rows seen
        self._run_len = 0  # samples in the current gap-free run
        self._last_ts: float | None = None
        self._inputs: dict[tuple[int, ...], np.ndarray] = {}
        self._scratch: FeatureScratch | None = None  # of the last message size, if <= SMALL_BATCH

    def _room(self, n: int) -> None:
        """Make space for n rows after hi: move the valid rows to the front (same logical state),
        growing the ring for a message larger than it."""
        lo, hi = self._lo, self._hi
        if hi + n <= self._ring.shape[1]:
            return
        if hi - lo + n > self._ring.shape[1]:
            ring = np.zeros((self._ring.shape[0], hi - lo + n + self._ring.shape[1]), dtype=np.float32)
            ring[:, :hi - lo] = self._ring[:, lo:hi]
            self._ring = ring
        else:
            self._ring[:, :hi - lo] = self._ring[:, lo:hi]
        self._lo, self._hi = 0, hi - lo

    def _input(self, shape: tuple[int, int, int]) -> np.ndarray:
        if shape[0] > REUSED_BATCH:
            return np.empty(shape, dtype=np.float32)
        x = self._inputs.get(shape)
        if x is None:
            x = self._inputs[shape] = np.empty(shape, dtype=np.float32)
        return x

    def _operating(self, x: np.ndarray, hi: int, ends: list[int]) -> list[bool]:
        """operating_mask(x) of the windows ending at ring columns hi + ends. Its usual case (more than
        half the window's samples at or above the minimum) is counted here with one running sum over
        the span of all the windows; a window that count leaves undecided goes through operating_mask."""
        if self._regime is None:
            return [True] * len(ends)
        row, minimum = self._regime
        length, first = self._geometry[0], ends[0]
        span = self._ring[row, hi + first + 1 - length:hi + ends[-1] + 1]
        half = length // 2
        # a window misses at most the span's samples below the minimum (or NaN): few, all decided
        if len(span) - np.count_nonzero(np.greater_equal(span, minimum)) < length - half:
            return [True] * len(ends)
        above = np.add.accumulate(np.greater_equal(span, minimum), dtype=np.intp).tolist()
        if all(above[e - first + length - 1] - (above[e - first - 1] if e > first else 0) > half for e in ends):
            return [True] * len(ends)
        return operating_mask(x, self.model.spec).tolist()

    @property
    def model_version(self) -> int | None:
        return self.model.model_version

    def snapshot(self) -> tuple[object, ...]:
        """The scoring state (buffer, alignment, episode history), for tests and diagnostics."""
        t = self.tracker
        buf = self._ring[:, self._lo:self._hi]
        history = tuple((a, r, None if row is None else tuple(row), tuple(g)) for a, r, row, g in t._recent)
        return (buf.tobytes(), buf.shape, self._run_len, self._last_ts, self.windows_scored,
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
                                           MAX_MESSAGE_BYTES if max_bytes is None else max_bytes)
            except BadMessage:
                self.bad_messages += 1
                raise
            return self._process(batch, start)

    def handle_samples(self, samples: list[Sample]) -> Result:
        start = time.perf_counter()
        with self._lock:
            return self._process(SampleBatch.from_samples(samples, len(self.model.spec.input_columns)), start)

    def handle_batch(self, batch: SampleBatch) -> Result:
        start = time.perf_counter()
        with self._lock:
            return self._process(batch, start)

    def _process(self, batch: SampleBatch, start: float) -> Result:
        model, (length, stride, max_gap, n_features) = self.model, self._geometry
        t, values, last, ts = batch.ts, batch.values, self._last_ts, batch.times
        n, stale = len(t), 0
        if last is not None and not (batch.ordered and (t[0] if ts is None else ts[0]) > last):  # stale ones lead
            fresh = t > last
            t, values, ts = t[fresh], values[fresh], None
            n, stale = len(t), n - len(t)
        if not n:
            self.stale_samples += stale
            return Result(model_version=model.model_version, stale=stale)
        self._room(n)
        hi, ring = self._hi, self._ring
        scratch = self._scratch
        if scratch is None or scratch.n != n:  # kept for the usual message size
            scratch = self._scratch = FeatureScratch(self._plan, n) if n <= SMALL_BATCH else None
        feature_rows(values.T, self._plan, ring[:, hi:hi + n], scratch)  # ring columns: scratch until the commit
        if ts is None:
            ts = t.tolist()
        ends, run_len = window_ends(ts, last, self._run_len, length, stride, max_gap, batch.ordered)
        if ends:
            k = len(ends)
            x = self._input((k, n_features, len(self._offsets)))
            columns = (hi + np.asarray(ends, dtype=np.intp))[:, None] + self._offsets  # (k, width)
            x[...] = ring[:, np.maximum(columns, 0)].transpose(1, 0, 2)
            unseen = columns < self._lo  # context before the first sample kept: missing
            if unseen.any():
                x[np.broadcast_to(unseen[:, None, :], x.shape)] = np.nan
            scores, contributions, missing = model.score(x)
            operating = self._operating(x, hi, ends)

        # Commit: nothing above touched the state, so a failure there leaves it as it was.
        self._lo = max(self._lo, hi + n - self._keep)
        self._hi = hi + n
        self._run_len, self._last_ts = run_len, ts[-1]
        self.samples_seen += n
        self.stale_samples += stale
        version = self._version
        if not ends:
            return Result(model_version=version, accepted=n, stale=stale)
        t_ends = [ts[e] for e in ends]
        events = self.tracker.step_many(t_ends, scores, contributions, missing, operating)
        now = time.perf_counter()
        latency = now - start
        windows = WindowRecords(t_ends, scores, contributions, missing, operating, version, latency)
        self.latencies.extend([latency] * k)
        self._decisions.extend([now] * k)
        self.windows_scored += k
        return Result(windows, events, version, n, stale)

    # -- model swap and shutdown -------------------------------------------------------------------
    def swap(self, new_model: EdgeModel) -> Result:
        """Score from the next window on with `new_model` (load and warm it up first: EdgeModel.load).

        An open episode is interrupted (its threshold belongs to the old model; the condition has not
        ended) and the episode tracker restarts with the new threshold and rule. The ring buffer is kept
        when the feature pipeline is the same (features, inputs, window geometry), so no sample is
        scored twice or skipped; otherwise the run restarts. Returns the interrupt event (if any),
        attributed to the outgoing model's version."""
        with self._lock:
            result = Result(events=self.tracker.interrupt(), model_version=self.model.model_version)
            keep = pipeline_key(new_model.spec) == pipeline_key(self.model.spec)
            self.model = new_model
            self.tracker = self._new_tracker(new_model)
            self._bind_operating()
            if not keep:
                self._reset_buffer()
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
