"""The capture buffer on disk: captured samples become CSV files in the feature spec's format, kept until uploaded.

Layout under `<work>/capture/`:

* `outbox/<name>.csv`: finished files, uploaded oldest first and deleted once the upload succeeded;
* `reservoir/<name>.csv.npz`: this period's reservoir sample of normal operation, kept as numbers (a slot may be
  replaced several times in a period: only the segments kept to its end are formatted, into `outbox/<name>.csv`);
* `tmp/`: files being written. A file is written there, flushed and fsynced, then renamed into place, so a kill -9
  mid-write leaves only a temp file, which the next start removes: nothing partial is ever uploaded;
* `state.json` (written the same way): the reservoir (period, segments seen, slots), `finalized_until`, counters.

The reservoir (algorithm R over the period's normal segments: each of the n segments seen ends up in one of the k
slots with probability k / n) is decided when the recorder submits a segment, so a segment not sampled costs a
random number and never reaches the writer.

One writer thread turns the recorder's jobs into files, in order; it never blocks the recorder (a full job queue
drops the job, counted). Files never overlap in time: an episode's samples start after the last finished file, a
reservoir slot that an episode's context reaches into is evicted, and a normal segment before the last finished
file is not sampled. After a restart the recorder skips samples at or before `resume_after`.

The buffer is bounded (`maxBufferMegabytes`, outbox and reservoir together). When a new file does not fit, the drop
policy frees room: the oldest normal file of the outbox first, then the oldest reservoir slot, then (for a new
episode file only) the oldest episode file; a normal file that still does not fit is not kept. Every drop is counted
(`dropped_normal`, `dropped_episode`) and logged.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import queue
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from shared.capture import EPISODE, NORMAL, CaptureName
from shared.errors import NacelleError
from shared.ml.spec import FeatureSpec

from .capture_csv import spec_csv

log = logging.getLogger("detector.capture")

SLOT_SUFFIX = ".npz"  # a reservoir slot: the segment's numbers and its spec, formatted only if kept
JOB_QUEUE = 16  # finished captures waiting for the writer (each at most episodeMaxSeconds of samples)
STATE_FILE = "state.json"
Chunk = tuple[np.ndarray, np.ndarray]  # (ts (N,), values (N, C) in spec.input_columns order)
_STOP = object()


@dataclass(frozen=True)
class CaptureJob:
    kind: str  # EPISODE | NORMAL
    chunks: Sequence[Chunk]
    spec: FeatureSpec
    model_version: int | None
    until: float | None = None  # samples after it are left out (the end of an episode's after-context)
    episode_id: str | None = None
    part: int = 1
    slot: int | None = None  # normal segments: the reservoir slot it takes, in `period`
    period: int | None = None


def _slot_bytes(spec: FeatureSpec, ts: np.ndarray, values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, ts=ts, values=values, spec=np.array(json.dumps(spec.to_dict())))
    return buffer.getvalue()


def _slot_csv(data: bytes, thing: str) -> bytes:
    with np.load(io.BytesIO(data), allow_pickle=False) as slot:
        spec = FeatureSpec.from_dict(json.loads(str(slot["spec"])), "reservoir slot")
        return spec_csv(spec, thing, slot["ts"], slot["values"])


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class CaptureStore:
    """Thread-safe: the recorder submits jobs (worker thread), the writer thread writes them, the upload worker
    takes files from the outbox."""

    def __init__(self, root: str | Path, thing: str, max_bytes: int, segments_per_period: int, period_s: float,
                 rng: random.Random | None = None) -> None:
        self.root, self.thing = Path(root), thing
        self.max_bytes, self.segments_per_period, self.period_s = max_bytes, segments_per_period, period_s
        self.outbox, self.reservoir, self.tmp = self.root / "outbox", self.root / "reservoir", self.root / "tmp"
        for folder in (self.outbox, self.reservoir, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)
        self.rng = rng or random.Random(int.from_bytes(os.urandom(8), "big"))
        self._lock = threading.Lock()
        self._jobs: queue.Queue[object] = queue.Queue(maxsize=JOB_QUEUE)
        self._thread: threading.Thread | None = None
        self._uploading: str | None = None
        self._state = self._load_state()
        self._sizes: dict[Path, int] = {}
        self._recover()
        self._period: int | None = self._state["seen_period"]  # the reservoir decision (submit)
        self._seen: int = self._state["seen"]

    # -- start-up ----------------------------------------------------------------------------------------
    def _load_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"period": None, "slots": [], "seen_period": None, "seen": 0, "finalized_until": 0.0,
                                 "dropped_normal": 0, "dropped_episode": 0, "too_short": 0, "overflow": 0,
                                 "written": 0, "uploaded": 0}
        try:
            loaded = json.loads((self.root / STATE_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return state
        except (OSError, ValueError) as exc:  # never half-written (atomic rename): a damaged disk; start afresh
            log.error("capture state %s unreadable (%s): reservoir and counters start afresh", self.root, exc)
            return state
        if isinstance(loaded, dict):
            state.update({k: v for k, v in loaded.items() if k in state})
        return state

    def _recover(self) -> None:
        """Remove what a killed writer left in tmp/, forget slots whose file is gone, drop slot files the state
        never recorded (written just before a kill), and size what is kept."""
        for leftover in self.tmp.iterdir():
            leftover.unlink(missing_ok=True)
            log.warning("removed %s, left half-written by a stopped detector", leftover.name)
        slots = [s if s and self._slot(s).is_file() else None for s in self._state["slots"]]
        for path in self.reservoir.iterdir():
            if path.name not in {self._slot(s).name for s in slots if s}:
                path.unlink(missing_ok=True)
        self._state["slots"] = slots
        for folder in (self.outbox, self.reservoir):
            for path in folder.iterdir():
                if CaptureName.parse(path.name.removesuffix(SLOT_SUFFIX)) is None:
                    continue  # not ours: left alone, never uploaded
                self._sizes[path] = path.stat().st_size

    def _slot(self, name: str) -> Path:
        return self.reservoir / (name + SLOT_SUFFIX)

    @property
    def resume_after(self) -> float:
        """The end of the newest file kept or finalized: samples up to it are in a file already."""
        with self._lock:
            names = (p.name.removesuffix(SLOT_SUFFIX) for p in self._sizes)
            ends = [n.end for n in map(CaptureName.parse, names) if n is not None]
            return max([float(self._state["finalized_until"]), *ends])

    # -- the recorder's side -----------------------------------------------------------------------------
    def submit(self, job: CaptureJob) -> bool:
        """Queue a finished capture for the writer (a normal segment only when the reservoir samples it); never
        blocks (a full queue drops it: counted, False)."""
        if job.kind == NORMAL:
            chosen = self._choose(job)
            if chosen is None:
                return True
            job = chosen
        try:
            self._jobs.put_nowait(job)
            return True
        except queue.Full:
            with self._lock:
                self._state["overflow"] += 1
            log.warning("capture writer busy (%d jobs queued): %s capture dropped", JOB_QUEUE, job.kind)
            return False

    def _choose(self, job: CaptureJob) -> CaptureJob | None:
        """Algorithm R: the n-th segment of the period takes slot n - 1 while there are free ones, then a random
        slot with probability k / n."""
        k = self.segments_per_period
        if k < 1 or not job.chunks or not len(job.chunks[0][0]):
            return None
        period = int(float(job.chunks[0][0][0]) // self.period_s)
        with self._lock:
            if self._period is None or period > self._period:
                self._period, self._seen = period, 0
            elif period < self._period:
                return None  # the clock went back: the period's sample stays as it is
            self._seen += 1
            slot = self._seen - 1 if self._seen <= k else self.rng.randrange(self._seen)
        return replace(job, slot=slot, period=period) if slot < k else None

    def start(self) -> CaptureStore:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the writer."""
        if self._thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._jobs.put(_STOP, timeout=timeout)
        self._thread.join(timeout)
        self._thread = None

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every job submitted so far is written (tests, benchmarks)."""
        done = threading.Event()
        self._jobs.put(done, timeout=timeout)
        done.wait(timeout)

    # -- the writer thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            if isinstance(job, threading.Event):
                job.set()
                continue
            try:
                self.write(job)  # type: ignore[arg-type]
            except Exception:  # a full disk or a bug must not kill the writer
                log.exception("capture could not be written")

    def write(self, job: CaptureJob) -> Path | None:
        """Write one job now (the writer thread's work); returns the file written, if any."""
        ts, values = _join(job.chunks, job.until)
        with self._lock:
            keep = ts > float(self._state["finalized_until"])
        if job.kind == NORMAL and not keep.all():
            return None  # overlaps a finished file: not a normal-operation sample
        ts, values = ts[keep], values[keep]
        g, tol = job.spec.geometry, job.spec.validation
        if len(ts) < g.length + (tol.min_windows - 1) * g.stride:  # training would refuse it
            with self._lock:
                self._state["too_short"] += 1
            log.info("%s capture of %d sample(s) too short for one window: not kept", job.kind, len(ts))
            return None
        name = CaptureName(float(ts[0]), float(ts[-1]), job.kind, job.model_version, job.episode_id, job.part)
        if job.kind == EPISODE:
            return self._add_episode(name, job.spec, ts, values)
        if job.slot is None or job.period is None:
            return None
        return self._offer_normal(name, job.spec, ts, values, job.slot, job.period)

    def _add_episode(self, name: CaptureName, spec: FeatureSpec, ts: np.ndarray, values: np.ndarray) -> Path | None:
        data = spec_csv(spec, self.thing, ts, values)
        with self._lock:
            self._evict_slots_from(name.start)
            if not self._make_room(len(data), EPISODE, name):
                return None
            path = self._place(self.outbox / name.file_name, data)
            self._state["finalized_until"] = max(float(self._state["finalized_until"]), name.end)
            self._state["written"] += 1
            self._save()
        log.info("captured episode %s part %d: %d samples in %s", name.episode_id, name.part, len(ts), path.name)
        return path

    def _offer_normal(self, name: CaptureName, spec: FeatureSpec, ts: np.ndarray, values: np.ndarray,
                      slot: int, period: int) -> Path | None:
        """Put a sampled segment in its reservoir slot, as numbers (the period's first one moves the last period's
        slots to the outbox, as CSV)."""
        data = _slot_bytes(spec, ts, values)
        with self._lock:
            state = self._state
            if state["period"] is None or period > state["period"]:
                self._finalize_period()
                state.update(period=period, slots=[])
            elif period < state["period"]:
                return None
            slots: list[str | None] = state["slots"]
            slots.extend([None] * (slot + 1 - len(slots)))
            old, slots[slot] = slots[slot], None
            if old:
                self._delete(self._slot(old))
            if not self._make_room(len(data), NORMAL, name):
                self._save()
                return None
            path = self._place(self._slot(name.file_name), data)
            slots[slot] = name.file_name
            self._save()
        return path

    def finalize_period(self) -> None:
        """Move the reservoir's slots to the outbox now (at the end of its period; tests, benchmarks)."""
        with self._lock:
            self._finalize_period()
            self._state.update(period=None, slots=[])
            self._period, self._seen = None, 0
            self._save()

    def _finalize_period(self) -> None:
        kept = 0
        for slot in filter(None, self._state["slots"]):
            source = self._slot(slot)
            try:
                data = _slot_csv(source.read_bytes(), self.thing)
            except (OSError, ValueError, KeyError, NacelleError) as exc:  # a damaged slot: lost, the others go on
                log.error("reservoir slot %s unreadable (%s): not kept", slot, exc)
                self._delete(source)
                self._state["dropped_normal"] += 1
                continue
            self._delete(source)
            self._place(self.outbox / slot, data)
            self._state["written"] += 1
            kept += 1
            parsed = CaptureName.parse(slot)
            if parsed is not None:
                self._state["finalized_until"] = max(float(self._state["finalized_until"]), parsed.end)
        if kept:
            log.info("normal-operation sample of period %s: %d segment(s) moved to the outbox",
                     self._state["period"], kept)

    def _evict_slots_from(self, t: float) -> None:
        """Slots that end at or after `t` overlap an episode's capture: they are no normal operation."""
        slots = self._state["slots"]
        for i, slot in enumerate(slots):
            parsed = CaptureName.parse(slot) if slot else None
            if parsed is not None and parsed.end >= t:
                slots[i] = None
                self._delete(self._slot(slot))

    def _make_room(self, size: int, kind: str, name: CaptureName) -> bool:
        """The drop policy (module docstring); False when the new file is not kept."""
        while sum(self._sizes.values()) + size > self.max_bytes:
            victim = self._oldest(self.outbox, NORMAL)
            slots = self._state["slots"]
            if victim is None and any(slots):
                oldest = min(filter(None, slots))  # names start with their first sample's time
                slots[slots.index(oldest)] = None
                victim = self._slot(oldest)
            if victim is None and kind == EPISODE:
                victim = self._oldest(self.outbox, EPISODE)
            if victim is None:
                self._state[f"dropped_{kind}"] += 1
                log.warning("capture buffer full (%d bytes): new %s file %s not kept", self.max_bytes, kind,
                            name.file_name)
                return False
            dropped = CaptureName.parse(victim.name.removesuffix(SLOT_SUFFIX))
            self._state[f"dropped_{dropped.kind if dropped else NORMAL}"] += 1
            log.warning("capture buffer full (%d bytes): dropped %s", self.max_bytes, victim.name)
            self._delete(victim)
        return True

    def _oldest(self, folder: Path, kind: str) -> Path | None:
        candidates = sorted(p for p in self._sizes if p.parent == folder and p.name != self._uploading
                            and (n := CaptureName.parse(p.name)) is not None and n.kind == kind)
        return candidates[0] if candidates else None

    def _place(self, target: Path, data: bytes) -> Path:
        """Write atomically: temp file, fsync, rename, fsync the folder."""
        tmp = self.tmp / f"{target.name}.{os.getpid()}.part"
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(target)
        _fsync_dir(target.parent)
        self._sizes[target] = len(data)
        return target

    def _delete(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        self._sizes.pop(path, None)

    def _save(self) -> None:
        self._state.update(seen_period=self._period, seen=self._seen)
        tmp = self.tmp / f"{STATE_FILE}.{os.getpid()}.part"
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(self._state, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.root / STATE_FILE)

    # -- the upload worker's side ------------------------------------------------------------------------
    def next_upload(self) -> tuple[str, bytes] | None:
        """The oldest finished file (name, bytes), held back from the drop policy until `uploaded`/`release`."""
        with self._lock:
            names = sorted(p.name for p in self._sizes if p.parent == self.outbox)
            for name in names:
                try:
                    data = (self.outbox / name).read_bytes()
                except FileNotFoundError:
                    self._sizes.pop(self.outbox / name, None)
                    continue
                self._uploading = name
                return name, data
        return None

    def uploaded(self, name: str) -> None:
        with self._lock:
            self._delete(self.outbox / name)
            self._state["uploaded"] += 1
            self._uploading = None
            self._save()

    def release(self, name: str) -> None:
        """The upload of `name` failed: it stays queued."""
        with self._lock:
            if self._uploading == name:
                self._uploading = None

    # -- reporting -------------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        with self._lock:
            s = self._state
            return {"capture_pending": sum(1 for p in self._sizes if p.parent == self.outbox),
                    "capture_slots": sum(1 for slot in s["slots"] if slot),
                    "capture_bytes": sum(self._sizes.values()),
                    "capture_written": s["written"], "capture_uploaded": s["uploaded"],
                    "capture_dropped_normal": s["dropped_normal"],
                    "capture_dropped_episode": s["dropped_episode"], "capture_too_short": s["too_short"],
                    "capture_overflow": s["overflow"]}

    def pending(self) -> list[str]:
        with self._lock:
            return sorted(p.name for p in self._sizes if p.parent == self.outbox)


def _join(chunks: Sequence[Chunk], until: float | None) -> Chunk:
    if not chunks:
        return np.zeros(0), np.zeros((0, 0))
    ts = np.concatenate([c[0] for c in chunks])
    values = np.concatenate([c[1] for c in chunks])
    if until is not None:
        keep = ts <= until
        ts, values = ts[keep], values[keep]
    return ts, values
