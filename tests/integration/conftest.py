"""Helpers for tests that run the local stack (loopback only, temporary data directories)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from nacelle.local.runtime.up import background_stack as running_stack
from nacelle.local.runtime.up import wait_for as _wait_for

FAST_TRAINING = {"epochs": "3", "max_train_windows": "4000", "patience": "2"}
LENIENT_GATE = {"gate_min_event_f1": 0.0, "gate_min_recall_medium_high": 0.0,
                "gate_max_false_alarms_per_day": 1e9, "gate_regression_tolerance": 1.0}
__all__ = ["FAST_TRAINING", "LENIENT_GATE", "running_stack", "wait_for", "write_config"]


def write_config(home: Path, **settings: Any) -> None:
    home.mkdir(parents=True, exist_ok=True)
    config = {"quiet_period_s": 1.0, "hyperparameters": FAST_TRAINING, **settings}
    (home / "config.yaml").write_text(yaml.safe_dump(config))


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    return _wait_for(predicate, timeout, what)
