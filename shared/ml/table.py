"""Reading raw sensor files: bytes -> text -> CSV rows -> numbers and epoch seconds.

Nothing here raises on bad data: problems go to a ``ProblemLog`` so a single pass lists all of them.
numpy and the standard library only (runs in a Lambda, in training and at the edge).
"""

from __future__ import annotations

import csv
import gc
import io
import math
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import Any

import numpy as np

GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
MAX_REPEATS = 10  # messages kept per (code, column); the rest become one summary message
# A file's size, decompressed: validation holds several times it in memory, and a small gzip file can unpack to
# gigabytes (a "bomb"); beyond this the file is refused unread, and decompression stops there.
MAX_TEXT_BYTES = 512 * 2**20
_EPOCH_US = np.datetime64(0, "us")


@dataclass(frozen=True)
class Problem:
    code: str  # stable machine code, e.g. "missing_column"
    message: str  # names the file, the line or column, and the reason
    column: str | None = None
    row: int | None = None  # 1-based line number in the file

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ProblemLog:
    """Collects errors and warnings for one file; every message starts with the file name."""

    source: str
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    _seen: Counter[tuple[bool, str, str | None]] = field(default_factory=Counter, init=False, repr=False)

    def error(self, code: str, reason: str, column: str | None = None, row: int | None = None,
              turbine: str | None = None) -> None:
        self._add(True, code, reason, column, row, turbine)

    def warning(self, code: str, reason: str, column: str | None = None, row: int | None = None,
                turbine: str | None = None) -> None:
        self._add(False, code, reason, column, row, turbine)

    def where(self, column: str | None = None, row: int | None = None, turbine: str | None = None) -> str:
        parts = [self.source]
        if turbine is not None:
            parts.append(f"turbine {turbine!r}")
        if row is not None:
            parts.append(f"line {row}")
        if column is not None:
            parts.append(f"column {column!r}")
        return ", ".join(parts)

    def _add(self, is_error: bool, code: str, reason: str, column: str | None, row: int | None,
             turbine: str | None) -> None:
        key = (is_error, code, column)
        self._seen[key] += 1
        if self._seen[key] <= MAX_REPEATS:
            target = self.errors if is_error else self.warnings
            target.append(Problem(code, f"{self.where(column, row, turbine)}: {reason}", column, row))

    def rows(self, code: str, column: str | None, idx: np.ndarray, lines: np.ndarray,
             reason: Callable[[int], str], turbine: str | None = None, warning: bool = False) -> None:
        """One problem per index in ``idx`` (at line ``lines[i]``, saying ``reason(i)``), capped cheaply."""
        key = (not warning, code, column)
        room = max(0, MAX_REPEATS - self._seen[key])
        for i in idx[:room].tolist():
            self._add(not warning, code, reason(i), column, int(lines[i]), turbine)
        self._seen[key] += max(0, len(idx) - room)

    def finish(self) -> None:
        """Append one summary message per (code, column) that went over the cap. Call once."""
        for (is_error, code, column), n in self._seen.items():
            if n > MAX_REPEATS:
                target = self.errors if is_error else self.warnings
                more = n - MAX_REPEATS
                target.append(Problem(code, f"{self.where(column)}: {more} more {code} problem(s) not listed "
                                            f"({n} in all)", column))


@dataclass(frozen=True, eq=False)
class Frame:
    """One turbine's validated series from one file."""

    source: str
    turbine_id: str
    t: np.ndarray  # float64 epoch seconds, strictly increasing
    values: dict[str, np.ndarray]  # spec.input_columns -> float64 (NaN allowed)
    labels: np.ndarray | None  # spec.label_column as 0.0 / 1.0, else None

    def __len__(self) -> int:
        return len(self.t)


# -- bytes -> text ------------------------------------------------------------------------------------


def refuse_too_large(log: ProblemLog, what: str, max_bytes: int) -> None:
    """The one `file_too_large` problem: `what` ("file", "decompressed data", "file of 90 MiB") is over the
    `max_bytes` validation takes on."""
    log.error("file_too_large", f"the {what} exceeds {max_bytes / 2**20:.4g} MiB, the most validation takes on "
                                "here (it holds several times a file in memory): split it, e.g. one file per "
                                "turbine and day")


