"""What an operator reads of a turbine's signal source, from the `sensors` block of its latest health message.

The detector forwards its nacelle.sensors component's last report (shared.messages.SensorsSummary, ages taken when
the health message was sent); the cloud stores it with the device's health (DeviceRecord.health["sensors"]).
`source_status` judges it:

* `ok` — connected, and the newest sample holding a value is recent (at most DOWN_AFTER_SAMPLES sample intervals
  old, and at least DOWN_AFTER_MIN_S);
* `down` — not connected, or connected without values for longer than that (a controller answering with errors,
  a counter showing no new samples); `since`: when its last value was read (when the component started, if never);
* `stale` — the component stopped reporting: its last report is older than STALE_REPORTS report intervals (plus a
  margin); `since`: that report's time;
* `finished` — a replay that reached its end;
* None — no block: the device's sensor topic is fed by something else, or its detector predates the block.

The device's own staleness (no health at all) is its state, OFFLINE; this judges the source as last reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DOWN_AFTER_SAMPLES = 3
DOWN_AFTER_MIN_S = 10.0
STALE_REPORTS = 3
STALE_MARGIN_S = 10.0
DEFAULT_REPORT_INTERVAL_S = 60.0


def source_status(sensors: Mapping[str, Any] | None, received_at_s: float | None) -> dict[str, Any] | None:
    """{"status", "since" (epoch s or None), "source", "state", "last_error", ...the block's counters} or None."""
    if not isinstance(sensors, Mapping) or not sensors.get("source") or not received_at_s:
        return None
    report_age = float(sensors.get("report_age_s") or 0.0)
    interval = float(sensors.get("report_interval_s") or DEFAULT_REPORT_INTERVAL_S)
    rate = float(sensors.get("rate_hz") or 0.0)
    down_after = max(DOWN_AFTER_MIN_S, DOWN_AFTER_SAMPLES / rate if rate > 0 else 0.0)
    value_age = sensors.get("last_sample_age_s")
    state = str(sensors.get("state") or "")
    since: float | None = None
    if report_age > STALE_REPORTS * interval + STALE_MARGIN_S:
        status, since = "stale", received_at_s - report_age
    elif state == "finished":
        status = "finished"
    elif state != "connected" or value_age is None or float(value_age) > down_after:
        status = "down"
        since = None if value_age is None else received_at_s - float(value_age)
    else:
        status = "ok"
    return {"status": status, "since": since, "source": sensors.get("source"), "state": state,
            "last_sample_age_s": value_age, "report_age_s": report_age,
            "last_error": sensors.get("last_error") if status != "ok" else None,
            **{k: sensors.get(k, 0) for k in ("samples", "samples_missing", "values_missing", "samples_repeated",
                                               "reconnects")}}
