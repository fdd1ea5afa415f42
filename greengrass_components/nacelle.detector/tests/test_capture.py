"""Data capture on the device: what is captured, the files (valid, never overlapping), the reservoir, the bounded
buffer and its drop policy, kill -9 mid-write, restart resume, upload retries, and the app's hook."""

from __future__ import annotations

import itertools
import json
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import cast

import numpy as np
import pytest
from detector.app import DetectorApp
from detector.capture import DEFAULTS as CAPTURE_DEFAULTS
from detector.capture import Capture, CaptureConfig
from detector.capture_csv import spec_csv
from detector.capture_store import CaptureJob, CaptureStore
from detector.config import DetectorConfig, FileConfigSource
from detector.messages import SampleBatch, encode, sensor_message
from detector.pipeline import Result
from detector.scoring import EdgeModel
from detector.spool import Spool
from detector.upload import UploadError, UploadWorker

from shared.capture import EPISODE, NORMAL, CaptureName
from shared.errors import ConfigurationError
from shared.messages import HealthMessage, decode
from shared.ml.episodes import EpisodeEvent, EventKind
from shared.ml.spec import default_spec
from shared.ml.validation import load_frames, validate_bytes

SPEC = default_spec().with_drift(())  # resolved, as a trained model carries it
THING = "turbine-07"
RATE = 20
T0 = 1_700_000_400.0  # a multiple of 600 s: reservoir periods of 600 s start on it
C = len(SPEC.input_columns)
SRC = Path(__file__).resolve().parents[1] / "src"
# k = 288 min/day * (600 s / 1 day) / 60 s = 2 segments of 60 s per 600-s period
SMALL = CaptureConfig(before_s=30, after_s=20, segment_s=60, period_s=600, normal_minutes_per_day=288)


def samples(t: float, seconds: float = 1.0, level: float = 5.0) -> SampleBatch:
    ts = t + np.arange(int(seconds * RATE)) / RATE
    values = np.empty((len(ts), C))
    values[:] = np.arange(1, C + 1) * level
    values[:, 0] += ts - T0  # every sample distinct: round trips are checked value by value
    return SampleBatch(np.arange(len(ts)), ts, values)


def event(kind: EventKind, at: float, started_at: float, episode: str = "turbine-07-1") -> EpisodeEvent:
    return EpisodeEvent(kind, T0 + at, {"episode_id": episode, "started_at": T0 + started_at})


def feed(capture: Capture, start: int, stop: int, events: dict[int, list[EpisodeEvent]] | None = None,
         version: int = 3, skip: Callable[[int], bool] = lambda s: False) -> None:
    """One message per second of stream time from T0 + start to T0 + stop."""
    for s in range(start, stop):
        if not skip(s):
            capture.observe(Result(events=(events or {}).get(s, []), model_version=version, batch=samples(T0 + s)),
                            SPEC)


def files(root: Path, folder: str = "outbox") -> list[tuple[CaptureName, bytes]]:
    out = []
    for path in sorted((root / folder).iterdir()):
        name = CaptureName.parse(path.name)
        assert name is not None, path.name
        out.append((name, path.read_bytes()))
    return out


def assert_valid_and_disjoint(captured: list[tuple[CaptureName, bytes]]) -> None:
    """Every file passes the same validation data_arrival applies, and no two overlap in time."""
    for name, data in captured:
        report = validate_bytes(data, name.file_name, SPEC)
        assert report.ok, report.summary()
        assert report.turbines == [THING]
        assert abs(report.rows - (round((name.end - name.start) * RATE) + 1)) <= 1  # no sample missing inside
    spans = sorted((n.start, n.end) for n, _ in captured)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start > end, spans


@pytest.fixture
def capture(tmp_path: Path) -> Iterator[Capture]:
    cap = Capture(THING, tmp_path / "capture", SMALL, None, rng=random.Random(7)).start()
    yield cap
    cap.stop()


