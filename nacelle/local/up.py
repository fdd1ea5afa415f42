"""`nacelle up`: run the local stack in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from nacelle.local.bus import Dispatcher
from nacelle.local.paths import BUCKET
from nacelle.local.s3events import NotifiedKeys, RawWatcher
from nacelle.local.stack import Stack, StackLock
from shared.observability import logger


def run_up(home: Path, stop: threading.Event | None = None,
           on_ready: Callable[[Stack], None] | None = None) -> int:
    stop = stop or threading.Event()
    lock = StackLock(home / "up.lock")
    lock.acquire()
    try:
        stack = Stack(home)
        for job in stack.recover_orphans():
            print(f"job {job} was orphaned by a stopped stack: killed and reported Failed", flush=True)
        dispatcher = Dispatcher(stack.bus, stack.targets())
        watcher = RawWatcher(stack.paths.bucket_dir, BUCKET, stack.bus.put, NotifiedKeys(home / "s3events.db"))
        previous = _install_signals(stop)
        dispatcher.start()
        watcher.start()
        print(f"nacelle local stack up: data dir {home}, bucket {BUCKET}, "
              f"raw folder {stack.paths.raw_dir} (Ctrl-C to stop)", flush=True)
        if on_ready is not None:
            on_ready(stack)
        try:
            stop.wait()
        finally:
            print("stopping the local stack...", flush=True)
            watcher.stop()
            dispatcher.stop(timeout=10)
            for job in stack.recover_orphans():
                print(f"job {job} was stopped with the stack and reported Failed", flush=True)
            _restore_signals(previous)
        logger.info("local stack stopped")
        return 0
    finally:
        lock.release()


def _install_signals(stop: threading.Event) -> dict[int, object]:
    if threading.current_thread() is not threading.main_thread():
        return {}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    return {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_signals(previous: dict[int, object]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)  # type: ignore[arg-type]
