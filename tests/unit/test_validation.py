"""Validation of raw sensor files against a feature spec: one test per problem code, plus frames."""

from __future__ import annotations

import gzip
import json
import time
from datetime import UTC, datetime

import numpy as np
import pytest

from shared.errors import DataError, ValidationFailed
from shared.ml import table
from shared.ml.schema import RAW_COLUMNS
from shared.ml.spec import FeatureSpec, default_spec
from shared.ml.table import MAX_REPEATS
from shared.ml.validation import (
    Frame,
    ValidationReport,
    load_file,
    load_frames,
    turbine_from_name,
    validate_bytes,
)

SPEC = default_spec()
SOURCE = "raw/T01/T01_20260101.csv"
T0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()


# -- helpers: a valid 20 Hz mini-turbine CSV, as rows that tests can edit -------------------------------


def mini_rows(n: int = 200, turbine: str = "T01", t0: float = T0, step: float = 0.05) -> list[dict[str, str]]:
    """n valid rows with the 23 RAW_COLUMNS at 20 Hz (ISO-8601 times with +00:00)."""
    rows = []
    for i in range(n):
        stamp = datetime.fromtimestamp(t0 + i * step, UTC).isoformat(timespec="microseconds")
        rows.append({
            "nanoId": "nano-1", "turbineId": turbine, "arduino_timestamp": str(1000 + 50 * i),
            "nanoFreemem": "1320", "eventTime": stamp, "rps": f"{2.0 + 0.0625 * (i % 8):.4f}",
            "voltage": str(70 + i % 9), "qw": "0.99", "qx": "0.01", "qy": "-0.02", "qz": "0.05",
            "gx": "0.01", "gy": "-0.03", "gz": "0.99", "ax": str(120 + i % 5), "ay": "-40", "az": "16100",
            "gearboxtemp": "31.2", "ambtemp": "20.5", "humidity": "41.0", "pressure": "1012.8",
            "gas": "1.25", "wind_speed_rps": f"{2.5 + 0.0625 * (i % 4):.4f}",
        })
    return rows


def to_csv(rows: list[dict[str, str]], columns: tuple[str, ...] | list[str] = RAW_COLUMNS,
           delimiter: str = ",") -> bytes:
    lines = [delimiter.join(columns)] + [delimiter.join(row[c] for c in columns) for row in rows]
    return ("\n".join(lines) + "\n").encode()


def mini_csv(n: int = 200, turbine: str = "T01", t0: float = T0, step: float = 0.05) -> bytes:
    return to_csv(mini_rows(n, turbine, t0, step))


def line_of(row_index: int) -> int:
    """File line of data row ``row_index`` (0-based) in a file written by to_csv: the header is line 1."""
    return row_index + 2


def codes(problems: list) -> list[str]:
    return [p.code for p in problems]


def only(report: ValidationReport, code: str, warning: bool = False) -> list:
    found = [p for p in (report.warnings if warning else report.errors) if p.code == code]
    assert found, f"no {code} in {report.errors + report.warnings}"
    return found


def with_spec(**changes: object) -> FeatureSpec:
    raw = SPEC.to_dict()
    raw.update(changes)
    return FeatureSpec.from_dict(raw)


# -- a valid file -----------------------------------------------------------------------------------------


def test_valid_file_gives_one_frame_and_a_clean_report() -> None:
    frames, report = load_frames(mini_csv(200), SOURCE, SPEC)
    assert report.ok and report.errors == [] and report.warnings == []
    assert report.rows == 200 and report.turbines == ["T01"]
    assert report.start == "2026-01-01T00:00:00.000000+00:00"
    assert report.end == "2026-01-01T00:00:09.950000+00:00"
    assert report.sampling_hz == pytest.approx(20.0)
    assert set(report.nan_fraction) == set(SPEC.input_columns)
    [frame] = frames
    assert isinstance(frame, Frame) and frame.source == SOURCE and frame.turbine_id == "T01"
    assert frame.t.dtype == np.float64 and len(frame) == 200
    assert np.all(np.diff(frame.t) > 0)
    assert frame.t[1] - frame.t[0] == pytest.approx(0.05)
    assert list(frame.values) == list(SPEC.input_columns)
    assert frame.values["voltage"][:3].tolist() == [70.0, 71.0, 72.0]
    assert frame.labels is None


