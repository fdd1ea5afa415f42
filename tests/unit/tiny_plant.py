"""A tiny 1 Hz plant for CLI tests: three channels (one warms up), an optional step fault, labels.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SPEC = """\
spec_version: 2
name: tiny-plant
version: "1"
time_column: time
time_format: epoch_s
columns: [time, a, b, c]
features: [a, b, c]
sampling: {rate_hz: 1.0}
"""
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


def write_spec(path: Path, text: str = SPEC) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_plant(path: Path, rows: int = 400, seed: int = 0, start: float = T0,
                fault: tuple[int, int] | None = None, every: int = 1) -> Path:
    """`rows` samples one second apart (a 10 s pause after every `every`-th row when every > 1); a
    channel `b` that follows `a`, a channel `c` that warms up; `fault`: rows [i, j) where b steps up."""
    rng = np.random.default_rng(seed)
    a = 10 + np.cumsum(rng.normal(0, 0.02, rows)) + rng.normal(0, 0.3, rows)
    b = 2 * a + rng.normal(0, 0.2, rows)
    c = 40 + 0.01 * np.arange(rows) + rng.normal(0, 0.05, rows)
    if fault is not None:
        b[fault[0]:fault[1]] += 6.0
    t = start + np.arange(rows) + (10.0 * (np.arange(rows) // every) if every > 1 else 0.0)
    lines = ["time,a,b,c"] + [f"{ti:.0f},{x:.3f},{y:.3f},{z:.3f}" for ti, x, y, z in zip(t, a, b, c, strict=True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_labels(path: Path, faults: list[dict[str, object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"episodes": faults}), encoding="utf-8")
    return path
