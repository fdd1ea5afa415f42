"""The versioned feature spec: which columns a dataset has and how they become model features.

A spec is plain data (YAML or JSON on disk, a dict inside every model bundle). It is the only place
that knows column names, so training, validation and the edge detector stay generic.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

from shared.errors import SpecError

SPEC_FORMAT_VERSION = 1
TIME_FORMATS = ("iso8601", "epoch_s", "epoch_ms")
DERIVED_KINDS = ("quaternion_roll", "quaternion_pitch", "quaternion_yaw")
QUATERNION_KEYS = frozenset({"w", "x", "y", "z"})
DEFAULT_SPEC_NAME = "mini-turbine"


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
    length: int
    stride: int
    max_gap_s: float = 1.0


@dataclass(frozen=True)
class Operating:
    """Score a window only while the turbine should be producing: median of `feature` >= `min`.

    Like the status filters of SCADA normal-behaviour models: calm spells (rotor stopped for lack of
    wind) are a normal regime, not an anomaly. A window whose feature is entirely missing is scored.
    """

    feature: str
    min: float


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
    validation: Tolerances = field(default_factory=Tolerances)
    time_format: str = "iso8601"
    turbine_id_column: str | None = None
    label_column: str | None = None
    delimiter: str = ","
    text_columns: tuple[str, ...] = ()
    derived: tuple[DerivedFeature, ...] = ()
    operating: Operating | None = None
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

    @property
    def window_seconds(self) -> float:
        return self.windows.length / self.sampling.rate_hz

    def digest(self) -> str:
        """sha256 of the canonical JSON form: equal specs have equal digests."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    # -- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("columns", "features", "text_columns"):
            out[key] = list(out[key])
        out["derived"] = [asdict(d) for d in self.derived]
        out["operating"] = asdict(self.operating) if self.operating else None
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "<spec>") -> FeatureSpec:
        if not isinstance(raw, dict):
            raise SpecError(f"{source}: a feature spec must be a mapping, got {type(raw).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise SpecError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(known)}")
        missing = sorted(k for k in ("name", "time_column", "columns", "features", "sampling", "windows")
                         if k not in raw)
        if missing:
            raise SpecError(f"{source}: missing required key(s) {missing}")
        try:
            return cls(
                name=str(raw["name"]),
                version=str(raw.get("version", "1")),
                time_column=str(raw["time_column"]),
                columns=tuple(str(c) for c in raw["columns"]),
                features=tuple(str(c) for c in raw["features"]),
                sampling=_sub(Sampling, raw["sampling"], f"{source}: sampling"),
                windows=_sub(Windows, raw["windows"], f"{source}: windows"),
                validation=_sub(Tolerances, raw.get("validation") or {}, f"{source}: validation"),
                time_format=str(raw.get("time_format", "iso8601")),
                turbine_id_column=_opt_str(raw.get("turbine_id_column")),
                label_column=_opt_str(raw.get("label_column")),
                delimiter=str(raw.get("delimiter", ",")),
                text_columns=tuple(str(c) for c in raw.get("text_columns") or ()),
                derived=tuple(_derived(d, source) for d in raw.get("derived") or ()),
                operating=_operating(raw.get("operating"), source),
                spec_version=int(raw.get("spec_version", SPEC_FORMAT_VERSION)),
            )
        except (TypeError, ValueError) as exc:
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
            if set(d.inputs) != QUATERNION_KEYS:
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
        s, w, v = self.sampling, self.windows, self.validation
        if s.rate_hz <= 0 or not 0 < s.tolerance < 1:
            raise SpecError(f"{where}: sampling needs rate_hz > 0 and 0 < tolerance < 1")
        if w.length < 2 or w.stride < 1 or w.stride > w.length:
            raise SpecError(f"{where}: windows need length >= 2 and 1 <= stride <= length")
        if w.max_gap_s < s.interval_s:
            raise SpecError(f"{where}: windows.max_gap_s must be at least one sample interval")
        if not 0 <= v.max_nan_fraction < 1 or v.max_gap_s < w.max_gap_s or v.min_windows < 1:
            raise SpecError(f"{where}: validation needs 0 <= max_nan_fraction < 1, "
                            "max_gap_s >= windows.max_gap_s and min_windows >= 1")


def _sub(cls: Any, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise SpecError(f"{where} must be a mapping")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(known)}")
    typed = {f.name: (int if f.type == "int" else float)(raw[f.name]) for f in fields(cls) if f.name in raw}
    try:
        return cls(**typed)
    except TypeError as exc:
        raise SpecError(f"{where}: {exc}") from exc


def _derived(raw: Any, source: str) -> DerivedFeature:
    if not isinstance(raw, dict) or set(raw) != {"name", "kind", "inputs"}:
        raise SpecError(f"{source}: each derived feature needs exactly name, kind and inputs")
    return DerivedFeature(name=str(raw["name"]), kind=str(raw["kind"]),
                          inputs={str(k): str(v) for k, v in dict(raw["inputs"]).items()})


def _operating(raw: Any, source: str) -> Operating | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) != {"feature", "min"}:
        raise SpecError(f"{source}: operating needs exactly feature and min")
    return Operating(feature=str(raw["feature"]), min=float(raw["min"]))


def _opt_str(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


def _dupes(items: tuple[str, ...]) -> list[str]:
    return sorted({i for i in items if items.count(i) > 1})


def parse_spec_text(text: str, source: str) -> FeatureSpec:
    """Parse YAML or JSON text (JSON is YAML, but try the strict parser first for clear errors)."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        import yaml  # only needed for YAML specs; the detector reads JSON from the bundle

        try:
            raw = yaml.safe_load(text)
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
