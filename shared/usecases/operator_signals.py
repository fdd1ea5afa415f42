"""The raw samples a turbine's detector captured (raw/capture/<thing>/, shared/capture.py), for the operator console:
which files there are in a time range, and a bounded range of their samples as one series per feature.

The files are read through the object store and checked with the feature spec's own validation (the group's spec,
as data_arrival and training read it); features come from the shared feature code, so a chart shows the values the
detector scored and the period statistics summarise. Costs are bounded: a range of at most MAX_RANGE_S, at most
MAX_FILES files and MAX_BYTES bytes read (the rest are named as skipped), at most MAX_POINTS points per feature
(each bucket of samples keeps its minimum and maximum, so a spike survives decimation). Overlapping files' samples
count once. A file that fails validation or holds another turbine's samples is left out and named in `problems`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from shared.capture import CAPTURE_PREFIX, CaptureName
from shared.errors import DataError, ObjectNotFound, ValidationFailed
from shared.jsonview import as_datetime
from shared.messages import MAX_EPOCH_S
from shared.ml.features import compute_features
from shared.ml.spec import FeatureSpec
from shared.ml.validation import Frame, load_frames
from shared.ports import ObjectInfo, ObjectStore
from shared.usecases.operator import InvalidRequest, OperatorDeps
from shared.usecases.retraining import load_group_spec

MAX_RANGE_S = 6 * 3600.0  # the longest range one request reads
MAX_FILES = 8  # captured files read per request
MAX_BYTES = 8 * 1024 * 1024  # bytes read per request
MAX_POINTS = 2000  # points per feature series
MAX_CAPTURES = 200  # files a timeline lists (the newest)
LOOKBACK_DAYS = 1  # a file may start this long before the range it overlaps (listing is per start day)
DAY = "%Y%m%d"


_SPECS: dict[tuple[tuple[str, str], ...], FeatureSpec] = {}  # the specs/<group>/ listing -> its parsed spec


def group_spec(store: ObjectStore, group: str) -> FeatureSpec:
    """The group's spec as training reads it (load_group_spec), parsed again only when specs/<group>/ changes."""
    listing = tuple((o.key, o.etag) for o in store.list(f"specs/{group}/"))
    spec = _SPECS.get(listing)
    if spec is None:
        if len(_SPECS) > 16:
            _SPECS.clear()
        spec = _SPECS[listing] = load_group_spec(store, group)[0]
    return spec


def capture_files(store: ObjectStore, turbine: str, start: float, end: float) -> list[tuple[ObjectInfo, CaptureName]]:
    """The turbine's captured files overlapping [start, end], oldest first. One listing per day their names may
    start on (file names begin with their start time), so the cost follows the range, not the history."""
    first = datetime.fromtimestamp(start, UTC).date() - timedelta(days=LOOKBACK_DAYS)
    last = datetime.fromtimestamp(end, UTC).date()
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    out = []
    for day in days:
        for obj in store.list(f"{CAPTURE_PREFIX}{turbine}/{day.strftime(DAY)}"):
            name = CaptureName.parse(obj.key.rsplit("/", 1)[-1])
            if name is not None and obj.key.count("/") == 3 and name.start <= end and name.end >= start:
                out.append((obj, name))
    return sorted(out, key=lambda found: (found[1].start, found[0].key))


def describe(key: str, name: CaptureName) -> dict[str, Any]:
    return {"key": key, "kind": name.kind, "started_at": name.start, "ended_at": name.end,
            "model_version": name.model_version, "episode_id": name.episode_id, "part": name.part}


def time_param(params: Mapping[str, str | None], name: str) -> float:
    """A required time parameter: ISO 8601 (UTC when no offset is given) or epoch seconds."""
    text = (params.get(name) or "").strip()
    if not text:
        raise InvalidRequest(name, "is required (an ISO 8601 time such as 2026-03-01T12:00:00Z)")
    try:
        value: Any = float(text)
    except ValueError:
        value = text
    moment = as_datetime(value) if isinstance(value, str) or np.isfinite(value) else None
    if moment is None:
        raise InvalidRequest(name, f"{text[:40]!r} is not an ISO 8601 time or epoch seconds")
    if not 0 <= moment.timestamp() < MAX_EPOCH_S:
        raise InvalidRequest(name, f"{text[:40]!r} is not between 1970 and 2100")
    return moment.timestamp()


def time_range(params: Mapping[str, str | None]) -> tuple[float, float]:
    start, end = time_param(params, "start"), time_param(params, "end")
    if end <= start:
        raise InvalidRequest("end", "must be after start")
    if end - start > MAX_RANGE_S:
        raise InvalidRequest("end", f"the range is {(end - start) / 3600:.1f} h; at most {MAX_RANGE_S / 3600:g} h "
                                    "is read at once")
    return start, end


