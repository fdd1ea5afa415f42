"""The versioned feature spec: which columns a dataset has and how they become model features.

A spec is plain data (YAML or JSON on disk, a dict inside every model bundle). It is the only place
that knows column names, so training, validation and the edge detector stay generic.
"""

from __future__ import annotations

import hashlib
import json
import math
from contextlib import suppress
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

from shared.errors import SpecError
from shared.ml.episodes import EpisodeRule
from shared.unique_keys import load_yaml, unique_keys

SPEC_FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 gave windows in samples; it is read and converted to seconds
TIME_FORMATS = ("iso8601", "epoch_s", "epoch_ms")
QUATERNION_KINDS = ("quaternion_roll", "quaternion_pitch", "quaternion_yaw")
DERIVED_KINDS = (*QUATERNION_KINDS, "difference")
QUATERNION_KEYS = frozenset({"w", "x", "y", "z"})
DIFFERENCE_KEYS = frozenset({"value", "reference"})  # value - reference, e.g. a bearing's rise over ambient
DEFAULT_SPEC_NAME = "mini-turbine"
AUTO = "auto"

# Defaults derived from sampling.rate_hz (docs/data.md): a window of 5 s of samples, kept between 10 and
# 100 samples; a score every tenth of a window; an episode opens after 75 % of two windows' time in
# alarm (a single bad reading flags one window's time of scores: half a window more is needed, so a few
# marginal windows beside it cannot open one either) and closes after two windows' time clear; drifting
# features are judged against the two windows before the scored one; a fault counts as detected when an
# episode opens up to 12 windows after its end. While an episode is open, a window stays in alarm down to
# RELEASE_RATIO of the threshold (hysteresis, docs/data.md weighs it): a fault whose score wavers around the
# threshold with load stays one episode, while normal windows rarely reach that share of it.
DEFAULT_WINDOW_S = 5.0
MIN_WINDOW_SAMPLES, MAX_WINDOW_SAMPLES = 10, 100
STRIDES_PER_WINDOW = 10
WITHIN_WINDOWS, OPEN_FRACTION, CLOSE_WINDOWS = 2.0, 0.75, 2.0
BASELINE_WINDOWS = 2.0
TOLERANCE_WINDOWS = 12.0
RELEASE_RATIO = 0.8


@dataclass(frozen=True)
class DerivedFeature:
    name: str
    kind: str
    inputs: dict[str, str]


@dataclass(frozen=True)
class Sampling:
    rate_hz: float
    tolerance: float = 0.25

    @property
    def interval_s(self) -> float:
        return 1.0 / self.rate_hz


@dataclass(frozen=True)
class Windows:
    """In seconds; converted to samples once, by FeatureSpec.geometry."""

    length_s: float
    stride_s: float
    max_gap_s: float  # a window never spans a gap longer than this


@dataclass(frozen=True)
class Drift:
    """Features that drift slowly under normal operation (temperatures, pressures): each is scored on its
    level relative to its own median over the `baseline_s` seconds before the scored window (0: the
    window's own mean), so a drift slower than that is normal and a step or a faster trend is not.
    `features` None means "auto": the training job picks the features whose level follows a trend."""

    features: tuple[str, ...] | None
    baseline_s: float


@dataclass(frozen=True)
class Episodes:
    """The episode rule in seconds: open after `open_after_s` of alarm within the last `within_s`, close
    after `close_after_s` without alarm; a feature missing more than `missing_tolerance` of a window's
    samples flags it too. While an episode is open, a window is in alarm down to `release_ratio` of the
    threshold."""

    open_after_s: float
    within_s: float
    close_after_s: float
    missing_tolerance: float = 0.2
    release_ratio: float = RELEASE_RATIO


@dataclass(frozen=True)
class Evaluation:
    detection_tolerance_s: float  # a fault counts as detected when an episode opens before its end + this


MAX_CONTEXT_SAMPLES = 64  # a longer drift baseline is sampled every `context_step` samples


