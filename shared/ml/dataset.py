"""A dataset directory -> validated, time-ordered feature series per turbine, plus its labels."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np

from shared.errors import DataError
from shared.ml.features import compute_features, make_windows, operating_mask, window_starts
from shared.ml.metrics import Fault, faults_from_label_column, load_labels
from shared.ml.spec import FeatureSpec
from shared.ml.validation import Frame, load_file

DATA_SUFFIXES = (".csv", ".csv.gz", ".txt", ".txt.gz")
LABELS_FILE = "labels.json"


@dataclass
class TurbineSeries:
    turbine_id: str
    t: np.ndarray  # float64 epoch seconds, strictly increasing
    features: np.ndarray  # (N, F) float32, NaN where a sample is missing
    sources: list[str] = field(default_factory=list)
    label_faults: list[Fault] = field(default_factory=list)  # from the spec's label column

    @property
    def duration_s(self) -> float:
        return float(self.t[-1] - self.t[0]) if len(self.t) > 1 else 0.0

    def between(self, start: float, stop: float) -> TurbineSeries:
        """The samples with start <= t < stop."""
        a, b = np.searchsorted(self.t, start, "left"), np.searchsorted(self.t, stop, "left")
        return TurbineSeries(self.turbine_id, self.t[a:b], self.features[a:b], self.sources,
                             [f for f in self.label_faults if f.end >= start and f.start < stop])


@dataclass(frozen=True)
class Windows:
    """Scored windows of one turbine: (W, F, geometry.width) model inputs and the sample times of each
    window's first and last scored sample."""

    turbine_id: str
    x: np.ndarray
    t_end: np.ndarray
    t_start: np.ndarray
    operating: np.ndarray  # (W,) bool: inside the spec's operating regime


def data_files(root: Path) -> list[Path]:
    """The data files under a directory, or the one file named."""
    if root.is_file():
        return [root] if root.name.endswith(DATA_SUFFIXES) else []
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(DATA_SUFFIXES))


def dataset_hash(root: Path) -> str:
    """sha256 over the sorted (relative path, sha256 of content) pairs of every data file."""
    lines = sorted(f"{p.relative_to(root).as_posix()} {hashlib.sha256(p.read_bytes()).hexdigest()}"
                   for p in data_files(root))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def load_dataset(roots: list[Path], spec: FeatureSpec, skip: Collection[Path] = ()) -> list[TurbineSeries]:
    """Validate and load every data file under the roots (but those in `skip`); one series per turbine, in time
    order.

    Raises ValidationFailed for the first invalid file (the message names it and every problem).
    """
    frames: dict[str, list[Frame]] = defaultdict(list)
    for root in roots:
        for path in data_files(root):
            if path in skip:
                continue
            hint = path.parent.name if path.parent != root and path != root else None  # else: the file name
            for frame in load_file(path, spec, turbine_hint=hint)[0]:
                frames[frame.turbine_id].append(frame)
    if not frames:
        raise DataError(f"no data files ({', '.join(DATA_SUFFIXES)}) under {', '.join(map(str, roots))}")
    return [_join(turbine, parts, spec) for turbine, parts in sorted(frames.items())]


def _join(turbine: str, parts: list[Frame], spec: FeatureSpec) -> TurbineSeries:
    parts = sorted(parts, key=lambda f: float(f.t[0]))
    for before, after in pairwise(parts):
        if after.t[0] <= before.t[-1]:
            raise DataError(f"{after.source}: turbine {turbine} overlaps {before.source} in time "
                            f"(starts at {after.t[0]:.3f}, the other ends at {before.t[-1]:.3f})")
    t = np.concatenate([f.t for f in parts])
    features = np.concatenate([compute_features(f.values, spec) for f in parts])
    faults: list[Fault] = []
    for f in parts:
        if f.labels is not None:
            faults += faults_from_label_column(turbine, f.t, f.labels)
    return TurbineSeries(turbine, t, features, [f.source for f in parts], faults)


def load_all_labels(roots: list[Path], series: list[TurbineSeries]) -> list[Fault]:
    """Faults from every labels.json under the roots plus the spec's label column."""
    faults = [f for root in roots for path in sorted(root.rglob(LABELS_FILE)) for f in load_labels(path)]
    faults += [f for s in series for f in s.label_faults]
    return sorted(set(faults), key=lambda f: (f.turbine_id, f.start))


def series_windows(series: TurbineSeries, spec: FeatureSpec, stride: int | None = None) -> Windows:
    return windows_at(series, spec, window_starts(series.t, spec, stride))


def windows_at(series: TurbineSeries, spec: FeatureSpec, starts: np.ndarray) -> Windows:
    """The windows whose first scored sample is at these indices of the series."""
    length = spec.geometry.length
    x = make_windows(series.features, starts, spec.geometry.offsets())
    return Windows(series.turbine_id, x,
                   series.t[starts + length - 1] if len(starts) else np.zeros(0),
                   series.t[starts] if len(starts) else np.zeros(0), operating_mask(x, spec))


def overlaps_fault(w: Windows, faults: list[Fault], margin_s: float) -> np.ndarray:
    """True for windows that touch a fault of their turbine (widened by margin_s on both sides)."""
    mask = np.zeros(len(w.t_end), dtype=bool)
    for f in faults:
        if f.turbine_id == w.turbine_id:
            mask |= (w.t_end >= f.start - margin_s) & (w.t_start <= f.end + margin_s)
    return mask