def signals(deps: OperatorDeps, turbine: str, start: float, end: float) -> dict[str, Any]:
    """The captured samples of [start, end] as per-feature series (the caller checked that the turbine exists)."""
    store = deps.rollout.store
    spec = group_spec(store, deps.group)
    files = capture_files(store, turbine, start, end)
    read: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    problems: list[str] = []
    frames: list[Frame] = []
    budget, attempts = MAX_BYTES, 0
    for info, name in files:
        key = info.key
        if attempts >= MAX_FILES or info.size > budget:  # bounded work, whatever the files hold
            skipped.append(describe(key, name))
            continue
        attempts, budget = attempts + 1, budget - info.size
        try:
            data = store.get(key)
        except ObjectNotFound:
            continue  # removed since the listing
        try:
            found, _ = load_frames(data, key, spec, turbine_hint=turbine)
        except DataError as exc:
            problems.append(f"{key}: left out: {_first_problem(exc, key)}")
            continue
        others = sorted({f.turbine_id for f in found} - {turbine})
        if others:
            problems.append(f"{key}: holds samples of {', '.join(others)}, not only of {turbine}: left out")
            continue
        frames += found
        read.append({**describe(key, name), "rows": sum(len(f) for f in found)})
    t, values = _samples(frames, spec, start, end)
    series = {name: _series(t, values[:, j], spec, start) for j, name in enumerate(spec.features)}
    return {"turbine": turbine, "start_at": start, "end_at": end, "origin_at": start,
            "features": list(spec.features), "samples": len(t), "max_points": MAX_POINTS,
            "decimated": len(t) > MAX_POINTS, "series": series, "files": read, "skipped": skipped,
            "problems": problems}


def _first_problem(exc: DataError, key: str) -> str:
    """The validation's first error (without the key it starts with)."""
    report = exc.report if isinstance(exc, ValidationFailed) else None
    errors = getattr(report, "errors", None)
    text = str(errors[0].message if errors else exc)
    return (text[len(key):].lstrip(":, ") if text.startswith(key) else text)[:300]


def _samples(frames: list[Frame], spec: FeatureSpec, start: float, end: float) -> tuple[np.ndarray, np.ndarray]:
    """The frames' samples in [start, end], in time order, each timestamp once; their features (N, F)."""
    if not frames:
        return np.zeros(0), np.zeros((0, len(spec.features)))
    t = np.concatenate([f.t for f in frames])
    features = np.concatenate([compute_features(f.values, spec).astype(np.float64) for f in frames])
    order = np.argsort(t, kind="stable")
    t, features = t[order], features[order]
    keep = np.concatenate([[True], np.diff(t) > 0]) & (t >= start) & (t <= end)  # overlapping files: once
    return t[keep], features[keep]


def _series(t: np.ndarray, v: np.ndarray, spec: FeatureSpec, origin: float) -> dict[str, list[float | None]]:
    """Seconds from `origin` and values, at most MAX_POINTS; a None value breaks the line at a gap of the data."""
    gaps = np.concatenate([[0], np.cumsum(np.diff(t) > spec.windows.max_gap_s)]) if len(t) else np.zeros(0, int)
    budget = MAX_POINTS
    while True:
        idx = _decimate(v, budget)
        breaks = np.flatnonzero(np.diff(gaps[idx]) > 0) + 1  # kept samples with a gap before them
        if len(idx) + len(breaks) <= MAX_POINTS:
            break
        budget //= 2
    ts: list[float | None] = np.round(t[idx] - origin, 3).tolist()
    vs: list[float | None] = _significant(v[idx]).tolist()
    for at in np.flatnonzero(~np.isfinite(v[idx])).tolist():
        vs[at] = None
    for at in reversed(breaks.tolist()):  # a None just before the first sample after a gap
        ts.insert(at, ts[at])
        vs.insert(at, None)
    return {"t": ts, "v": vs}


def _significant(v: np.ndarray, digits: int = 6) -> np.ndarray:
    """Values rounded to `digits` significant digits of the series' largest magnitude (shorter JSON)."""
    finite = np.abs(v[np.isfinite(v)])
    top = float(finite.max()) if len(finite) else 0.0
    return np.round(v, digits - 1 - int(np.floor(np.log10(top)))) if top > 0 else v


def _decimate(v: np.ndarray, points: int) -> np.ndarray:
    """Indices of at most `points` samples keeping each bucket's minimum and maximum, in time order."""
    n = len(v)
    if n <= points:
        return np.arange(n)
    buckets = max(1, points // 2)
    size = -(-n // buckets)
    padded = np.full(buckets * size, np.nan)
    padded[:n] = v
    rows = padded.reshape(buckets, size)
    lows = np.argmin(np.where(np.isnan(rows), np.inf, rows), axis=1)
    highs = np.argmax(np.where(np.isnan(rows), -np.inf, rows), axis=1)
    base = np.arange(buckets) * size
    idx = np.unique(np.concatenate([base + lows, base + highs]))
    return idx[idx < n]