@dataclass(frozen=True)
class Geometry:
    """The spec's timescales in samples and windows, computed once."""

    length: int  # samples the model scores; they never span a gap longer than max_gap_s
    context: int  # samples before them that drifting features are compared with (0 without drift)
    stride: int
    max_gap_s: float

    @property
    def total(self) -> int:
        """Samples a window reaches back: the context, then the scored samples."""
        return self.context + self.length

    @property
    def context_step(self) -> int:
        """The baseline's mean is taken over every context_step-th sample of the context."""
        return max(1, math.ceil(self.context / MAX_CONTEXT_SAMPLES))

    @property
    def context_inputs(self) -> int:
        return len(range(0, self.context, self.context_step))

    @property
    def width(self) -> int:
        """Samples in one model input: the sampled context, then every scored sample."""
        return self.context_inputs + self.length

    def offsets(self) -> list[int]:
        """Each model input sample's position relative to the first scored sample: the sampled context
        (negative, it may reach across gaps and before the data: NaN there), then the scored samples."""
        return [*range(-self.context, 0, self.context_step), *range(self.length)]


@dataclass(frozen=True)
class Operating:
    """Score a window only while the turbine should be producing: median of `feature` >= `min` and, when
    `max` is set, no sample >= `max` (a cut-out stops the turbine at once; a stop and restart is no
    normal operation).

    Like the status filters of SCADA normal-behaviour models: calm spells (rotor stopped for lack of
    wind) and storm cut-outs (stopped above the cut-out wind speed) are normal regimes, not anomalies.
    A window whose feature is entirely missing is scored.
    """

    feature: str
    min: float
    max: float | None = None


