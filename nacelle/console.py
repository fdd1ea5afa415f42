"""Small helpers for readable terminal output."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            for r in cells]
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
    return "\n".join([table(["family", "event F1", "point F1", "false alarms/day", "threshold"], rows),
                      f"chosen: {selection['reason']}"])
