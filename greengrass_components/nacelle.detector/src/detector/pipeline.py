"""One turbine's streaming pipeline: samples -> features -> windows -> ONNX scores -> episodes.

Windows are aligned exactly like shared.ml.features.window_starts on the whole series: a run of
samples restarts after a gap longer than spec.windows.max_gap_s, the first window ends at the
run's `length`-th sample and then one every `stride` samples. So the detector scores the same
windows as `nacelle evaluate` does offline, and every sample takes part. All times are sample
timestamps; the wall clock is used only to measure latency.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from shared.ml.episodes import EpisodeEvent, EpisodeTracker
from shared.ml.features import compute_features, operating_mask
from shared.ml.spec import FeatureSpec

from .messages import BadMessage, Sample, parse_sensor_message
from .scoring import EdgeModel

LATENCY_HISTORY = 4096  # per-window latencies kept for the p50/p99 of health messages


@dataclass(frozen=True)
class WindowRecord:
    t_end: float  # timestamp of the window's last sample
    errors: np.ndarray  # (F,) per-feature reconstruction error
    missing: np.ndarray  # (F,) per-feature fraction of missing samples
    operating: bool  # inside the spec's operating regime (else counted as a clean window)
    model_version: int | None
    latency_s: float  # from the start of handling the message to this window's episode decision


@dataclass
class Result:
    windows: list[WindowRecord] = field(default_factory=list)
    events: list[EpisodeEvent] = field(default_factory=list)
    model_version: int | None = None
    accepted: int = 0  # samples taken into the buffer
    stale: int = 0  # samples at or before the last one seen (redelivered), dropped


def pipeline_key(spec: FeatureSpec) -> tuple[object, ...]:
    """What must match for a ring buffer of features to stay valid across a model swap."""
    return (spec.features, spec.derived, spec.input_columns, spec.windows)


class TurbinePipeline:
    """Not tied to any transport: feed it payloads (`handle`) or parsed samples (`handle_samples`).

    Thread-safe: `handle`, `swap` and `flush` serialise on one lock, so a swap always falls
    between two windows.
    """

    def __init__(self, turbine_id: str, model: EdgeModel) -> None:
        self.turbine_id = turbine_id
        self.model = model
        self._lock = threading.Lock()
        self.tracker = self._new_tracker(model)
        self._reset_buffer()
        self.windows_scored = 0
        self.samples_seen = 0
        self.stale_samples = 0
        self.bad_messages = 0
        self.swaps = 0
        self.latencies: deque[float] = deque(maxlen=LATENCY_HISTORY)
        self._decisions: deque[float] = deque(maxlen=LATENCY_HISTORY)  # monotonic time of each window

    # -- state -------------------------------------------------------------------------------------
    def _new_tracker(self, model: EdgeModel) -> EpisodeTracker:
        return EpisodeTracker(self.turbine_id, model.rule, model.thresholds, list(model.spec.features))

    def _reset_buffer(self) -> None:
        spec = self.model.spec
        self._buf = np.zeros((0, spec.n_features), dtype=np.float32)  # last <= length rows of the run
        self._run_len = 0  # samples in the current gap-free run
        self._last_ts: float | None = None

    @property
    def model_version(self) -> int | None:
        return self.model.model_version

    def snapshot(self) -> tuple[object, ...]:
        """The scoring state (buffer, alignment, episode history), for tests and diagnostics."""
        t = self.tracker
        return (self._buf.tobytes(), self._buf.shape, self._run_len, self._last_ts, self.windows_scored,
                self.samples_seen, t._last_t, tuple((a, tuple(sorted(b.items())), tuple(c)) for a, b, c in t._recent),
                t.current.snapshot() if t.current else None, len(t.closed), self.model_version)

    # -- input ---------------------------------------------------------------------------------------
    def handle(self, payload: bytes, max_bytes: int | None = None) -> Result:
        """Parse one sensor message and process its samples. BadMessage leaves the scoring state as
        it was (only the bad_messages counter moves)."""
        start = time.perf_counter()
        with self._lock:
            try:
                kwargs = {} if max_bytes is None else {"max_bytes": max_bytes}
                samples = parse_sensor_message(payload, self.model.spec, self.turbine_id, **kwargs)
            except BadMessage:
                self.bad_messages += 1
                raise
            return self._process(samples, start)

    def handle_samples(self, samples: list[Sample]) -> Result:
        start = time.perf_counter()
        with self._lock:
            return self._process(samples, start)

    def _process(self, samples: list[Sample], start: float) -> Result:
        model, spec = self.model, self.model.spec
        length, stride, max_gap = spec.windows.length, spec.windows.stride, spec.windows.max_gap_s
        result = Result(model_version=model.model_version)
        last = -math.inf if self._last_ts is None else self._last_ts
        fresh = [s for s in samples if s.ts > last]
        result.stale = len(samples) - len(fresh)
        if not fresh:
            self.stale_samples += result.stale
            return result
        t = np.fromiter((s.ts for s in fresh), dtype=np.float64, count=len(fresh))
        raw = np.array([s.values for s in fresh], dtype=np.float64).reshape(len(fresh), -1)
        new = compute_features({c: raw[:, i] for i, c in enumerate(spec.input_columns)}, spec)

        # Walk the new samples: where does the run restart, and which samples end a window?
        rows = np.concatenate([self._buf, new])
        offset = len(self._buf)  # index of the first new sample in `rows`
        run_start = 0  # index in `rows` where the current run begins
        run_len, prev = self._run_len, self._last_ts
        ends: list[int] = []
        for j in range(len(fresh)):
            ts = float(t[j])
            if prev is not None and ts - prev > max_gap:
                run_len, run_start = 0, offset + j
            run_len += 1
            prev = ts
            if run_len >= length and (run_len - length) % stride == 0:
                ends.append(offset + j)

        errors = missing = np.zeros((0, spec.n_features), dtype=np.float32)
        operating = np.zeros(0, dtype=bool)
        if ends:
            view = np.lib.stride_tricks.sliding_window_view(rows, length, axis=0)  # (R-L+1, F, L)
            x = np.ascontiguousarray(view[[e - length + 1 for e in ends]], dtype=np.float32)
            errors, missing = model.score(x)
            operating = operating_mask(x, spec)

        # Commit: nothing above touched the state, so a failure there leaves it as it was.
        self._buf = rows[max(run_start, len(rows) - length):]
        self._run_len, self._last_ts = run_len, prev
        self.samples_seen += len(fresh)
        self.stale_samples += result.stale
        result.accepted = len(fresh)
        for i, e in enumerate(ends):
            t_end = float(t[e - offset])
            result.events += self.tracker.step(t_end, errors[i], missing[i], bool(operating[i]))
            now = time.perf_counter()
            result.windows.append(WindowRecord(t_end, errors[i], missing[i], bool(operating[i]),
                                               model.model_version, now - start))
            self.latencies.append(now - start)
            self._decisions.append(time.monotonic())
        self.windows_scored += len(ends)
        return result

    # -- model swap and shutdown -------------------------------------------------------------------
    def swap(self, new_model: EdgeModel) -> Result:
        """Score from the next window on with `new_model` (load and warm it up first: EdgeModel.load).

        An open episode is closed at the last scored window (its thresholds belong to the old model)
        and the episode tracker restarts with the new thresholds and rule. The ring buffer is kept
        when the feature pipeline is the same (features, inputs, window geometry), so no sample is
        scored twice or skipped; otherwise the run restarts. Returns the close event (if any),
        attributed to the outgoing model's version."""
        with self._lock:
            result = Result(events=self.tracker.flush(), model_version=self.model.model_version)
            keep = pipeline_key(new_model.spec) == pipeline_key(self.model.spec)
            self.model = new_model
            self.tracker = self._new_tracker(new_model)
            if not keep:
                self._reset_buffer()
            self.swaps += 1
            return result

    def flush(self) -> Result:
        """Close the open episode (end of stream or shutdown)."""
        with self._lock:
            return Result(events=self.tracker.flush(), model_version=self.model.model_version)

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
        now = time.monotonic()
        recent = [d for d in self._decisions if now - d <= horizon_s]
        return len(recent) / horizon_s
