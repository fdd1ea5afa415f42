"""Helpers for tests that run the local stack (loopback only, temporary data directories)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from nacelle.local.stack import Stack
from nacelle.local.up import run_up

FAST_TRAINING = {"epochs": "3", "max_train_windows": "4000", "patience": "2"}
LENIENT_GATE = {"gate_min_event_f1": 0.0, "gate_min_recall_medium_high": 0.0,
                "gate_max_false_alarms_per_day": 1e9, "gate_regression_tolerance": 1.0}


def write_config(home: Path, **settings: Any) -> None:
    home.mkdir(parents=True, exist_ok=True)
    config = {"quiet_period_s": 1.0, "hyperparameters": FAST_TRAINING, **settings}
    (home / "config.yaml").write_text(yaml.safe_dump(config))


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@contextmanager
def running_stack(home: Path) -> Iterator[Stack]:
    """`nacelle up` in a background thread of the test process."""
    stop = threading.Event()
    ready: list[Stack] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run_up(home, stop, on_ready=ready.append)
        except BaseException as exc:  # surfaced in the test below
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    wait_for(lambda: ready or errors, 30, "the local stack to start")
    if errors:
        raise errors[0]
    try:
        yield ready[0]
    finally:
        stop.set()
        thread.join(timeout=30)
