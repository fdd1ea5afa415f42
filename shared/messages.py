"""Device messages: one typed definition per MQTT message a turbine sends, for the detector and the cloud.

Standard library only: the detector imports this module on the device. Each message is a frozen dataclass
whose fields are its JSON keys, with a schema version `v` and a per-stream sequence number `seq` (1, 2, ...
per topic, kept across restarts by the device's spool: a hole in it is a lost message).

`decode(Message, payload)` is the strict check every hop applies: at most MAX_BYTES (AWS IoT Core's 128 KB
for what goes to the cloud), UTF-8 JSON without NaN/Infinity or a key twice in one object, a known version,
every field of its declared type (a bool is not a number, numbers finite, text and lists bounded), no unknown
field. A failure raises BadMessage naming the field and the reason; callers count it as a refused message and
never let it touch alert or rollout state.

A cloud row is what an IoT rule's `SELECT *, topic(2) AS thing_name, timestamp() AS received_at,
clientid() AS client_id` hands the function: the message plus those three fields (EpisodeRow, HealthRow).
A row whose `turbine_id` is not its topic's thing is refused: a device speaks only for itself; so is an episode row
whose `episode_id` is not one of that thing's (`<thing>-...`), a row whose times (Message.TIMES) are not epoch
seconds before 2100, and a stats row whose period ends more than MAX_CLOCK_AHEAD_S after the broker received it.
"""

from __future__ import annotations

import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from itertools import pairwise
from typing import Any, ClassVar, Literal, TypeGuard, TypeVar, get_args, get_origin

from shared.errors import DataError
from shared.unique_keys import unique_keys

MAX_MESSAGE_BYTES = 128 * 1024  # AWS IoT Core's message size limit
MAX_TEXT = 200  # characters of any text field
MAX_ERROR_TEXT = 2000  # characters of an error message
MAX_ITEMS = 256  # entries of any list or map field (unless its field says otherwise)
MAX_SAMPLES = 10_000  # samples of one sensor message
MAX_LEVELS = 99  # quantile levels of a stats message's sketches
EPISODE_KINDS = ("open", "update", "close", "interrupt")  # interrupt: the detector stopped, no end seen
MAX_SEQ = 2**53 - 1  # the largest integer a JSON number carries exactly
MAX_EPOCH_S = 4_102_444_800.0  # 2100-01-01T00:00:00Z: a cloud row's time past it is in ms or ns, or made up
# How far a stats period may end after the broker received it: a day, as far as the detector lets samples run ahead of
# its own clock (a simulation run faster than real time runs ahead too); a row dated years ahead is refused.
MAX_CLOCK_AHEAD_S = 86_400.0
MAX_STAT = 3.4028234663852886e38  # |a stats value| at most: the largest float32 (the model's input type)

M = TypeVar("M", bound="Message")


