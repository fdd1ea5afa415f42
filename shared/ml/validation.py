"""Validating one raw sensor file against a feature spec, and splitting it into per-turbine frames.

The reading itself (gzip, UTF-8, CSV, numbers, timestamps) is in ``shared.ml.table``.

Errors make a file unusable (the pipeline quarantines it with ``ValidationReport.to_dict()``);
warnings do not. Every message names the file and the line or column. The input is never modified.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import DataError, ValidationFailed
from shared.ml.spec import FeatureSpec
from shared.ml.table import (
    MAX_TEXT_BYTES,
    Frame,
    Parser,
    Problem,
    ProblemLog,
    Table,
    decode_text,
    iso_utc,
    parse_numbers,
    parse_times,
    read_table,
    refuse_too_large,
)

__all__ = ["MAX_TEXT_BYTES", "Frame", "Problem", "ProblemLog", "ValidationReport", "load_file", "load_frames",
           "refuse_too_large", "turbine_from_name", "validate_bytes"]


@dataclass
class ValidationReport:
    source: str
    spec_name: str
    spec_digest: str
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    rows: int = 0  # well-formed data rows read
    turbines: list[str] = field(default_factory=list)
    start: str | None = None  # ISO-8601 UTC of the first / last valid timestamp
    end: str | None = None
    sampling_hz: float | None = None  # 1 / median positive sample interval
    nan_fraction: dict[str, float] = field(default_factory=dict)  # per input column, whole file

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the quarantine report)."""
        return {
            "source": self.source, "ok": self.ok, "spec_name": self.spec_name,
            "spec_digest": self.spec_digest, "rows": self.rows, "turbines": list(self.turbines),
            "start": self.start, "end": self.end, "sampling_hz": self.sampling_hz,
            "nan_fraction": dict(self.nan_fraction),
            "errors": [p.to_dict() for p in self.errors], "warnings": [p.to_dict() for p in self.warnings],
        }

    def summary(self) -> str:
        verdict = "valid" if self.ok else "FAILED validation"
        text = (f"{self.source}: {verdict} against feature spec {self.spec_name!r} "
                f"(digest {self.spec_digest[:12]}): {len(self.errors)} error(s), "
                f"{len(self.warnings)} warning(s); {self.rows} row(s)")
        if self.turbines:
            text += f", turbine(s) {', '.join(self.turbines)}"
        if self.start is not None:
            text += f", {self.start} to {self.end}"
        if self.sampling_hz is not None:
            text += f", {self.sampling_hz:.3g} Hz"
        if self.errors:
            text += f". First error: {self.errors[0].message}"
        elif self.warnings:
            text += f". First warning: {self.warnings[0].message}"
        return text + "."


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _beyond_float32(column: np.ndarray, i: int) -> str:
    if np.isinf(column[i]):
        return "value is infinite"
    return f"value {column[i]:g} is beyond the model's float32 range (±{FLOAT32_MAX:.4g})"


def turbine_from_name(source: str, hint: str | None = None) -> str:
    """The hint if given, else the file name up to the first '_' or '.' (raw/T01/T01_0001.csv -> T01)."""
    if hint:
        return hint
    name = source.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return re.split(r"[_.]", name, maxsplit=1)[0] or name


def validate_bytes(data: bytes, source: str, spec: FeatureSpec, turbine_hint: str | None = None,
                   max_text_bytes: int = MAX_TEXT_BYTES) -> ValidationReport:
    """Every problem of one raw file (plain or gzip CSV) against ``spec``; a file whose text (decompressed)
    exceeds `max_text_bytes` is refused unread (file_too_large)."""
    return _validate(data, source, spec, turbine_hint, max_text_bytes)[0]


def load_frames(data: bytes, source: str, spec: FeatureSpec,
                turbine_hint: str | None = None) -> tuple[list[Frame], ValidationReport]:
    """One Frame per turbine; raises ValidationFailed (with the report) if there is any error."""
    report, frames = _validate(data, source, spec, turbine_hint, MAX_TEXT_BYTES)
    if not report.ok:
        raise ValidationFailed(report.summary(), report)
    return frames, report


def load_file(path: Path, spec: FeatureSpec,
              turbine_hint: str | None = None) -> tuple[list[Frame], ValidationReport]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read sensor file: {exc}") from exc
    return load_frames(data, str(path), spec, turbine_hint)


# -- the checks ----------------------------------------------------------------------------------------


def _validate(data: bytes, source: str, spec: FeatureSpec, turbine_hint: str | None,
              max_text_bytes: int) -> tuple[ValidationReport, list[Frame]]:
    log = ProblemLog(source)
    report = ValidationReport(source, spec.name, spec.digest())
    frames: list[Frame] = []
    text = decode_text(data, log, max_text_bytes)
    table = read_table(text, spec.delimiter, log, lambda header: _parsers(header, spec)) if text is not None else None
    if table is not None:
        frames = _check_table(table, spec, turbine_hint, log, report)
    log.finish()
    report.errors, report.warnings = log.errors, log.warnings
    return report, (frames if report.ok else [])


