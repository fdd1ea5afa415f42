"""Versioned message schemas of the detector's topics.

Incoming `turbines/{id}/sensors` (schema v1), a batch::

    {"v": 1, "turbine_id": "t1", "samples": [{"seq": 7, "ts": 1700000000.05, "qw": 1.0, ..., "rps": null}]}

or a single sample object with "v" and "turbine_id" at its top level instead of "samples".
Every raw input column of the feature spec must be present in every sample (null = missing
reading); other keys are ignored. Timestamps are epoch seconds and strictly increasing within a
batch. Anything else is a BadMessage, raised before any state is touched.

Parsing takes the first of three paths that succeeds:

1. typed: msgspec decodes an ASCII batch straight into one struct per sample, checking every type on
   the way (int seq >= 0, number ts > 0, number-or-null columns); numbers decode exactly as the
   stdlib json module decodes them;
2. columnar: stdlib json, then whole-column checks;
3. precise: a sample-by-sample walk that names the first bad field.

A message the typed path does not take (a single-sample message, non-ASCII bytes, any failed check)
goes the stdlib way, so every BadMessage reason comes from paths 2 and 3.

Outgoing `turbines/{id}/anomalies` (schema v2: the episode's peak score / threshold and each feature's
share of that window's score) and `turbines/{id}/health` (schema v1) are built by MessageBuilder, which
numbers each topic's messages with its own increasing `seq`.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from itertools import chain, starmap
from operator import itemgetter, lt
from typing import Annotated, Any

import msgspec
import numpy as np

from shared import messages
from shared.errors import DataError
from shared.messages import MAX_ERROR_TEXT, EpisodeMessage, HealthMessage, Message, SensorMessage, validate
from shared.ml.episodes import EpisodeEvent
from shared.ml.spec import FeatureSpec

from . import SCHEMA_VERSION

MAX_MESSAGE_BYTES = SensorMessage.MAX_BYTES
MAX_SAMPLES = messages.MAX_SAMPLES


class BadMessage(DataError, ValueError):
    """A sensor message that cannot be used; `reason` says why (short, loggable, no payload dump)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Sample:
    seq: int
    ts: float  # epoch seconds
    values: tuple[float, ...]  # spec.input_columns order; NaN where the reading is null


@dataclass(slots=True)  # not frozen: built once per message, and a frozen __init__ costs more
class SampleBatch:
    """The samples of one message as columns (what the pipeline consumes)."""

    seq: list[int]
    ts: np.ndarray  # (N,) float64 epoch seconds
    values: np.ndarray  # (N, C) float64 in spec.input_columns order; NaN where the reading is null
    ordered: bool = True  # ts strictly increasing (checked by the parser; not for from_samples)
    times: list[float] | None = None  # ts as Python floats, when the parser has them anyway

    def __len__(self) -> int:
        return len(self.seq)

    def samples(self) -> list[Sample]:
        return [Sample(q, t, tuple(v)) for q, t, v in zip(self.seq, self.ts.tolist(), self.values.tolist(),
                                                            strict=True)]

    @classmethod
    def from_samples(cls, samples: list[Sample], n_columns: int) -> SampleBatch:
        ts = np.fromiter((s.ts for s in samples), dtype=np.float64, count=len(samples))
        values = np.array([s.values for s in samples], dtype=np.float64).reshape(len(samples), n_columns)
        return cls([s.seq for s in samples], ts, values, ordered=False)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _is_finite(x: int | float) -> bool:
    try:
        return math.isfinite(x)
    except OverflowError:  # an integer beyond float range
        return False


def _reject_constant(token: str) -> Any:
    raise BadMessage(f"non-standard JSON constant {token}")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)  # built once: json.loads(..., kw) rebuilds it
_NUMBER_TYPES = frozenset({int, float, type(None)})