def decode_text(data: bytes, log: ProblemLog, max_bytes: int = MAX_TEXT_BYTES) -> str | None:
    """Gunzip (detected by magic bytes) and decode UTF-8 (optional BOM). None after an error, among them a
    text of more than `max_bytes` (never unpacked past that)."""
    if not data:
        log.error("empty_file", "the file is empty (0 bytes)")
        return None
    raw, what = data, "file"
    if data[:2] == GZIP_MAGIC:
        what = "decompressed data"
        try:
            raw = _gunzip(data, max_bytes)
        except EOFError:
            log.error("truncated_gzip", f"gzip data is truncated ({len(data)} bytes read; "
                                        "the end-of-stream marker is missing)")
            return None
        except zlib.error as exc:
            log.error("corrupt_gzip", f"gzip data is corrupt: {exc}")
            return None
    if len(raw) > max_bytes:
        refuse_too_large(log, what, max_bytes)
        return None
    skip = len(UTF8_BOM) if raw.startswith(UTF8_BOM) else 0
    try:
        text = raw[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = exc.start + skip
        line = raw.count(b"\n", 0, offset) + 1
        log.error("bad_encoding", f"not UTF-8: byte 0x{raw[offset]:02x} at byte offset {offset} of the "
                                  f"{what} (line {line}) cannot be decoded", row=line)
        return None
    if not text.strip():
        log.error("empty_file", f"the {what} holds no text")
        return None
    return text


def _gunzip(data: bytes, limit: int) -> bytes:
    """The gzip members' data, decompressed up to limit + 1 bytes (then the caller refuses it). EOFError when the
    last member is cut short, zlib.error when the data is no gzip or fails its checksum."""
    out = bytearray()
    rest = data
    while rest and len(out) <= limit:
        member = zlib.decompressobj(wbits=31)  # a gzip header and trailer (CRC-32 and size checked)
        out += member.decompress(rest, limit + 1 - len(out))
        if len(out) > limit:
            break
        if not member.eof:
            raise EOFError("the end of the gzip stream is missing")
        rest = member.unused_data
        if not rest.strip(b"\x00"):  # zero padding after the last member, as gzip allows
            break
    return bytes(out)


# -- text -> rows -------------------------------------------------------------------------------------


CHUNK_ROWS = 65_536  # records parsed at once: a file's cells are never all Python strings at the same time
Parser = Callable[[list[str]], tuple[np.ndarray, np.ndarray]]  # cells -> (values, indices of the bad cells)


@dataclass(frozen=True)
class Parsed:
    """One column of the well-formed rows, parsed as it was read."""

    values: np.ndarray
    bad: np.ndarray  # int64: rows whose cell the parser refused
    texts: dict[int, str]  # the text of the first MAX_REPEATS of them, for the messages


@dataclass(frozen=True)
class Table:
    """The header of a CSV file and its well-formed data rows: where each starts, and the columns asked for."""

    header: tuple[str, ...]
    lines: np.ndarray  # int64: 1-based line in the file where each row starts
    columns: dict[str, Parsed]

    def __len__(self) -> int:
        return len(self.lines)

    def index(self, name: str) -> int | None:
        """Position of the first header field called ``name``."""
        return self.header.index(name) if name in self.header else None


def read_table(text: str, delimiter: str, log: ProblemLog,
               parsers: Callable[[tuple[str, ...]], Mapping[str, Parser]]) -> Table | None:
    """Parse CSV text CHUNK_ROWS records at a time; `parsers(header)` says which columns to parse and how (the
    first field of that name). Rows with the wrong number of fields are reported and left out.

    Blank lines are skipped; the first non-blank record is the header. None when there is no header.
    """
    header: tuple[str, ...] | None = None
    wanted: dict[str, tuple[int, Parser]] = {}
    lines: list[np.ndarray] = []
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    texts: dict[str, dict[int, str]] = {}
    rows = 0
    for records, starts in _chunks(text, delimiter, log):
        lengths = np.fromiter(map(len, records), np.int64, len(records))
        blank = lengths == 0
        for k in np.flatnonzero(lengths == 1).tolist():
            blank[k] = not records[k][0].strip()
        content = np.flatnonzero(~blank)
        if header is None:
            if not content.size:
                continue
            header = tuple(name.strip() for name in records[content[0]])
            wanted = {name: (header.index(name), parse) for name, parse in parsers(header).items()}
            parts, texts = {name: [] for name in wanted}, {name: {} for name in wanted}
            content = content[1:]
        width = len(header)
        wrong = content[lengths[content] != width]

        def wrong_width(k: int, n: np.ndarray = lengths, w: int = width) -> str:
            return f"{n[k]} field(s) where the header has {w} (delimiter {delimiter!r}); the row is skipped"

        log.rows("wrong_field_count", None, wrong, starts, wrong_width)
        good = content[lengths[content] == width]
        kept = records if len(good) == len(records) else [records[k] for k in good.tolist()]
        for name, (i, parse) in wanted.items():
            cells = [row[i] for row in kept]
            values, bad = parse(cells)
            parts[name].append((values, bad + rows))
            seen = texts[name]
            for k in bad[:max(0, MAX_REPEATS - len(seen))].tolist():
                seen[rows + k] = cells[k]
        lines.append(starts[good])
        rows += len(good)
    if header is None:
        log.error("empty_file", "the file holds no header row")
        return None
    columns = {name: Parsed(np.concatenate([v for v, _ in chunks]) if chunks else np.zeros(0),
                            np.concatenate([b for _, b in chunks]) if chunks else np.zeros(0, np.int64),
                            texts[name])
               for name, chunks in parts.items()}
    return Table(header, np.concatenate(lines) if lines else np.zeros(0, np.int64), columns)


def _chunks(text: str, delimiter: str, log: ProblemLog) -> Iterator[tuple[list[list[str]], np.ndarray]]:
    """The CSV records, CHUNK_ROWS at a time, with the line where each starts. A chunk with quoted line breaks is
    read again record by record; a CSV error ends the file there (reported with its line)."""
    buf = io.StringIO(text, newline="")
    reader = csv.reader(buf, delimiter=delimiter)
    line = 0  # lines consumed
    while True:
        at = buf.tell()
        try:
            with _gc_paused():
                records = list(islice(reader, CHUNK_ROWS))
        except csv.Error:
            yield _records(text[at:], delimiter, line, log)
            return
        if not records:
            return
        if reader.line_num - line == len(records):  # the usual case: a record per line
            yield records, np.arange(line + 1, reader.line_num + 1, dtype=np.int64)
        else:
            yield _records(text[at:buf.tell()], delimiter, line, log)
        line = reader.line_num


def _records(text: str, delimiter: str, line: int, log: ProblemLog) -> tuple[list[list[str]], np.ndarray]:
    """The records of text that starts after `line` lines, each with the line it starts on; a CSV error ends it."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    records, starts = [], []
    end = 0  # lines consumed
    try:
        for record in reader:
            starts.append(line + end + 1)
            records.append(record)
            end = reader.line_num
    except csv.Error as exc:
        log.error("unparseable_csv", f"cannot parse CSV: {exc}; the rest of the file is not read",
                  row=line + end + 1)
    return records, np.asarray(starts, dtype=np.int64)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cycle collector: building ~10^5 row lists triggers it often, and they hold no cycles."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# -- strings -> numbers ---------------------------------------------------------------------------------


def parse_numbers(cells: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """float64 values and the indices of cells that are not numbers.

    Empty cells, 'nan' and 'NaN' are NaN; 'inf' is infinite; unparseable cells become NaN and are
    returned as bad. Vectorised; falls back to one float() per cell only to locate bad cells.
    """
    no_bad = np.empty(0, dtype=np.int64)
    underscores = "_" in "".join(cells)  # Python reads 5_0.1 as 50.1: no CSV writer means that
    try:  # every cell a number
        if not underscores:
            return np.fromiter(map(float, cells), np.float64, len(cells)), no_bad
    except ValueError:
        pass
    try:  # numbers and empty cells
        if not underscores:
            arr = np.asarray(cells, dtype=str)
            return np.where(arr == "", "nan", arr).astype(np.float64), no_bad
    except ValueError:
        pass
    values = np.empty(len(cells), dtype=np.float64)
    bad: list[int] = []
    for i, cell in enumerate(cells):
        try:
            if "_" in cell:
                raise ValueError(cell)
            values[i] = float(cell) if cell.strip() else math.nan
        except ValueError:
            values[i] = math.nan
            bad.append(i)
    return values, np.asarray(bad, dtype=np.int64)


def parse_times(cells: Sequence[str], time_format: str) -> tuple[np.ndarray, np.ndarray]:
    """float64 epoch seconds and the indices of cells that are not valid times (NaN there).

    ``time_format`` is one of spec.TIME_FORMATS. ISO-8601 without an offset is UTC.
    """
    if time_format == "iso8601":
        return _parse_iso(cells)
    values, bad = parse_numbers(cells)
    if time_format == "epoch_ms":
        values = values / 1000.0
    invalid = ~np.isfinite(values)
    invalid[bad] = True
    values[invalid] = np.nan
    return values, np.flatnonzero(invalid)


def _parse_iso(cells: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    # Fast path: strip the UTC offsets in Python, parse the naive rest with numpy in one call.
    split = _split_offsets(cells)
    if split is None:
        return _parse_iso_slow(cells)
    bases, offsets = split
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an offset numpy still sees (e.g. "+0100") -> slow path
            stamps = np.asarray(bases, dtype="datetime64[us]") if bases else np.empty(0, "datetime64[us]")
    except (ValueError, Warning):
        return _parse_iso_slow(cells)
    invalid = np.isnat(stamps)
    values = (stamps - _EPOCH_US).astype(np.int64).astype(np.float64) / 1e6 - offsets
    values[invalid] = np.nan
    return values, np.flatnonzero(invalid)


def _split_offsets(cells: Sequence[str]) -> tuple[list[str], np.ndarray | float] | None:
    """Naive timestamps and UTC offsets in seconds; unparseable cells become "NaT".

    None when an offset looks malformed (the slow path then judges every cell).
    """
    tails = {c[-6:] for c in cells}
    if len(tails) == 1:  # the usual case: one offset in the whole file
        offset = _offset_seconds(tails.pop())
        if offset is not None:
            bases = [c[:-6] for c in cells]
            if all(map(_extended_date, bases)):
                return bases, offset
    bases = []
    offsets = np.zeros(len(cells), dtype=np.float64)
    for i, cell in enumerate(cells):
        s = cell.strip()
        if s[-1:] in ("Z", "z"):
            s = s[:-1]
        elif len(s) > 6 and s[-6] in "+-" and s[-3] == ":":
            offset = _offset_seconds(s[-6:])
            if offset is None:
                return None
            offsets[i], s = offset, s[:-6]
        if s[:1].isdigit() and not _extended_date(s):
            return None  # e.g. a basic-format date (20200309T101433), or a number
        bases.append(s if _extended_date(s) else "NaT")
    return bases, offsets


def _extended_date(text: str) -> bool:
    """Starts with YYYY-MM-: numpy reads it as ISO 8601 does. Bare digits numpy would read as a year ("2020", or
    epoch seconds "1770000000" as the year 1770000000), "NaT", "now" and "today" as no ISO time."""
    return text[4:5] == "-" and text[7:8] == "-" and text[:4].isdigit()


def _offset_seconds(tail: str) -> float | None:
    """'+HH:MM' / '-HH:MM' -> seconds east of UTC; None if ``tail`` is not such an offset (hours 0-23, minutes
    0-59, as datetime.fromisoformat reads them)."""
    if len(tail) != 6 or tail[0] not in "+-" or tail[3] != ":" or not (tail[1:3] + tail[4:]).isascii() \
            or not (tail[1:3] + tail[4:]).isdigit() or int(tail[1:3]) > 23 or int(tail[4:]) > 59:
        return None
    seconds = int(tail[1:3]) * 3600 + int(tail[4:]) * 60
    return float(seconds if tail[0] == "+" else -seconds)


def _parse_iso_slow(cells: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    values = np.empty(len(cells), dtype=np.float64)
    bad: list[int] = []
    for i, cell in enumerate(cells):
        try:
            stamp = datetime.fromisoformat(cell.strip())
        except ValueError:
            values[i] = math.nan
            bad.append(i)
            continue
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        values[i] = stamp.timestamp()
    return values, np.asarray(bad, dtype=np.int64)


def iso_utc(t: float) -> str:
    """Epoch seconds -> ISO-8601 UTC, e.g. 2026-01-01T00:00:00.050000+00:00 (out of range: the number)."""
    try:
        return datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds")
    except (OverflowError, OSError, ValueError):
        return f"{float(t)!r} s since 1970"
