"""Reading raw sensor files: decoding, CSV rows and line numbers, numbers, timestamps, the problem log."""

from __future__ import annotations

import gzip
import math
from datetime import UTC, datetime

import numpy as np
import pytest

from shared.ml.table import (
    MAX_REPEATS,
    Parser,
    Problem,
    ProblemLog,
    decode_text,
    iso_utc,
    parse_numbers,
    parse_times,
    read_table,
)

SOURCE = "s3://bucket/raw/T01/T01_0001.csv"
T0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()


def log() -> ProblemLog:
    return ProblemLog(SOURCE)


# -- decode_text -------------------------------------------------------------------------------------------


def test_decode_plain_gzip_and_bom() -> None:
    text = "a,b\n1,2\n"
    for data in (text.encode(), gzip.compress(text.encode()), b"\xef\xbb\xbf" + text.encode(),
                 gzip.compress(b"\xef\xbb\xbf" + text.encode())):
        problems = log()
        assert decode_text(data, problems) == text
        assert problems.errors == []


def test_decode_reports_the_offset_of_the_bad_byte() -> None:
    problems = log()
    assert decode_text(b"a,b\n1,\xe9\n", problems) is None
    [p] = problems.errors
    assert p.code == "bad_encoding" and p.row == 2
    assert p.message.startswith(SOURCE) and "byte offset 6" in p.message and "0xe9" in p.message


def test_decode_counts_the_offset_after_a_bom() -> None:
    problems = log()
    decode_text(b"\xef\xbb\xbfa\xff", problems)
    assert "byte offset 4" in problems.errors[0].message


def test_decode_gzip_problems() -> None:
    packed = gzip.compress(b"a,b\n" * 1000)
    bad_crc = packed[:-8] + bytes([packed[-8] ^ 0xFF]) + packed[-7:]
    for data, code in ((packed[:-10], "truncated_gzip"), (bad_crc, "corrupt_gzip"),
                       (b"", "empty_file"), (gzip.compress(b" \n"), "empty_file")):
        problems = log()
        assert decode_text(data, problems) is None
        assert [p.code for p in problems.errors] == [code]
        assert SOURCE in problems.errors[0].message


# -- read_table --------------------------------------------------------------------------------------------


