"""DetectorApp: sensors -> pipeline -> spool -> transport, with health and configuration-driven hot swap.

Threads:
* the transport's callback thread only enqueues sensor payloads (bounded queue; when it stays full
  for QUEUE_PUT_S the message is dropped, counted in `bad_messages` and logged);
* one worker thread does everything that touches scoring state, in order: handle a message, swap in
  a freshly loaded model between two messages, emit health when due, flush on stop. So anomaly
  messages enter the spool in the order the episodes happened, the swap's close event included. A
  failure in one step is logged and counted (a message's: in `bad_messages`), and the worker carries on;
* a loader thread opens and warms up a new model (EdgeModel.load) without stopping detection; a model
  that fails to load or to start scoring is reported in `model_error` and the current one kept. The load itself
  runs on a thread of its own, waited for at most `load_timeout` (LOAD_TIMEOUT_S; the first model's too, at
  start): one that takes longer is reported like any other failure and abandoned (its result is dropped; the
  warm-up stops its own runs at that limit), so later versions still load;
* a publisher thread sends the spool's oldest message, one at a time (at most PUBLISH_MAX_PER_S), acks
  it after PUBACK, and on failure backs off and retries the same message (never reorders).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

from shared.errors import BundleError

from .capture import Capture
from .config import ConfigSource, DetectorConfig
from .messages import BadMessage, MessageBuilder
from .pipeline import Result, TurbinePipeline
from .scoring import LOAD_TIMEOUT_S, EdgeModel
from .source_health import SourceHealth
from .spool import Spool
from .stats import PeriodStats
from .transport import PublishRejected, Transport, TransportError

log = logging.getLogger("detector.app")

QUEUE_SIZE = 1000
QUEUE_PUT_S = 0.5
PUBLISH_TIMEOUT_S = 5.0
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.1, 5.0
PUBLISH_MAX_PER_S = 50.0  # a spool drained after an outage stays under the cloud's 100 messages/s per device
DRAIN_S = 3.0  # on stop: how long the publisher may keep sending what is spooled
_STOP = object()
T = TypeVar("T")


def detector_version(here: Path | None = None) -> str:
    """The VERSION file next to the component's sources (artifact root or source tree), else "dev"."""
    base = (here or Path(__file__)).resolve().parent
    for folder in (base, base.parent, base.parent.parent):
        path = folder / "VERSION"
        if path.is_file():
            text = path.read_text(encoding="utf-8").strip()
            if text:
                return text
    return "dev"


def load_within(timeout_s: float, load: Callable[[], T], name: str) -> T:
    """load() on a daemon thread, waited for at most `timeout_s` (then a BundleError). A load still running then
    is abandoned: it can only ever write to its own box, which nobody reads any more."""
    box: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)

    def run() -> None:
        try:
            box.put((True, load()))
        except Exception as exc:
            box.put((False, exc))

    threading.Thread(target=run, name=name, daemon=True).start()
    try:
        ok, value = box.get(timeout=timeout_s)
    except queue.Empty:
        raise BundleError(f"loading and warming up took more than {timeout_s:g} s; abandoned") from None
    if not ok:
        raise value
    return cast(T, value)