def test_summary_and_to_dict_are_json_ready() -> None:
    data = to_csv([*mini_rows(200)[:150], {**mini_rows(200)[150], "rps": "oops"}, *mini_rows(200)[151:]])
    report = validate_bytes(data, SOURCE, SPEC)
    blob = json.dumps(report.to_dict(), allow_nan=False)
    back = json.loads(blob)
    assert back["ok"] is False and back["source"] == SOURCE and back["spec_name"] == "mini-turbine"
    assert back["spec_digest"] == SPEC.digest()
    assert back["errors"][0]["code"] == "non_numeric" and back["errors"][0]["row"] == line_of(150)
    assert SOURCE in report.summary() and "FAILED" in report.summary()
    assert "valid against" in validate_bytes(mini_csv(), SOURCE, SPEC).summary()


def test_validation_does_not_modify_the_input() -> None:
    plain = mini_csv(200)
    packed = gzip.compress(plain)
    copies = (bytes(plain), bytes(packed))
    validate_bytes(plain, SOURCE, SPEC)
    load_frames(packed, SOURCE, SPEC)
    assert (plain, packed) == copies


def test_gzip_and_plain_give_the_same_frames() -> None:
    plain = mini_csv(300)
    [a], _ = load_frames(plain, "T01_a.csv", SPEC)
    [b], _ = load_frames(gzip.compress(plain), "T01_a.csv.gz", SPEC)
    assert np.array_equal(a.t, b.t)
    for col in SPEC.input_columns:
        assert np.array_equal(a.values[col], b.values[col], equal_nan=True)


def test_gzip_is_detected_by_magic_bytes_not_by_name() -> None:
    report = validate_bytes(gzip.compress(mini_csv()), "raw/T01/T01_plain_looking.csv", SPEC)
    assert report.ok, report.errors


def test_utf8_bom_is_accepted() -> None:
    frames, report = load_frames(b"\xef\xbb\xbf" + mini_csv(), SOURCE, SPEC)
    assert report.ok and len(frames[0]) == 200


def test_load_frames_raises_validation_failed_with_the_report() -> None:
    with pytest.raises(ValidationFailed) as caught:
        load_frames(mini_csv(20), SOURCE, SPEC)
    assert isinstance(caught.value, DataError)
    assert isinstance(caught.value.report, ValidationReport)
    assert codes(caught.value.report.errors) == ["too_few_rows"]
    assert SOURCE in str(caught.value)


def test_load_file(tmp_path) -> None:
    path = tmp_path / "T07_0001.csv.gz"
    path.write_bytes(gzip.compress(mini_csv(200, turbine="T07")))
    [frame], report = load_file(path, SPEC)
    assert frame.turbine_id == "T07" and report.source == str(path)
    with pytest.raises(DataError, match="cannot read"):
        load_file(tmp_path / "nope.csv", SPEC)


# -- errors that stop reading -----------------------------------------------------------------------------


def test_bad_encoding_names_the_byte_offset() -> None:
    data = mini_csv(200)
    offset = data.index(b"nano-1", 2000)
    bad = data[:offset] + b"\xff" + data[offset + 1:]
    [p] = validate_bytes(bad, SOURCE, SPEC).errors
    assert p.code == "bad_encoding"
    assert SOURCE in p.message and f"byte offset {offset}" in p.message
    assert p.row == bad.count(b"\n", 0, offset) + 1