def as_text(cells: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(cells, dtype=object), np.zeros(0, np.int64)


def every_column(header: tuple[str, ...]) -> dict[str, Parser]:
    return dict.fromkeys(header, as_text)


def test_read_table_header_rows_and_line_numbers() -> None:
    problems = log()
    table = read_table(" a , b \r\n1,2\r\n\r\n3,4\r\n", ",", problems, every_column)
    assert table is not None and problems.errors == []
    assert table.header == ("a", "b") and table.lines.tolist() == [2, 4]
    assert table.columns["b"].values.tolist() == ["2", "4"] and table.index("b") == 1 and table.index("c") is None
    assert len(table) == 2


def test_read_table_quoted_line_breaks_keep_line_numbers() -> None:
    problems = log()
    table = read_table('a;b\n1;"x\ny"\n2;z;extra\n3;w\n', ";", problems, every_column)
    assert table is not None
    assert table.columns["b"].values.tolist() == ["x\ny", "w"] and table.lines.tolist() == [2, 5]
    [p] = problems.errors
    assert (p.code, p.row) == ("wrong_field_count", 4) and "line 4" in p.message and SOURCE in p.message


def test_read_table_without_header() -> None:
    problems = log()
    assert read_table("\n  \n", ",", problems, every_column) is None
    assert [p.code for p in problems.errors] == ["empty_file"]


def test_read_table_header_only() -> None:
    table = read_table("a,b\n", ",", log(), every_column)
    assert table is not None and len(table) == 0 and table.header == ("a", "b")
    assert table.columns["a"].values.size == 0


def test_read_table_parses_only_the_columns_asked_for_and_keeps_the_first_bad_texts() -> None:
    rows = "".join(f"{k},{'x' if k % 2 else k},{k}\n" for k in range(30))
    table = read_table("t,v,w\n" + rows, ",", log(), lambda header: {"v": parse_numbers})
    assert table is not None and set(table.columns) == {"v"}
    v = table.columns["v"]
    assert v.bad.tolist() == list(range(1, 30, 2)) and np.isnan(v.values[v.bad]).all()
    assert v.texts == dict.fromkeys(list(range(1, 30, 2))[:MAX_REPEATS], "x")


def test_read_table_in_chunks_reads_as_in_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunk borders through blank lines before the header, quoted line breaks, wrong rows and a CSV error."""
    import shared.ml.table as table_module

    text = ('\n\n\n\nt;v\n1;"a\nb"\n2;c\n\n3;d;extra\n4;"e\n\nf"\n' + "".join(f"{k};g\n" for k in range(5, 12))
            + '12;"' + "x" * 200_000 + '"\n13;h\n')  # over csv's field limit: the rest is not read

    def read() -> tuple[object, ...]:
        problems = log()
        table = read_table(text, ";", problems, every_column)
        assert table is not None
        return (table.header, table.lines.tolist(), {k: c.values.tolist() for k, c in table.columns.items()},
                sorted((p.code, p.row) for p in problems.errors))

    whole = read()
    assert whole[1] == [6, 8, 11, *range(14, 21)] and whole[3] == [("unparseable_csv", 21), ("wrong_field_count", 10)]
    for size in (1, 2, 3, 5):
        monkeypatch.setattr(table_module, "CHUNK_ROWS", size)
        assert read() == whole, size


# -- parse_numbers -----------------------------------------------------------------------------------------


def test_parse_numbers_fast_path() -> None:
    values, bad = parse_numbers(["1.5", "-2", "1e3", " 4 "])
    assert values.dtype == np.float64 and values.tolist() == [1.5, -2.0, 1000.0, 4.0]
    assert bad.size == 0


def test_parse_numbers_empty_nan_and_inf() -> None:
    values, bad = parse_numbers(["", "nan", "NaN", "inf", "-inf", "3"])
    assert np.isnan(values[:3]).all() and values[3] == math.inf and values[4] == -math.inf
    assert values[5] == 3.0 and bad.size == 0


def test_parse_numbers_locates_bad_cells() -> None:
    values, bad = parse_numbers(["1", "abc", "", "2,5", "  "])
    assert bad.tolist() == [1, 3]
    assert values[0] == 1.0 and np.isnan(values[1:]).all()


def test_parse_numbers_empty_column() -> None:
    values, bad = parse_numbers([])
    assert values.shape == (0,) and bad.shape == (0,)


# -- parse_times -------------------------------------------------------------------------------------------


def test_iso_fast_path_with_one_offset() -> None:
    cells = ["2026-01-01T00:00:00.050000+00:00", "2026-01-01T00:00:00.100000+00:00",
             "2026-01-01T00:00:01+00:00"]
    t, bad = parse_times(cells, "iso8601")
    assert bad.size == 0 and t.tolist() == [T0 + 0.05, T0 + 0.1, T0 + 1.0]


def test_iso_offsets_z_and_naive_are_utc() -> None:
    cells = ["2026-01-01T02:00:00+02:00", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00",
             "2025-12-31T23:30:00-00:30", " 2026-01-01 00:00:00.5 "]
    t, bad = parse_times(cells, "iso8601")
    assert bad.size == 0 and t.tolist() == [T0, T0, T0, T0, T0 + 0.5]


def test_iso_bad_cells_are_located() -> None:
    cells = ["2026-01-01T00:00:00+00:00", "", "yesterday", "now", "NaT", "2026-02-30T00:00:00+00:00",
             "2026-01-01T00:00:01+0100"]
    t, bad = parse_times(cells, "iso8601")
    assert bad.tolist() == [1, 2, 3, 4, 5]
    assert t[0] == T0 and t[6] == T0 + 1 - 3600 and np.isnan(t[bad]).all()


def test_iso_uniform_offset_with_a_bad_cell() -> None:
    t, bad = parse_times(["2026-01-01T00:00:00+00:00", "now+00:00", "2026-01-01T00:00:02+00:00"], "iso8601")
    assert bad.tolist() == [1] and t[2] == T0 + 2


def test_iso_refuses_numbers_and_bare_years() -> None:
    """numpy reads bare digits as a year: epoch seconds in an iso8601 file must be bad cells, not dates."""
    t, bad = parse_times(["1767225600", "1767225601", "2026", "1767225600.5"], "iso8601")
    assert bad.tolist() == [0, 1, 2, 3] and np.isnan(t).all()
    t, bad = parse_times(["2026-01-01T00:00:00+00:00", "1767225601+00:00"], "iso8601")  # one offset, one number
    assert bad.tolist() == [1] and t[0] == T0
    t, bad = parse_times(["20260101T000000", "2026-01-01T00:00:01"], "iso8601")  # ISO 8601's basic format
    assert bad.size == 0 and t.tolist() == [T0, T0 + 1]


def test_epoch_formats() -> None:
    t, bad = parse_times(["1767225600000", "1767225600050", "", "x", "inf"], "epoch_ms")
    assert t[:2].tolist() == [T0, T0 + 0.05] and bad.tolist() == [2, 3, 4]
    t, bad = parse_times(["1767225600", "1767225600.25"], "epoch_s")
    assert t.tolist() == [T0, T0 + 0.25] and bad.size == 0


def test_iso_utc() -> None:
    assert iso_utc(T0 + 0.05) == "2026-01-01T00:00:00.050000+00:00"
    assert iso_utc(np.float64(1e20)) == "1e+20 s since 1970"


# -- ProblemLog --------------------------------------------------------------------------------------------


def test_problem_log_caps_repeats_per_code_and_column() -> None:
    problems = log()
    lines = np.arange(2, 102)
    problems.rows("non_numeric", "rps", np.arange(25), lines, lambda i: f"cell {i}")
    problems.rows("non_numeric", "rps", np.arange(25, 30), lines, lambda i: f"cell {i}")
    problems.rows("non_numeric", "voltage", np.arange(3), lines, lambda i: f"cell {i}")
    problems.warning("gap", "short gap", column="t", row=7, turbine="T01")
    problems.finish()
    rps = [p for p in problems.errors if p.column == "rps"]
    assert len(rps) == MAX_REPEATS + 1
    assert rps[0] == Problem("non_numeric", f"{SOURCE}, line 2, column 'rps': cell 0", "rps", 2)
    assert "20 more non_numeric" in rps[-1].message and "30 in all" in rps[-1].message
    assert len([p for p in problems.errors if p.column == "voltage"]) == 3
    assert problems.warnings[0].message == f"{SOURCE}, turbine 'T01', line 7, column 't': short gap"
    assert problems.warnings[0].to_dict() == {"code": "gap", "message": problems.warnings[0].message,
                                              "column": "t", "row": 7}


def test_messages_need_no_extra_context() -> None:
    problems = log()
    problems.error("missing_column", "required column is missing", column="rps")
    assert problems.errors[0].message == f"{SOURCE}, column 'rps': required column is missing"


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_any_delimiter(delimiter: str) -> None:
    table = read_table(delimiter.join("abc") + "\n" + delimiter.join("123") + "\n", delimiter, log(), every_column)
    assert table is not None and table.header == ("a", "b", "c")
    assert [table.columns[c].values.tolist() for c in "abc"] == [["1"], ["2"], ["3"]]


def test_iso_offsets_beyond_a_day_are_bad_cells_not_shifted_times() -> None:
    t, bad = parse_times(["2026-01-01T00:00:00+99:99", "2026-01-01T00:00:01+24:30"], "iso8601")
    assert bad.tolist() == [0, 1] and np.isnan(t).all()
    t, bad = parse_times(["2026-01-01T23:59:00+23:59", "2026-01-01T00:00:00+24:30"], "iso8601")
    assert bad.tolist() == [1] and t[0] == T0  # 23:59 at +23:59 is midnight UTC


def test_numbers_with_underscores_are_not_numbers() -> None:
    values, bad = parse_numbers(["5_0.1", "50.1", "1_000"])
    assert bad.tolist() == [0, 2] and values[1] == 50.1
    times, bad = parse_times(["1767_225630.0", "1767225631.0"], "epoch_s")
    assert bad.tolist() == [0] and times[1] == 1767225631.0
