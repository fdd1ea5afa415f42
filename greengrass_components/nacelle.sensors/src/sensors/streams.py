"""Stream sources: a CSV file replayed (commissioning) and the built-in turbine simulator.

Replay reads the file with the same validation as the cloud's data intake (shared/ml/validation.py: an invalid
file is refused with the first problem's file, line and reason) and keeps the file's own sample spacing, rebased so
that its first sample is stamped with the time the replay started; `speed` > 1 releases it faster than real time
(the timestamps still run at the file's pace). With `loop`, it starts over after one sample interval.

The simulator is nacelle.simulator's physics (packaged with the component), starting at the current time.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from nacelle.simulator.faults import stable_int
from nacelle.simulator.stream import TurbineStream
from shared.errors import ConfigurationError, DataError
from shared.ml.schema import RAW_COLUMNS, STRING_COLUMNS
from shared.ml.spec import FeatureSpec
from shared.ml.validation import load_file

from .config import ReplaySettings, SimulatorSettings
from .sampler import Sample


class ReplaySource:
    kind = "replay"

    def __init__(self, settings: ReplaySettings, spec: FeatureSpec, start: float | None = None) -> None:
        self.endpoint = f"file://{settings.file}"
        self.speed = settings.speed
        self.loop = settings.loop
        self.columns = spec.input_columns
        try:
            frames, _ = load_file(Path(settings.file), spec)
        except DataError as exc:  # ValidationFailed names the file, the line or column and the reason
            raise ConfigurationError(f"replay.file: {exc}") from exc
        turbines = [f.turbine_id for f in frames]
        if settings.turbine:
            chosen = [f for f in frames if f.turbine_id == settings.turbine]
            if not chosen:
                raise ConfigurationError(f"replay.turbine: {settings.file} holds no turbine {settings.turbine!r} "
                                         f"(it holds {', '.join(turbines)})")
        elif len(frames) > 1:
            raise ConfigurationError(f"replay.turbine: {settings.file} holds turbines {', '.join(turbines)}; name "
                                     f"the one to replay")
        else:
            chosen = frames
        frame = chosen[0]
        self.t = frame.t - frame.t[0]  # seconds from the first sample
        self.values = np.column_stack([frame.values[c] for c in self.columns])
        step = float(np.median(np.diff(self.t))) if len(self.t) > 1 else 1.0 / spec.sampling.rate_hz
        self.period = float(self.t[-1]) + step  # one pass, when looping
        self.base = time.time() if start is None else start
        self._cursor = 0.0  # stream seconds handed out
        self._index = 0
        self._pass = 0
        self._seq = 0

    @property
    def finished(self) -> bool:
        return not self.loop and self._index >= len(self.t)

    def take(self, seconds: float) -> list[Sample]:
        self._cursor += seconds
        out: list[Sample] = []
        while not self.finished:
            if self._index >= len(self.t):
                self._index, self._pass = 0, self._pass + 1
            offset = self._pass * self.period + float(self.t[self._index])
            if offset >= self._cursor:
                break
            row = self.values[self._index]
            sample: Sample = {"seq": self._seq, "ts": round(self.base + offset, 6)}
            sample.update({c: (None if math.isnan(v) else float(v)) for c, v in zip(self.columns, row.tolist(),
                                                                                    strict=True)})
            out.append(sample)
            self._index += 1
            self._seq += 1
        return out


class SimulatedSource:
    kind = "simulator"
    endpoint = "simulator"

    def __init__(self, thing: str, settings: SimulatorSettings, spec: FeatureSpec) -> None:
        produced = [c for c in RAW_COLUMNS if c not in STRING_COLUMNS]
        unknown = [c for c in spec.input_columns if c not in produced]
        if unknown:
            raise ConfigurationError(f"simulator: the built-in simulator has no signal {', '.join(unknown)} "
                                     f"(it produces {', '.join(produced)})")
        seed = stable_int("simulator", thing) % 2**31 if settings.seed is None else settings.seed
        self.stream = TurbineStream(thing, seed, start=datetime.now(UTC))
        self.speed = settings.speed
        self.columns = spec.input_columns

    @property
    def finished(self) -> bool:
        return False

    def take(self, seconds: float) -> list[Sample]:
        return [{"seq": s["seq"], "ts": s["ts"], **{c: s[c] for c in self.columns}}
                for s in self.stream.next_batch(seconds)]
