"""Dataset generation: one gzip CSV per turbine and hour plus labels.json with the fault episodes.

Layout: out/<turbineId>/<turbineId>_<YYYYmmddTHH>.csv.gz (header = the 23 raw columns) and
out/labels.json. The CSV text is built column-wise as a byte matrix (no per-cell Python formatting).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from nacelle.simulator.faults import FaultEpisode, parse_faults, schedule_for
from nacelle.simulator.physics import TurbineModel
from shared.errors import ConfigurationError
from shared.ml.schema import RAW_COLUMNS

DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)
LABELS_VERSION = 1
GZIP_LEVEL = 4
# (decimals, integer digits) of each numeric column as printed
NUMBER_FORMAT: dict[str, tuple[int, int]] = {
    "arduino_timestamp": (0, 12), "nanoFreemem": (0, 6), "rps": (4, 3), "voltage": (0, 4),
    "qw": (2, 1), "qx": (2, 1), "qy": (2, 1), "qz": (2, 1), "gx": (2, 1), "gy": (2, 1), "gz": (2, 1),
    "ax": (0, 5), "ay": (0, 5), "az": (0, 5), "gearboxtemp": (2, 3), "ambtemp": (2, 3),
    "humidity": (2, 3), "pressure": (2, 4), "gas": (2, 3), "wind_speed_rps": (4, 3),
}


@dataclass(frozen=True)
class GeneratedDataset:
    files: list[Path]
    labels: Path
    episodes: list[FaultEpisode]
    rows: int


def turbine_ids(turbines: int) -> list[str]:
    return [f"wt-{k:02d}" for k in range(1, turbines + 1)]


def generate_dataset(out: Path, turbines: int, hours: float, faults: str, seed: int,
                     start: datetime | None = None) -> GeneratedDataset:
    """Simulate `turbines` turbines for `hours` hours; `faults` is 'none', 'default' or a comma-separated
    list of fault names (the default schedule restricted to them)."""
    kinds = parse_faults(faults)
    if turbines < 1 or not hours > 0 or seed < 0:
        raise ConfigurationError(f"need turbines >= 1, hours > 0 and seed >= 0, got turbines={turbines}, "
                                 f"hours={hours}, seed={seed}")
    start = start or DEFAULT_START
    if start.tzinfo is None:
        raise ConfigurationError(f"start must be timezone-aware (UTC), got {start.isoformat()}")
    start = start.astimezone(UTC)
    duration = hours * 3600.0
    end = start + timedelta(seconds=duration)
    out = Path(out)
    files: list[Path] = []
    episodes: list[FaultEpisode] = []
    rows = 0
    for tid in turbine_ids(turbines):
        schedule = schedule_for(tid, seed, start, duration, faults) if kinds else []
        episodes += schedule
        model = TurbineModel(tid, seed, start, schedule)
        (out / tid).mkdir(parents=True, exist_ok=True)
        t = start
        while t < end:
            hour = t.replace(minute=0, second=0, microsecond=0)
            t_next = min(hour + timedelta(hours=1), end)
            cols = model.step((t_next - t).total_seconds())
            t = t_next
            if not len(cols["ts"]):
                continue
            path = out / tid / f"{tid}_{hour:%Y%m%dT%H}.csv.gz"
            path.write_bytes(gzip.compress(csv_bytes(cols), compresslevel=GZIP_LEVEL, mtime=0))
            files.append(path)
            rows += len(cols["ts"])
    labels = out / "labels.json"
    meta = {"turbines": turbines, "hours": hours, "faults": faults, "seed": seed, "start": start.isoformat()}
    doc = {"version": LABELS_VERSION, "generator": meta, "episodes": [e.to_dict() for e in episodes]}
    labels.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return GeneratedDataset(files, labels, episodes, rows)


# -- vectorised CSV ------------------------------------------------------------------------------------
# Every field becomes a fixed-width block of bytes padded with 0; the rows are laid side by side with
# separators and the zero bytes are dropped at the end.


def _digits(v: np.ndarray, width: int, strip: bool) -> np.ndarray:
    """(n, width) ASCII digits of non-negative integers; leading zeros become padding if `strip`."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    chars = (v[:, None] // powers) % 10 + 48
    if strip:
        chars = np.where((v[:, None] >= powers) | (powers == 1), chars, 0)
    return chars


def _number_field(x: np.ndarray, decimals: int, width: int) -> np.ndarray:
    missing = np.isnan(x) if x.dtype.kind == "f" else np.zeros(len(x), dtype=bool)
    k = np.rint(np.where(missing, 0, x) * 10**decimals).astype(np.int64)
    whole, frac = np.divmod(np.abs(k), 10**decimals)
    if whole.size and whole.max() >= 10**width:
        raise ValueError(f"value {whole.max()} does not fit {width} digits")
    parts = [np.where(k < 0, ord("-"), 0)[:, None], _digits(whole, width, strip=True)]
    if decimals:
        parts += [np.full((len(x), 1), ord(".")), _digits(frac, decimals, strip=False)]
    field = np.hstack(parts)
    field[missing] = 0
    return field


def _text_field(values: np.ndarray) -> np.ndarray:
    raw = np.asarray(values).astype(np.bytes_)  # ASCII, zero-padded to the longest value
    return raw.view(np.uint8).reshape(len(raw), raw.dtype.itemsize)


def csv_bytes(cols: dict[str, np.ndarray], header: bool = True) -> bytes:
    """The raw columns as CSV text (comma separated, '\\n' line ends, empty field for NaN)."""
    n = len(cols["ts"])
    sep = np.full((n, 1), ord(","), dtype=np.uint8)
    blocks: list[np.ndarray] = []
    for name in RAW_COLUMNS:
        if name in NUMBER_FORMAT:
            blocks.append(_number_field(cols[name], *NUMBER_FORMAT[name]).astype(np.uint8))
        else:
            blocks.append(_text_field(cols[name]))
        blocks.append(sep)
    blocks[-1] = np.full((n, 1), ord("\n"), dtype=np.uint8)
    flat = np.hstack(blocks).ravel()
    head = (",".join(RAW_COLUMNS) + "\n").encode() if header else b""
    return head + flat[flat != 0].tobytes()
