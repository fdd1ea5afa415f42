"""A local stack's stores filled the way a running fleet fills them, without running one: model versions in the
registry, two thing groups with their devices, the rollout's deployments and each device's execution and health
records, anomaly-episode alerts, each turbine's recent detector periods (as drift_monitor keeps them) and, for the
first turbine, captured raw samples around one of its episodes and of normal operation. The console's tests and its
benchmark read these."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np

from nacelle.local.runtime.stack import Stack
from shared.capture import EPISODE, NORMAL, CaptureName, capture_key
from shared.components import component_version
from shared.messages import StatsRow
from shared.ml.drift import LEVELS
from shared.ml.spec import FeatureSpec, default_spec
from shared.ports import ApprovalStatus
from shared.records import (
    DeploymentRecord,
    DeviceRecord,
    EpisodeAlert,
    ExecutionRecord,
    PeriodHistory,
    PeriodSummary,
    RolloutRecord,
)
from shared.usecases import state_keys as sk
from shared.usecases.alerts import ALERTS, episode_alert_id
from shared.usecases.rollout_state import DEPLOYMENT, DEVICES_PK, ROLLOUT, device_pk
from shared.usecases.turbine_periods import PERIODS, merged, period_key, summary_of

SEVERITIES = ("low", "medium", "high", "critical")
PERIOD_S = 60.0  # the seeded detectors' stats period (the local demo's)
THRESHOLD = 0.05  # the seeded model's threshold on its raw score
RATE_HZ = 20.0


@dataclass(frozen=True)
class Seeded:
    stack: Stack
    things: list[str]
    pending: int  # the version waiting for approval
    gate_rejected: int  # a version the quality gate refused
    deployed: int  # the version both groups run
    alert_ids: list[str]
    captures: list[str]  # the first turbine's captured files: normal operation's, then its latest episode's


def _metadata(n: int, gate: str) -> dict[str, str]:
    meta = {"nacelle:job": f"nacelle-job{n:04d}-1", "nacelle:dataset_hash": f"{n:064x}",
            "nacelle:code_version": "abc123",
            "nacelle:spec_digest": "d" * 12, "nacelle:gate": gate, "nacelle:family": "conv_ae",
            "nacelle:candidates": "conv_ae f1 0.91 fa 0.5 / pca f1 0.80 fa 1.2",
            "metric:event_f1": f"{0.80 + (n % 10) / 100:.2f}", "metric:false_alarms_per_turbine_day": "0.5",
            "metric:recall_medium_high": "0.9"}
    if gate == "rejected":
        meta["nacelle:gate_reasons"] = "event F1 0.40 under 0.75 / recall 0.50 under 0.75"
    return meta


def seed(home: Path, devices: int = 5, versions: int = 4, alerts: int = 12, stale: int = 1,
         periods: int = 24) -> Seeded:
    """`versions` >= 3: v1..v(n-3) Approved, v(n-2) deployed to both groups, v(n-1) gate-rejected, vn pending.
    The last `stale` devices have an old health record (OFFLINE). Each device has its last `periods` stats periods."""
    stack = Stack(home)
    g, now = stack.settings.group, time.time()
    for n in range(1, versions + 1):
        gate = "rejected" if n == versions - 1 else "passed"
        status: ApprovalStatus = ("Rejected" if gate == "rejected" else
                                  "PendingManualApproval" if n == versions else "Approved")
        stack.registry.register(g, f"jobs/job{n}/output/model.tar.gz", status, f"v{n}", _metadata(n, gate), f"job{n}")
    deployed = versions - 2
    things = [f"turbine-{i:02d}" for i in range(1, devices + 1)]
    gg = stack.greengrass
    for i, thing in enumerate(things):
        group = stack.settings.canary_group if i == 0 else stack.settings.fleet_group
        gg.ensure_thing_group(group)
        gg.add_thing(thing, group)
    components = {"nacelle.model": {"componentVersion": component_version(deployed)}}
    gg.create_component_version({"RecipeFormatVersion": "2020-01-25", "ComponentName": "nacelle.model",
                                 "ComponentVersion": component_version(deployed)})
    ids = {}
    for stage, group in (("canary", stack.settings.canary_group), ("fleet", stack.settings.fleet_group)):
        ids[stage] = gg.create_deployment(gg.thing_group_arn(group), f"nacelle-{g}-v{deployed}-{stage}", components,
                                          {}, {}, f"{g}-{deployed}-{stage}")
        record = DeploymentRecord(ids[stage], deployed, stage)
        stack.state.put(sk.group_pk(g), DEPLOYMENT + ids[stage], record.to_item())
    stack.state.put(sk.group_pk(g), ROLLOUT + str(deployed), RolloutRecord(
        deployed, "done", canary_deployment_id=ids["canary"], canary_started_at=now - 900, canary_things=(things[0],),
        fleet_deployment_id=ids["fleet"], fleet_started_at=now - 600, fleet_things=tuple(things[1:]),
        done_at=now - 500).to_item())
    for i, thing in enumerate(things):
        deployment = ids["canary" if i == 0 else "fleet"]
        stack.state.put(device_pk(thing), DEPLOYMENT + deployment,
                        ExecutionRecord(deployment, thing, "SUCCEEDED", at=now - 550).to_item())
        last = now - (3600 if i >= devices - stale else 1)
        stack.state.put(DEVICES_PK, thing, DeviceRecord(thing, last, int(last * 1000), deployed, 20.0, health={
            "model_version": deployed, "detector_version": "1.0.0", "inference_rate_hz": 20.0, "latency_p50_ms": 1.5,
            "uptime_s": 600.0}).to_item())
    store = stack.alert_deps().alerts
    alert_ids = []
    for k in range(alerts):
        thing = things[k % len(things)]
        start = now - 60 * (alerts - k)
        alert_id = episode_alert_id(thing, f"ep{k:05d}")
        item = EpisodeAlert(alert_id=alert_id, turbine_id=thing, status="closed" if k % 3 else "open",
                            severity=SEVERITIES[k % 4],  # type: ignore[arg-type]
                            features=("vibration_rms", "bearing_temp"), first_seen_at=start, ended_at=start + 30,
                            alert="sent", alert_at=start + 2, episode_id=f"ep{k:05d}", score=1.5 + (k % 7),
                            contributions={"vibration_rms": 0.7, "bearing_temp": 0.3}, started_at=start,
                            opened_at=start, model_version=deployed).to_item()
        store.put(ALERTS, alert_id, item)
        alert_ids.append(alert_id)
    spec = default_spec()
    for i, thing in enumerate(things):
        seed_periods(stack, thing, deployed, now, periods, elevated=i == 0)
    last = (alerts - 1) // len(things) * len(things)  # the first turbine's latest episode
    captures = [seed_capture(stack, spec, things[0], now - 60 * (alerts - last) - 300, 60.0, deployed),
                seed_capture(stack, spec, things[0], now - 60 * (alerts - last) - 30, 90.0, deployed, f"ep{last:05d}")]
    return Seeded(stack, things, versions, versions - 1, deployed, alert_ids, captures)


def stats_row(thing: str, version: int, start: float, shift: float) -> StatsRow:
    """A period's stats message as the detector sends it (normal quantiles per feature, the raw score's)."""
    z = [NormalDist().inv_cdf(q) for q in LEVELS]
    features = {"roll": (0.01, 0.02), "pitch": (-0.02, 0.02), "yaw": (1.2 + shift, 0.3), "wind_speed_rps": (2.4, 0.5),
                "rps": (1.6 + shift, 0.4), "voltage": (60.0 + 10 * shift, 9.0)}
    score = [THRESHOLD * math.exp(-1.2 + 0.8 * shift + 0.35 * x) for x in z]
    return StatsRow(v=1, turbine_id=thing, thing_name=thing, received_at=int(start * 1000), seq=int(start // 60),
                    model_version=version, period_start=start, period_s=PERIOD_S, windows=120, operating_windows=110,
                    levels=list(LEVELS), count=dict.fromkeys(features, 110),
                    mean={n: m for n, (m, _) in features.items()}, std={n: sd for n, (_, sd) in features.items()},
                    quantiles={n: [m + sd * x for x in z] for n, (m, sd) in features.items()}, score_count=110,
                    score_mean=THRESHOLD * 0.35, score_std=THRESHOLD * 0.1, score_quantiles=score)


def seed_periods(stack: Stack, thing: str, version: int, now: float, count: int, elevated: bool) -> None:
    """The turbine's last `count` periods, through the history's own merge (one write); `elevated`: the score rises
    over the threshold in the periods of its episodes."""
    kept: dict[str, PeriodSummary] = {}
    last = math.floor(now / PERIOD_S) * PERIOD_S
    for k in range(count):
        start = last - (count - k) * PERIOD_S
        shift = 1.5 if elevated and k % 5 == 0 else 0.0
        row = stats_row(thing, version, start, shift)
        kept = merged(kept, period_key(start, version), summary_of(row, THRESHOLD))
    stack.state.put(PERIODS, thing, PeriodHistory(thing, kept, 1).to_item())


def seed_capture(stack: Stack, spec: FeatureSpec, thing: str, start: float, seconds: float, version: int,
                 episode: str | None = None) -> str:
    """A captured CSV as the detector uploads it: the spec's columns at RATE_HZ, a spike in the middle of an
    episode's file."""
    n = int(seconds * RATE_HZ)
    name = CaptureName(start, start + (n - 1) / RATE_HZ, EPISODE if episode else NORMAL, version, episode)
    t = start + np.arange(n) / RATE_HZ
    spike = np.where(np.abs(np.arange(n) - n // 2) < RATE_HZ, 3.0, 0.0) if episode else np.zeros(n)
    columns = {"qw": np.full(n, 0.99), "qx": np.full(n, 0.01), "qy": np.zeros(n),
               "qz": np.round(0.1 * np.sin(t / 30), 4), "wind_speed_rps": np.round(2.4 + 0.3 * np.sin(t / 7), 4),
               "rps": np.round(1.6 + spike, 4),
               "voltage": np.round(60 + 5 * np.sin(t / 11) + 10 * spike, 3)}
    stamps = np.char.add(np.datetime_as_string(np.round(t * 1e6).astype("datetime64[us]"), unit="us"), "+00:00")
    rest = [c for c in spec.columns if c != spec.time_column and c not in columns]
    suffix = "".join("," + (thing if c == spec.turbine_id_column else "") for c in rest)
    names = list(columns)
    lines = [",".join(map(str, row)) + suffix for row in zip(stamps.tolist(), *(columns[c].tolist() for c in names),
                                                             strict=True)]
    header = ",".join([spec.time_column, *names, *rest])
    key = capture_key(thing, name)
    stack.store.put(key, "\n".join([header, *lines, ""]).encode(), "text/csv")
    return key