@lru_cache(maxsize=8)
def _row_getter(columns: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    return itemgetter("seq", "ts", *columns)


@lru_cache(maxsize=8)
def _row_struct(n_columns: int) -> struct.Struct:
    """A typed row (seq, ts, *columns) as native doubles."""
    return struct.Struct(f"={n_columns + 2}d")


@lru_cache(maxsize=8)
def _typed_decoder(columns: tuple[str, ...]) -> msgspec.json.Decoder[Any]:
    """A decoder of batch messages for these raw input columns (struct fields c0.. renamed to them)."""
    fields: list[tuple[str, Any]] = [("seq", Annotated[int, msgspec.Meta(ge=0)]),
                                     ("ts", Annotated[float, msgspec.Meta(gt=0)])]
    fields += [(f"c{i}", float | None) for i in range(len(columns))]
    sample = msgspec.defstruct("SensorSample", fields, gc=False,
                               rename={f"c{i}": c for i, c in enumerate(columns)})
    samples: Any = list[sample] | None  # type: ignore[valid-type]  # a struct type built at run time
    message = msgspec.defstruct("SensorBatch", [("v", int), ("turbine_id", str), ("samples", samples, None)], gc=False)
    return msgspec.json.Decoder(message)


def _typed_batch(payload: bytes, columns: tuple[str, ...], turbine_id: str) -> SampleBatch | None:
    """The batch through the typed decoder; None when it does not take the message."""
    try:
        doc = _typed_decoder(columns).decode(payload)
    except msgspec.MsgspecError:
        return None
    samples = doc.samples
    if doc.v != SCHEMA_VERSION or doc.turbine_id != turbine_id or not samples or len(samples) > MAX_SAMPLES:
        return None
    rows = list(map(msgspec.structs.astuple, samples))  # (seq, ts, *columns)
    ts = [r[1] for r in rows]
    if not all(map(lt, ts, ts[1:])):  # strictly increasing (a list beats numpy on a few samples)
        return None
    try:  # packing rows as C doubles beats np.array's conversion several times over, but takes no None
        packed = bytearray(b"".join(starmap(_row_struct(len(columns)).pack, rows)))
        table = np.frombuffer(packed, dtype=np.float64).reshape(len(rows), len(columns) + 2)
    except struct.error:  # a null reading: np.array makes it NaN
        table = None
    except OverflowError:  # a seq beyond float range
        return None
    if table is None:
        try:
            table = np.array(rows, dtype=np.float64)  # out-of-range numbers failed the decode
        except OverflowError:
            return None
    return SampleBatch([r[0] for r in rows], table[:, 1], table[:, 2:], times=ts)


def parse_sensor_message(payload: bytes, spec: FeatureSpec, turbine_id: str,
                         max_bytes: int = MAX_MESSAGE_BYTES) -> list[Sample]:
    """The samples of one sensor message, validated against the spec's raw input columns."""
    return parse_sensor_batch(payload, spec, turbine_id, max_bytes).samples()


def parse_sensor_batch(payload: bytes, spec: FeatureSpec, turbine_id: str,
                       max_bytes: int = MAX_MESSAGE_BYTES) -> SampleBatch:
    """parse_sensor_message as columns: same checks, same BadMessage reasons."""
    if isinstance(payload, bytes) and payload.isascii() and len(payload) <= max_bytes:
        batch = _typed_batch(payload, spec.input_columns, turbine_id)
        if batch is not None:
            return batch
    raw = _sample_list(payload, turbine_id, max_bytes)
    columns = spec.input_columns
    batch = _fast_columns(raw, columns)
    return batch if batch is not None else _precise_columns(raw, columns)


def _sample_list(payload: bytes, turbine_id: str, max_bytes: int) -> list[Any]:
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise BadMessage(f"payload must be bytes, got {type(payload).__name__}")
    if len(payload) > max_bytes:
        raise BadMessage(f"payload of {len(payload)} bytes exceeds the {max_bytes}-byte limit")
    try:
        doc = _DECODER.decode(bytes(payload).decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BadMessage(f"payload is not UTF-8: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise BadMessage(f"payload is not valid JSON: {exc.msg} at char {exc.pos}") from None
    except RecursionError:
        raise BadMessage("payload nests too deeply") from None
    if not isinstance(doc, dict):
        raise BadMessage(f"message must be a JSON object, got {type(doc).__name__}")
    version = doc.get("v")
    if not _is_int(version):
        raise BadMessage(f"message lacks an integer schema version 'v' (got {version!r})")
    if version != SCHEMA_VERSION:
        raise BadMessage(f"unknown schema version {version} (this detector reads {SCHEMA_VERSION})")
    sender = doc.get("turbine_id")
    if not isinstance(sender, str):
        raise BadMessage("message lacks a string 'turbine_id'")
    if sender != turbine_id:
        raise BadMessage(f"message for turbine {sender!r} arrived at the detector of {turbine_id!r}")
    if "samples" not in doc:
        return [doc]
    raw = doc["samples"]
    if not isinstance(raw, list):
        raise BadMessage(f"'samples' must be a list, got {type(raw).__name__}")
    if not raw:
        raise BadMessage("'samples' is empty")
    if len(raw) > MAX_SAMPLES:
        raise BadMessage(f"{len(raw)} samples exceed the limit of {MAX_SAMPLES} per message")
    return raw


def _fast_columns(raw: list[Any], columns: tuple[str, ...]) -> SampleBatch | None:
    """Whole-column checks; None when any fails (the precise walk then names the first bad field)."""
    try:
        rows = list(map(_row_getter(columns), raw))  # KeyError: a missing key; TypeError: not an object
    except (KeyError, TypeError):
        return None
    if not set(map(type, chain.from_iterable(rows))) <= _NUMBER_TYPES:  # no bool, str, list, dict
        return None
    seq = [r[0] for r in rows]
    if set(map(type, seq)) != {int} or min(seq) < 0:
        return None
    try:
        table = np.array(rows, dtype=np.float64)  # null -> NaN; JSON has no NaN token (rejected above)
    except OverflowError:  # an integer beyond float range
        return None
    ts = table[:, 1]
    # an infinity can only come from a huge literal (1e999); a NaN ts (null) fails the comparisons
    if np.isinf(table).any() or not ts[0] > 0 or (len(ts) > 1 and not (ts[1:] > ts[:-1]).all()):
        return None
    return SampleBatch(seq, ts, table[:, 2:])


def _precise_columns(raw: list[Any], columns: tuple[str, ...]) -> SampleBatch:
    samples: list[Sample] = []
    last_ts = -math.inf
    for i, item in enumerate(raw):
        samples.append(_sample(item, i, columns))
        if samples[-1].ts <= last_ts:
            raise BadMessage(f"sample {i}: ts {samples[-1].ts} is not after the previous sample's {last_ts}")
        last_ts = samples[-1].ts
    return SampleBatch.from_samples(samples, len(columns))


def _sample(item: Any, i: int, columns: tuple[str, ...]) -> Sample:
    if not isinstance(item, dict):
        raise BadMessage(f"sample {i} must be an object, got {type(item).__name__}")
    seq: Any = item.get("seq")
    ts: Any = item.get("ts")
    if not _is_int(seq) or seq < 0:
        raise BadMessage(f"sample {i}: 'seq' must be a non-negative integer, got {seq!r}")
    if not _is_number(ts) or not _is_finite(ts) or ts <= 0:
        raise BadMessage(f"sample {i}: 'ts' must be positive epoch seconds, got {ts!r}")
    values: list[float] = []
    for name in columns:
        if name not in item:
            raise BadMessage(f"sample {i}: missing column {name!r} (null marks a missing reading)")
        v = item[name]
        if v is None:
            values.append(math.nan)
        elif _is_number(v) and _is_finite(v):
            values.append(float(v))
        else:
            raise BadMessage(f"sample {i}: column {name!r} must be a finite number or null, got {v!r}")
    return Sample(seq, float(ts), tuple(values))


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
               model_error: str | None = None) -> dict[str, Any]:
        return _checked(HealthMessage(
            v=HealthMessage.VERSION, turbine_id=self.turbine_id, model_version=model_version,
            detector_version=detector_version, inference_rate_hz=round(float(inference_rate_hz), 3),
            latency_p50_ms=None if latency_p50_ms is None else round(float(latency_p50_ms), 3),
            latency_p99_ms=None if latency_p99_ms is None else round(float(latency_p99_ms), 3),
            spool_depth=int(spool_depth), spool_dropped=int(spool_dropped), bad_messages=int(bad_messages),
            uptime_s=round(max(0.0, float(uptime_s)), 3), windows_scored=int(windows_scored),
            model_error=None if model_error is None else model_error[:MAX_ERROR_TEXT], seq=self._next("health")))


def _checked(message: Message) -> dict[str, Any]:
    """The message as a dict, after the same check the cloud applies (BadMessage if it would refuse it)."""
    return asdict(validate(type(message), asdict(message)))


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