@dataclass(frozen=True)
class Tolerances:
    max_nan_fraction: float = 0.02
    max_gap_s: float = 30.0
    min_windows: int = 1


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    version: str
    time_column: str
    columns: tuple[str, ...]
    features: tuple[str, ...]
    sampling: Sampling
    windows: Windows
    drift: Drift
    episodes: Episodes
    evaluation: Evaluation
    validation: Tolerances = field(default_factory=Tolerances)
    time_format: str = "iso8601"
    turbine_id_column: str | None = None
    label_column: str | None = None
    delimiter: str = ","
    decimal: str = "."  # the decimal mark of numbers: "." or "," (then "." reads too)
    text_columns: tuple[str, ...] = ()
    derived: tuple[DerivedFeature, ...] = ()
    operating: Operating | None = None
    # features whose level differs from turbine to turbine for no fault (a sensor's offset, a machine that runs a
    # little warmer): each turbine's is taken relative to its own level in the training data (shared.ml.levels)
    turbine_levels: tuple[str, ...] = ()
    # features the model is conditioned on that never raise an alarm by themselves (weather: wind speed, ambient
    # temperature): their own errors are left out of the score, the others are still judged given them
    context_features: tuple[str, ...] = ()
    spec_version: int = SPEC_FORMAT_VERSION

    def __post_init__(self) -> None:
        self._check()

    # -- derived views -----------------------------------------------------------------------
    @property
    def derived_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.derived)

    @cached_property  # read for every sensor message on the device
    def input_columns(self) -> tuple[str, ...]:
        """Numeric raw columns the features are computed from, in first-use order."""
        derived = {d.name: d for d in self.derived}
        ordered: list[str] = []
        for name in self.features:
            sources = sorted(derived[name].inputs.values()) if name in derived else [name]
            ordered.extend(c for c in sources if c not in ordered)
        return tuple(ordered)

    @property
    def n_features(self) -> int:
        return len(self.features)

    @cached_property
    def geometry(self) -> Geometry:
        """Windows in samples. With drift still "auto", the context is the baseline's (the most it can be)."""
        rate = self.sampling.rate_hz
        length = max(2, round(self.windows.length_s * rate))
        drifting = self.drift.features is None or bool(self.drift.features)
        context = round(self.drift.baseline_s * rate) if drifting else 0
        return Geometry(length, context, max(1, round(self.windows.stride_s * rate)), self.windows.max_gap_s)

    @property
    def window_seconds(self) -> float:
        """Seconds of the scored samples of one window."""
        return self.geometry.length / self.sampling.rate_hz

    @property
    def context_seconds(self) -> float:
        """Seconds before them that the drift baselines cover."""
        return self.geometry.context / self.sampling.rate_hz

    @property
    def regime_feature(self) -> str | None:
        """The feature the operating regime is read from, if the spec declares one."""
        return self.operating.feature if self.operating else None

    @property
    def drift_mask(self) -> tuple[bool, ...]:
        """Per feature: judged against its baseline. Resolve "auto" first (with_drift)."""
        chosen = set(self.drift.features or ())
        return tuple(name in chosen for name in self.features)

    @property
    def alarm_mask(self) -> tuple[bool, ...]:
        """Per feature: its error counts in the score (every feature but the context_features)."""
        context = set(self.context_features)
        return tuple(name not in context for name in self.features)

    @cached_property
    def hidden_inputs(self) -> tuple[tuple[int, float], ...]:
        """Per feature (k, s): a difference feature sharing one input with feature k hides its other input,
        which is the feature plus s times feature k (s = 1 when feature k is its reference, -1 when it is
        its value), so a stuck sensor behind a rise over ambient can still be seen; (its own index, 0.0)
        for every other feature."""
        derived = {d.name: d for d in self.derived}
        index = {name: j for j, name in enumerate(self.features)}
        pairs: list[tuple[int, float]] = []
        for j, name in enumerate(self.features):
            d = derived.get(name)
            value, reference = (d.inputs["value"], d.inputs["reference"]) if d and d.kind == "difference" \
                else (None, None)
            if reference in index and value not in index:
                pairs.append((index[reference], 1.0))
            elif value in index and reference not in index:
                pairs.append((index[value], -1.0))
            else:
                pairs.append((j, 0.0))
        return tuple(pairs)

    @property
    def hidden_columns(self) -> dict[str, str]:
        """Each difference feature with a hidden input (hidden_inputs) -> the raw column it hides."""
        derived = {d.name: d for d in self.derived}
        return {name: derived[name].inputs["value" if sign > 0 else "reference"]
                for name, (_, sign) in zip(self.features, self.hidden_inputs, strict=True) if sign}

    def with_drift(self, features: tuple[str, ...] | list[str]) -> FeatureSpec:
        """The same spec with the drifting features named (what a trained model carries)."""
        ordered = tuple(f for f in self.features if f in set(features))
        return replace(self, drift=replace(self.drift, features=ordered))

    def rule(self) -> EpisodeRule:
        """The episode rule in windows: the seconds of `episodes` divided by the stride, rounded once."""
        stride_s = self.geometry.stride / self.sampling.rate_hz
        e = self.episodes
        n = max(1, round(e.within_s / stride_s))
        k = min(n, max(1, math.ceil(e.open_after_s / stride_s - 1e-9)))
        m = max(1, math.ceil(e.close_after_s / stride_s - 1e-9))
        return EpisodeRule(k=k, n=n, m=m, missing_tolerance=e.missing_tolerance,
                           max_silence_s=e.close_after_s + self.window_seconds,
                           update_interval_s=max(30.0, 2 * stride_s), release_ratio=e.release_ratio)

    def digest(self) -> str:
        """sha256 of the canonical JSON form: equal specs have equal digests."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    # -- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every value explicit (the defaults written out), "auto" for undecided drift features."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("columns", "features", "text_columns"):
            out[key] = list(out[key])
        for key in ("sampling", "windows", "episodes", "evaluation", "validation"):
            out[key] = asdict(getattr(self, key))
        out["drift"] = {"features": AUTO if self.drift.features is None else list(self.drift.features),
                        "baseline_s": self.drift.baseline_s}
        out["derived"] = [asdict(d) for d in self.derived]
        out["operating"] = _operating_dict(self.operating)
        for key in ("turbine_levels", "context_features"):  # written only when used: the digests stay as they were
            if out[key]:
                out[key] = list(out[key])
            else:
                del out[key]
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "<spec>") -> FeatureSpec:
        if not isinstance(raw, dict):
            raise SpecError(f"{source}: a feature spec must be a mapping, got {type(raw).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise SpecError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(known)}")
        missing = sorted(k for k in ("name", "time_column", "columns", "features", "sampling") if k not in raw)
        if missing:
            raise SpecError(f"{source}: missing required key(s) {missing}")
        try:
            version = int(raw.get("spec_version", SPEC_FORMAT_VERSION))
            if version not in READABLE_VERSIONS:
                raise SpecError(f"{source}: spec_version {version} is not supported "
                                f"(this code reads versions {', '.join(map(str, READABLE_VERSIONS))})")
            sampling = _sub(Sampling, _sampling_in_hz(raw["sampling"], source), f"{source}: sampling")
            if not sampling.rate_hz > 0:
                raise SpecError(f"{source}: sampling.rate_hz must be > 0")
            windows_raw = _windows_in_seconds(_mapping(raw.get("windows") or {}, f"{source}: windows"), version,
                                              sampling, source)
            windows = _sub(Windows, _with_defaults(windows_raw, _window_defaults(sampling, windows_raw, source)),
                           f"{source}: windows")
            drift = _drift(raw.get("drift") or {}, windows, source)
            episodes_raw = _mapping(raw.get("episodes") or {}, f"{source}: episodes")
            episodes = _sub(Episodes, _with_defaults(episodes_raw, _episode_defaults(windows, episodes_raw, source)),
                            f"{source}: episodes")
            evaluation = _sub(Evaluation, _with_defaults(raw.get("evaluation") or {}, {
                "detection_tolerance_s": TOLERANCE_WINDOWS * windows.length_s}), f"{source}: evaluation")
            validation = _sub(Tolerances, _with_defaults(raw.get("validation") or {}, {
                "max_gap_s": max(30.0, 144.0 / sampling.rate_hz, windows.max_gap_s)}), f"{source}: validation")
            return cls(
                name=str(raw["name"]),
                version=str(raw.get("version", "1")),
                time_column=str(raw["time_column"]),
                columns=_names(raw["columns"], f"{source}: columns"),
                features=_names(raw["features"], f"{source}: features"),
                sampling=sampling,
                windows=windows,
                drift=drift,
                episodes=episodes,
                evaluation=evaluation,
                validation=validation,
                time_format=str(raw.get("time_format", "iso8601")),
                turbine_id_column=_opt_str(raw.get("turbine_id_column")),
                label_column=_opt_str(raw.get("label_column")),
                delimiter=str(raw.get("delimiter", ",")),
                decimal=str(raw.get("decimal", ".")),
                text_columns=_names(raw.get("text_columns") or [], f"{source}: text_columns"),
                derived=tuple(_derived(d, source) for d in raw.get("derived") or ()),
                operating=_operating(raw.get("operating"), source),
                turbine_levels=_names(raw.get("turbine_levels") or [], f"{source}: turbine_levels"),
                context_features=_names(raw.get("context_features") or [], f"{source}: context_features"),
            )
        except (TypeError, ValueError, OverflowError) as exc:
            raise SpecError(f"{source}: {exc}") from exc

    # -- consistency ---------------------------------------------------------------------------
    def _check(self) -> None:
        where = f"feature spec {self.name!r}"
        if self.spec_version != SPEC_FORMAT_VERSION:
            raise SpecError(f"{where}: spec_version {self.spec_version} is not supported "
                            f"(this code reads version {SPEC_FORMAT_VERSION})")
        if self.time_format not in TIME_FORMATS:
            raise SpecError(f"{where}: time_format must be one of {TIME_FORMATS}, got {self.time_format!r}")
        if len(self.delimiter) != 1:
            raise SpecError(f"{where}: delimiter must be one character, got {self.delimiter!r}")
        if self.decimal not in (".", ","):
            raise SpecError(f"{where}: decimal must be '.' or ',', got {self.decimal!r}")
        if self.decimal == self.delimiter:
            raise SpecError(f"{where}: decimal and delimiter are both {self.delimiter!r}: a decimal comma needs "
                            "another delimiter, e.g. ';'")
        if len(set(self.columns)) != len(self.columns):
            raise SpecError(f"{where}: columns are listed twice: {_dupes(self.columns)}")
        for role, col in (("time_column", self.time_column), ("turbine_id_column", self.turbine_id_column),
                          ("label_column", self.label_column)):
            if col is not None and col not in self.columns:
                raise SpecError(f"{where}: {role} {col!r} is not one of the columns")
        if not self.features:
            raise SpecError(f"{where}: features must not be empty")
        if len(set(self.features)) != len(self.features):
            raise SpecError(f"{where}: features are listed twice: {_dupes(self.features)}")
        derived = {d.name: d for d in self.derived}
        for d in self.derived:
            if d.kind not in DERIVED_KINDS:
                raise SpecError(f"{where}: derived feature {d.name!r} has unknown kind {d.kind!r}; "
                                f"known: {DERIVED_KINDS}")
            if d.kind == "difference" and (set(d.inputs) != DIFFERENCE_KEYS
                                           or d.inputs["value"] == d.inputs["reference"]):
                raise SpecError(f"{where}: derived feature {d.name!r} (difference) needs inputs value and reference, "
                                "two different columns")
            if d.kind in QUATERNION_KINDS and set(d.inputs) != QUATERNION_KEYS:
                raise SpecError(f"{where}: derived feature {d.name!r} needs inputs w, x, y, z")
            if d.name in self.columns:
                raise SpecError(f"{where}: derived feature {d.name!r} shadows a raw column")
        non_numeric = {self.time_column, self.turbine_id_column, self.label_column, *self.text_columns}
        for name in self.features:
            sources = derived[name].inputs.values() if name in derived else [name]
            for col in sources:
                if col not in self.columns:
                    raise SpecError(f"{where}: feature {name!r} needs column {col!r}, which is not listed")
                if col in non_numeric:
                    raise SpecError(f"{where}: feature {name!r} uses non-numeric column {col!r}")
        if self.operating is not None and self.operating.feature not in self.features:
            raise SpecError(f"{where}: operating.feature {self.operating.feature!r} is not one of the features")
        for name in self.drift.features or ():
            if name not in self.features:
                raise SpecError(f"{where}: drift.features names {name!r}, which is not one of the features")
        for name in self.turbine_levels:
            if name not in self.features:
                raise SpecError(f"{where}: turbine_levels names {name!r}, which is not one of the features")
            if self.operating is not None and name == self.operating.feature:
                raise SpecError(f"{where}: turbine_levels names {name!r}, the operating.feature: the regime's "
                                f"min and max are read on its own values, not on its level relative to the fleet; "
                                f"remove it from turbine_levels")
        if len(set(self.turbine_levels)) != len(self.turbine_levels):
            raise SpecError(f"{where}: turbine_levels are listed twice: {_dupes(self.turbine_levels)}")
        for name in self.context_features:
            if name not in self.features:
                raise SpecError(f"{where}: context_features names {name!r}, which is not one of the features")
        if len(set(self.context_features)) != len(self.context_features):
            raise SpecError(f"{where}: context_features are listed twice: {_dupes(self.context_features)}")
        if not any(self.alarm_mask):
            raise SpecError(f"{where}: context_features names every feature: no feature would be left to raise an "
                            f"alarm; keep at least one out of context_features")
        self._check_timescales(where)

    def _check_timescales(self, where: str) -> None:
        s, w, e, v = self.sampling, self.windows, self.episodes, self.validation
        interval = s.interval_s
        if not 0 < s.tolerance < 1:
            raise SpecError(f"{where}: sampling.tolerance must lie in (0, 1)")
        if w.length_s * s.rate_hz < 1.5:
            raise SpecError(f"{where}: windows.length_s {w.length_s:g} s holds fewer than 2 samples at "
                            f"{s.rate_hz:g} Hz")
        if not interval * 0.5 <= w.stride_s <= w.length_s:
            raise SpecError(f"{where}: windows.stride_s must lie between one sample interval "
                            f"({interval:g} s) and windows.length_s ({w.length_s:g} s)")
        if w.max_gap_s < interval:
            raise SpecError(f"{where}: windows.max_gap_s must be at least one sample interval ({interval:g} s)")
        if self.drift.baseline_s < 0:
            raise SpecError(f"{where}: drift.baseline_s must be >= 0")
        if not (0 < e.open_after_s <= e.within_s and e.close_after_s > 0 and 0 <= e.missing_tolerance < 1
                and 0 < e.release_ratio <= 1):
            raise SpecError(f"{where}: episodes need 0 < open_after_s <= within_s, close_after_s > 0, "
                            "0 <= missing_tolerance < 1 and 0 < release_ratio <= 1")
        if self.evaluation.detection_tolerance_s < 0:
            raise SpecError(f"{where}: evaluation.detection_tolerance_s must be >= 0")
        if not 0 <= v.max_nan_fraction < 1 or v.max_gap_s < w.max_gap_s or v.min_windows < 1:
            raise SpecError(f"{where}: validation needs 0 <= max_nan_fraction < 1, "
                            "max_gap_s >= windows.max_gap_s and min_windows >= 1")


def default_window_samples(rate_hz: float) -> int:
    """Samples in the default window: 5 s of samples, at least 10 and at most 100."""
    return int(min(MAX_WINDOW_SAMPLES, max(MIN_WINDOW_SAMPLES, round(DEFAULT_WINDOW_S * rate_hz))))


def _window_defaults(sampling: Sampling, given: dict[str, Any], source: str) -> dict[str, float]:
    rate = sampling.rate_hz
    length_s = _number(given.get("length_s", default_window_samples(rate) / rate), f"{source}: windows.length_s")
    samples = max(2, round(length_s * rate))
    return {"length_s": length_s, "stride_s": max(1, round(samples / STRIDES_PER_WINDOW)) / rate,
            "max_gap_s": max(1.0, 5.0 / rate)}


def _episode_defaults(windows: Windows, given: dict[str, Any], source: str) -> dict[str, float]:
    within = _number(given.get("within_s", WITHIN_WINDOWS * windows.length_s), f"{source}: episodes.within_s")
    return {"within_s": within, "open_after_s": OPEN_FRACTION * within,
            "close_after_s": CLOSE_WINDOWS * windows.length_s}


def _with_defaults(given: Any, defaults: dict[str, float]) -> Any:
    return {**defaults, **given} if isinstance(given, dict) else given


def _windows_in_seconds(raw: Any, version: int, sampling: Sampling, source: str) -> Any:
    """Version 1 gave `length` and `stride` in samples: the same windows in seconds."""
    if version != 1 or not isinstance(raw, dict):
        return raw
    out = {k: v for k, v in raw.items() if k not in ("length", "stride")}
    for key in ("length", "stride"):
        if key in raw:
            out[f"{key}_s"] = float(raw[key]) / sampling.rate_hz
    return out


def _drift(raw: Any, windows: Windows, source: str) -> Drift:
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: drift must be a mapping")
    unknown = sorted(set(raw) - {"features", "baseline_s"})
    if unknown:
        raise SpecError(f"{source}: drift: unknown key(s) {unknown}; allowed: ['baseline_s', 'features']")
    chosen = raw.get("features", AUTO)
    if chosen == AUTO:
        features = None
    elif isinstance(chosen, list | tuple):
        features = tuple(str(f) for f in chosen)
    else:
        raise SpecError(f"{source}: drift.features must be \"auto\" or a list of feature names, got {chosen!r}")
    return Drift(features, _number(raw.get("baseline_s", BASELINE_WINDOWS * windows.length_s),
                                   f"{source}: drift.baseline_s"))


def _sampling_in_hz(raw: Any, source: str) -> Any:
    """`sampling.interval_s` (seconds between samples, e.g. 600 for 10-minute SCADA) as rate_hz, the one it keeps."""
    if not isinstance(raw, dict) or "interval_s" not in raw:
        return raw
    if "rate_hz" in raw:
        raise SpecError(f"{source}: sampling: give rate_hz or interval_s, not both")
    interval = _number(raw["interval_s"], f"{source}: sampling.interval_s")
    if not interval > 0:
        raise SpecError(f"{source}: sampling.interval_s must be > 0, got {raw['interval_s']!r}")
    return {**{k: v for k, v in raw.items() if k != "interval_s"}, "rate_hz": 1.0 / interval}


def _sub(cls: Any, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise SpecError(f"{where} must be a mapping")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(known)}")
    typed = {f.name: _number(raw[f.name], f"{where}.{f.name}", f.type == "int") for f in fields(cls) if f.name in raw}
    try:
        return cls(**typed)
    except TypeError as exc:
        raise SpecError(f"{where}: {exc}") from exc


def _number(value: Any, where: str, whole: bool = False) -> Any:
    """A finite number (a whole one when `whole`), else SpecError naming the key: never a bool, NaN or infinity."""
    number = None
    if not isinstance(value, bool):
        with suppress(TypeError, ValueError, OverflowError):
            number = float(value)
    if number is None or not math.isfinite(number) or (whole and number != int(number)):
        kind = "a whole number" if whole else "a finite number"
        raise SpecError(f"{where} must be {kind}, got {value!r}")
    return int(number) if whole else number


def _names(raw: Any, where: str) -> tuple[str, ...]:
    """A list of names (a bare string would be read letter by letter)."""
    if not isinstance(raw, list | tuple) or not all(isinstance(n, str | int | float) and n != "" for n in raw):
        raise SpecError(f"{where} must be a list of names, e.g. [a, b], got {raw!r}"[:300])
    return tuple(str(n) for n in raw)


def _mapping(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise SpecError(f"{where} must be a mapping, got {raw!r}"[:300])
    return raw


def _derived(raw: Any, source: str) -> DerivedFeature:
    if not isinstance(raw, dict) or set(raw) != {"name", "kind", "inputs"}:
        raise SpecError(f"{source}: each derived feature needs exactly name, kind and inputs")
    return DerivedFeature(name=str(raw["name"]), kind=str(raw["kind"]),
                          inputs={str(k): str(v) for k, v in dict(raw["inputs"]).items()})


def _operating(raw: Any, source: str) -> Operating | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not {"feature", "min"} <= set(raw) <= {"feature", "min", "max"}:
        raise SpecError(f"{source}: operating needs feature and min, and optionally max")
    low = _number(raw["min"], f"{source}: operating.min")
    top = None if raw.get("max") is None else _number(raw["max"], f"{source}: operating.max")
    if top is not None and not top > low:
        raise SpecError(f"{source}: operating.max ({top:g}) must be greater than operating.min ({low:g})")
    return Operating(feature=str(raw["feature"]), min=low, max=top)


def _operating_dict(operating: Operating | None) -> dict[str, Any] | None:
    """The regime as written; `max` only when set (a spec without it keeps its digest)."""
    if operating is None:
        return None
    out = asdict(operating)
    if operating.max is None:
        del out["max"]
    return out


def _opt_str(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


def _dupes(items: tuple[str, ...]) -> list[str]:
    return sorted({i for i in items if items.count(i) > 1})


def parse_spec_text(text: str, source: str) -> FeatureSpec:
    """Parse YAML or JSON text (JSON is YAML, but try the strict parser first for clear errors); a key one
    mapping gives twice is a SpecError."""
    try:
        raw = json.loads(text, object_pairs_hook=unique_keys(
            lambda key: SpecError(f"{source}: duplicate key {key!r}")))
    except json.JSONDecodeError:
        import yaml  # only needed for YAML specs; the detector reads JSON from the bundle

        try:
            raw = load_yaml(text)
        except yaml.YAMLError as exc:
            raise SpecError(f"{source}: not valid YAML or JSON: {exc}") from exc
    return FeatureSpec.from_dict(raw, source)


def load_spec(path: str | Path) -> FeatureSpec:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read feature spec: {exc}") from exc
    return parse_spec_text(text, str(path))


def default_spec() -> FeatureSpec:
    """The seed's mini-turbine spec: features [roll, pitch, yaw, wind_speed_rps, rps, voltage]."""
    text = resources.files("shared").joinpath(f"specs/{DEFAULT_SPEC_NAME}.yaml").read_text("utf-8")
    return parse_spec_text(text, f"shared/specs/{DEFAULT_SPEC_NAME}.yaml")