class BadMessage(DataError, ValueError):
    """A device message that fails its definition; `reason` is short and loggable (no payload dump)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _min(value: float) -> dict[str, Any]:
    return {"min": value}


def _stat(low: float = -MAX_STAT) -> dict[str, Any]:
    """A stats value: bounded so that distances between sketches stay finite."""
    return {"min": low, "max": MAX_STAT}


@dataclass(frozen=True, kw_only=True)
class Message:
    STREAM: ClassVar[str] = ""  # the topic below the turbine: turbines/<thing>/<STREAM>
    VERSION: ClassVar[int] = 0
    MAX_BYTES: ClassVar[int] = MAX_MESSAGE_BYTES
    TIMES: ClassVar[tuple[str, ...]] = ()  # fields in epoch seconds (bounded in the cloud's rows)
    v: int
    turbine_id: str = field(metadata={"min_len": 1})
    seq: int = field(default=0, metadata={"min": 0, "max": MAX_SEQ})

    def to_json(self) -> bytes:
        """The wire form (compact JSON); refuses to produce a message its own decode would refuse."""
        payload = json.dumps(asdict(self), separators=(",", ":"), allow_nan=False).encode()
        decode(type(self), payload)
        return payload

    @classmethod
    def upgrade(cls, doc: dict[str, Any]) -> dict[str, Any]:
        """An older schema version's document in this version's shape (default: none accepted)."""
        return doc


@dataclass(frozen=True, kw_only=True)
class EpisodeMessage(Message):
    """turbines/<thing>/anomalies, v2: `score` is the episode's peak score / threshold and `contributions`
    each feature's share of that window's score."""

    STREAM: ClassVar[str] = "anomalies"
    VERSION: ClassVar[int] = 2
    TIMES: ClassVar[tuple[str, ...]] = ("started_at", "opened_at", "last_flagged_at", "ended_at")
    kind: Literal["open", "update", "close", "interrupt"]
    episode_id: str = field(metadata={"min_len": 1})
    features: list[str] = field(default_factory=list)
    score: float = field(metadata=_min(0))
    contributions: dict[str, float] = field(default_factory=dict, metadata=_min(0))
    missing: list[str] = field(default_factory=list)
    started_at: float
    opened_at: float
    last_flagged_at: float | None = None
    ended_at: float | None = None
    model_version: int | None = None

    @classmethod
    def upgrade(cls, doc: dict[str, Any]) -> dict[str, Any]:
        """v1 (a detector not yet updated): per-feature `ratios` (error / that feature's threshold) become
        `score` (the highest ratio) and `contributions` (each ratio's share); bad ratios are kept as they
        are so that the v2 check names them."""
        if doc.get("v") != 1:
            return doc
        ratios = doc.get("ratios")
        rest = {k: v for k, v in doc.items() if k != "ratios"}
        if not isinstance(ratios, Mapping) or not all(_is_number(r) and r >= 0 for r in ratios.values()):
            return {**rest, "v": cls.VERSION, "score": ratios, "contributions": {}}
        total = sum(float(r) for r in ratios.values())  # floats: a sum of huge integers overflows to inf, not raises
        return {**rest, "v": cls.VERSION, "score": float(max(ratios.values(), default=0.0)),
                "contributions": {k: float(r) / total for k, r in ratios.items()} if 0 < total < math.inf else {}}


SourceKind = Literal["modbus", "opcua", "replay", "simulator"]
SourceState = Literal["connecting", "connected", "disconnected", "finished"]


@dataclass(frozen=True, kw_only=True)
class SensorsSummary:
    """The `sensors` block of a health message: the turbine's signal source as its nacelle.sensors component last
    reported it to the detector (SensorHealthMessage on the device), ages taken when the detector sent its health.
    `report_age_s`: how old that report was; `report_interval_s`: how often the component reports (a report much
    older than that means the component stopped reporting)."""

    source: SourceKind
    state: SourceState
    rate_hz: float = field(metadata=_min(0))
    last_sample_age_s: float | None = field(default=None, metadata=_min(0))
    report_age_s: float = field(metadata=_min(0))
    report_interval_s: float | None = field(default=None, metadata=_min(0))
    samples: int = field(default=0, metadata=_min(0))
    samples_missing: int = field(default=0, metadata=_min(0))
    values_missing: int = field(default=0, metadata=_min(0))
    samples_repeated: int = field(default=0, metadata=_min(0))
    reconnects: int = field(default=0, metadata=_min(0))
    last_error: str | None = field(default=None, metadata={"max_len": MAX_TEXT})
    component_version: str | None = None


@dataclass(frozen=True, kw_only=True)
class CaptureSummary:
    """The `capture` block of a health message: the detector's data capture buffer (docs/fleet.md "Data capture"),
    counted since the buffer was created on the device. `pending_files`/`pending_bytes`: written, not yet uploaded;
    `dropped_*`: files the bounded buffer gave up (normal ones first); `failures`: upload attempts that failed."""

    pending_files: int = field(default=0, metadata=_min(0))
    pending_bytes: int = field(default=0, metadata=_min(0))
    written: int = field(default=0, metadata=_min(0))
    uploaded: int = field(default=0, metadata=_min(0))
    dropped_normal: int = field(default=0, metadata=_min(0))
    dropped_episode: int = field(default=0, metadata=_min(0))
    failures: int = field(default=0, metadata=_min(0))


@dataclass(frozen=True, kw_only=True)
class HealthMessage(Message):
    """turbines/<thing>/health, v2: what the detector serves and how it is doing; new in v2, both optional: `sensors`,
    its signal source's health (SensorsSummary), and `capture`, its data capture buffer (CaptureSummary). A v1
    message is read as v2 without them."""

    STREAM: ClassVar[str] = "health"
    VERSION: ClassVar[int] = 2
    model_version: int | None = None
    detector_version: str | None = None
    inference_rate_hz: float = field(default=0.0, metadata=_min(0))
    latency_p50_ms: float | None = field(default=None, metadata=_min(0))
    latency_p99_ms: float | None = field(default=None, metadata=_min(0))
    spool_depth: int = field(default=0, metadata=_min(0))
    spool_dropped: int = field(default=0, metadata=_min(0))
    bad_messages: int = field(default=0, metadata=_min(0))
    stale_samples: int = field(default=0, metadata=_min(0))  # at or before the newest seen: redelivered, clock back
    errors: int = field(default=0, metadata=_min(0))  # failed steps of the detector's threads (logged)
    uptime_s: float = field(default=0.0, metadata=_min(0))
    windows_scored: int = field(default=0, metadata=_min(0))
    model_error: str | None = field(default=None, metadata={"max_len": MAX_ERROR_TEXT})
    sensors: SensorsSummary | None = None
    capture: CaptureSummary | None = None

    @classmethod
    def upgrade(cls, doc: dict[str, Any]) -> dict[str, Any]:
        """v1 (a detector not yet updated) has the same fields but `sensors` and `capture`."""
        if doc.get("v") != 1:
            return doc
        for name in ("sensors", "capture"):
            if doc.get(name) is not None:
                raise BadMessage(f"field '{name}' needs schema version v=2")
        return {**doc, "v": cls.VERSION}


@dataclass(frozen=True, kw_only=True)
class StatsMessage(Message):
    """turbines/<thing>/stats, v1: what the detector scored in one period, summarised for drift monitoring
    (shared/ml/drift.py, docs/fleet.md "Drift monitoring"). Over the windows in the operating regime: per feature (its
    value at each window's last sample) and for the anomaly score, the count, mean, standard deviation and the
    quantiles at `levels`. `period_start` is the period's start in sample time (epoch s, a multiple of `period_s`);
    `windows` counts every window scored in it, `operating_windows` those summarised."""

    STREAM: ClassVar[str] = "stats"
    VERSION: ClassVar[int] = 1
    TIMES: ClassVar[tuple[str, ...]] = ("period_start",)
    model_version: int | None = None
    period_start: float = field(metadata=_min(0))
    period_s: float = field(metadata=_min(1))
    windows: int = field(default=0, metadata=_min(0))
    operating_windows: int = field(default=0, metadata=_min(0))
    levels: list[float] = field(default_factory=list, metadata={"max_items": MAX_LEVELS})
    count: dict[str, int] = field(default_factory=dict, metadata=_min(1))
    mean: dict[str, float] = field(default_factory=dict, metadata=_stat())
    std: dict[str, float] = field(default_factory=dict, metadata=_stat(0))
    quantiles: dict[str, list[float]] = field(default_factory=dict, metadata=_stat())
    score_count: int = field(default=0, metadata=_min(0))
    score_mean: float | None = field(default=None, metadata=_stat())
    score_std: float | None = field(default=None, metadata=_stat(0))
    score_quantiles: list[float] = field(default_factory=list, metadata={"max_items": MAX_LEVELS, **_stat()})

    def __post_init__(self) -> None:
        """What the field types cannot say: levels in (0, 1) increasing, one non-decreasing quantile per level for
        every summary, the same features in every map, counts within the windows summarised."""
        levels = self.levels
        if not levels or not (levels[0] > 0 and levels[-1] < 1) or any(b <= a for a, b in pairwise(levels)):
            raise BadMessage("field 'levels' must be increasing numbers in (0, 1)")
        if self.operating_windows > self.windows:
            raise BadMessage(f"field 'operating_windows' ({self.operating_windows}) exceeds 'windows' ({self.windows})")
        names = set(self.count)
        for name in ("mean", "std", "quantiles"):
            if set(getattr(self, name)) != names:
                raise BadMessage(f"field '{name}' must name the same features as 'count'")
        for feature, n in self.count.items():
            if n > self.operating_windows:
                raise BadMessage(f"field 'count.{feature}' ({n}) exceeds 'operating_windows' "
                                 f"({self.operating_windows})")
            _sketch(f"quantiles.{feature}", self.quantiles[feature], len(levels))
        if self.score_count > self.operating_windows:
            raise BadMessage(f"field 'score_count' ({self.score_count}) exceeds 'operating_windows'")
        if self.score_count:
            if self.score_mean is None or self.score_std is None:
                raise BadMessage("fields 'score_mean' and 'score_std' are needed when 'score_count' > 0")
            _sketch("score_quantiles", self.score_quantiles, len(levels))
        elif self.score_quantiles:
            raise BadMessage("field 'score_quantiles' must be empty when 'score_count' is 0")


def _sketch(name: str, quantiles: list[float], levels: int) -> None:
    if len(quantiles) != levels or any(b < a for a, b in pairwise(quantiles)):
        raise BadMessage(f"field '{name}' must hold {levels} non-decreasing quantiles, one per level")


@dataclass(frozen=True, kw_only=True)
class SensorMessage(Message):
    """turbines/<thing>/sensors, v1 (from the turbine's sensor source to its detector, on the device): a batch of
    samples, each `{"seq": int >= 0, "ts": epoch s, <raw input column>: number or null (a missing reading)}`,
    timestamps strictly increasing; other keys (text or numbers, e.g. a source id) are carried along. Which
    columns must be there, as numbers, is the feature spec's business: the detector checks them
    (detector/messages.py reads `seq`, `ts` and the spec's columns, and skips other keys unjudged). The
    top-level `seq` is unused."""

    STREAM: ClassVar[str] = "sensors"
    VERSION: ClassVar[int] = 1
    MAX_BYTES: ClassVar[int] = 256_000  # local only: never through AWS IoT Core
    samples: list[dict[str, float | str | None]] = field(metadata={"max_items": MAX_SAMPLES})

    def __post_init__(self) -> None:
        last = -math.inf
        for i, sample in enumerate(self.samples):
            seq, ts = sample.get("seq"), sample.get("ts")
            if not (_is_number(seq) and float(seq).is_integer() and 0 <= seq <= MAX_SEQ):
                raise BadMessage(f"sample {i}: 'seq' must be an integer in 0..{MAX_SEQ}, got {_show(seq)}")
            if not isinstance(ts, int | float) or ts <= last:
                raise BadMessage(f"sample {i}: 'ts' must be a number greater than the previous one, got {_show(ts)}")
            last = ts


@dataclass(frozen=True, kw_only=True)
class SensorHealthMessage(Message):
    """turbines/<thing>/sensors/health, v2 (the nacelle.sensors component, docs/sensors.md): how the turbine's signal
    source is doing, on the device's local pub/sub for its detector. `samples_missing` counts samples published with no
    value at all (a failed or timed-out read, no connection, a tick the component could not serve, a reading the
    controller's sample counter showed to be a repeat), `values_missing` single signals without a reading,
    `samples_repeated` those repeats. v2 added `health_interval_s` and `samples_repeated` (v1 reads as v2 without)."""

    STREAM: ClassVar[str] = "sensors/health"
    VERSION: ClassVar[int] = 2
    source: SourceKind
    endpoint: str = ""
    state: SourceState
    rate_hz: float = field(metadata=_min(0))
    last_sample_age_s: float | None = field(default=None, metadata=_min(0))
    samples: int = field(default=0, metadata=_min(0))
    samples_missing: int = field(default=0, metadata=_min(0))
    values_missing: int = field(default=0, metadata=_min(0))
    reads_failed: int = field(default=0, metadata=_min(0))
    reconnects: int = field(default=0, metadata=_min(0))
    dropped: int = field(default=0, metadata=_min(0))
    last_error: str | None = field(default=None, metadata={"max_len": MAX_ERROR_TEXT})
    uptime_s: float = field(default=0.0, metadata=_min(0))
    component_version: str | None = None
    health_interval_s: float | None = field(default=None, metadata=_min(0))
    samples_repeated: int = field(default=0, metadata=_min(0))

    @classmethod
    def upgrade(cls, doc: dict[str, Any]) -> dict[str, Any]:
        if doc.get("v") != 1:
            return doc
        for name in ("health_interval_s", "samples_repeated"):
            if doc.get(name) is not None:
                raise BadMessage(f"field '{name}' needs schema version v=2")
        return {**doc, "v": cls.VERSION}


@dataclass(frozen=True, kw_only=True)
class _RowFields:
    """What the IoT rule adds: topic(2), timestamp() (epoch ms), clientid()."""

    thing_name: str = field(metadata={"min_len": 1})
    received_at: int = field(metadata={"min": 0, "max": int(MAX_EPOCH_S * 1000)})
    client_id: str = ""

    @property
    def received_at_s(self) -> float:
        return self.received_at / 1000.0


@dataclass(frozen=True, kw_only=True)
class EpisodeRow(EpisodeMessage, _RowFields):
    pass


@dataclass(frozen=True, kw_only=True)
class HealthRow(HealthMessage, _RowFields):
    pass


@dataclass(frozen=True, kw_only=True)
class StatsRow(StatsMessage, _RowFields):
    pass


# ------------------------------------------------------------------ checking
def decode(cls: type[M], payload: bytes) -> M:
    """Bytes off the wire -> a checked message (BadMessage naming the field and reason otherwise)."""
    if len(payload) > cls.MAX_BYTES:
        raise BadMessage(f"{len(payload)} bytes is over the {cls.MAX_BYTES}-byte message limit")
    try:
        doc = json.loads(payload.decode("utf-8"), parse_constant=_no_constant,
                         object_pairs_hook=unique_keys(lambda key: _duplicate(cls, key)))
    except BadMessage:
        raise
    except (ValueError, RecursionError) as exc:  # ValueError: not UTF-8, not JSON, an integer of too many digits
        raise BadMessage(f"not UTF-8 JSON: {exc}") from None
    return validate(cls, doc)


def validate(cls: type[M], doc: Any) -> M:
    """A parsed document -> a checked message or row (rows: turbine_id must be the topic's thing)."""
    if not isinstance(doc, Mapping):
        raise BadMessage(f"a message on {cls.STREAM or 'a device topic'} is a JSON object, got {type(doc).__name__}")
    doc = cls.upgrade(dict(doc))
    if doc.get("v") != cls.VERSION:
        raise BadMessage(f"unsupported schema version v={doc.get('v')!r} on {cls.STREAM}; this reads "
                         f"v={cls.VERSION}")
    message = _fields(cls, doc, "")
    thing = getattr(message, "thing_name", None)
    if thing is not None and message.turbine_id != thing:
        raise BadMessage(f"turbine_id {message.turbine_id!r} is not the sending thing {thing!r}")
    if thing is not None:  # a cloud row
        if isinstance(message, EpisodeMessage) and not message.episode_id.startswith(f"{thing}-"):
            # the cloud finds an episode's captured data by its id: another turbine's id would reach its data
            raise BadMessage(f"field 'episode_id' must start with the sending thing's name {thing + '-'!r}, "
                             f"got {_show(message.episode_id)}")
        _check_times(message)
    return message


def _check_times(row: Message) -> None:
    """A row's times are epoch seconds before 2100 (the stores and the console turn them into dates), and a stats
    period ended by the time the broker received it, give or take MAX_CLOCK_AHEAD_S: drift monitoring keeps the
    newest periods, which one row from a wrong clock would otherwise hold for good. Checked on the cloud's rows
    only: the device builds its messages from its samples' times and is not to fail on them."""
    for name in row.TIMES:
        value = getattr(row, name)
        if value is not None and not 0 <= value < MAX_EPOCH_S:
            raise BadMessage(f"field '{name}' must be epoch seconds before 2100, got {_show(value)}")
    if isinstance(row, StatsMessage) and row.period_start + row.period_s >= MAX_EPOCH_S:
        raise BadMessage(f"field 'period_s' ends the period after 2100, got {_show(row.period_s)}")
    received = getattr(row, "received_at", None)
    if isinstance(row, StatsMessage) and received is not None:
        ahead = row.period_start + row.period_s - received / 1000.0
        if ahead > MAX_CLOCK_AHEAD_S:
            raise BadMessage(f"field 'period_start' ends the period {ahead:.0f} s after the row was received "
                             f"(at most {MAX_CLOCK_AHEAD_S:g} s: the device's clock is ahead)")


def _fields(cls: type[Any], doc: Mapping[str, Any], prefix: str) -> Any:
    """A dataclass from a document whose keys are its fields (`prefix`: where it sits, for the errors)."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(doc) - set(known))
    if unknown:
        raise BadMessage(f"unknown field(s) {[prefix + str(u) for u in unknown[:5]]}")
    hints = _hints(cls)
    values = {}
    for name, f in known.items():
        if name not in doc:
            if f.default is MISSING and f.default_factory is MISSING:
                raise BadMessage(f"field '{prefix}{name}' is missing")
            continue
        values[name] = _check(prefix + name, doc[name], hints[name], f.metadata)
    return cls(**values)


_HINTS: dict[str, dict[str, Any]] = {}  # class name -> its resolved annotations (resolving is slow)


def _hints(cls: type[Any]) -> dict[str, Any]:
    hints = _HINTS.get(cls.__qualname__)
    if hints is None:
        hints = _HINTS[cls.__qualname__] = typing.get_type_hints(cls)
    return hints


def _no_constant(token: str) -> Any:
    raise BadMessage(f"{token} is not a JSON number")


def _duplicate(cls: type[Message], key: str) -> BadMessage:
    return BadMessage(f"duplicate key {key!r} in a message on {cls.STREAM or 'a device topic'}")


def _is_number(x: Any) -> TypeGuard[int | float]:
    """A finite JSON number a float can hold (an integer past the float range is not one)."""
    if not isinstance(x, int | float) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


def _check(name: str, value: Any, hint: Any, meta: Mapping[str, Any]) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for option in inner[:-1]:  # the first type that takes it; the last one names the problem
            try:
                return _check(name, value, option, meta)
            except BadMessage:
                continue
        return _check(name, value, inner[-1], meta)
    if origin is Literal:
        if value not in args:
            raise BadMessage(f"field '{name}' must be one of {list(args)}, got {_show(value)}")
        return value
    if isinstance(hint, type) and is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise BadMessage(f"field '{name}' must be an object, got {_show(value)}")
        return _fields(hint, value, f"{name}.")
    limit = meta.get("max_items", MAX_ITEMS)
    inner_meta = {k: v for k, v in meta.items() if k != "max_items"}
    if origin is list:
        if not isinstance(value, list) or len(value) > limit:
            raise BadMessage(f"field '{name}' must be a list of at most {limit} items")
        return [_check(f"{name}[{i}]", item, args[0], inner_meta) for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict) or len(value) > limit:
            raise BadMessage(f"field '{name}' must be an object of at most {limit} entries")
        return {_check(f"{name} key", k, args[0], {}): _check(f"{name}.{k}", v, args[1], inner_meta)
                for k, v in value.items()}
    return _scalar(name, value, hint, meta)


def _scalar(name: str, value: Any, hint: Any, meta: Mapping[str, Any]) -> Any:
    if hint is str:
        low, high = meta.get("min_len", 0), meta.get("max_len", MAX_TEXT)
        if not isinstance(value, str) or not low <= len(value) <= high:
            raise BadMessage(f"field '{name}' must be text of {low}..{high} characters, got {_show(value)}")
        return value
    if hint is int and not (isinstance(value, int) and not isinstance(value, bool)):
        raise BadMessage(f"field '{name}' must be an integer, got {_show(value)}")
    if hint is float and not _is_number(value):
        raise BadMessage(f"field '{name}' must be a finite number, got {_show(value)}")
    if "min" in meta and value < meta["min"]:
        raise BadMessage(f"field '{name}' must be >= {meta['min']}, got {_show(value)}")
    if "max" in meta and value > meta["max"]:
        raise BadMessage(f"field '{name}' must be <= {meta['max']}, got {_show(value)}")
    return value  # an integer stays one (JSON does not tell 7 from 7.0; a sample's seq must stay 7)


def _show(value: Any) -> str:
    if isinstance(value, int) and value.bit_length() > 200:  # repr of a huge integer is slow or refused
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