def _parsers(header: tuple[str, ...], spec: FeatureSpec) -> dict[str, Parser]:
    """How each column the checks read is parsed: the time, the numbers (inputs, label), the turbine ids."""
    parsers: dict[str, Parser] = {}
    if spec.time_column in header:
        parsers[spec.time_column] = lambda cells: parse_times(cells, spec.time_format)
    for col in (*spec.input_columns, *([spec.label_column] if spec.label_column else [])):
        if col in header:
            parsers[col] = parse_numbers if spec.decimal == "." else _decimal_comma_numbers
    if spec.turbine_id_column is not None and spec.turbine_id_column in header:
        parsers[spec.turbine_id_column] = _turbine_ids
    return parsers


def _decimal_comma_numbers(cells: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return parse_numbers([c.replace(",", ".") for c in cells])


def _turbine_ids(cells: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray([c.strip() for c in cells], dtype=str), np.zeros(0, np.int64)


def _check_header(header: tuple[str, ...], spec: FeatureSpec, log: ProblemLog) -> None:
    for name in sorted({n for n in header if header.count(n) > 1}):
        log.error("duplicate_column", f"the header names this column {header.count(name)} times", column=name)
    hint = ""
    if len(header) == 1:
        hint = f" (one header field only: is the delimiter {spec.delimiter!r} right?)"
    for name in spec.columns:
        if name not in header:
            log.error("missing_column", f"required column is missing{hint}", column=name)
    for name in dict.fromkeys(header):
        if name not in spec.columns:
            log.error("unknown_column", f"column is not in feature spec {spec.name!r}{hint}", column=name)


def _check_table(table: Table, spec: FeatureSpec, hint: str | None, log: ProblemLog,
                 report: ValidationReport) -> list[Frame]:
    _check_header(table.header, spec, log)
    report.rows = len(table)
    if table.index(spec.time_column) is None:
        return []  # reported as missing_column; nothing else can be checked without times
    if not len(table):
        log.error("no_data_rows", "the file has a header but no data rows")
        return []
    lines = table.lines

    # Cell checks, whole file: times, numbers, labels, turbine ids.
    tcol = spec.time_column
    times = table.columns[tcol]
    t, bad = times.values, times.bad
    log.rows("bad_timestamp", tcol, bad, lines,
             lambda i: f"cannot parse {_short(times.texts[i])} as a {spec.time_format} timestamp"
                       f"{_time_format_hint(times.texts[i], spec.time_format)}")
    keep = np.isfinite(t)

    values: dict[str, np.ndarray] = {}
    bad_cells: dict[str, np.ndarray] = {}
    for col in (*spec.input_columns, *([spec.label_column] if spec.label_column else [])):
        if table.index(col) is not None:
            values[col], bad_cells[col] = _numeric_column(table, col, spec.decimal, log)
    for col in spec.input_columns:
        if col in values:  # the model reads float32: a larger magnitude becomes infinite there
            log.rows("infinite_value", col, np.flatnonzero(np.abs(values[col]) > FLOAT32_MAX), lines,
                     partial(_beyond_float32, values[col]))
    labels = values.pop(spec.label_column, None) if spec.label_column else None
    if labels is not None:
        not_binary = (labels != 0.0) & (labels != 1.0)
        not_binary[bad_cells[str(spec.label_column)]] = False  # already reported as non_numeric
        log.rows("bad_label", spec.label_column, np.flatnonzero(not_binary), lines,
                 lambda i: "label is empty" if np.isnan(labels[i]) else f"label {labels[i]:g} is not 0 or 1")

    groups = _turbine_groups(table, spec, hint, keep, log)
    report.turbines = [tid for tid, _ in groups]
    if np.any(keep):
        report.start, report.end = iso_utc(float(np.min(t[keep]))), iso_utc(float(np.max(t[keep])))
    nan_masks = {col: np.isnan(v) & ~_mask(len(v), bad_cells[col]) for col, v in values.items()}
    report.nan_fraction = {col: float(np.mean(m)) for col, m in nan_masks.items()}

    # Series checks, per turbine.
    intervals = [_check_series(spec, tid, t[idx], lines[idx], {c: m[idx] for c, m in nan_masks.items()}, log)
                 for tid, idx in groups]
    positive = np.concatenate(intervals) if intervals else np.empty(0)
    if positive.size:
        report.sampling_hz = float(1.0 / np.median(positive))

    if log.errors:
        return []
    return [Frame(log.source, tid, t[idx], {c: values[c][idx] for c in spec.input_columns},
                  None if labels is None else labels[idx]) for tid, idx in groups]


def _numeric_column(table: Table, col: str, decimal: str, log: ProblemLog) -> tuple[np.ndarray, np.ndarray]:
    parsed = table.columns[col]
    log.rows("non_numeric", col, parsed.bad, table.lines,
             lambda i: f"{_short(parsed.texts[i])} is not a number{_decimal_hint(parsed.texts[i], decimal)}")
    return parsed.values, parsed.bad


def _turbine_groups(table: Table, spec: FeatureSpec, hint: str | None, keep: np.ndarray,
                    log: ProblemLog) -> list[tuple[str, np.ndarray]]:
    """(turbine id, row indices in file order) for rows with a valid time, turbines in file order."""
    col = spec.turbine_id_column
    if col is None:
        return [(turbine_from_name(log.source, hint), np.flatnonzero(keep))]
    if table.index(col) is None:
        return []  # reported as missing_column: rows cannot be assigned to turbines
    ids = table.columns[col].values
    empty = ids == ""
    log.rows("empty_turbine_id", col, np.flatnonzero(empty), table.lines, lambda i: "turbine id is empty")
    names, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    groups = []
    for k in np.argsort(first):
        if names[k]:
            groups.append((str(names[k]), np.flatnonzero((inverse == k) & keep)))
    return groups


def _check_series(spec: FeatureSpec, tid: str, t: np.ndarray, lines: np.ndarray,
                  nan_masks: dict[str, np.ndarray], log: ProblemLog) -> np.ndarray:
    """Order, duplicates, sampling rate, gaps, length and NaN share of one turbine's rows.

    Returns the positive sample intervals (for the report's sampling rate).
    """
    tol, win, tcol = spec.validation, spec.windows, spec.time_column
    g = spec.geometry
    need = g.length + (tol.min_windows - 1) * g.stride
    if len(t) < need:
        log.error("too_few_rows", f"{len(t)} row(s) with a valid time; {tol.min_windows} window(s) of "
                                  f"{g.length} samples ({win.length_s:g} s) need at least {need}", turbine=tid)
    for col, missing in nan_masks.items():
        fraction = float(np.mean(missing)) if len(missing) else 0.0
        share = f"{fraction:.2%} of the values are NaN or empty ({int(missing.sum())} of {len(missing)})"
        if fraction > tol.max_nan_fraction:
            log.error("too_many_nans", f"{share}; at most {tol.max_nan_fraction:.2%} allowed",
                      column=col, turbine=tid)
        elif fraction > 0:
            log.warning("nan_values", f"{share}; within the {tol.max_nan_fraction:.2%} allowed",
                        column=col, turbine=tid)
    if len(t) < 2:
        return np.empty(0)

    d = np.diff(t)
    after = lines[1:]  # a problem between rows i and i+1 is reported at row i+1
    log.rows("non_monotonic", tcol, np.flatnonzero(d < 0), after,
             lambda i: f"time goes back {-d[i]:.6g} s, from {iso_utc(t[i])} (line {lines[i]}) "
                       f"to {iso_utc(t[i + 1])}", turbine=tid)
    log.rows("duplicate_timestamp", tcol, np.flatnonzero(d == 0), after,
             lambda i: f"timestamp {iso_utc(t[i])} repeats line {lines[i]}", turbine=tid)
    log.rows("gap_too_long", tcol, np.flatnonzero(d > tol.max_gap_s), after,
             lambda i: f"gap of {d[i]:.3f} s after {iso_utc(t[i])}; at most {tol.max_gap_s:g} s allowed",
             turbine=tid)
    log.rows("gap", tcol, np.flatnonzero((d > win.max_gap_s) & (d <= tol.max_gap_s)), after,
             lambda i: f"gap of {d[i]:.3f} s after {iso_utc(t[i])}; windows will not span it "
                       f"(windows.max_gap_s = {win.max_gap_s:g} s)", turbine=tid, warning=True)

    positive = d[d > 0]
    if positive.size:
        median, expected = float(np.median(positive)), spec.sampling.interval_s
        if abs(median - expected) > spec.sampling.tolerance * expected:
            log.error("sampling_rate", f"measured sampling rate {1 / median:.4g} Hz (median interval "
                                       f"{median:.4g} s), expected {spec.sampling.rate_hz:g} Hz (interval "
                                       f"{expected:.4g} s ± {spec.sampling.tolerance:.0%})",
                      column=tcol, turbine=tid)
    return positive


def _mask(n: int, idx: np.ndarray) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[idx] = True
    return mask


def _decimal_hint(cell: str, decimal: str) -> str:
    """When the spec's decimal is '.' and the cell reads as a number with a decimal comma."""
    if decimal != "." or "," not in cell:
        return ""
    try:
        float(cell.replace(",", ".", 1))
    except ValueError:
        return ""
    return "; it looks like a decimal comma: set decimal: ','"


def _time_format_hint(cell: str, time_format: str) -> str:
    """What the cell looks like when another time_format would read it ("" when none would)."""
    try:
        number = float(cell)
    except ValueError:
        return "; it looks like a date: set time_format: iso8601" if time_format != "iso8601" and cell[:1].isdigit() \
            and "-" in cell else ""
    if time_format == "iso8601" and 1e8 <= number < 1e10:  # 1973 to 2286
        return "; it looks like epoch seconds: set time_format: epoch_s"
    if time_format == "iso8601" and 1e11 <= number < 1e13:
        return "; it looks like epoch milliseconds: set time_format: epoch_ms"
    return ""


def _short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
