"""Data capture: the raw samples around every episode and a bounded random sample of normal operation, kept on
disk and uploaded to `raw/capture/<thing>/` (shared/capture.py names the files; docs/fleet.md "Data capture").

* CaptureConfig: the component configuration's `capture` section.
* CaptureRecorder: runs on the detector's worker thread after each scored message (`observe`). It keeps the
  recent samples, and when an episode opens it captures from `episodeBeforeSeconds` before the episode's start
  until `episodeAfterSeconds` after its close (a long episode in parts of at most `episodeMaxSeconds`; an
  interrupted one, a model change or a gap too long for one file ends the part there). Outside captures, every
  `normalSegmentSeconds` of samples is one segment offered to the reservoir sample of normal operation
  (`normalMinutesPerDay`, over periods of `reservoirPeriodSeconds`). Its work per message is a few list and
  float operations: joining, formatting and writing happen on the store's writer thread (capture_store.py).
* Capture: the recorder, the store and the upload worker (upload.py) behind the app's one hook.

A file holds the samples of one model version: the version that scored a segment, or that opened the episode
(its before-context may reach back to samples the previous version scored).
"""

from __future__ import annotations

import logging
import math
import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.capture import EPISODE, NORMAL
from shared.errors import ConfigurationError
from shared.messages import CaptureSummary
from shared.ml.episodes import EpisodeEvent
from shared.ml.spec import FeatureSpec

from .capture_store import CaptureJob, CaptureStore, Chunk
from .pipeline import Result
from .upload import S3Uploader, Uploader, UploadWorker

log = logging.getLogger("detector.capture")

DAY_S = 86400.0
MB = 1024 * 1024
DEFAULTS: dict[str, Any] = {
    "enabled": True, "episodeBeforeSeconds": 60, "episodeAfterSeconds": 60, "episodeMaxSeconds": 1800,
    "normalMinutesPerDay": 10, "normalSegmentSeconds": 60, "reservoirPeriodSeconds": 86400,
    "maxBufferMegabytes": 256, "bucket": "",
}
_RANGES = {  # key -> (attribute, low, high)
    "episodeBeforeSeconds": ("before_s", 0, 3600), "episodeAfterSeconds": ("after_s", 0, 3600),
    "episodeMaxSeconds": ("episode_max_s", 10, 86400), "normalMinutesPerDay": ("normal_minutes_per_day", 0, 1440),
    "normalSegmentSeconds": ("segment_s", 1, 3600), "reservoirPeriodSeconds": ("period_s", 60, 7 * DAY_S),
    "maxBufferMegabytes": ("max_buffer_mb", 1, 1_000_000),
}


