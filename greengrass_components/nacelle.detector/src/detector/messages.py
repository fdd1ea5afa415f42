"""Versioned message schemas of the detector's topics.

Incoming `turbines/{id}/sensors` is shared.messages.SensorMessage (schema v1), a batch::

    {"v": 1, "turbine_id": "t1", "samples": [{"seq": 7, "ts": 1700000000.05, "qw": 1.0, ..., "rps": null}]}

parse_sensor_batch is its one parser: one typed decode (msgspec) of the definition as the feature spec reads
it, and one comparison:

1. a JSON object with no unknown field, an integer `v`, a `turbine_id` of 1..MAX_TEXT characters and
   1..MAX_SAMPLES samples, each an object holding a non-negative integer `seq`, positive epoch seconds `ts`
   and every raw input column of the spec, a finite number or null (null = a missing reading); a sample's
   other keys (e.g. a source id) are skipped unread, so they are not judged beyond being JSON (the payload's
   byte limit bounds them);
2. timestamps strictly increase and, when the caller gives its clock (`not_after`), none is more than
   MAX_AHEAD_S ahead of it (a sensor clock glitch would otherwise hold back every later sample as stale).

Anything else is a BadMessage whose reason names the first bad field by its JSON path
(`... - at $.samples[3].rps`), raised before any state is touched.

Outgoing `turbines/{id}/anomalies` (schema v2: the episode's peak score / threshold and each feature's
share of that window's score) and `turbines/{id}/health` (schema v1) are built by MessageBuilder, which
numbers each topic's messages with its own increasing `seq`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from itertools import chain
from operator import itemgetter, lt
from typing import Annotated, Any

import msgspec
import numpy as np

from shared.messages import (
    MAX_ERROR_TEXT,
    MAX_SAMPLES,
    MAX_TEXT,
    BadMessage,
    CaptureSummary,
    EpisodeMessage,
    HealthMessage,
    Message,
    SensorMessage,
    validate,
)
from shared.ml.episodes import EpisodeEvent
from shared.ml.spec import FeatureSpec

from . import SCHEMA_VERSION

__all__ = ["MAX_AHEAD_S", "MAX_MESSAGE_BYTES", "BadMessage", "MessageBuilder", "Sample", "SampleBatch", "encode",
           "parse_sensor_batch", "parse_sensor_message", "sensor_message"]

MAX_MESSAGE_BYTES = SensorMessage.MAX_BYTES
MAX_AHEAD_S = 86400.0  # a sample time more than this ahead of the device's clock is refused


@dataclass(frozen=True)
class Sample:
    seq: int
    ts: float  # epoch seconds
    values: tuple[float, ...]  # spec.input_columns order; NaN where the reading is null


@dataclass(frozen=True)
class SampleBatch:
    """The samples of one message as columns (what the pipeline consumes)."""

    seq: np.ndarray  # (N,) int64
    ts: np.ndarray  # (N,) float64 epoch seconds
    values: np.ndarray  # (N, C) float64 in spec.input_columns order; NaN where the reading is null

    def __len__(self) -> int:
        return len(self.seq)

    def samples(self) -> list[Sample]:
        return [Sample(q, t, tuple(v)) for q, t, v in zip(self.seq.tolist(), self.ts.tolist(),
                                                            self.values.tolist(), strict=True)]

    @classmethod
    def from_samples(cls, samples: Sequence[Sample], n_columns: int) -> SampleBatch:
        seq = np.array([s.seq for s in samples], dtype=np.int64)
        ts = np.array([s.ts for s in samples], dtype=np.float64)
        values = np.array([s.values for s in samples], dtype=np.float64).reshape(len(samples), n_columns)
        return cls(seq, ts, values)


_SEQ = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]  # stays an integer: int64 holds it exactly


@lru_cache(maxsize=8)
def _decoder(columns: tuple[str, ...]) -> msgspec.json.Decoder[Any]:
    """shared.messages.SensorMessage as the feature spec reads it: per sample (seq, ts, *columns), a Struct
    made at run time. Column names need not be identifiers: fields c0, c1... are renamed to them."""
    fields: list[tuple[str, Any]] = [("seq", _SEQ), ("ts", Annotated[float, msgspec.Meta(gt=0)])]
    fields += [(f"c{i}", float | None) for i in range(len(columns))]
    sample = msgspec.defstruct("SpecSample", fields, rename={f"c{i}": c for i, c in enumerate(columns)}, gc=False)
    batch = msgspec.defstruct("SpecBatch", [
        ("v", int),
        ("turbine_id", Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT)]),
        ("samples", Annotated[list[sample], msgspec.Meta(min_length=1, max_length=MAX_SAMPLES)]),  # type: ignore[valid-type]
        ("seq", Annotated[int, msgspec.Meta(ge=0)], 0),
    ], forbid_unknown_fields=True, gc=False)
    return msgspec.json.Decoder(batch)


def parse_sensor_message(payload: bytes, spec: FeatureSpec, turbine_id: str,
                         max_bytes: int = MAX_MESSAGE_BYTES) -> list[Sample]:
    """The samples of one sensor message, validated against the spec's raw input columns."""
    return parse_sensor_batch(payload, spec, turbine_id, max_bytes).samples()


