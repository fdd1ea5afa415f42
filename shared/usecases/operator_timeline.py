"""One turbine's timeline from what the stores hold: its anomaly episodes (start, end, peak score as a multiple of
the detector's threshold, so the threshold is 1.0), the alerts it raised (and their acknowledgements), the
model swaps its deployments made (each execution of a rollout deployment, with the version it carried), its recent
periods (the anomaly score's quantiles as multiples of the threshold, and each feature's p05, p50, p95 and mean;
turbine_periods.py) and the raw-sample files its detector captured in the last day shown (operator_signals.py)."""

from __future__ import annotations

from typing import Any

from shared.errors import NotFound
from shared.messages import MAX_EPOCH_S
from shared.records import (
    DeploymentRecord,
    DeviceRecord,
    EpisodeAlert,
    ExecutionRecord,
    PeriodSummary,
    alert_from_item,
    load,
    records,
)
from shared.usecases.operator import OperatorDeps
from shared.usecases.operator_alerts import alert_items
from shared.usecases.operator_signals import MAX_CAPTURES, capture_files, describe
from shared.usecases.rollout_state import DEPLOYMENT, DEVICES_PK, device_pk
from shared.usecases.state_keys import group_pk
from shared.usecases.turbine_periods import FEATURE_VALUES, SCORE_LEVELS, history

THRESHOLD = 1.0  # scores are peak score / the model's threshold
CAPTURE_DAYS = 1.0  # captured files listed: those of the last day up to the timeline's last time


def unknown(turbine: str) -> NotFound:
    return NotFound(f"no turbine {turbine!r}: no health, alert, deployment or statistics recorded for it")


def known(deps: OperatorDeps, turbine: str) -> bool:
    """Whether the stores hold anything of the turbine (cheapest reads first)."""
    state = deps.rollout.state
    return (state.get(DEVICES_PK, turbine) is not None or bool(history(state, turbine))
            or bool(state.query(device_pk(turbine), DEPLOYMENT))
            or any(i.get("turbine_id") == turbine for i in alert_items(deps)))


def timeline(deps: OperatorDeps, turbine: str) -> dict[str, Any]:
    alerts = [alert_from_item(i) for i in alert_items(deps) if i.get("turbine_id") == turbine]
    device = load(DeviceRecord, deps.rollout.state.get(DEVICES_PK, turbine))
    executions = records(ExecutionRecord, deps.rollout.state.query(device_pk(turbine), DEPLOYMENT))
    periods = [_period(p) for p in history(deps.rollout.state, turbine)]
    if not alerts and device is None and not executions and not periods:
        raise unknown(turbine)
    episodes = [{"alert_id": a.alert_id, "episode_id": a.episode_id, "started_at": a.started_at,
                 "ended_at": _first_time(a.ended_at, a.last_message_at, a.opened_at), "open": a.status == "open",
                 "score": a.score, "severity": a.severity, "model_version": a.model_version,
                 "features": list(a.features)}
                for a in alerts if isinstance(a, EpisodeAlert) and _epoch_s(a.started_at)]
    raised = [{"alert_id": a.alert_id, "kind": a.kind, "severity": a.severity, "status": a.status,
               "at": getattr(a, "alert_at", None) or a.since or None, "verdict": a.verdict,
               "acks": [{"by": k.by, "at": k.at, "verdict": k.verdict, "note": k.note} for k in a.acks]}
              for a in alerts]
    versions = {r.deployment_id: r.version for r in
                records(DeploymentRecord, deps.rollout.state.query(group_pk(deps.group), DEPLOYMENT))}
    swaps: list[dict[str, Any]] = [{"at": e.event_time or e.at, "deployment_id": e.deployment_id, "status": e.status,
                                    "model_version": versions.get(e.deployment_id), "reason": e.reason}
                                   for e in sorted(executions, key=lambda e: e.event_time or e.at)]
    times = [t for t in [*(e["started_at"] for e in episodes), *(e["ended_at"] for e in episodes),
                         *(a["at"] for a in raised), *(s["at"] for s in swaps),
                         *(p["started_at"] for p in periods), *(p["ended_at"] for p in periods),
                         device.last_health_at if device is not None else None] if _epoch_s(t)]
    last = max(times, default=deps.now())
    captured = capture_files(deps.rollout.store, turbine, last - CAPTURE_DAYS * 86400, last)[-MAX_CAPTURES:]
    return {"turbine": turbine, "threshold": THRESHOLD, "episodes": sorted(episodes, key=lambda e: e["started_at"]),
            "alerts": sorted(raised, key=lambda a: a["at"] or 0), "model_swaps": swaps,
            "model_version": device.model_version if device is not None else None,
            "last_health_at": (device.last_health_at or None) if device is not None else None,
            "periods": periods, "captures": [describe(o.key, n) for o, n in captured],
            "first_at": min(times, default=None), "last_at": max(times, default=None)}


def _epoch_s(t: Any) -> bool:
    """A time the timeline can place: epoch seconds after 1970 and before 2100 (a stored row's time in ms or ns,
    or made up, is left out: the view shows it as unknown)."""
    return isinstance(t, int | float) and not isinstance(t, bool) and 0 < t < MAX_EPOCH_S


def _first_time(*times: float | None) -> float | None:
    return next((t for t in times if _epoch_s(t)), None)


def _period(p: PeriodSummary) -> dict[str, Any]:
    score = dict(zip((f"p{round(q * 100):02d}" for q in SCORE_LEVELS), p.score, strict=True)) if p.score else None
    return {"started_at": p.start, "ended_at": p.start + p.period_s, "model_version": p.model_version,
            "windows": p.windows, "operating_windows": p.operating_windows, "score": score,
            "score_threshold": p.threshold,
            "features": {n: dict(zip(FEATURE_VALUES, v, strict=True)) for n, v in p.features.items()
                         if len(v) == len(FEATURE_VALUES)}}
