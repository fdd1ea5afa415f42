"""What the foreign-data suites share: a run of samples with its faults, noise, and files on disk."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from shared.ml.metrics import Fault


@dataclass
class Run:
    """One unit's series: sample times (epoch s), values (rows x channels, NaN = missing), faults."""

    unit: str
    t: np.ndarray
    values: np.ndarray
    faults: list[Fault] = field(default_factory=list)

    def rows(self, a: int, b: int) -> Run:
        lo, hi = float(self.t[a]), float(self.t[min(b, len(self.t)) - 1])
        return Run(self.unit, self.t[a:b], self.values[a:b],
                   [f for f in self.faults if f.end >= lo and f.start <= hi])


def ar1(rng: np.random.Generator, n: int, tau: float, sigma: float) -> np.ndarray:
    """A stationary AR(1) series of n steps: time constant `tau` steps, standard deviation `sigma`."""
    phi = float(np.exp(-1.0 / max(tau, 1e-9)))
    shocks = rng.normal(0.0, sigma * np.sqrt(1 - phi * phi), n)
    shocks[0] = rng.normal(0.0, sigma)
    out = np.empty(n)
    acc = 0.0
    for i in range(n):  # n is at most a few 10^5 in these suites
        acc = phi * acc + shocks[i] if i else shocks[0]
        out[i] = acc
    return out


def lowpass(x: np.ndarray, tau: float) -> np.ndarray:
    """First-order lag of `tau` steps (a thermal mass), starting at x[0]."""
    alpha = 1.0 - float(np.exp(-1.0 / max(tau, 1e-9)))
    out = np.empty_like(x)
    acc = float(x[0])
    for i, v in enumerate(x.tolist()):
        acc += alpha * (v - acc)
        out[i] = acc
    return out


def write_csv(path: Path, run: Run, channels: tuple[str, ...], decimals: tuple[int, ...], time_column: str,
              time_style: str, delimiter: str) -> Path:
    """The run as a CSV file: time column then the channels; an empty field for a missing value."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [delimiter.join((time_column, *channels))]
    for ts, row in zip(run.t.tolist(), run.values.tolist(), strict=True):
        stamp = datetime.fromtimestamp(ts, UTC)
        text = stamp.strftime("%Y-%m-%d %H:%M:%S") if time_style == "plain" else stamp.isoformat()
        cells = ["" if np.isnan(v) else f"{v:.{d}f}" for v, d in zip(row, decimals, strict=True)]
        lines.append(delimiter.join((text, *cells)))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_labels(path: Path, faults: list[Fault]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"episodes": [{"turbine_id": f.turbine_id, "fault": f.fault, "severity": f.severity,
                         "start": datetime.fromtimestamp(f.start, UTC).isoformat(),
                         "end": datetime.fromtimestamp(f.end, UTC).isoformat()} for f in faults]}
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return path
