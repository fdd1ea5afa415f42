"""Small helpers for readable terminal output."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

from shared.jsonview import TIME_KEYS as TIME_KEYS
from shared.jsonview import as_datetime as as_datetime
from shared.jsonview import is_time_key as is_time_key
from shared.jsonview import iso as iso
from shared.jsonview import json_ready as json_ready
from shared.jsonview import number as number


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns two spaces apart: text left-aligned, numbers (and None, shown as "-") right-aligned."""
    cells = [[fmt(c) for c in row] for row in rows]
    right = [[c is None or (isinstance(c, int | float) and not isinstance(c, bool)) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, flags, strict=True)).rstrip()
            for row, flags in zip(cells, right, strict=True)]
    return "\n".join([line, sep, *body])


def metrics_table(metrics: dict[str, Any]) -> str:
    """Per fault type and severity: count, detected, recall, mean delay; then the headline."""
    event = metrics.get("event")
    lines = []
    if event:
        rows = [[f"fault: {name}", g["count"], g["detected"], g["recall"], g["mean_delay_s"]]
                for name, g in event["per_fault"].items()]
        rows += [[f"severity: {name}", g["count"], g["detected"], g["recall"], g["mean_delay_s"]]
                 for name, g in event["per_severity"].items()]
        lines.append(table(["group", "faults", "detected", "recall", "mean delay s"], rows))
        lines.append("")
        lines.append(f"event precision {fmt(event['precision'])}  recall {fmt(event['recall'])}  "
                     f"F1 {fmt(event['f1'])}  mean detection delay {fmt(event['mean_delay_s'], 1)} s")
        point = metrics.get("point") or {}
        far, mar = point.get("far"), point.get("mar")
        lines.append(f"point-wise precision {fmt(point.get('precision'))}  recall {fmt(point.get('recall'))}  "
                     f"F1 {fmt(point.get('f1'))}  false-alarm rate {fmt(None if far is None else 100 * far, 1)} %  "
                     f"missed-alarm rate {fmt(None if mar is None else 100 * mar, 1)} %")
    else:
        lines.append("no labelled fault episodes: event and point metrics are not defined")
    lines.append(f"false alarms per turbine-day {fmt(metrics.get('false_alarms_per_turbine_day'), 2)}")
    return "\n".join(lines)


def selection_table(selection: dict[str, Any]) -> str:
    """The candidate families' validation figures and the choice (evaluation.json's "selection")."""
    rows = [[c["family"] + (" (chosen)" if c["family"] == selection["chosen"] else ""),
             c["validation"].get("event_f1"), c["validation"].get("point_f1"),
             c["validation"].get("false_alarms_per_turbine_day"), c["calibration"]["threshold"]]
            for c in selection["candidates"]]
    rows += [[f"{s['family']} (not fitted)", None, None, None, None] for s in selection.get("skipped") or ()]
    lines = [table(["family", "event F1", "point F1", "false alarms/day", "threshold"], rows),
             f"chosen: {selection['reason']}"]
    lines += [f"{s['family']} not fitted: {s['reason']}" for s in selection.get("skipped") or ()]
    return "\n".join(lines)


# -- times and JSON (shared.jsonview, which the console uses too) ---------------------------------------
def print_json(value: Any) -> None:
    print(json.dumps(json_ready(value), indent=2, default=str), flush=True)


def age(value: Any, now: float | None = None) -> str:
    """"12s ago", "3m ago", "2h ago", "4d ago"; "-" for no time."""
    moment = as_datetime(value)
    if moment is None:
        return "-"
    seconds = max(0.0, (time.time() if now is None else now) - moment.timestamp())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def parse_version(text: str) -> int:
    """A model version as operators write it: "2", "v2" or "V2"."""
    raw = text.strip()
    digits = raw[1:] if raw[:1] in ("v", "V") else raw
    if not digits.isdigit() or int(digits) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a model version (e.g. 2 or v2)")
    return int(digits)
