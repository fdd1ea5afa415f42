"""Field data captured by the detectors: the object keys they upload, and what a key says about its file.

Each turbine's detector writes CSV files (the feature spec's columns) of the raw samples around every episode it
opens and of a random sample of normal operation, and uploads them to `raw/capture/<thing>/<file>`, where they
enter the chain as any raw file does. The file name carries what training and labelling need::

    <start>_<end>_<kind>_m<model version>[_<episode id>]_p<part>.csv
    20250101T101459.950Z_20250101T101742.000Z_episode_m3_turbine-01-1735725299950_p1.csv

`start` and `end` bound the file's samples (UTC, milliseconds, rounded outwards), `kind` is `episode` or
`normal`, the model version is the one that scored the samples (`none` when unknown) and a long episode is split
into parts 1, 2, ... An operator's verdict on an episode labels its captured files with
`labels/capture/<thing>/<file without .csv>/labels.json` (shared/usecases/capture_labels.py).

Standard library only: the detector packs this module (nacelle/components.py walks its imports).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime

CAPTURE_PREFIX = "raw/capture/"
CAPTURE_LABELS_PREFIX = "labels/capture/"
EPISODE, NORMAL = "episode", "normal"
KINDS = (EPISODE, NORMAL)
_STAMP = "%Y%m%dT%H%M%S.%fZ"
# ASCII digits only, numbers without leading zeros: one capture has one spelling (`m1`, never `m01` or `m١`)
_NAME = re.compile(r"(?P<start>\d{8}T\d{6}\.\d{3}Z)_(?P<end>\d{8}T\d{6}\.\d{3}Z)_(?P<kind>episode|normal)"
                   r"_m(?P<model>0|[1-9]\d{0,8}|none)(?:_(?P<episode>[A-Za-z0-9_.-]{1,200}?))?_p(?P<part>[1-9]\d{0,5})"
                   r"\.csv", re.ASCII)


def stamp(epoch_s: float, up: bool = False) -> str:
    """Epoch seconds as `20250101T101500.050Z`, rounded to the millisecond (down, or `up`)."""
    ms = math.ceil(epoch_s * 1000 - 1e-6) if up else math.floor(epoch_s * 1000 + 1e-6)
    text = datetime.fromtimestamp(ms / 1000, UTC).strftime(_STAMP)
    return text[:-4] + "Z"  # microseconds -> milliseconds


def parse_stamp(text: str) -> float:
    return datetime.strptime(text[:-1] + "000Z", _STAMP).replace(tzinfo=UTC).timestamp()


@dataclass(frozen=True)
class CaptureName:
    start: float  # epoch seconds, at or before the first sample
    end: float  # at or after the last sample
    kind: str  # EPISODE | NORMAL
    model_version: int | None
    episode_id: str | None = None  # episodes only
    part: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"capture kind must be one of {KINDS}, got {self.kind!r}")
        if (self.kind == EPISODE) != bool(self.episode_id):
            raise ValueError("an episode capture names its episode id, a normal one none")

    @property
    def file_name(self) -> str:
        model = "none" if self.model_version is None else str(self.model_version)
        episode = f"_{self.episode_id}" if self.episode_id else ""
        return (f"{stamp(self.start)}_{stamp(self.end, up=True)}_{self.kind}_m{model}{episode}"
                f"_p{self.part}.csv")

    @classmethod
    def parse(cls, name: str) -> CaptureName | None:
        """The name's fields, or None for a name the detector does not write."""
        m = _NAME.fullmatch(name)
        if m is None:
            return None
        try:
            start, end = parse_stamp(m["start"]), parse_stamp(m["end"])
            model = None if m["model"] == "none" else int(m["model"])
            out = cls(start, end, m["kind"], model, m["episode"], int(m["part"]))
        except ValueError:
            return None
        return out if out.end >= out.start else None


def capture_key(thing: str, name: CaptureName) -> str:
    return f"{CAPTURE_PREFIX}{thing}/{name.file_name}"


def parse_capture_key(key: str) -> tuple[str, CaptureName] | None:
    """(thing, name) of `raw/capture/<thing>/<file>`, else None."""
    if not key.startswith(CAPTURE_PREFIX):
        return None
    parts = key[len(CAPTURE_PREFIX):].split("/")
    if len(parts) != 2 or not parts[0]:
        return None
    name = CaptureName.parse(parts[1])
    return None if name is None else (parts[0], name)


def capture_label_key(key: str) -> str:
    """Where an operator's verdict labels the captured file `key` (a labels.json training reads)."""
    parsed = parse_capture_key(key)
    if parsed is None:
        raise ValueError(f"{key!r} is not a captured file's key")
    thing, name = parsed
    return f"{CAPTURE_LABELS_PREFIX}{thing}/{name.file_name.removesuffix('.csv')}/labels.json"