@dataclass(frozen=True)
class CaptureConfig:
    enabled: bool = True
    before_s: float = 60.0
    after_s: float = 60.0
    episode_max_s: float = 1800.0
    normal_minutes_per_day: float = 10.0
    segment_s: float = 60.0
    period_s: float = DAY_S
    max_buffer_mb: float = 256.0
    bucket: str = ""  # on AWS: the data bucket (the rollout's configuration merge sets it)

    @property
    def segments_per_period(self) -> int:
        """Reservoir slots: normalMinutesPerDay over one period, in segments."""
        return math.floor(self.normal_minutes_per_day * 60 * (self.period_s / DAY_S) / self.segment_s + 1e-9)

    @property
    def max_bytes(self) -> int:
        return int(self.max_buffer_mb * MB)

    @classmethod
    def from_dict(cls, raw: Any, where: str = "configuration") -> CaptureConfig:
        """Validate the `capture` section (missing keys take DEFAULTS); the error names the key and the reason."""
        if not isinstance(raw, Mapping):
            raise ConfigurationError(f"{where}: capture must be an object, got {type(raw).__name__}")
        unknown = sorted(set(raw) - set(DEFAULTS))
        if unknown:
            raise ConfigurationError(f"{where}: capture has unknown key(s) {unknown}; known: {sorted(DEFAULTS)}")
        doc = {**DEFAULTS, **raw}
        if not isinstance(doc["enabled"], bool):
            raise ConfigurationError(f"{where}: capture.enabled must be true or false, got {doc['enabled']!r}")
        bucket = doc["bucket"]
        if not isinstance(bucket, str) or len(bucket) > 63 or "/" in bucket:
            raise ConfigurationError(f"{where}: capture.bucket must be a bucket name (\"\" = none), got {bucket!r}")
        values: dict[str, Any] = {"enabled": doc["enabled"], "bucket": bucket}
        for key, (attr, low, high) in _RANGES.items():
            value = doc[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
                raise ConfigurationError(f"{where}: capture.{key} must be a number in [{low:g}, {high:g}], "
                                         f"got {value!r}")
            values[attr] = float(value)
        config = cls(**values)
        if config.normal_minutes_per_day > 0 and config.segments_per_period < 1:
            raise ConfigurationError(
                f"{where}: capture.normalMinutesPerDay {config.normal_minutes_per_day:g} over a "
                f"reservoirPeriodSeconds of {config.period_s:g} s is less than one normalSegmentSeconds of "
                f"{config.segment_s:g} s: lengthen the period or shorten the segment")
        return config


_UNSET = object()


@dataclass
class _Episode:
    episode_id: str
    model_version: int | None
    part: int
    chunks: list[Chunk] = field(default_factory=list)
    first_t: float | None = None  # the part's first sample
    closed_at: float | None = None  # set at the close: capture goes on until closed_at + after_s


class CaptureRecorder:
    """What to capture (worker thread only). Hands finished captures to the store as jobs."""

    def __init__(self, store: CaptureStore, config: CaptureConfig) -> None:
        self.store = store
        self.config = config
        self._floor: float | None = store.resume_after  # samples up to it were captured before a restart
        self._recent: deque[Chunk] = deque()
        self._recent_end: deque[float] = deque()
        self._spec: FeatureSpec | None = None
        self._version: object = _UNSET
        self._last_t: float | None = None
        self._episode: _Episode | None = None
        self._segment_start: float | None = None
        self._keep_s = 0.0
        self._max_gap_s = math.inf

    # -- the hook ------------------------------------------------------------------------------------------
    def observe(self, result: Result, spec: FeatureSpec) -> None:
        batch = result.batch
        if batch is None or not len(batch.ts):
            return
        ts, values = batch.ts, batch.values
        if self._floor is not None:  # until the stream passes what files written before a restart hold
            if ts[0] <= self._floor:  # redelivered: already in a file
                keep = ts > self._floor
                ts, values = ts[keep], values[keep]
                if not len(ts):
                    return
            self._floor = None  # samples only move forward from here (the pipeline drops stale ones)
        if spec is not self._spec or result.model_version != self._version:
            self._switch(spec, result.model_version)
        first, last = float(ts[0]), float(ts[-1])
        if self._last_t is not None and last - self._last_t > self._max_gap_s:
            self._split_at_gaps(ts, values)
        else:
            self._take((ts, values), last)
        if result.events:
            self._on_events(result.events)
        episode = self._episode
        if episode is not None:
            if episode.closed_at is not None and last >= episode.closed_at + self.config.after_s:
                self._finish(until=episode.closed_at + self.config.after_s)
            elif episode.first_t is not None and last - episode.first_t >= self.config.episode_max_s:
                self._finish(until=None, next_part=True)
        elif self._segment_start is None:
            self._segment_start = first
        elif last - self._segment_start >= self.config.segment_s:
            self._emit_segment()

    def close(self) -> None:
        """The detector stops: an episode capture ends with what it has; a partial segment is not kept."""
        if self._episode is not None:
            self._finish(until=None)
        self._segment_start = None

    def reconfigure(self, config: CaptureConfig) -> None:
        self.config = config
        if self._spec is not None:
            self._keep_s = self._keep_for(self._spec)

    # -- internals -----------------------------------------------------------------------------------------
    def _take(self, chunk: Chunk, last: float) -> None:
        self._recent.append(chunk)
        self._recent_end.append(last)
        self._last_t = last
        horizon = last - self._keep_s
        while self._recent_end and self._recent_end[0] < horizon:
            self._recent.popleft()
            self._recent_end.popleft()
        episode = self._episode
        if episode is not None:
            episode.chunks.append(chunk)
            if episode.first_t is None:
                episode.first_t = float(chunk[0][0])

    def _split_at_gaps(self, ts: np.ndarray, values: np.ndarray) -> None:
        """A gap longer than a file may hold (validation.max_gap_s): the segment restarts, the episode's part
        ends before it and the next part starts after it."""
        previous = ts[0] if self._last_t is None else self._last_t
        cuts = np.flatnonzero(np.diff(ts, prepend=previous) > self._max_gap_s).tolist()
        start = 0
        for cut in [*cuts, len(ts)]:  # cut i: the gap lies before ts[i]
            if cut > start:
                self._take((ts[start:cut], values[start:cut]), float(ts[cut - 1]))
            if cut < len(ts):
                self._on_gap()
            start = cut

    def _on_gap(self) -> None:
        self._segment_start = None
        self._recent.clear()  # no context across the gap: a file holding it would fail validation
        self._recent_end.clear()
        if self._episode is not None and self._episode.chunks:
            self._finish(until=None, next_part=True)

    def _keep_for(self, spec: FeatureSpec) -> float:
        """Recent samples kept: an episode's start lies up to `within_s` before it opens, its context before that;
        a normal segment is taken from them too."""
        context = self.config.before_s + spec.episodes.within_s + spec.window_seconds
        return max(context, self.config.segment_s) + 5.0

    def _switch(self, spec: FeatureSpec, version: int | None) -> None:
        """Another model: an episode capture ends (its samples were scored by the outgoing one); the segment
        restarts; recent samples of another feature spec are forgotten."""
        if self._episode is not None:
            self._finish(until=None)
        self._segment_start = None
        if spec is not self._spec and (self._spec is None or self._spec.columns != spec.columns
                                       or self._spec.input_columns != spec.input_columns):
            self._recent.clear()
            self._recent_end.clear()
            self._last_t = None
        self._spec, self._version = spec, version
        self._keep_s = self._keep_for(spec)
        self._max_gap_s = spec.validation.max_gap_s

    def _on_events(self, events: Sequence[EpisodeEvent]) -> None:
        for event in events:
            episode_id = str(event.episode["episode_id"])
            current = self._episode
            if event.kind == "open":
                start = float(event.episode["started_at"]) - self.config.before_s
                if current is not None:  # the previous episode's after-context ends where this one's context starts
                    boundary = max(start, current.closed_at if current.closed_at is not None else start)
                    self._finish(until=boundary)
                self._segment_start = None
                self._episode = self._open(episode_id, start)
            elif current is not None and current.episode_id == episode_id:
                if event.kind == "close":
                    current.closed_at = float(event.at)
                elif event.kind == "interrupt":
                    self._finish(until=None)

    def _open(self, episode_id: str, start: float) -> _Episode:
        version = None if self._version is _UNSET else self._version
        episode = _Episode(episode_id, version, 1)  # type: ignore[arg-type]
        for ts, values in self._recent:
            if ts[-1] < start:
                continue
            if ts[0] < start:
                keep = ts >= start
                ts, values = ts[keep], values[keep]
            episode.chunks.append((ts, values))
        if episode.chunks:
            episode.first_t = float(episode.chunks[0][0][0])
        return episode

    def _finish(self, until: float | None, next_part: bool = False) -> None:
        episode, self._episode = self._episode, None
        if episode is None or self._spec is None:
            return
        if episode.chunks:
            self.store.submit(CaptureJob(EPISODE, episode.chunks, self._spec, episode.model_version, until,
                                         episode.episode_id, episode.part))
        if next_part:
            self._episode = _Episode(episode.episode_id, episode.model_version, episode.part + 1,
                                     closed_at=episode.closed_at)

    def _emit_segment(self) -> None:
        start, self._segment_start = self._segment_start, None
        if self.config.segments_per_period < 1 or self._spec is None or start is None:
            return
        chunks = [c for c, end in zip(self._recent, self._recent_end, strict=True) if end >= start]
        version = None if self._version is _UNSET else self._version
        self.store.submit(CaptureJob(NORMAL, chunks, self._spec, version))  # type: ignore[arg-type]


class Capture:
    """The detector's data capture: recorder (worker thread), store (writer thread), upload worker."""

    def __init__(self, thing: str, root: str | Path, config: CaptureConfig, uploader: Uploader | None,
                 rng: random.Random | None = None, backoff_max_s: float = 60.0) -> None:
        self.config = config
        self.store = CaptureStore(root, thing, config.max_bytes, config.segments_per_period, config.period_s, rng)
        self.recorder = CaptureRecorder(self.store, config)
        if isinstance(uploader, S3Uploader):
            uploader.bucket = config.bucket
        self.worker = UploadWorker(self.store, thing, uploader, backoff_max_s=backoff_max_s) \
            if uploader is not None else None
        self.failures = 0

    def start(self) -> Capture:
        self.store.start()
        if self.worker is not None:
            self.worker.start()
        return self

    def observe(self, result: Result, spec: FeatureSpec) -> None:
        """After each handled message (worker thread). A failure here never reaches scoring."""
        if not self.config.enabled:
            return
        try:
            self.recorder.observe(result, spec)
        except Exception:  # capture is best effort: scoring goes on
            self.failures += 1
            log.exception("data capture failed on a message")

    def reconfigure(self, config: CaptureConfig) -> None:
        if config == self.config:
            return
        if self.config.enabled and not config.enabled:
            self.recorder.close()
        self.config = config
        self.recorder.reconfigure(config)
        s = self.store
        s.max_bytes, s.segments_per_period, s.period_s = config.max_bytes, config.segments_per_period, config.period_s
        if self.worker is not None and isinstance(self.worker.uploader, S3Uploader):
            self.worker.uploader.bucket = config.bucket

    def stop(self, timeout: float = 10.0) -> None:
        """Close the open capture, write what is queued, stop uploading (what is left goes after the restart)."""
        self.recorder.close()
        self.store.stop(timeout)
        if self.worker is not None:
            self.worker.stop(timeout)

    def stats(self) -> dict[str, Any]:
        return {**self.store.stats(), "capture_failures": self.failures}

    def summary(self) -> CaptureSummary:
        """The health message's `capture` block."""
        s = self.stats()
        return CaptureSummary(pending_files=s["capture_pending"], pending_bytes=s["capture_bytes"],
                              written=s["capture_written"], uploaded=s["capture_uploaded"],
                              dropped_normal=s["capture_dropped_normal"], dropped_episode=s["capture_dropped_episode"],
                              failures=s["capture_failures"])
