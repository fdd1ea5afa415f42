"""`nacelle evaluate --episodes/--points`: the episodes and the per-sample decisions as CSV or JSON.

Times are ISO 8601 UTC (`Z`) with an epoch-seconds twin. A sample is flagged when it lies inside an
episode, [started_at, last_flagged_at] (shared.ml.metrics.flagged_samples, what point-wise metrics use).
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from shared.ml.dataset import LABELS_FILE
from shared.ml.episodes import Episode, explaining
from shared.ml.metrics import Fault, faulty_samples, flagged_samples
from shared.ml.spec import FeatureSpec

FORMATS = ("csv", "json")
STDOUT = "-"
EPISODE_TIMES = ("started_at", "opened_at", "ended_at", "closed_at")


@dataclass(frozen=True)
class Table:
    """Named columns and rows; a list value is a JSON array and a ';'-joined CSV cell."""

    name: str  # the JSON document's key
    columns: tuple[str, ...]
    rows: Iterable[tuple[Any, ...]]
    plain: bool = False  # no list or None cell: CSV rows are written as they are


def output_format(target: str, explicit: str | None) -> str:
    """--format if given, else from the suffix: .json -> json, anything else (and stdout) -> csv."""
    if explicit:
        return explicit
    return "json" if target != STDOUT and target.lower().endswith(".json") else "csv"


def has_labels(data_dir: Path, spec: FeatureSpec, faults: Sequence[Fault]) -> bool:
    """Labels exist when there are labelled faults, a labels.json (even an empty one) or a label column."""
    return bool(faults) or spec.label_column is not None or (
        data_dir.is_dir() and any(data_dir.rglob(LABELS_FILE)))


def iso_times(t: np.ndarray) -> list[str]:
    """Epoch seconds -> ISO 8601 UTC, to the second when every time is whole, else ms or µs."""
    us = np.round(np.asarray(t, dtype=np.float64) * 1e6).astype(np.int64)
    unit: Literal["s", "ms", "us"] = "s" if not np.any(us % 1_000_000) else "ms" if not np.any(us % 1000) else "us"
    stamps = us.astype("datetime64[us]")
    return [str(x) for x in np.datetime_as_string(stamps, unit=unit, timezone="UTC")]


def epoch_values(t: np.ndarray) -> list[float] | list[int]:
    """Whole seconds as int when every time is whole, else floats rounded to the microsecond."""
    t = np.asarray(t, dtype=np.float64)
    whole = np.round(t)
    return whole.astype(np.int64).tolist() if np.array_equal(whole, t) else np.round(t, 6).tolist()


def episode_table(episodes: Sequence[Episode]) -> Table:
    columns = ["turbine_id", "episode_id"]
    for name in EPISODE_TIMES:
        columns += [name, f"{name}_epoch_s"]
    columns += ["peak_ratio", "features", "missing"]
    rows = []
    for ep in sorted(episodes, key=lambda e: (e.turbine_id, e.started_at)):
        row: list[Any] = [ep.turbine_id, ep.episode_id]
        for at in (ep.started_at, ep.opened_at, ep.last_flagged_at, ep.closed_at):
            row += [None, None] if at is None else [iso_times(np.array([at]))[0], epoch_values(np.array([at]))[0]]
        row += [round(float(ep.peak_ratio), 6), explaining(ep.contributions), sorted(ep.missing)]
        rows.append(tuple(row))
    return Table("episodes", tuple(columns), rows)


def point_table(samples: Sequence[tuple[str, np.ndarray]], episodes: Sequence[Episode],
                faults: Sequence[Fault] | None) -> Table:
    """Per sample of every (turbine_id, sample times): flagged 0/1, and `fault` 0/1 when faults is not None."""
    columns = ("turbine_id", "time", "epoch_s", "flagged", *(("fault",) if faults is not None else ()))

    def rows() -> Iterator[tuple[Any, ...]]:
        for turbine, t in samples:
            flagged = flagged_samples(t, [e for e in episodes if e.turbine_id == turbine]).astype(int).tolist()
            parts: list[list[Any]] = [iso_times(t), epoch_values(t), flagged]
            if faults is not None:
                parts.append(faulty_samples(t, [f for f in faults if f.turbine_id == turbine]).astype(int).tolist())
            for values in zip(*parts, strict=True):
                yield (turbine, *values)

    return Table("points", columns, rows(), plain=True)


def write_table(table: Table, target: str, fmt: str) -> None:
    """Write to a file (parents created) or to stdout for "-"."""
    with _open(target) as fh:
        if fmt == "csv":
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(table.columns)
            writer.writerows(table.rows if table.plain else (
                tuple(";".join(v) if isinstance(v, list) else "" if v is None else v for v in row)
                for row in table.rows))
        else:  # one row per line: valid JSON that stays readable and diffable
            fh.write(f'{{"{table.name}": [')
            for i, row in enumerate(table.rows):
                fh.write(("," if i else "") + "\n" + json.dumps(dict(zip(table.columns, row, strict=True))))
            fh.write("\n]}\n")


@contextmanager
def _open(target: str) -> Iterator[IO[str]]:
    if target == STDOUT:
        yield sys.stdout
        sys.stdout.flush()
        return
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        yield fh