# -- configuration ---------------------------------------------------------------------------------------------
def test_configuration_defaults_and_errors_name_the_key() -> None:
    config = DetectorConfig.from_dict({}, THING).capture
    assert (config.before_s, config.after_s, config.segments_per_period, config.max_bytes) == \
        (60.0, 60.0, 10, 256 * 1024 * 1024)
    assert DetectorConfig.from_dict({"capture": {"episodeBeforeSeconds": 5}}, THING).capture.before_s == 5.0
    bad = [({"episodeBeforeSeconds": -1}, r"capture\.episodeBeforeSeconds must be a number in \[0, 3600\]"),
           ({"maxBufferMegabytes": True}, r"capture\.maxBufferMegabytes must be a number"),
           ({"enabled": "yes"}, r"capture\.enabled must be true or false"),
           ({"bucket": "a/b"}, r"capture\.bucket must be a bucket name"),
           ({"normalMinutes": 3}, r"capture has unknown key\(s\) \['normalMinutes'\]"),
           ({"reservoirPeriodSeconds": 600}, r"less than one normalSegmentSeconds")]
    for raw, message in bad:
        with pytest.raises(ConfigurationError, match=message):
            DetectorConfig.from_dict({"capture": raw}, THING, "cfg.json")


def test_the_recipe_defaults_are_the_detectors() -> None:
    import yaml

    recipe = yaml.safe_load((SRC.parent / "recipe.yaml").read_text())
    assert recipe["ComponentConfiguration"]["DefaultConfiguration"]["capture"] == CAPTURE_DEFAULTS
    assert recipe["ComponentDependencies"]["aws.greengrass.TokenExchangeService"]["DependencyType"] == "SOFT"


@pytest.mark.parametrize("time_format, delimiter", [("iso8601", ","), ("epoch_s", ","), ("epoch_ms", ","),
                                                     ("iso8601", ";"), ("iso8601", " ")])
def test_files_read_back_as_the_samples(time_format: str, delimiter: str) -> None:
    spec = replace(SPEC, time_format=time_format, delimiter=delimiter)
    rng = np.random.default_rng(1)
    ts = T0 + np.arange(400) / RATE + rng.random(400) * 1e-3
    values = rng.random((400, C)) * 100 - 50
    values[:, 1] = np.round(values[:, 1]) + 220  # whole numbers
    values[:, 2] *= 1e-6  # small ones
    values[7, 0] = 1e20  # a glitch: its column keeps its other values' precision
    values[5, 3] = np.nan  # a missing reading
    [frame], _ = load_frames(spec_csv(spec, THING, ts, values), "x.csv", spec)
    back = np.column_stack([frame.values[c] for c in spec.input_columns])
    assert np.isnan(back[5, 3]) and np.isnan(back).sum() == 1 and frame.turbine_id == THING
    assert np.array_equal(back[:, 1], values[:, 1])
    scale = np.nanmax(np.abs(np.where(np.abs(values) > 1e10, np.nan, values)), axis=0)
    assert np.nanmax(np.abs(back - values) / np.maximum(scale, np.abs(values))) <= 1e-9  # 10 significant digits
    assert np.abs(frame.t - ts).max() < 2e-6  # to the microsecond