class DetectorApp:
    def __init__(self, config_source: ConfigSource, transport: Transport, spool: Spool, models_root: str | Path,
                 *, clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time,
                 loader: Callable[[Path], EdgeModel] = EdgeModel.load, version: str | None = None,
                 queue_size: int = QUEUE_SIZE, publish_timeout: float = PUBLISH_TIMEOUT_S,
                 load_timeout: float = LOAD_TIMEOUT_S, observer: Callable[[Result], None] | None = None,
                 capture: Capture | None = None) -> None:
        self.source = config_source
        self.transport = transport
        self.spool = spool
        self.models_root = Path(models_root)
        self.clock = clock
        self.wall_clock = wall_clock  # the device's epoch clock: sample times far ahead of it are refused
        self.loader = loader
        self.version = version or detector_version()
        self.publish_timeout = publish_timeout
        self.load_timeout = load_timeout
        self.observer = observer
        self.capture = capture  # data capture (capture.py): fed after each scored message, uploads on its own
        self.config: DetectorConfig = config_source.current()
        self.drift_stats = PeriodStats(self.config.thing, self.config.stats_period_s)  # drift statistics (stats.py)
        self.builder = MessageBuilder(self.config.thing)
        self.source_health = SourceHealth(self.config.thing, self.request_health)  # the sensor source's reports
        self.pipeline: TurbinePipeline | None = None
        self.model_error: str | None = None
        # counters (health)
        self.bad_messages = 0
        self.overflow = 0
        self.windows_scored = 0
        self.unscored_messages = 0  # received while no model is loaded
        self.stale_samples = 0  # at or before the newest sample seen: redelivered, or the sensor clock went back
        self.errors = 0  # failed worker or publisher steps (a message's failure also counts in bad_messages)
        self._stale_logged = float("-inf")
        self._announce = False  # report health after the first window a newly swapped model scores
        self.anomalies_spooled = 0
        self.published = 0
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._wanted: str = ""  # model version the configuration asks for
        self._loaded: str = ""  # model version of self.pipeline (or of the pending model)
        self._pending: tuple[str, EdgeModel | None] | None = None  # loaded model waiting for the worker
        self._state = threading.Lock()
        self._loader_thread: threading.Thread | None = None
        self._spooled = threading.Event()
        self._stopping = threading.Event()
        self._worker_done = threading.Event()
        self._health_now = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started_at = clock()
        self._next_health = self._started_at
        self._closing = False

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> DetectorApp:
        self._started_at = self.clock()
        self._next_health = self._started_at + self.config.health_interval_s
        # Connect first: sensor messages queue up while the first model loads, then it scores them (the first
        # window fills during the load instead of after it).
        self.transport.subscribe(f"{self.config.sensors_topic}/health", self.source_health.on_message)
        self.transport.subscribe(self.config.sensors_topic, self.on_sensor_message)
        self.transport.on_connection_change(lambda up: self._spooled.set() if up else None)
        self.transport.connect()
        if self.config.model_version:  # the first model loads before any message is handled
            self._wanted = self.config.model_version
            self._load(self.config.model_version)
            self._apply_pending()
        self.source.on_change(self._on_config)
        self.source.start()
        if self.capture is not None:
            self.capture.start()
        for name, target in (("detector-worker", self._work), ("detector-publisher", self._publish_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("detector %s started for %s (model %s)", self.version, self.config.thing,
                 self.config.model_version or "none")
        return self

    def stop(self, drain_s: float = DRAIN_S) -> None:
        """Handle what is queued, close the open episode into the spool, try to send the spool, stop."""
        if self._closing:
            return
        self._closing = True
        self.source.stop()
        self._queue.put(_STOP)
        self._worker_done.wait(30)
        if self.capture is not None:
            self.capture.stop()
        deadline = time.monotonic() + drain_s
        while self.spool.depth() and self.transport.is_connected and time.monotonic() < deadline:
            time.sleep(0.02)
        self._stopping.set()
        self._spooled.set()
        for thread in self._threads:
            thread.join(self.publish_timeout + 1)
        self.transport.stop()
        log.info("detector stopped; %d messages left in the spool", self.spool.depth())

    # -- input (transport thread) ---------------------------------------------------------------------
    def on_sensor_message(self, payload: bytes) -> None:
        if self._closing:
            with self._state:
                self.overflow += 1
            log.warning("sensor message received while stopping: not handled (counted in bad_messages)")
            return
        try:
            self._queue.put(payload, timeout=QUEUE_PUT_S)
        except queue.Full:
            with self._state:
                self.overflow += 1
            log.warning("detector queue full (%d messages): sensor message dropped", self._queue.maxsize)

    # -- worker ----------------------------------------------------------------------------------------
    def _work(self) -> None:
        try:
            while True:
                try:
                    item = self._queue.get(timeout=0.05)
                except queue.Empty:
                    item = None
                if item is _STOP:
                    break
                self._guarded(self._turn, item)
            self._guarded(self._finish)
        finally:
            self._worker_done.set()

    def _guarded(self, step: Callable[..., None], *args: object) -> None:
        """Run one step of a thread; a failure is logged and counted, never the end of the thread."""
        try:
            step(*args)
        except Exception:
            with self._state:
                self.errors += 1
            log.exception("detector step %s failed; carrying on", getattr(step, "__name__", step))

    def _turn(self, item: object) -> None:
        self._apply_pending()
        if isinstance(item, bytes | bytearray | memoryview):
            self._handle(bytes(item))
        change_due = self.source_health.ask_due()  # a source-state change the last messages have not carried
        if change_due or self._health_now.is_set() or self.clock() >= self._next_health:
            self._health_now.clear()
            self._next_health = self.clock() + self.config.health_interval_s
            self._emit_health()

    def _finish(self) -> None:
        self._apply_pending()
        if self.pipeline is not None:
            self._spool_events(self.pipeline.stop())
        self._spool_stats(self.drift_stats.flush())  # the period so far

    def _handle(self, payload: bytes) -> None:
        pipeline = self.pipeline
        if pipeline is None:
            self.unscored_messages += 1
            return
        try:
            result = pipeline.handle(payload)
        except BadMessage as exc:
            with self._state:
                self.bad_messages += 1
            log.warning("bad sensor message (%d bytes): %s", len(payload), exc.reason)
            return
        except Exception:  # a scoring failure must not stop the detector; the message counts as bad
            with self._state:
                self.bad_messages += 1
            log.exception("sensor message could not be scored")
            return
        try:
            self._handle_result(result, pipeline)
        except Exception:  # what the message led to is lost; the message counts as bad, the next one is handled
            with self._state:
                self.bad_messages += 1
            raise

    def _handle_result(self, result: Result, pipeline: TurbinePipeline) -> None:
        self.windows_scored += len(result.windows)
        if result.stale:
            self._count_stale(result)
        if self._announce and result.windows:  # the first window of a new model: say so at once (canary soak)
            self._announce = False
            self.request_health()
        self._spool_events(result)
        self._spool_stats(self.drift_stats.observe(result, pipeline.model.spec, pipeline.levels))
        if self.capture is not None:
            self.capture.observe(result, pipeline.model.spec)
        if self.observer is not None:
            self.observer(result)

    def _count_stale(self, result: Result) -> None:
        self.stale_samples += result.stale
        if self.clock() - self._stale_logged >= 60.0:  # at most once a minute
            self._stale_logged = self.clock()
            log.warning("%d sample(s) at or before the newest one seen dropped (%d so far): redelivered, or the "
                        "sensor clock went back", result.stale, self.stale_samples)

    def _spool_stats(self, messages: list[dict[str, Any]]) -> None:
        topic = self.config.stats_topic or f"turbines/{self.config.thing}/stats"
        for message in messages:
            self.spool.append_message(topic, "stats", "stats", message)
        if messages:
            self._spooled.set()

    def _spool_events(self, result: Result) -> None:
        for event in result.events:
            message = self.builder.anomaly(event, result.model_version)
            spooled = self.spool.append_message(self.config.anomalies_topic, event.kind, "anomalies", message)
            if spooled is None:  # not written (counted as dropped by the spool)
                log.error("episode %s %s lost: the spool cannot write", event.episode["episode_id"], event.kind)
                continue
            self.anomalies_spooled += 1
            log.info("episode %s %s (seq %d)", event.episode["episode_id"], event.kind, spooled[1])
        if result.events:
            self._spooled.set()

    def _emit_health(self) -> None:
        self.spool.append_message(self.config.health_topic, "health", "health", self.health())
        self._spooled.set()

    def request_health(self) -> None:
        """Emit a health message at the worker's next turn (besides the periodic ones)."""
        self._health_now.set()

    def health(self) -> dict[str, Any]:
        p = self.pipeline
        p50, p99 = p.latency_ms() if p is not None else (None, None)
        return self.source_health.with_summary(self.builder.health(
            model_version=p.model_version if p is not None else None,
            inference_rate_hz=p.inference_rate_hz() if p is not None else 0.0,
            latency_p50_ms=p50, latency_p99_ms=p99, spool_depth=self.spool.depth(),
            spool_dropped=self.spool.dropped, bad_messages=self.bad_messages + self.overflow,
            stale_samples=self.stale_samples, errors=self.errors + self.spool.failures,
            uptime_s=self.clock() - self._started_at, windows_scored=self.windows_scored,
            detector_version=self.version, model_error=self.model_error,
            capture=self.capture.summary() if self.capture is not None else None))

    # -- model changes ---------------------------------------------------------------------------------
    def _on_config(self, config: DetectorConfig) -> None:
        old, self.config = self.config, config
        if (config.sensors_topic, config.anomalies_topic, config.health_topic) != \
                (old.sensors_topic, old.anomalies_topic, old.health_topic):
            log.warning("topic changes take effect at the next restart")
            self.config = DetectorConfig(**{**config.__dict__, "sensors_topic": old.sensors_topic,
                                            "anomalies_topic": old.anomalies_topic, "health_topic": old.health_topic})
        self.spool.max_messages = config.spool_max_messages
        self.drift_stats.period_s = config.stats_period_s  # from the next period on
        if self.capture is not None:
            self.capture.reconfigure(config.capture)
        with self._state:
            if config.model_version == self._wanted:
                return
            self._wanted = config.model_version
            if self._loader_thread is not None and self._loader_thread.is_alive():
                return  # the running loader picks up the newest wanted version when it finishes
            self._loader_thread = threading.Thread(target=self._load_wanted, name="model-loader", daemon=True)
            self._loader_thread.start()

    def _load_wanted(self) -> None:
        while True:
            with self._state:
                wanted = self._wanted
                if wanted == self._loaded:
                    return
            self._load(wanted)

    def _load(self, version: str) -> None:
        """Open and warm up `version` (off the worker); hand it over through `_pending`."""
        if not version:
            with self._state:
                self._pending, self._loaded = ("", None), ""
            return
        path = self.models_root / self.config.model_component / version / "bundle"
        started = time.perf_counter()
        try:
            model = load_within(self.load_timeout, lambda: self.loader(path), f"model-load-{version}")
        except Exception as exc:  # NacelleError, OSError, or whatever a malformed bundle raises
            self._model_failed(version, f"model {version} at {path}: {exc}")
            return
        log.info("model %s loaded and warmed up in %.0f ms", version, (time.perf_counter() - started) * 1000)
        with self._state:
            self._pending, self._loaded = (version, model), version
            self.model_error = None

    def _model_failed(self, version: str, reason: str) -> None:
        log.error("cannot use %s; keeping the current model", reason)
        with self._state:
            self.model_error = reason
            self._loaded = version  # do not retry this version until the configuration changes
        self.request_health()  # report the failure now: a canary fails fast

    def _apply_pending(self) -> None:
        """Runs on the worker (or before it starts): swap between two messages."""
        with self._state:
            pending, self._pending = self._pending, None
        if pending is None:
            return
        version, model = pending
        if model is None:
            old, self.pipeline = self.pipeline, None
            if old is not None:
                log.warning("model unset by the configuration: detection paused")
                self._spool_events(old.stop())
            return
        try:  # a model the pipeline cannot take fails here, before anything changes
            if self.pipeline is None:
                self.pipeline, interrupted = TurbinePipeline(self.config.thing, model, self.wall_clock), Result()
            else:
                interrupted = self.pipeline.swap(model)
        except Exception as exc:
            self._model_failed(version, f"model {version} cannot score: {type(exc).__name__}: {exc}")
            return
        log.info("now scoring with model %s (version %s)", version, model.model_version)
        self.request_health()  # the cloud learns of the new version now, not at the next interval
        self._announce = True
        self._spool_events(interrupted)

    # -- publisher ---------------------------------------------------------------------------------------
    def _publish_loop(self) -> None:
        backoff = BACKOFF_MIN_S
        next_slot = 0.0
        while not self._stopping.is_set():
            try:
                entry = self.spool.peek()
                if entry is None or not self.transport.is_connected:
                    self._spooled.wait(0.5)
                    self._spooled.clear()
                    continue
                if self._stopping.wait(max(0.0, next_slot - time.monotonic())):
                    break
                next_slot = time.monotonic() + 1.0 / PUBLISH_MAX_PER_S
                try:
                    self.transport.publish(entry.topic, entry.payload, self.publish_timeout)
                except PublishRejected as exc:
                    self.spool.discard(entry.id, str(exc))
                    continue
                except TransportError as exc:
                    log.warning("publish failed, retrying in %.1fs: %s", backoff, exc)
                    self._stopping.wait(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
                    continue
                self.spool.ack(entry.id)
                self.published += 1
                backoff = BACKOFF_MIN_S
            except Exception:  # e.g. the spool cannot be read: retry, never stop sending
                with self._state:
                    self.errors += 1
                log.exception("publisher failed, retrying in %.1fs", backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    def stats(self) -> dict[str, Any]:
        return {"windows_scored": self.windows_scored, "bad_messages": self.bad_messages, "overflow": self.overflow,
                "unscored_messages": self.unscored_messages, "stale_samples": self.stale_samples,
                "errors": self.errors, "anomalies_spooled": self.anomalies_spooled,
                "published": self.published, "spool_depth": self.spool.depth(), "spool_failures": self.spool.failures,
                "model_version": None if self.pipeline is None else self.pipeline.model_version,
                "model_error": self.model_error, **(self.capture.stats() if self.capture is not None else {})}
