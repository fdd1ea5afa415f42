"""Streaming: the samples of generate_dataset, one dict per sample, in real or accelerated time."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from nacelle.simulator.drifts import DriftEpisode
from nacelle.simulator.faults import FaultEpisode
from nacelle.simulator.generate import DEFAULT_START
from nacelle.simulator.physics import TurbineModel
from shared.errors import ConfigurationError
from shared.ml.schema import RAW_COLUMNS, STRING_COLUMNS

INT_COLUMNS = frozenset({"arduino_timestamp", "nanoFreemem", "voltage", "ax", "ay", "az"})


class TurbineStream:
    """One turbine's samples batch by batch; equal to generate_dataset's for the same seed and schedule."""

    def __init__(self, turbine_id: str, seed: int, start: datetime | None = None,
                 schedule: Iterable[FaultEpisode] = (), nano_id: str | None = None) -> None:
        self.labels: list[FaultEpisode] = list(schedule)
        self.model = TurbineModel(turbine_id, seed, start or DEFAULT_START, self.labels, nano_id)
        self.seq = 0

    @property
    def turbine_id(self) -> str:
        return self.model.turbine_id

    @property
    def now(self) -> datetime:
        """Stream time: every sample before it has been returned."""
        return self.model.now

    def next_batch(self, seconds: float) -> list[dict[str, Any]]:
        """The samples of the next `seconds`: raw columns (numbers as int/float, an empty reading as
        None), plus `seq` (0, 1, 2, ...) and `ts` (epoch seconds)."""
        cols = self.model.step(seconds)
        n = len(cols["ts"])
        values = {name: _plain(name, cols[name]) for name in RAW_COLUMNS}
        values["ts"] = cols["ts"].tolist()
        values["seq"] = list(range(self.seq, self.seq + n))
        self.seq += n
        names = list(values)
        return [dict(zip(names, row, strict=True)) for row in zip(*values.values(), strict=True)]

    def inject(self, fault: str, severity: str = "medium", duration_s: float = 60.0,
               start: datetime | None = None) -> FaultEpisode:
        """Start a fault now (or at `start`, not in the past); the episode is appended to `labels`."""
        begin = start or self.now
        ep = FaultEpisode(self.turbine_id, fault, severity, begin, begin + timedelta(seconds=duration_s))
        self.model.add_episode(ep)
        self.labels.append(ep)
        return ep

    def drift(self, kind: str, magnitude: float = 1.0, start: datetime | None = None) -> DriftEpisode:
        """Start a lasting drift (nacelle.simulator.drifts) now, or at `start` (not in the past)."""
        ep = DriftEpisode(self.turbine_id, kind, start or self.now, magnitude)
        self.model.add_drift(ep)
        return ep


def _plain(name: str, column: np.ndarray) -> list[Any]:
    if name in STRING_COLUMNS:
        return [str(v) for v in column]
    values = column.tolist()
    if column.dtype.kind == "f" and np.isnan(column).any():
        values = [None if v != v else v for v in values]
    if name in INT_COLUMNS and column.dtype.kind == "f":
        values = [None if v is None else int(v) for v in values]
    return values


def paced(stream: TurbineStream, speed: float = 1.0, batch_seconds: float = 1.0,
          clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> Iterator[list[dict[str, Any]]]:
    """Endless batches, each released once its stream time has elapsed at `speed` x real time
    (speed = math.inf: as fast as possible)."""
    if not speed > 0 or not batch_seconds > 0:
        raise ConfigurationError(f"speed and batch_seconds must be > 0 (got {speed}, {batch_seconds})")
    t0, elapsed = clock(), 0.0
    while True:
        batch = stream.next_batch(batch_seconds)
        elapsed += batch_seconds
        delay = t0 + elapsed / speed - clock() if math.isfinite(speed) else 0.0
        if delay > 0:
            sleep(delay)
        yield batch

