"""A local stack's stores filled the way a running fleet fills them, without running one: model versions in the
registry, two thing groups with their devices, the rollout's deployments and each device's execution and health
records, anomaly-episode alerts. The console's tests and its benchmark read these."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from nacelle.local.runtime.stack import Stack
from shared.components import component_version
from shared.ports import ApprovalStatus
from shared.records import DeploymentRecord, DeviceRecord, EpisodeAlert, ExecutionRecord, RolloutRecord
from shared.usecases import state_keys as sk
from shared.usecases.alerts import ALERTS, episode_alert_id
from shared.usecases.rollout import DEPLOYMENT, DEVICES_PK, ROLLOUT, device_pk

SEVERITIES = ("low", "medium", "high", "critical")


@dataclass(frozen=True)
class Seeded:
    stack: Stack
    things: list[str]
    pending: int  # the version waiting for approval
    gate_rejected: int  # a version the quality gate refused
    deployed: int  # the version both groups run
    alert_ids: list[str]


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


def seed(home: Path, devices: int = 5, versions: int = 4, alerts: int = 12, stale: int = 1) -> Seeded:
    """`versions` >= 3: v1..v(n-3) Approved, v(n-2) deployed to both groups, v(n-1) gate-rejected, vn pending.
    The last `stale` devices have an old health record (OFFLINE)."""
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
    return Seeded(stack, things, versions, versions - 1, deployed, alert_ids)
