"""Captured samples as a CSV file of the model's feature spec (what the capture buffer writes and uploads).

Formatting numbers is the capture's main cost on the device (benchmarks/capture_figures.py), so they are written as
integers where they can be (see spec_csv); the csv module's quoting is used only for a delimiter that can appear in
a value.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import numpy as np

from shared.ml.spec import FeatureSpec

SIMPLE_DELIMITERS = (",", ";", "\t", "|")  # never part of a number, a time or a thing name: no quoting needed
DIGITS = 10  # significant digits of a column's largest value: beyond sensor resolution (the model reads float32)


def spec_csv(spec: FeatureSpec, thing: str, ts: np.ndarray, values: np.ndarray) -> bytes:
    """Samples as a CSV file of `spec`: its columns (the time and input columns first: a header may name them in
    any order), its time format (to the microsecond) and delimiter, the turbine id column (if any) set to `thing`,
    the label column (if any) 0; columns the model does not read are left empty.

    Formatting is the capture's main cost, so numbers are written as integers where they can: a column of whole
    numbers as they are, any other as an integer mantissa and a power of ten (`2357491151e-8`, which every CSV
    reader takes for 23.57491151) with DIGITS significant digits for the column's largest magnitude; a column with
    an outlier that would cost its other values their precision with DIGITS significant digits per value
    (`%.10g`). A missing value is an empty cell."""
    d = spec.delimiter
    if d not in SIMPLE_DELIMITERS or d in thing:
        return _spec_csv_quoted(spec, thing, ts, values)
    if spec.time_format == "iso8601":
        micros = np.round(ts * 1e6).astype(np.int64).astype("datetime64[us]")
        times = np.char.add(np.datetime_as_string(micros, unit="us"), "+00:00").tolist()
    else:
        scaled = ts * 1000.0 if spec.time_format == "epoch_ms" else ts
        times = np.char.mod("%.3f" if spec.time_format == "epoch_ms" else "%.6f", scaled).tolist()
    inputs = list(spec.input_columns)
    rest = [c for c in spec.columns if c != spec.time_column and c not in inputs]
    constant = {spec.turbine_id_column: thing, spec.label_column: "0"}
    suffix = "".join(d + constant.get(c, "") for c in rest)
    missing = np.isnan(values)
    finite = np.where(missing, 0.0, values)
    exponents = _exponents(finite)
    cells = [f"%.{DIGITS}g" if e is None else "%d" if e == 0 else f"%de{e}" for e in exponents]
    columns = [finite[:, i].tolist() if e is None else np.round(finite[:, i] / 10.0 ** e).astype(np.int64).tolist()
               for i, e in enumerate(exponents)]
    mantissas = list(zip(*columns, strict=True)) if columns else [()] * len(times)
    row = "%s" + "".join(d + c for c in cells) + suffix.replace("%", "%%")
    lines = [row % (t, *m) for t, m in zip(times, mantissas, strict=True)]
    for i in np.flatnonzero(missing.any(axis=1)).tolist():  # a missing reading is an empty cell
        lines[i] = d.join([times[i], *("" if gone else cell % m for cell, m, gone in
                                       zip(cells, mantissas[i], missing[i].tolist(), strict=True))]) + suffix
    header = d.join([spec.time_column, *inputs, *rest])
    return "\n".join([header, *lines, ""]).encode("utf-8")


def _exponents(finite: np.ndarray) -> list[int | None]:
    """Per column, the power of ten its values are written in: the largest one that writes every value exactly
    (0 for whole numbers; -2 for readings like 0.48), at most DIGITS significant digits down from its largest
    magnitude; None (written as floats, `%.10g`) when that magnitude is an outlier over 10^4 times the median."""
    if not len(finite):
        return [0] * finite.shape[1]
    magnitude = np.abs(finite)
    biggest, typical = magnitude.max(axis=0), np.median(magnitude, axis=0)
    finest = np.floor(np.log10(np.where(biggest > 0, biggest, 1.0))).astype(np.int64) - (DIGITS - 1)
    out: list[int | None] = []
    for i in range(finite.shape[1]):
        if biggest[i] >= 1e15 or biggest[i] > 1e4 * typical[i]:  # whole numbers stay exact as integers
            whole = biggest[i] < 1e15 and bool(np.all(finite[:, i] == np.round(finite[:, i])))
            out.append(0 if whole else None)
            continue
        power = 0
        column = finite[:, i]
        while power > finest[i]:
            scaled = column * 10.0 ** -power
            if np.all(np.abs(scaled - np.round(scaled)) <= 1e-6):
                break
            power -= 1
        out.append(int(power))
    return out


def _spec_csv_quoted(spec: FeatureSpec, thing: str, ts: np.ndarray, values: np.ndarray) -> bytes:
    """The csv module's way (quoting where needed): for a delimiter that can appear in a value."""
    n = len(ts)
    if spec.time_format == "iso8601":
        times: list[str] = [datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds") for t in ts.tolist()]
    else:
        times = [repr(t) for t in (ts * 1000.0 if spec.time_format == "epoch_ms" else ts).tolist()]
    inputs = {c: i for i, c in enumerate(spec.input_columns)}
    columns: list[list[str] | str] = []
    for name in spec.columns:
        if name == spec.time_column:
            columns.append(times)
        elif name in inputs:
            columns.append(["" if v != v else f"{v:.{DIGITS}g}" for v in values[:, inputs[name]].tolist()])
        elif name == spec.turbine_id_column:
            columns.append(thing)
        elif name == spec.label_column:
            columns.append("0")
        else:
            columns.append("")
    out = io.StringIO()
    writer = csv.writer(out, delimiter=spec.delimiter, lineterminator="\n")
    writer.writerow(spec.columns)
    writer.writerows(zip(*(c if isinstance(c, list) else [c] * n for c in columns), strict=True))
    return out.getvalue().encode("utf-8")