def parse_sensor_batch(payload: bytes, spec: FeatureSpec, turbine_id: str,
                       max_bytes: int = MAX_MESSAGE_BYTES, not_after: float | None = None) -> SampleBatch:
    """One sensor message as columns, or BadMessage naming the first bad field. `not_after`: the latest
    sample time taken (epoch seconds; the device's clock + MAX_AHEAD_S), None for no bound."""
    if len(payload) > max_bytes:
        raise BadMessage(f"payload of {len(payload)} bytes exceeds the {max_bytes}-byte limit")
    try:
        doc = _decoder(spec.input_columns).decode(payload)
    except msgspec.ValidationError as exc:  # a DecodeError too: first
        raise BadMessage(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise BadMessage(f"payload is not valid JSON: {exc}") from None
    if doc.v != SCHEMA_VERSION:
        raise BadMessage(f"unknown schema version {doc.v} (this detector reads {SCHEMA_VERSION})")
    if doc.turbine_id != turbine_id:
        raise BadMessage(f"message for turbine {doc.turbine_id!r} arrived at the detector of {turbine_id!r}")
    rows = list(map(msgspec.structs.astuple, doc.samples))  # (seq, ts, *columns)
    times = [row[1] for row in rows]
    if not all(map(lt, times, times[1:])):
        i = next(i for i in range(1, len(times)) if not times[i] > times[i - 1])
        raise BadMessage(f"Expected a time after the previous sample's {times[i - 1]!r}, got {times[i]!r} "
                         f"- at `$.samples[{i}].ts`")
    if not_after is not None and times[-1] > not_after:
        i = next(i for i, t in enumerate(times) if t > not_after)
        raise BadMessage(f"Expected a time at most {not_after!r} (the device's clock + {MAX_AHEAD_S:g} s), "
                         f"got {times[i]!r} - at `$.samples[{i}].ts`")
    n, width = len(rows), len(rows[0])
    table = np.fromiter(chain.from_iterable(rows), np.float64, n * width).reshape(n, width)  # null -> NaN
    return SampleBatch(np.fromiter(map(itemgetter(0), rows), np.int64, n), table[:, 1], table[:, 2:])


def sensor_message(turbine_id: str, samples: Sequence[Mapping[str, Any]]) -> bytes:
    """Encode a batch as shared.messages.SensorMessage (the simulator/PLC side; tests use it too). NaN values
    become null."""
    def clean(s: Mapping[str, Any]) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in s.items()}

    message = SensorMessage(v=SensorMessage.VERSION, turbine_id=turbine_id, samples=[clean(s) for s in samples])
    doc = {"v": message.v, "turbine_id": message.turbine_id, "samples": message.samples}  # seq, ts checked
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


class MessageBuilder:
    """Outgoing anomaly and health messages of one turbine (shared.messages definitions, checked as built);
    `seq` increases per topic.

    `seq` restarts at `start` with the process; the spool (append_message) overrides it with its own
    counter, which survives restarts.
    """

    def __init__(self, turbine_id: str, start: int = 1) -> None:
        self.turbine_id = turbine_id
        self._seq = {"anomalies": start, "health": start}

    def _next(self, topic: str) -> int:
        seq = self._seq[topic]
        self._seq[topic] = seq + 1
        return seq

    def anomaly(self, event: EpisodeEvent, model_version: int | None) -> dict[str, Any]:
        """Schema v2: `score` is the peak score / threshold, `contributions` the peak window's shares."""
        ep = event.episode
        return _checked(EpisodeMessage(
            v=EpisodeMessage.VERSION, kind=event.kind, episode_id=ep["episode_id"], turbine_id=self.turbine_id,
            features=list(ep["features"]), score=round(float(ep["peak_ratio"]), 6),
            contributions={k: float(v) for k, v in sorted(ep["contributions"].items())},
            missing=list(ep["missing"]), started_at=ep["started_at"], opened_at=ep["opened_at"],
            last_flagged_at=ep["last_flagged_at"], ended_at=ep["closed_at"], model_version=model_version,
            seq=self._next("anomalies")))

    def health(self, *, model_version: int | None, inference_rate_hz: float, latency_p50_ms: float | None,
               latency_p99_ms: float | None, spool_depth: int, spool_dropped: int, bad_messages: int,
               uptime_s: float, windows_scored: int, detector_version: str | None = None,
               model_error: str | None = None, capture: CaptureSummary | None = None, stale_samples: int = 0,
               errors: int = 0) -> dict[str, Any]:
        return _checked(HealthMessage(
            v=HealthMessage.VERSION, turbine_id=self.turbine_id, model_version=model_version,
            detector_version=detector_version, inference_rate_hz=round(float(inference_rate_hz), 3),
            latency_p50_ms=None if latency_p50_ms is None else round(float(latency_p50_ms), 3),
            latency_p99_ms=None if latency_p99_ms is None else round(float(latency_p99_ms), 3),
            spool_depth=int(spool_depth), spool_dropped=int(spool_dropped), bad_messages=int(bad_messages),
            stale_samples=int(stale_samples), errors=int(errors),
            uptime_s=round(max(0.0, float(uptime_s)), 3), windows_scored=int(windows_scored),
            model_error=None if model_error is None else model_error[:MAX_ERROR_TEXT], capture=capture,
            seq=self._next("health")))


def _checked(message: Message) -> dict[str, Any]:
    """The message as a dict, after the same check the cloud applies (BadMessage if it would refuse it)."""
    return asdict(validate(type(message), asdict(message)))


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