# -- what is captured --------------------------------------------------------------------------------------------
def test_an_episode_is_captured_with_its_context_and_normal_operation_is_sampled(capture: Capture) -> None:
    # the episode's first flagged window ends at 292 s; it opens at 300 s and closes at 340 s
    feed(capture, 0, 1290, {300: [event("open", 300, 292)], 340: [event("close", 340, 292)]})
    capture.store.flush()
    captured = files(capture.store.root)
    assert_valid_and_disjoint(captured)
    episodes = [(n, d) for n, d in captured if n.kind == EPISODE]
    normal = [n for n, _ in captured if n.kind == NORMAL]
    [(name, data)] = episodes
    assert (name.start - T0, name.end - T0) == (292 - 30, 340 + 20)  # 30 s before its start to 20 s after its close
    assert (name.episode_id, name.model_version, name.part) == ("turbine-07-1", 3, 1)
    # two of the ten segments of each of the first two periods (the third's waits in the reservoir)
    assert [int((n.start - T0) // 600) for n in normal] == [0, 0, 1, 1]
    assert capture.store.stats()["capture_slots"] == 1
    assert all(n.end < name.start or n.start > name.end for n in normal)  # no normal sample near the episode
    lines = data.decode().splitlines()
    assert sorted(lines[0].split(",")) == sorted(SPEC.columns)  # the spec's columns (a header may order them freely)
    row = dict(zip(lines[0].split(","), lines[1].split(","), strict=True))
    first = samples(T0 + 262).values[0]
    assert row["turbineId"] == THING and row["nanoId"] == "" and row["gearboxtemp"] == ""  # not read by the model
    assert [float(row[c]) for c in SPEC.input_columns] == first.tolist()  # the values, exactly


def test_long_episodes_split_into_parts_and_a_model_change_ends_the_capture(capture: Capture) -> None:
    config = CaptureConfig(before_s=10, after_s=10, episode_max_s=100, segment_s=60, period_s=600,
                           normal_minutes_per_day=288)
    capture.reconfigure(config)
    feed(capture, 0, 400, {50: [event("open", 50, 45)], 300: [event("close", 300, 45)]})
    # a second episode, interrupted by a swap to model 4 before it closes
    feed(capture, 400, 430, {410: [event("open", 410, 405, "turbine-07-2")]})
    feed(capture, 430, 440, version=4)
    capture.store.flush()
    captured = files(capture.store.root)
    assert_valid_and_disjoint(captured)
    parts = [n for n, _ in captured if n.episode_id == "turbine-07-1"]
    assert [p.part for p in parts] == [1, 2, 3]
    assert parts[0].start - T0 == 35 and parts[-1].end - T0 == 310
    assert max(p.end - p.start for p in parts) <= 101
    [second] = [n for n, _ in captured if n.episode_id == "turbine-07-2"]
    assert second.model_version == 3 and second.end - T0 == pytest.approx(429.95)


def test_a_gap_too_long_for_one_file_splits_the_capture(capture: Capture) -> None:
    gap = set(range(320, 360))  # 40 s without samples: more than validation.max_gap_s (30 s)
    feed(capture, 0, 420, {300: [event("open", 300, 292)], 370: [event("close", 370, 292)]}, skip=gap.__contains__)
    capture.store.flush()
    captured = files(capture.store.root)
    assert_valid_and_disjoint(captured)  # neither part holds the gap
    parts = [n for n, _ in captured if n.kind == EPISODE]
    assert [(p.part, p.start - T0, round(p.end - T0, 2)) for p in parts] == [(1, 262, 319.95), (2, 360, 390)]


def test_reservoir_sampling_keeps_k_of_n_segments_uniformly(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path, THING, 1 << 30, 2, 600, random.Random(3))
    kept = np.zeros(5)
    for period in range(60):  # 5 segments per period, 2 slots
        for i in range(5):
            t = T0 + period * 600 + i * 100
            segment = samples(t, 10)
            job = store._choose(CaptureJob(NORMAL, [(segment.ts, segment.values)], SPEC, 3))
            if job is not None:
                store.write(job)
        slots = [CaptureName.parse(s) for s in store._state["slots"] if s]
        assert len(slots) == 2
        for name in slots:
            assert name is not None
            kept[round((name.start - T0 - period * 600) / 100)] += 1
    # each segment is kept with probability 2/5: 24 of 60 periods expected (sd 3.8)
    assert kept.sum() == 120 and all(12 <= k <= 36 for k in kept), kept
    assert len(list((tmp_path / "outbox").iterdir())) == 118  # 59 finished periods x 2


def sampled(store: CaptureStore, job: CaptureJob) -> CaptureJob:
    chosen = store._choose(job)
    assert chosen is not None, "the reservoir has free slots"
    return chosen


# -- the bounded buffer --------------------------------------------------------------------------------------------
def test_a_full_buffer_drops_normal_files_first_oldest_first_then_episodes(tmp_path: Path) -> None:
    def job(kind: str, t: float, episode: str | None = None) -> CaptureJob:
        s = samples(T0 + t, 10, level=1.0)
        s.values[:] = 1.5  # every file the same size
        return CaptureJob(kind, [(s.ts, s.values)], SPEC, 3, episode_id=episode)

    probe = CaptureStore(tmp_path / "probe", THING, 1 << 30, 3, 600).write(job(EPISODE, 0, "e0"))
    assert probe is not None
    size = len(probe.read_bytes())
    store = CaptureStore(tmp_path / "c", THING, int(3.5 * size), 5, 86400, random.Random(1))
    for t in (0, 20, 40):
        store.write(sampled(store, job(NORMAL, t)))
    store.finalize_period()
    for i, t in enumerate((100, 120, 140, 160)):
        store.write(job(EPISODE, t, f"e{i + 1}"))
    assert store.write(sampled(store, job(NORMAL, 200))) is None  # only episodes: not kept
    names = [CaptureName.parse(p.name) for p in sorted((tmp_path / "c" / "outbox").iterdir())]
    assert [n.episode_id for n in names if n] == ["e2", "e3", "e4"]
    stats = store.stats()
    assert (stats["capture_dropped_normal"], stats["capture_dropped_episode"]) == (4, 1)
    assert stats["capture_bytes"] <= 3.5 * size


# -- crashes and restarts -------------------------------------------------------------------------------------------
WRITER = textwrap.dedent("""
    import os, sys, time, numpy as np
    sys.path.insert(0, {src!r})
    from detector.capture_store import CaptureJob, CaptureStore
    from shared.ml.spec import default_spec
    spec = default_spec().with_drift(())
    store = CaptureStore({root!r}, "turbine-07", 1 << 40, 1, 86400)
    n = len(spec.input_columns)
    for i in range(1000):
        if i == {stall_at}:  # the next file's bytes are written, not yet fsynced and renamed: stall there
            os.fsync = lambda fd: (print("in fsync", flush=True), time.sleep(60))
        ts = {t0} + i * 4000 + np.arange(60000) / 20  # 50 min at 20 Hz: several MB per file
        store.write(CaptureJob("episode", [(ts, np.ones((len(ts), n)))], spec, 3, episode_id=f"e{{i}}"))
        print("written", flush=True)
""")


def _kill_writer(root: Path, run: int, stall_at: int, delay: float = 0.0) -> None:
    script = WRITER.format(src=str(SRC), root=str(root), t0=T0 + run * 10**7, stall_at=stall_at)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        wanted = b"in fsync" if stall_at < 1000 else b"written"
        while (line := proc.stdout.readline()).strip() != wanted:
            assert line, f"the writer ended early (exit status {proc.wait(10)})"
        time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


def test_kill_9_mid_write_never_leaves_a_partial_file_to_upload(tmp_path: Path) -> None:
    root = tmp_path / "capture"
    _kill_writer(root, 0, stall_at=1)  # killed with file e1 written to tmp/ but not renamed into the outbox
    assert [p.name.split("_")[4] for p in (root / "tmp").iterdir()] == ["e1"]
    _kill_writer(root, 1, stall_at=1000, delay=0.15)  # killed wherever it is (formatting, writing, renaming)
    store = CaptureStore(root, THING, 1 << 40, 1, 86400)  # the restart
    assert not list((root / "tmp").iterdir())
    pending = store.pending()
    assert len(pending) >= 2 and not [n for n in pending if n.split("_")[4] == "e1" and n.startswith("2023")]
    for name in pending:  # complete: 60000 samples, a valid file
        data = (root / "outbox" / name).read_bytes()
        assert data.count(b"\n") == 60001 and validate_bytes(data, name, SPEC).ok


def test_a_restart_resumes_uploads_and_the_reservoir_and_never_captures_a_sample_twice(tmp_path: Path) -> None:
    root = tmp_path / "capture"
    first = Capture(THING, root, SMALL, None, rng=random.Random(5)).start()
    feed(first, 0, 400, {300: [event("open", 300, 292)], 340: [event("close", 340, 292)]})
    first.stop()
    before = files(root)
    slots = json.loads((root / "state.json").read_text())["slots"]
    assert before and any(slots)
    second = Capture(THING, root, SMALL, None, rng=random.Random(6)).start()
    assert second.store.pending() == [n.file_name for n, _ in before]  # still to upload
    assert json.loads((root / "state.json").read_text())["slots"] == slots  # the period's sample goes on
    # the broker redelivers the last minute, then the stream goes on into the next periods
    feed(second, 340, 1300, {700: [event("open", 700, 690, "turbine-07-2")],
                             720: [event("close", 720, 690, "turbine-07-2")]})
    second.stop()
    after = files(root)
    assert_valid_and_disjoint(after)
    assert {n.file_name for n, _ in before} <= {n.file_name for n, _ in after}


# -- uploads ---------------------------------------------------------------------------------------------------------
class FlakyUploader:
    def __init__(self, failures: int, gate: threading.Event | None = None) -> None:
        self.failures, self.gate = failures, gate
        self.calls = 0
        self.stored: dict[str, bytes] = {}

    def put(self, key: str, data: bytes) -> None:
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(10)
        if self.calls <= self.failures:
            raise UploadError(f"broker/network down (call {self.calls})")
        assert key not in self.stored
        self.stored[key] = data


def test_uploads_retry_with_backoff_keep_order_and_never_block_scoring(tmp_path: Path) -> None:
    gate = threading.Event()
    uploader = FlakyUploader(failures=3, gate=gate)
    capture = Capture(THING, tmp_path / "capture", SMALL, uploader, rng=random.Random(2), backoff_max_s=0.05)
    assert capture.worker is not None
    capture.worker.backoff_min_s = 0.01
    capture.start()
    try:
        started = time.perf_counter()  # the uploader is stuck in its first call all along
        feed(capture, 0, 1290, {300: [event("open", 300, 292)], 340: [event("close", 340, 292)]})
        assert time.perf_counter() - started < 5.0  # about 1 ms per message even so; scoring never waits
        capture.store.flush()
        expected = {f"raw/capture/{THING}/{name}": data for name, data in
                    ((n.file_name, d) for n, d in files(capture.store.root))}
        assert len(expected) == 5
        gate.set()
        deadline = time.monotonic() + 10
        while capture.store.pending() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert uploader.stored == expected  # each once, byte for byte, after three failures
        assert list(uploader.stored) == sorted(expected)  # oldest first
        assert capture.worker is not None and capture.worker.failures == 3
        assert capture.stats()["capture_uploaded"] == 5
    finally:
        gate.set()
        capture.stop()


def test_an_upload_that_fails_keeps_the_file_for_the_next_attempt(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path, THING, 1 << 30, 1, 600)
    s = samples(T0, 20)
    store.write(CaptureJob(EPISODE, [(s.ts, s.values)], SPEC, 3, episode_id="e1"))
    worker = UploadWorker(store, THING, FlakyUploader(failures=1))
    with pytest.raises(UploadError):
        worker.run_once()
    assert len(store.pending()) == 1
    assert worker.run_once() and not store.pending() and not worker.run_once()


# -- the app's hook ---------------------------------------------------------------------------------------------------
class FakeModel:
    """The EdgeModel surface without ONNX: a window scores 10 (alarm) when its wind feature is above 20, else 0.1."""

    spec = SPEC
    threshold = 1.0
    rule = SPEC.rule()
    model_version = 3

    def offsets(self, turbine_id: str) -> np.ndarray:
        return np.zeros(SPEC.n_features, np.float32)

    def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        wind = SPEC.features.index("wind_speed_rps")
        scores = np.where(x[:, wind, :].mean(axis=1) > 20.0, 10.0, 0.1).astype(np.float32)
        f = SPEC.n_features
        return scores, np.full((len(x), f), 1.0 / f, np.float32), np.zeros((len(x), f), np.float32)


class Link:
    is_connected = True

    def __init__(self) -> None:
        self.callback: Callable[[bytes], None] | None = None

    def connect(self) -> None: ...
    def stop(self) -> None: ...
    def on_connection_change(self, callback: Callable[[bool], None]) -> None: ...
    def publish(self, topic: str, payload: bytes, timeout: float) -> None: ...

    def subscribe(self, topic: str, callback: Callable[[bytes], None]) -> None:
        self.callback = callback


def test_the_detector_captures_what_its_pipeline_scores(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model": {"version": "3.0.0"}, "healthIntervalSeconds": 3600,
                                  "capture": {"episodeBeforeSeconds": 20, "episodeAfterSeconds": 10}}))
    source = FileConfigSource(config, THING)
    source.start()
    capture = Capture(THING, tmp_path / "capture", source.current().capture, None)
    link = Link()
    app = DetectorApp(source, link, Spool(tmp_path / "spool.db", 100), tmp_path,
                      loader=lambda _: cast(EdgeModel, FakeModel()), capture=capture).start()
    try:
        wind = SPEC.input_columns.index("wind_speed_rps")
        for s in range(120):
            batch = samples(T0 + s)
            batch.values[:, wind] = 50.0 if 60 <= s < 75 else 5.0  # a 15-s fault
            rows = [{"seq": int(q), "ts": float(t), **dict(zip(SPEC.input_columns, map(float, v), strict=True))}
                    for q, t, v in zip(batch.seq + s * RATE, batch.ts, batch.values, strict=True)]
            assert link.callback is not None
            link.callback(sensor_message(THING, rows))
        deadline = time.monotonic() + 10
        while app.stats()["windows_scored"] < 2 * 115 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        app.stop(drain_s=0)
        source.stop()
    health = decode(HealthMessage, encode(app.health()))  # the buffer as the cloud stores it on the device
    assert health.capture is not None and health.capture.written >= 1 and health.capture.uploaded == 0
    assert health.capture.pending_files == health.capture.written and health.capture.pending_bytes > 0
    [(name, data)] = [(n, d) for n, d in files(tmp_path / "capture") if n.kind == EPISODE]
    assert validate_bytes(data, name.file_name, SPEC).ok
    assert name.model_version == 3 and name.episode_id is not None and name.episode_id.startswith(THING)
    assert 60 - 20 - 5 <= name.start - T0 <= 60 - 20 + 5  # the fault's start (windows lag it) minus the context
    assert name.end - T0 > 75  # its close (10 s clear) plus the after-context, or the stream's end