def test_corrupt_gzip() -> None:
    packed = bytearray(gzip.compress(mini_csv(200)))
    packed[len(packed) // 2] ^= 0xFF
    packed[len(packed) // 2 + 1] ^= 0xFF
    [p] = validate_bytes(bytes(packed), SOURCE, SPEC).errors
    assert p.code == "corrupt_gzip" and SOURCE in p.message
    [q] = validate_bytes(b"\x1f\x8bnot gzip at all", SOURCE, SPEC).errors
    assert q.code == "corrupt_gzip"


def test_truncated_gzip() -> None:
    packed = gzip.compress(mini_csv(200))
    [p] = validate_bytes(packed[: len(packed) // 2], SOURCE, SPEC).errors
    assert p.code == "truncated_gzip" and SOURCE in p.message and "truncated" in p.message


def test_gzip_members_and_zero_padding_read_as_gzip_does() -> None:
    data = mini_csv(200)
    cut = data.index(b"\n", len(data) // 2) + 1
    packed = gzip.compress(data[:cut]) + gzip.compress(data[cut:]) + b"\x00" * 8
    assert gzip.decompress(packed) == data
    report = validate_bytes(packed, SOURCE, SPEC)
    assert report.ok and report.rows == 200


def test_a_file_too_large_or_a_gzip_bomb_is_refused_unread() -> None:
    big = mini_csv(200)
    assert 5_000 < len(big) < 2**20
    bomb = gzip.compress(big + b"0" * 10_000_000)  # 10 MB of text in about 10 kB
    for data in (big, bomb):
        [p] = validate_bytes(data, SOURCE, SPEC, max_text_bytes=5_000).errors
        assert p.code == "file_too_large" and SOURCE in p.message and "split it" in p.message
        assert "exceeds 0.004768 MiB" in p.message  # the limit, as set
    assert validate_bytes(big, SOURCE, SPEC, max_text_bytes=len(big)).ok  # up to the limit: read
    assert len(table._gunzip(bomb, 5_000)) == 5_001  # decompression stopped at the limit


@pytest.mark.parametrize("data", [b"", b"\n\n  \n", gzip.compress(b"", mtime=0), b"\xef\xbb\xbf"])
def test_empty_file(data: bytes) -> None:
    report = validate_bytes(data, SOURCE, SPEC)
    assert codes(report.errors) == ["empty_file"] and SOURCE in report.errors[0].message
    assert report.rows == 0 and report.turbines == []


def test_header_only() -> None:
    report = validate_bytes(to_csv([]), SOURCE, SPEC)
    assert codes(report.errors) == ["no_data_rows"] and SOURCE in report.errors[0].message


def test_unparseable_csv() -> None:
    rows = mini_rows(200)
    data = to_csv(rows).replace(b"nano-1", b'"' + b"x" * 200_000 + b'"', 1)  # over csv's field limit
    p = only(validate_bytes(data, SOURCE, SPEC), "unparseable_csv")[0]
    assert SOURCE in p.message and p.row == 2 and "line 2" in p.message


def test_missing_time_column_stops_after_the_header() -> None:
    columns = [c for c in RAW_COLUMNS if c != "eventTime"]
    report = validate_bytes(to_csv(mini_rows(200), columns), SOURCE, SPEC)
    [p] = report.errors
    assert p.code == "missing_column" and p.column == "eventTime" and "'eventTime'" in p.message


# -- header errors ----------------------------------------------------------------------------------------


def test_missing_columns_are_each_named() -> None:
    columns = [c for c in RAW_COLUMNS if c not in ("rps", "voltage")]
    report = validate_bytes(to_csv(mini_rows(200), columns), SOURCE, SPEC)
    missing = only(report, "missing_column")
    assert [p.column for p in missing] == ["rps", "voltage"]
    assert all(SOURCE in p.message and repr(p.column) in p.message for p in missing)


def test_unknown_columns_are_each_named() -> None:
    rows = [{**r, "extra": "1", "other": "2"} for r in mini_rows(200)]
    report = validate_bytes(to_csv(rows, [*RAW_COLUMNS, "extra", "other"]), SOURCE, SPEC)
    unknown = only(report, "unknown_column")
    assert [p.column for p in unknown] == ["extra", "other"]
    assert all(SOURCE in p.message and repr(p.column) in p.message for p in unknown)


def test_wrong_delimiter_is_hinted() -> None:
    report = validate_bytes(to_csv(mini_rows(200), delimiter=";"), SOURCE, SPEC)
    assert "delimiter" in only(report, "unknown_column")[0].message


def test_duplicate_header_names() -> None:
    rows = mini_rows(200)
    data = to_csv(rows, [*RAW_COLUMNS, "rps"])
    [p] = only(validate_bytes(data, SOURCE, SPEC), "duplicate_column")
    assert p.column == "rps" and SOURCE in p.message and "2 times" in p.message


def test_row_with_the_wrong_number_of_fields() -> None:
    data = mini_csv(200).splitlines()
    data[10] += b",surplus"
    report = validate_bytes(b"\n".join(data), SOURCE, SPEC)
    [p] = report.errors
    assert p.code == "wrong_field_count" and p.row == 11
    assert SOURCE in p.message and "line 11" in p.message and "24 field(s)" in p.message
    assert report.rows == 199


# -- cell errors ------------------------------------------------------------------------------------------


def test_non_numeric_value_names_row_column_and_text() -> None:
    rows = mini_rows(200)
    rows[42]["voltage"] = "12,5V"
    data = to_csv(rows).replace(b'12,5V', b'"12,5V"')
    [p] = validate_bytes(data, SOURCE, SPEC).errors
    assert (p.code, p.column, p.row) == ("non_numeric", "voltage", line_of(42))
    assert SOURCE in p.message and f"line {line_of(42)}" in p.message and "'voltage'" in p.message
    assert "'12,5V'" in p.message


def test_a_decimal_comma_reads_with_the_spec_that_says_so_and_is_named_without_it() -> None:
    rows = mini_rows(200)
    rows[7]["voltage"], rows[8]["voltage"] = "12,5", "3.25"  # a '.' still reads under decimal ','
    data = to_csv(rows, delimiter=";")
    [frame], report = load_frames(data, SOURCE, with_spec(delimiter=";", decimal=","))
    assert report.ok and frame.values["voltage"][7:9].tolist() == [12.5, 3.25]
    [p] = validate_bytes(data, SOURCE, with_spec(delimiter=";")).errors
    assert (p.code, p.row) == ("non_numeric", line_of(7))
    assert p.message.endswith("'12,5' is not a number; it looks like a decimal comma: set decimal: ','")


def test_repeated_problems_are_capped_with_a_summary() -> None:
    rows = mini_rows(200)
    for i in range(25):
        rows[i]["rps"] = "x"
    errors = only(validate_bytes(to_csv(rows), SOURCE, SPEC), "non_numeric")
    assert len(errors) == MAX_REPEATS + 1
    assert [p.row for p in errors[:MAX_REPEATS]] == [line_of(i) for i in range(MAX_REPEATS)]
    assert errors[-1].row is None and "15 more" in errors[-1].message and SOURCE in errors[-1].message


def test_non_text_columns_outside_the_features_are_not_parsed() -> None:
    rows = mini_rows(200)
    rows[5]["gas"] = "n/a"  # a raw column no feature uses
    assert validate_bytes(to_csv(rows), SOURCE, SPEC).ok


def test_unparseable_timestamp() -> None:
    rows = mini_rows(200)
    rows[7]["eventTime"] = "2026-01-01T25:00:00+00:00"
    rows[8]["eventTime"] = ""
    errors = only(validate_bytes(to_csv(rows), SOURCE, SPEC), "bad_timestamp")
    assert [p.row for p in errors] == [line_of(7), line_of(8)]
    assert all(p.column == "eventTime" and SOURCE in p.message for p in errors)
    assert "2026-01-01T25:00:00+00:00" in errors[0].message


@pytest.mark.parametrize(("time_format", "cell", "hint"), [
    ("iso8601", "1767225600.05", "; it looks like epoch seconds: set time_format: epoch_s"),
    ("iso8601", "1767225600050", "; it looks like epoch milliseconds: set time_format: epoch_ms"),
    ("iso8601", "12.5", ""),  # no plausible epoch: no guess
    ("epoch_s", "2026-01-01 00:00:00", "; it looks like a date: set time_format: iso8601"),
    ("epoch_ms", "noon", ""),
])
def test_a_timestamp_in_another_format_names_the_setting_that_reads_it(time_format: str, cell: str,
                                                                       hint: str) -> None:
    rows = mini_rows(200)
    if time_format != "iso8601":  # the other rows in the spec's format
        scale = 1000 if time_format == "epoch_ms" else 1
        for row in rows:
            row["eventTime"] = repr(round(datetime.fromisoformat(row["eventTime"]).timestamp() * scale, 3))
    rows[7]["eventTime"] = cell
    (error,) = only(validate_bytes(to_csv(rows), SOURCE, with_spec(time_format=time_format)), "bad_timestamp")
    assert error.row == line_of(7)
    assert error.message.endswith(f"cannot parse {cell!r} as a {time_format} timestamp{hint}")


def test_time_going_back() -> None:
    rows = mini_rows(200)
    rows[50]["eventTime"], rows[51]["eventTime"] = rows[51]["eventTime"], rows[50]["eventTime"]
    [p] = validate_bytes(to_csv(rows), SOURCE, SPEC).errors
    assert p.code == "non_monotonic" and p.row == line_of(51) and p.column == "eventTime"
    assert SOURCE in p.message and f"line {line_of(51)}" in p.message and "goes back" in p.message


def test_duplicate_timestamps() -> None:
    rows = mini_rows(201)
    del rows[100]
    rows[100]["eventTime"] = rows[99]["eventTime"]
    [p] = only(validate_bytes(to_csv(rows), SOURCE, SPEC), "duplicate_timestamp")
    assert p.row == line_of(100) and SOURCE in p.message and f"line {line_of(99)}" in p.message


def test_too_many_nans() -> None:
    rows = mini_rows(200)
    for i in range(0, 200, 20):  # 5 %
        rows[i]["voltage"] = ""
    [p] = validate_bytes(to_csv(rows), SOURCE, SPEC).errors
    assert (p.code, p.column) == ("too_many_nans", "voltage")
    assert SOURCE in p.message and "'voltage'" in p.message and "5.00%" in p.message
    assert validate_bytes(to_csv(rows), SOURCE, SPEC).nan_fraction["voltage"] == pytest.approx(0.05)


def test_nan_within_tolerance_is_a_warning() -> None:
    rows = mini_rows(200)
    rows[3]["rps"], rows[4]["rps"] = "NaN", "nan"
    report = validate_bytes(to_csv(rows), SOURCE, SPEC)
    assert report.ok
    [w] = report.warnings
    assert (w.code, w.column) == ("nan_values", "rps") and "1.00%" in w.message and SOURCE in w.message
    [frame], _ = load_frames(to_csv(rows), SOURCE, SPEC)
    assert np.isnan(frame.values["rps"][3]) and np.isnan(frame.values["rps"][4])


def test_infinite_values() -> None:
    rows = mini_rows(200)
    rows[9]["qx"] = "inf"
    rows[10]["qy"] = "-inf"
    rows[11]["rps"] = "1e39"  # finite here, infinite in the model's float32
    rows[12]["rps"] = "3.4e38"  # within float32
    errors = only(validate_bytes(to_csv(rows), SOURCE, SPEC), "infinite_value")
    assert [(p.column, p.row) for p in errors] == [("qx", line_of(9)), ("qy", line_of(10)), ("rps", line_of(11))]
    assert all(SOURCE in p.message for p in errors) and "1e+39 is beyond the model's float32 range" in errors[2].message


def test_sampling_rate_outside_tolerance() -> None:
    report = validate_bytes(mini_csv(200, step=0.1), SOURCE, SPEC)
    [p] = report.errors
    assert p.code == "sampling_rate" and SOURCE in p.message
    assert "10 Hz" in p.message and "expected 20 Hz" in p.message
    assert report.sampling_hz == pytest.approx(10.0)
    assert validate_bytes(mini_csv(200, step=0.06), SOURCE, SPEC).ok  # 16.7 Hz is within 25 %


def test_gap_too_long() -> None:
    rows = mini_rows(150) + mini_rows(150, t0=T0 + 150 * 0.05 + 60.0)
    [p] = validate_bytes(to_csv(rows), SOURCE, SPEC).errors
    assert p.code == "gap_too_long" and p.row == line_of(150)
    assert SOURCE in p.message and "60.050 s" in p.message


def test_short_gap_is_a_warning() -> None:
    rows = mini_rows(150) + mini_rows(150, t0=T0 + 150 * 0.05 + 5.0)
    report = validate_bytes(to_csv(rows), SOURCE, SPEC)
    assert report.ok
    [w] = report.warnings
    assert w.code == "gap" and w.row == line_of(150) and "5.050 s" in w.message and SOURCE in w.message


def test_too_few_rows_for_one_window() -> None:
    [p] = validate_bytes(mini_csv(99), SOURCE, SPEC).errors
    assert p.code == "too_few_rows" and SOURCE in p.message and "99 row(s)" in p.message
    assert validate_bytes(mini_csv(100), SOURCE, SPEC).ok
    three = with_spec(validation={"min_windows": 3})  # 100 + 2 * 10 rows
    assert codes(validate_bytes(mini_csv(119), SOURCE, three).errors) == ["too_few_rows"]
    assert validate_bytes(mini_csv(120), SOURCE, three).ok


def test_label_column() -> None:
    spec = with_spec(columns=[*RAW_COLUMNS, "label"], label_column="label")
    rows = [{**r, "label": str(i // 150)} for i, r in enumerate(mini_rows(200))]
    [frame], report = load_frames(to_csv(rows, spec.columns), SOURCE, spec)
    assert frame.labels is not None and frame.labels.tolist() == [0.0] * 150 + [1.0] * 50
    rows[20]["label"], rows[21]["label"], rows[22]["label"] = "2", "", "yes"
    report = validate_bytes(to_csv(rows, spec.columns), SOURCE, spec)
    assert [(p.code, p.row) for p in report.errors] == [
        ("non_numeric", line_of(22)), ("bad_label", line_of(20)), ("bad_label", line_of(21))]
    assert all(p.column == "label" and SOURCE in p.message for p in report.errors)
    assert "label 2 is not 0 or 1" in report.errors[1].message


def test_empty_turbine_id() -> None:
    rows = mini_rows(200)
    rows[30]["turbineId"] = ""
    [p] = validate_bytes(to_csv(rows), SOURCE, SPEC).errors
    assert (p.code, p.column, p.row) == ("empty_turbine_id", "turbineId", line_of(30))


# -- turbines ---------------------------------------------------------------------------------------------


def test_multi_turbine_file_is_split_and_checked_per_turbine() -> None:
    a, b = mini_rows(200, turbine="T01"), mini_rows(250, turbine="T02", t0=T0 + 0.01)
    interleaved = [row for pair in zip(a, b, strict=False) for row in pair] + b[200:]
    frames, report = load_frames(to_csv(interleaved), "raw/mixed/batch.csv", SPEC, turbine_hint="ignored")
    assert report.turbines == ["T01", "T02"] and report.rows == 450
    assert [(f.turbine_id, len(f)) for f in frames] == [("T01", 200), ("T02", 250)]
    assert all(np.all(np.diff(f.t) > 0) for f in frames)
    assert report.sampling_hz == pytest.approx(20.0)

    interleaved[11]["eventTime"] = interleaved[1]["eventTime"]  # a T02 row goes back in T02's time
    [p] = validate_bytes(to_csv(interleaved), "batch.csv", SPEC).errors
    assert p.code == "non_monotonic" and "turbine 'T02'" in p.message and p.row == line_of(11)


def test_turbine_id_from_hint_or_file_name() -> None:
    assert turbine_from_name("raw/T09/T09_20260101.csv.gz") == "T09"
    assert turbine_from_name("s3://bucket/raw/T09/T09.csv", "T10") == "T10"
    assert turbine_from_name("C:\\data\\T11.part.csv") == "T11"


# -- any numeric CSV works once a spec describes it ------------------------------------------------------


GENERIC = FeatureSpec.from_dict({
    "name": "pump", "version": "2", "delimiter": ";", "time_column": "ts", "time_format": "epoch_ms",
    "columns": ["ts", "pressure", "flow"], "features": ["pressure", "flow"],
    "sampling": {"rate_hz": 10}, "windows": {"length_s": 2.0, "stride_s": 0.5, "max_gap_s": 1.0},
})


def generic_csv(n: int, t0_ms: int = 1_767_225_600_000) -> bytes:
    lines = ["ts;pressure;flow"] + [f"{t0_ms + 100 * i};{1.5 + i / 100:.3f};{i % 7}" for i in range(n)]
    return ("\n".join(lines) + "\n").encode()


def test_semicolon_epoch_ms_csv_with_a_custom_spec() -> None:
    [frame], report = load_frames(generic_csv(60), "site/pump7/2026-01-01.csv", GENERIC, turbine_hint="pump7")
    assert report.ok and report.turbines == ["pump7"] and frame.turbine_id == "pump7"
    assert frame.t[0] == 1_767_225_600.0 and frame.t[1] - frame.t[0] == pytest.approx(0.1)
    assert list(frame.values) == ["pressure", "flow"] and frame.values["flow"][:3].tolist() == [0.0, 1.0, 2.0]
    assert report.start == "2026-01-01T00:00:00.000000+00:00" and report.sampling_hz == pytest.approx(10.0)
    [frame], _ = load_frames(generic_csv(60), "site/pump8_2026.csv", GENERIC)
    assert frame.turbine_id == "pump8"


def test_custom_spec_problems_are_found_too() -> None:
    data = generic_csv(60).replace(b"1767225600500;", b"later;")
    [p] = validate_bytes(data, "p.csv", GENERIC).errors
    assert (p.code, p.column, p.row) == ("bad_timestamp", "ts", line_of(5))


@pytest.mark.parametrize("stamp", ["2026-01-01T01:00:00+01:00", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00",
                                   "2025-12-31T19:00:00-05:00"])
def test_iso_offsets_are_normalised_to_utc(stamp: str) -> None:
    rows = mini_rows(200)
    rows[0]["eventTime"] = stamp
    report = validate_bytes(to_csv(rows), SOURCE, SPEC)
    assert report.ok and report.start == "2026-01-01T00:00:00.000000+00:00"


def test_epoch_seconds() -> None:
    spec = FeatureSpec.from_dict({**GENERIC.to_dict(), "time_format": "epoch_s", "delimiter": ","})
    lines = ["ts,pressure,flow"] + [f"{1_767_225_600 + i / 10},{i},{i}" for i in range(30)]
    [frame], _ = load_frames("\n".join(lines).encode(), "x.csv", spec)
    assert frame.t[0] == 1_767_225_600.0 and len(frame) == 30


# -- performance smoke check (timing is printed, not asserted) --------------------------------------------


def test_a_72k_row_gzip_file_validates() -> None:
    packed = gzip.compress(mini_csv(72_000))
    started = time.perf_counter()
    frames, report = load_frames(packed, SOURCE, SPEC)
    elapsed = time.perf_counter() - started
    print(f"validated 72 000 rows x 23 columns (gzip) in {elapsed * 1000:.0f} ms")
    assert report.ok and report.rows == 72_000 and len(frames[0]) == 72_000
