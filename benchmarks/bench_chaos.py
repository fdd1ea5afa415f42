"""Crash and bad-input figures of the local stack, the long versions of tests/chaos.

- files_lost_kill_during_put: `nacelle data put` of 60 files killed with SIGKILL at random moments
  (KILLS times), then run once more: stored files without their event, plus temp files left behind.
- trainings_jammed_by_bad_file: a malformed labels.json and a file overlapping another's turbine-time
  range dropped beside good data; 1 if the training the policy starts fails (or none starts), else 0.
- brokers_per_data_dir_max: the most mosquitto processes on one data directory over BROKER_ROUNDS of
  "the stack is SIGKILLed, the next one starts".
- broker_restart_seconds: the worst time from a broker's SIGKILL to it accepting connections again
  (the stack's keeper, same port).
- false_resolved_on_detector_stop: a real detector stopped (or re-deployed) in the middle of each
  anomaly episode of the simulator's faulty data; the cloud's "[RESOLVED]" notifications sent for
  episodes whose end nobody saw.

Run alone: `.venv/bin/python -m benchmarks.bench_chaos`.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "greengrass_components" / "nacelle.detector" / "src"))
from detector.messages import MessageBuilder  # noqa: E402
from detector.pipeline import TurbinePipeline  # noqa: E402
from detector.scoring import EdgeModel  # noqa: E402

from nacelle.local.adapters.jobs import JobRecord, alive  # noqa: E402
from nacelle.local.edge.broker import Broker  # noqa: E402
from nacelle.local.edge.pki import LocalPki  # noqa: E402
from nacelle.local.runtime.bus import Dispatcher  # noqa: E402
from nacelle.local.runtime.stack import Stack  # noqa: E402
from nacelle.local.runtime.up import keep_broker, wait_for  # noqa: E402
from nacelle.simulator.generate import generate_dataset  # noqa: E402
from nacelle.train_runner import run_training_job  # noqa: E402
from shared.messages import EpisodeRow, validate  # noqa: E402
from shared.usecases.alerts import AlertDeps, AlertPolicy, on_anomaly  # noqa: E402
from training_jobs.compile import compile_bundle  # noqa: E402

KILLS, FILES, BROKER_ROUNDS = 20, 60, 5
FAST = {"epochs": "3", "max_train_windows": "4000", "patience": "2", "threads": "1"}


def _config(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_text(yaml.safe_dump({
        "quiet_period_s": 1.0, "min_new_turbine_hours": 0.5, "hyperparameters": FAST,
        "gate_min_event_f1": 0.0, "gate_min_recall_medium_high": 0.0, "gate_max_false_alarms_per_day": 1e9}))


def _put(home: Path, src: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "nacelle.cli", "--data-dir", str(home), "data", "put", str(src)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def files_lost(tmp: Path) -> int:
    home, src = tmp / "put-home", tmp / "put-src" / "wt-01"
    _config(home)
    src.mkdir(parents=True)
    for i in range(FILES):
        (src / f"part{i:03d}.csv").write_bytes(os.urandom(300_000))
    raw, rng = home / "objects" / "nacelle-data" / "raw", random.Random(11)
    for _ in range(KILLS):
        before = sum(1 for _ in raw.rglob("part*")) if raw.is_dir() else 0
        proc = _put(home, src)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline and \
                (sum(1 for _ in raw.rglob("part*")) if raw.is_dir() else 0) == before:
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.04))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(6)  # older than a live writer's unlocked moment
    subprocess.run([sys.executable, "-m", "nacelle.cli", "--data-dir", str(home), "data", "put", str(src)],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    stack = Stack(home)
    announced = {stack.bus.event(d.event_id)["detail"]["object"]["key"] for d in stack.bus.deliveries()}
    stored = {p.relative_to(stack.paths.bucket_dir).as_posix() for p in raw.rglob("*") if p.is_file()}
    temps = list(stack.paths.bucket_dir.rglob(".nacelle-tmp-*"))
    missing = {f"raw/wt-01/part{i:03d}.csv" for i in range(FILES)} - stored
    return len(stored - announced) + len(temps) + len(missing)


def trainings_jammed(tmp: Path) -> int:
    home, data = tmp / "jam-home", tmp / "jam-data"
    _config(home)
    generate_dataset(data, 1, 1.0, "default", 5)
    stack = Stack(home)
    files = sorted(p for p in data.rglob("*.csv.gz"))
    for path in files:
        stack.store.put_if_absent(f"raw/wt-01/{path.name}", path.read_bytes())
    time.sleep(0.01)
    stack.store.put_if_absent("raw/wt-01/copy-of-first.csv.gz", files[0].read_bytes())  # overlaps
    stack.store.put_if_absent("labels/bad/labels.json", b'{"episodes": [{"turbine_id": "wt-01", "start": "x"}]}')
    dispatcher = Dispatcher(stack.bus, stack.targets())
    dispatcher.start()
    try:
        job: JobRecord = wait_for(lambda: next(iter(stack.jobs.list()), None), 60, "a training job")
        def ended() -> JobRecord | None:
            record = stack.jobs.get(job.name)
            return None if record.status == "InProgress" else record

        done = wait_for(ended, 300, "the training job to end")
        wait_for(lambda: not alive(done.pid), 30, "the job runner to exit")
    finally:
        dispatcher.stop(timeout=10)
    return 0 if done.status == "Completed" else 1


def _brokers(home: Path) -> int:
    needle = str(home / "broker" / "mosquitto.conf").encode()
    count = 0
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and needle in (entry / "cmdline").read_bytes().split(b"\0"):
                count += 1
    return count


def brokers(tmp: Path) -> tuple[int, float]:
    home = tmp / "broker-home"
    _config(home)
    pki, most, worst = LocalPki(home / "pki"), 0, 0.0
    broker = Broker(home, pki).start()
    try:
        for _ in range(BROKER_ROUNDS):  # the stack dies with SIGKILL; the next one starts
            broker._proc = None  # what a SIGKILLed owner leaves: nobody to stop it
            broker = Broker(home, pki).start()
            time.sleep(0.2)
            most = max(most, _brokers(home))
        stack = Stack(home)
        for _ in range(BROKER_ROUNDS):  # the broker itself dies
            proc = broker._proc
            assert proc is not None
            killed = time.monotonic()
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            keep_broker(broker, stack)
            wait_for(lambda: broker.running, 5, "the broker back")
            worst = max(worst, time.monotonic() - killed)
            most = max(most, _brokers(home))
    finally:
        broker.stop()
    return most, worst


def false_resolved(tmp: Path) -> tuple[int, int]:
    """(false resolutions, episodes interrupted) over every faulty turbine, stopped and re-deployed."""
    from benchmarks.bench_detector import messages
    from nacelle.local.adapters.state import SqliteStateStore
    from tests.fakes import MemoryRegistry, RecordingNotifier

    data = tmp / "det-data"
    generate_dataset(data, 3, 1.0, "default", 12)
    job = run_training_job(tmp / "det-job", "bench-chaos", {"train": data}, {**FAST, "families": "pca"}, echo=None)
    assert job.model_archive is not None, job.failure_reason
    compile_bundle(job.model_archive, tmp / "bundle", None, 1, warmup=5, runs=20)
    model = EdgeModel.load(tmp / "bundle")
    false, interrupted = 0, 0
    for i, folder in enumerate(sorted({p.parent for p in data.rglob("*.csv.gz")})):
        turbine = folder.name
        payloads = messages(folder, model, 20)
        for end in ("stop", "swap"):
            notifier = RecordingNotifier()
            deps = AlertDeps(SqliteStateStore(tmp / f"alerts-{i}-{end}.db"), SqliteStateStore(tmp / f"s-{i}-{end}.db"),
                             MemoryRegistry(), notifier, lambda: datetime.now(UTC), "g", AlertPolicy())
            pipeline, builder, events = TurbinePipeline(turbine, model), MessageBuilder(turbine), []
            for payload in payloads:
                result = pipeline.handle(payload)
                events += result.events
                if any(e.kind == "open" for e in result.events):
                    break
            if not any(e.kind == "open" for e in events):
                continue
            events += (pipeline.stop() if end == "stop" else pipeline.swap(model)).events
            interrupted += sum(e.kind == "interrupt" for e in events)
            for e in events:
                row = {**builder.anomaly(e, 1), "thing_name": turbine, "received_at": int(time.time() * 1000)}
                on_anomaly(validate(EpisodeRow, row), deps)
            false += sum(m.attributes["kind"] == "resolution" for m in notifier.messages)
    return false, interrupted


def main() -> int:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print(f"files_lost_kill_during_put={files_lost(tmp)}", flush=True)
        print(f"kills_during_put={KILLS}", flush=True)
        print(f"trainings_jammed_by_bad_file={trainings_jammed(tmp)}", flush=True)
        most, worst = brokers(tmp)
        print(f"brokers_per_data_dir_max={most}", flush=True)
        print(f"broker_restart_seconds={worst:.2f}", flush=True)
        false, interrupted = false_resolved(tmp)
        print(f"false_resolved_on_detector_stop={false}", flush=True)
        print(f"episodes_interrupted_by_detector_stop={interrupted}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
