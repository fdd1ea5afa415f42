"""Rollout: compiled bundle -> components -> canary -> soak -> fleet, on the local Greengrass stand-in.

Status events come from the stand-in itself (`report` emits the AWS-shaped event), health rows are the flat
objects HealthRule hands the function, and the watchdog runs on a fake clock.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from nacelle.local.adapters.greengrass import LocalGreengrass
from services.compilation_completed import app as compilation_app
from services.deployment_status import app as status_app
from shared.components import DETECTOR_COMPONENT, MODEL_COMPONENT, artifact_digest, artifact_digests
from shared.errors import ConfigurationError, Conflict, DataError
from shared.messages import HealthRow, validate
from shared.usecases.approval import reject
from shared.usecases.intake import REJECTED
from shared.usecases.rollout import on_health
from shared.usecases.rollout_ops import cancel, on_rollout_check, rollback_to
from shared.usecases.rollout_state import RolloutDeps
from tests.fakes import Clock, MemoryRegistry, MemoryState, MemoryStore, RecordingEvents, RecordingNotifier

GROUP = "nacelle-turbine"
BUCKET = "nacelle-data"
DETECTOR = "1.0.0"
CANARY, FLEET = "nacelle-canary", "nacelle-fleet"
SOAK, CANARY_TIMEOUT, STUCK_TIMEOUT = 10.0, 300.0, 120.0
EVENTS = Path(__file__).resolve().parents[1] / "events"


class Harness:
    def __init__(self, tmp: Path) -> None:
        self.clock = Clock()
        self.status_events: list[dict[str, Any]] = []
        self.gg = LocalGreengrass(tmp / "greengrass.db", on_status_event=self.status_events.append, clock=self.clock)
        self.gg.ensure_thing_group(CANARY)
        self.gg.ensure_thing_group(FLEET)
        self.gg.add_thing("turbine-01", CANARY)
        for thing in ("turbine-02", "turbine-03"):
            self.gg.add_thing(thing, FLEET)
        self.db = tmp / "greengrass.db"
        self.notifier, self.events = RecordingNotifier(), RecordingEvents(self.clock)
        self.deps = RolloutDeps(MemoryStore(BUCKET), MemoryState(), MemoryRegistry(), self.notifier, self.gg,
                                self.events, GROUP, DETECTOR, CANARY, FLEET, SOAK, CANARY_TIMEOUT,
                                STUCK_TIMEOUT, self.clock, poll_s=30.0)
        self.deps.registry.ensure_group(GROUP)
        self.seq = 0
        recipe = {"RecipeFormatVersion": "2020-01-25", "ComponentName": DETECTOR_COMPONENT,
                  "ComponentVersion": DETECTOR, "Manifests": [{"Artifacts": [
                      {"Uri": f"s3://{BUCKET}/components/{DETECTOR_COMPONENT}/{DETECTOR}/detector.zip",
                       "Digest": artifact_digest(b"detector"), "Algorithm": "SHA-256", "Unarchive": "ZIP"}]}]}
        self.deps.store.put(f"components/{DETECTOR_COMPONENT}/{DETECTOR}/recipe.json", json.dumps(recipe).encode())

    # -- the cloud side's inputs ----------------------------------------------------------------------------------

    def compile(self, version: int, onnx: bytes | None = None) -> str:
        """An approved version with its compiled bundle under compiled/<group>/<version>/."""
        while len(self.deps.registry.list(GROUP)) < version:
            n = len(self.deps.registry.list(GROUP)) + 1
            self.deps.registry.register(GROUP, f"jobs/j{n}/output/model.tar.gz", "PendingManualApproval", "", {},
                                        f"j{n}")
            self.deps.registry.set_status(GROUP, n, "Approved", "ok", "alice")
        onnx = onnx if onnx is not None else f"onnx-{version}".encode()
        prefix = f"compiled/{GROUP}/{version}/"
        manifest = {"model_version": version, "edge": {"format_version": 1, "artifacts": {
            "model.onnx": {"sha256": hashlib.sha256(onnx).hexdigest(), "size": len(onnx)}}}}
        self.deps.store.put(prefix + "model.onnx", onnx)
        self.deps.store.put(prefix + "manifest.json", json.dumps(manifest).encode())
        return prefix + "manifest.json"

    def manifest_event(self, key: str) -> dict[str, Any]:
        event = json.loads((EVENTS / "s3_object_created.json").read_text())
        event["detail"]["bucket"]["name"] = BUCKET
        event["detail"]["object"]["key"] = key
        return event

    def deliver_manifest(self, key: str) -> dict[str, Any]:
        return compilation_app.handle(self.manifest_event(key), self.deps)

    def health(self, thing: str, model_version: int | None, rate: float, at_s: float) -> dict[str, Any]:
        self.seq += 1
        return {"v": 1, "turbine_id": thing, "model_version": model_version, "detector_version": DETECTOR,
                "inference_rate_hz": rate, "latency_p50_ms": 0.3, "latency_p99_ms": 0.9, "spool_depth": 0,
                "spool_dropped": 0, "bad_messages": 0, "uptime_s": 100.0, "windows_scored": 10, "model_error": None,
                "seq": self.seq, "thing_name": thing, "received_at": int(at_s * 1000), "client_id": thing}

    def report(self, thing: str, deployment_id: str, status: str, reason: str = "") -> list[dict[str, Any]]:
        """A device reports; the stand-in's status-change events go to the function (returns its results)."""
        before = len(self.status_events)
        self.gg.report(thing, deployment_id, status, reason)
        return [status_app.handle(copy.deepcopy(e), self.deps) for e in self.status_events[before:]]

    def check(self, version: int) -> Any:
        return on_rollout_check(GROUP, version, self.deps)

    # -- observations ---------------------------------------------------------------------------------------------

    def deployments(self, group: str) -> list[dict[str, Any]]:
        with sqlite3.connect(self.db) as db:
            rows = db.execute("SELECT id, client_token, request FROM deployments WHERE grp = ? ORDER BY seq",
                              (group,)).fetchall()
        return [{"id": r[0], "client_token": r[1], **json.loads(r[2])} for r in rows]

    def rollout(self, version: int) -> dict[str, Any]:
        item = self.deps.state.get(f"group#{GROUP}", f"rollout#{version}")
        assert item is not None
        return item

    def alerts(self) -> list[str]:
        return [m.subject for m in self.notifier.messages]

    def soak(self, version: int, thing: str = "turbine-01") -> None:
        """Healthy rows on `version` for longer than the soak time."""
        t0 = self.clock.now.timestamp() + 1
        for dt in (0.0, SOAK / 2, SOAK + 1):
            status_app.handle(self.health(thing, version, 4.0, t0 + dt), self.deps)
        self.clock.advance(SOAK + 2)

    def to_fleet_done(self, version: int) -> None:
        self.deliver_manifest(self.compile(version))
        self.report("turbine-01", self.rollout(version)["canary_deployment_id"], "SUCCEEDED")
        self.soak(version)
        fleet_id = self.rollout(version)["fleet_deployment_id"]
        for thing in ("turbine-02", "turbine-03"):
            self.report(thing, fleet_id, "SUCCEEDED")
        assert self.rollout(version)["stage"] == "done"


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


# ------------------------------------------------------------------ compilation_completed


def test_triple_delivery_gives_one_component_version_and_one_canary_deployment(h):
    key = h.compile(1)
    results = [h.deliver_manifest(key) for _ in range(3)]
    assert [r["action"] for r in results] == ["deployed", "duplicate", "duplicate"]
    (deployment,) = h.deployments(CANARY)
    assert h.deployments(FLEET) == []
    assert deployment["client_token"] == hashlib.sha256(f"{GROUP}:1:canary".encode()).hexdigest()[:64]
    assert deployment["deploymentName"] == f"nacelle-{GROUP}-v1-canary"
    assert deployment["components"] == {
        MODEL_COMPONENT: {"componentVersion": "1.0.0"},
        DETECTOR_COMPONENT: {"componentVersion": DETECTOR,
                             "configurationUpdate": {"merge": '{"model": {"version": "1.0.0"}}'}}}
    assert deployment["deploymentPolicies"]["failureHandlingPolicy"] == "ROLLBACK"
    assert deployment["iotJobConfiguration"]["abortConfig"]["criteriaList"][0]["thresholdPercentage"] == 10
    bundle = h.deps.store.get(f"components/{MODEL_COMPONENT}/1.0.0/bundle.zip")
    model = h.gg.get_component(MODEL_COMPONENT, "1.0.0")
    assert model is not None
    assert artifact_digests(model.recipe) == {
        f"s3://{BUCKET}/components/{MODEL_COMPONENT}/1.0.0/bundle.zip": artifact_digest(bundle)}
    assert h.gg.get_component(DETECTOR_COMPONENT, DETECTOR) is not None
    (check,) = [p.event for p in h.events.published]  # the watchdog, once
    assert check.detail_type == "Nacelle Rollout Check" and check.detail["version"] == 1
    assert h.alerts() == []


def test_other_content_under_an_existing_version_is_a_conflict_alerted_once_and_nothing_is_overwritten(h):
    h.deliver_manifest(h.compile(1))
    bundle_key = f"components/{MODEL_COMPONENT}/1.0.0/bundle.zip"
    bundle, recipe = h.deps.store.get(bundle_key), h.gg.get_component(MODEL_COMPONENT, "1.0.0")
    key = h.compile(1, onnx=b"retrained differently")
    for _ in range(2):
        with pytest.raises(Conflict, match="immutable"):
            h.deliver_manifest(key)
    assert h.alerts() == [f"Rollout of {GROUP} v1 refused: component conflict"]
    assert h.deps.store.get(bundle_key) == bundle
    assert h.gg.get_component(MODEL_COMPONENT, "1.0.0") == recipe
    assert len(h.deployments(CANARY)) == 1


def test_an_orphan_artifact_with_other_bytes_is_a_conflict_too(h):
    h.deps.store.put(f"components/{MODEL_COMPONENT}/1.0.0/bundle.zip", b"left by someone else")
    with pytest.raises(Conflict, match="already holds another bundle"):
        h.deliver_manifest(h.compile(1))
    assert h.gg.get_component(MODEL_COMPONENT, "1.0.0") is None and h.deployments(CANARY) == []


def test_a_manifest_with_an_older_neo_section_keeps_the_same_component(h):
    key = h.compile(1)
    h.deliver_manifest(key)
    recipe = h.gg.get_component(MODEL_COMPONENT, "1.0.0")
    manifest = json.loads(h.deps.store.get(key))
    manifest["neo"] = {"key": f"compiled/{GROUP}/1/neo/output/model.tar.gz", "sha256": "0" * 64, "size": 1}
    h.deps.store.put(key, json.dumps(manifest, indent=2, sort_keys=True).encode())
    assert h.deliver_manifest(key)["action"] == "duplicate"
    h.deps.state = MemoryState()  # even with the rollout record lost: same identity, same deployment
    assert h.deliver_manifest(key)["action"] == "deployed"
    assert h.gg.get_component(MODEL_COMPONENT, "1.0.0") == recipe
    assert len(h.deployments(CANARY)) == 1


def test_manifests_of_other_groups_unknown_or_failed_versions_are_ignored(h):
    assert h.deliver_manifest("compiled/other-group/1/manifest.json")["action"] == "ignored"
    assert h.deliver_manifest(f"compiled/{GROUP}/1/neo/output/model.tar.gz")["action"] == "ignored"
    assert h.deliver_manifest(f"compiled/{GROUP}/9/manifest.json")["action"] == "ignored"
    key = h.compile(1)
    h.deps.registry.update_metadata(GROUP, 1, {"nacelle:failed": "true"})
    assert h.deliver_manifest(key)["action"] == "ignored"
    assert h.deployments(CANARY) == []


# ------------------------------------------------------------------ deployment_status: soak and promotion


def test_canary_soak_passes_once_with_duplicated_and_out_of_order_inputs(h):
    h.deliver_manifest(h.compile(1))
    canary_id = h.rollout(1)["canary_deployment_id"]
    h.report("turbine-01", canary_id, "SUCCEEDED")
    # a late IN_PROGRESS for the same execution never replaces the terminal status
    late = {**h.status_events[-1], "detail": {**h.status_events[-1]["detail"], "coreDeviceExecutionStatus":
                                              "IN_PROGRESS"}}
    assert status_app.handle(late, h.deps)["action"] == "recorded"
    t0 = h.clock.now.timestamp()
    first, mid, last = (h.health("turbine-01", 1, 5.0, t0 + dt) for dt in (0.0, 5.0, SOAK + 1))
    actions = [status_app.handle(row, h.deps)["action"] for row in (first, first, last, mid, last, last)]
    assert actions == ["recorded", "recorded", "promoted", "recorded", "recorded", "recorded"]
    assert len(h.deployments(FLEET)) == 1
    assert h.rollout(1)["stage"] == "fleet"
    assert h.alerts() == [f"{GROUP} v1 passed the canary: deploying to the fleet"]
    device = h.deps.state.get("devices", "turbine-01")
    assert device["model_version"] == 1 and device["last_health_at"] == pytest.approx(t0 + SOAK + 1)
    assert device["health"]["seq"] == last["seq"]
    # the fleet completes: done, once
    fleet_id = h.rollout(1)["fleet_deployment_id"]
    h.report("turbine-02", fleet_id, "SUCCEEDED")
    assert h.rollout(1)["stage"] == "fleet"
    h.report("turbine-03", fleet_id, "SUCCEEDED")
    assert h.rollout(1)["stage"] == "done"
    assert status_app.handle(copy.deepcopy(h.status_events[-1]), h.deps)["action"] == "recorded"
    assert h.alerts()[-1] == f"{GROUP} v1 is on the whole fleet" and len(h.alerts()) == 2


def test_an_unhealthy_row_restarts_the_soak(h):
    h.deliver_manifest(h.compile(1))
    t0 = h.clock.now.timestamp()
    for dt, rate in ((0.0, 5.0), (6.0, 0.0), (8.0, 5.0), (SOAK + 1, 5.0)):
        assert status_app.handle(h.health("turbine-01", 1, rate, t0 + dt), h.deps)["action"] == "recorded"
    assert h.deployments(FLEET) == []
    assert status_app.handle(h.health("turbine-01", 1, 5.0, t0 + 8.0 + SOAK), h.deps)["action"] == "promoted"


def test_health_of_another_model_version_does_not_count(h):
    h.deliver_manifest(h.compile(1))
    t0 = h.clock.now.timestamp()
    for dt in (0.0, SOAK * 3):
        status_app.handle(h.health("turbine-01", None, 5.0, t0 + dt), h.deps)
        result = status_app.handle(h.health("turbine-01", 7, 5.0, t0 + dt + 1), h.deps)
        assert result["action"] == "flagged" and "v7, which was never deployed to it" in result["detail"]
    assert h.deployments(FLEET) == [] and h.rollout(1)["stage"] == "canary"
    assert h.deps.state.get("devices", "turbine-01")["unexpected_version"].startswith("turbine-01 reports model v7")


# ------------------------------------------------------------------ failure, timeout, watchdog


def test_a_failed_canary_device_alerts_marks_the_version_failed_and_restores_the_canary(h):
    h.to_fleet_done(1)
    h.deliver_manifest(h.compile(2))
    canary_id = h.rollout(2)["canary_deployment_id"]
    results = h.report("turbine-01", canary_id, "FAILED", "component nacelle.detector broke")
    assert [r["action"] for r in results] == ["failed"]
    assert status_app.handle(copy.deepcopy(h.status_events[-1]), h.deps)["action"] == "recorded"  # duplicate
    assert h.alerts().count(f"Rollout of {GROUP} v2 failed in the canary") == 1
    assert h.deps.registry.get(GROUP, 2).metadata["nacelle:failed"] == "true"
    assert h.deps.registry.get(GROUP, 2).failed
    assert h.rollout(2)["stage"] == "failed"
    restore = h.deployments(CANARY)[-1]
    assert restore["components"][MODEL_COMPONENT] == {"componentVersion": "1.0.0"}
    assert all(d["components"][MODEL_COMPONENT]["componentVersion"] == "1.0.0" for d in h.deployments(FLEET))
    # a later healthy soak on v2 never reaches the fleet
    h.soak(2)
    assert all(d["components"][MODEL_COMPONENT]["componentVersion"] == "1.0.0" for d in h.deployments(FLEET))
    # and a redelivered manifest of the failed version deploys nothing
    assert h.deliver_manifest(f"compiled/{GROUP}/2/manifest.json")["action"] == "ignored"


def test_a_lost_failure_event_is_found_by_the_watchdog(h):
    h.deliver_manifest(h.compile(1))
    h.status_events.clear()
    h.gg.report("turbine-01", h.rollout(1)["canary_deployment_id"], "FAILED", "install failed")
    h.status_events.clear()  # EventBridge lost it
    assert h.check(1).action == "failed"
    assert h.deps.registry.get(GROUP, 1).failed
    assert f"Rollout of {GROUP} v1 failed in the canary" in h.alerts()


def test_no_readiness_within_the_canary_timeout_fails_the_version(h):
    h.deliver_manifest(h.compile(1))
    h.clock.advance(CANARY_TIMEOUT / 2)
    assert h.check(1).action == "waiting"
    h.clock.advance(CANARY_TIMEOUT / 2 + 1)
    outcome = h.check(1)
    assert outcome.action == "failed" and "no readiness" in outcome.detail
    assert h.deps.registry.get(GROUP, 1).failed and h.rollout(1)["stage"] == "failed"
    assert h.deployments(FLEET) == []
    assert h.check(1).action == "ignored"  # the watchdog stops


def test_the_watchdog_reports_a_stuck_deployment_once_and_keeps_watching(h):
    h.deliver_manifest(h.compile(1))
    h.report("turbine-01", h.rollout(1)["canary_deployment_id"], "SUCCEEDED")
    h.soak(1)
    fleet_id = h.rollout(1)["fleet_deployment_id"]
    h.report("turbine-02", fleet_id, "SUCCEEDED")  # turbine-03 never reports
    h.clock.advance(STUCK_TIMEOUT + 1)
    scheduled = len(h.events.published)
    assert [h.check(1).action for _ in range(3)] == ["waiting", "waiting", "waiting"]
    stuck = [m for m in h.notifier.messages if "stuck" in m.subject]
    assert len(stuck) == 1 and "turbine-03" in stuck[0].message and "turbine-02" not in stuck[0].message
    assert len(h.events.published) > scheduled  # the next check is scheduled
    h.report("turbine-03", fleet_id, "SUCCEEDED")
    assert h.rollout(1)["stage"] == "done"


def test_a_new_canary_supersedes_one_still_soaking(h):
    h.deliver_manifest(h.compile(1))
    h.deliver_manifest(h.compile(2))
    assert h.rollout(1)["stage"] == "superseded"
    h.clock.advance(CANARY_TIMEOUT + 1)
    assert h.check(1).action == "ignored"
    assert not h.deps.registry.get(GROUP, 1).failed


# ------------------------------------------------------------------ operator actions


def test_rollback_to_an_earlier_version_deploys_it_to_both_groups_at_once(h):
    h.to_fleet_done(1)
    h.to_fleet_done(2)
    outcome = rollback_to(1, h.deps)
    assert outcome.action == "rolled-back"
    for group in (CANARY, FLEET):
        assert h.deployments(group)[-1]["components"][MODEL_COMPONENT] == {"componentVersion": "1.0.0"}
    assert rollback_to(1, h.deps).action == "duplicate"
    assert len(h.deployments(FLEET)) == 3
    with pytest.raises(Conflict, match="not earlier"):
        rollback_to(2, h.deps)
    h.deps.registry.update_metadata(GROUP, 1, {"nacelle:failed": "true"})
    with pytest.raises(Conflict, match="failed"):
        rollback_to(1, h.deps)


def test_a_failed_fleet_goes_back_to_the_previous_version(h):
    h.to_fleet_done(1)
    h.deliver_manifest(h.compile(2))
    h.soak(2)
    fleet_id = h.rollout(2)["fleet_deployment_id"]
    assert [r["action"] for r in h.report("turbine-02", fleet_id, "FAILED", "boom")] == ["failed"]
    assert h.deps.registry.get(GROUP, 2).failed
    for group in (CANARY, FLEET):
        assert h.deployments(group)[-1]["components"][MODEL_COMPONENT] == {"componentVersion": "1.0.0"}


def _fleet_of(h: Harness, size: int) -> str:
    """v1 promoted to a fleet of `size` devices (turbine-02 and -03 among them); its fleet deployment id."""
    for n in range(4, size + 2):
        h.gg.add_thing(f"turbine-{n:02d}", FLEET)
    h.deliver_manifest(h.compile(1))
    h.report("turbine-01", h.rollout(1)["canary_deployment_id"], "SUCCEEDED")
    h.soak(1)
    assert len(h.rollout(1)["fleet_things"]) == size
    return str(h.rollout(1)["fleet_deployment_id"])


def test_a_status_event_reads_the_same_items_however_far_the_fleet_rollout(h, monkeypatch):
    fleet_id = _fleet_of(h, 30)
    things = h.rollout(1)["fleet_things"]
    reads: list[int] = []
    real_get = h.deps.state.get

    def counted(pk: str, sk: str) -> Any:
        reads[-1] += 1
        return real_get(pk, sk)

    monkeypatch.setattr(h.deps.state, "get", counted)
    for thing in things:  # in the fleet's order: a scan of the devices would read more at every event
        reads.append(0)
        actions = [r["action"] for r in h.report(thing, fleet_id, "SUCCEEDED")]
    assert actions == ["done"]
    assert len(set(reads[:-1])) == 1  # every event before the last read as many items as the first one
    assert reads[-1] >= len(things)  # the last one checks each device's recorded execution once


def test_duplicated_successes_count_once_and_a_device_outside_the_deployment_not_at_all(h):
    fleet_id = _fleet_of(h, 3)
    for _ in range(3):
        status_app.handle(aws_status_event("greengrass_deployment_succeeded_older_spelling.json", fleet_id,
                                           "turbine-02"), h.deps)
    status_app.handle(aws_status_event("greengrass_deployment_succeeded_older_spelling.json", fleet_id,
                                       "turbine-77"), h.deps)  # joined the group after the deployment was made
    assert [r["action"] for r in h.report("turbine-03", fleet_id, "SUCCEEDED")] == ["recorded"]
    assert h.rollout(1)["stage"] == "fleet"
    assert [r["action"] for r in h.report("turbine-04", fleet_id, "SUCCEEDED")] == ["done"]


def test_a_success_left_uncounted_by_a_crash_is_completed_by_the_watchdog(h):
    fleet_id = _fleet_of(h, 2)
    h.report("turbine-02", fleet_id, "SUCCEEDED")
    h.deps.state.delete(f"group#{GROUP}", f"succeeded#{fleet_id}")  # recorded, then the count was lost
    assert [r["action"] for r in h.report("turbine-03", fleet_id, "SUCCEEDED")] == ["recorded"]
    assert h.check(1).action == "done" and h.rollout(1)["stage"] == "done"


def test_cancel_stops_the_rollout_without_failing_the_version(h):
    h.deliver_manifest(h.compile(1))
    outcome = cancel(h.rollout(1)["canary_deployment_id"], h.deps)
    assert outcome.action == "canceled" and h.rollout(1)["stage"] == "canceled"
    assert h.gg.get_deployment(outcome.data["deployment_id"]).status == "CANCELED"
    assert not h.deps.registry.get(GROUP, 1).failed


# ------------------------------------------------------------------ handler inputs


def test_deployment_status_takes_a_rollout_check_event(h):
    h.deliver_manifest(h.compile(1))
    event = h.events.published[0].event
    delivered = replace(event, id="5b8c1a52-0000-4000-8000-000000000001", time="2026-03-01T10:00:30Z")
    assert status_app.handle(delivered.to_dict(), h.deps)["action"] == "waiting"


def test_a_malformed_health_row_names_the_field(h):
    row = h.health("turbine-01", 1, 1.0, 0)
    del row["received_at"]
    assert status_app.handle(row, h.deps)["action"] == "rejected"  # counted, never applied nor retried
    refused = h.deps.state.get(REJECTED, "turbine-01#health")
    assert (refused["count"], refused["last_detail"]) == (1, "field 'received_at' is missing")
    assert h.deps.state.get("devices", "turbine-01") is None


def test_health_rows_keep_the_newest_device_record(h):
    for at, rate in ((20.0, 2.0), (10.0, 9.0)):
        on_health(validate(HealthRow, h.health("turbine-02", 1, rate, at)), h.deps)
    record = h.deps.state.get("devices", "turbine-02")
    assert record["inference_rate_hz"] == 2.0 and record["last_health_at"] == 20.0


# ------------------------------------------------------------------ crash recovery (the watchdog resumes)


def test_the_watchdog_resumes_a_failure_interrupted_after_its_claim(h):
    h.deliver_manifest(h.compile(1))
    h.deps.state.update_if(f"group#{GROUP}", "rollout#1", {"stage": "failing", "failed_stage": "canary",
                                                           "failure_reason": "turbine-01 reported FAILED"},
                           {"stage": "canary"})
    assert h.check(1).action == "failed"
    assert h.deps.registry.get(GROUP, 1).failed and h.rollout(1)["stage"] == "failed"
    assert h.alerts() == [f"Rollout of {GROUP} v1 failed in the canary"]
    assert h.check(1).action == "ignored"


def test_the_watchdog_resumes_a_promotion_interrupted_after_its_claim(h):
    h.deliver_manifest(h.compile(1))
    h.deps.state.update_if(f"group#{GROUP}", "rollout#1", {"stage": "fleet", "fleet_deployment_id": "",
                                                           "fleet_started_at": h.clock.now.timestamp()},
                           {"stage": "canary"})
    assert h.deployments(FLEET) == []
    assert h.check(1).action == "waiting"
    (fleet,) = h.deployments(FLEET)
    assert h.rollout(1)["fleet_deployment_id"] == fleet["id"]
    assert h.rollout(1)["fleet_things"] == ["turbine-02", "turbine-03"]


# ------------------------------------------------------------------ AWS's documented event shapes, in any order


def aws_status_event(name: str, deployment_id: str, thing: str = "turbine-01") -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / name).read_text())
    detail = event["detail"]
    detail["deploymentId" if "deploymentId" in detail else "deployment-id"] = deployment_id
    event["resources"] = [f"arn:aws:greengrass:eu-west-1:123456789012:coreDevices:{thing}"]
    return event


def test_both_documented_spellings_with_null_details_drive_the_rollout(h):
    h.deliver_manifest(h.compile(1))
    canary_id = h.rollout(1)["canary_deployment_id"]
    result = status_app.handle(aws_status_event("greengrass_deployment_succeeded_older_spelling.json", canary_id),
                               h.deps)
    assert result["action"] == "recorded"
    assert h.deps.state.get("device#turbine-01", f"deployment#{canary_id}")["status"] == "SUCCEEDED"
    assert h.deps.state.get("device#turbine-01", f"deployment#{canary_id}")["error_stack"] == []


def test_a_documented_failure_fails_the_canary_with_its_reason(h):
    h.deliver_manifest(h.compile(1))
    canary_id = h.rollout(1)["canary_deployment_id"]
    result = status_app.handle(aws_status_event("greengrass_deployment_failed.json", canary_id), h.deps)
    assert result["action"] == "failed" and "S3_HEAD_OBJECT_ACCESS_DENIED" in result["detail"]
    record = h.deps.state.get("device#turbine-01", f"deployment#{canary_id}")
    assert record["error_stack"][0] == "DEPLOYMENT_FAILURE"


def test_an_older_failure_arriving_after_the_success_changes_nothing(h):
    h.deliver_manifest(h.compile(1))
    canary_id = h.rollout(1)["canary_deployment_id"]
    succeeded = aws_status_event("greengrass_deployment_succeeded_older_spelling.json", canary_id)
    failed = aws_status_event("greengrass_deployment_failed.json", canary_id)
    failed["time"] = "2026-03-01T10:03:00Z"  # it happened before the success, and arrives after it
    status_app.handle(succeeded, h.deps)
    result = status_app.handle(failed, h.deps)
    assert result["action"] == "recorded" and "older than the SUCCEEDED recorded" in result["detail"]
    assert h.rollout(1)["stage"] == "canary" and not h.deps.registry.get(GROUP, 1).failed
    assert h.deps.state.get("device#turbine-01", f"deployment#{canary_id}")["status"] == "SUCCEEDED"


def test_a_later_failure_replaces_the_success_and_fails_the_canary(h):
    h.deliver_manifest(h.compile(1))
    canary_id = h.rollout(1)["canary_deployment_id"]
    status_app.handle(aws_status_event("greengrass_deployment_succeeded_older_spelling.json", canary_id), h.deps)
    failed = aws_status_event("greengrass_deployment_failed.json", canary_id)  # 10:05, after the 10:04 success
    assert status_app.handle(failed, h.deps)["action"] == "failed"
    assert h.deps.state.get("device#turbine-01", f"deployment#{canary_id}")["status"] == "FAILED"


@pytest.mark.parametrize("breakage", ["no id", "id is a number", "no resources"])
def test_a_malformed_status_event_is_a_data_error_naming_the_field(h, breakage):
    event = aws_status_event("greengrass_deployment_failed.json", "d-1")
    if breakage == "no id":
        del event["detail"]["deploymentId"]
    elif breakage == "id is a number":
        event["detail"]["deploymentId"] = {"not": "a string"}
    else:
        event["resources"] = []
    with pytest.raises(Exception) as caught:
        status_app.handle(event, h.deps)
    assert isinstance(caught.value, DataError | ConfigurationError)
    if breakage != "no resources":
        assert "detail.deploymentId" in str(caught.value) or "detail.deployment-id" in str(caught.value)


# ------------------------------------------------------------------ no device yet


def test_without_devices_the_version_waits_and_starts_when_one_joins(tmp_path: Path):
    h = Harness(tmp_path)
    h.gg = LocalGreengrass(tmp_path / "empty.db", on_status_event=h.status_events.append, clock=h.clock)
    h.deps = replace(h.deps, greengrass=h.gg)  # a stack started without devices: no thing group at all
    results = [h.deliver_manifest(h.compile(1)) for _ in range(2)]  # delivered twice
    assert [r["action"] for r in results] == ["waiting", "waiting"]
    assert h.alerts() == [f"{GROUP} v1 waits for devices"]  # once
    assert h.rollout(1)["stage"] == "waiting" and not h.deps.registry.get(GROUP, 1).failed
    h.clock.advance(CANARY_TIMEOUT * 3)
    assert h.check(1).action == "waiting" and not h.deps.registry.get(GROUP, 1).failed  # never times out
    h.gg.ensure_thing_group(CANARY)
    h.gg.add_thing("turbine-01", CANARY)
    assert h.check(1).action == "deployed"
    assert h.rollout(1)["stage"] == "canary" and h.rollout(1)["canary_things"] == ["turbine-01"]


def test_a_newer_version_supersedes_a_waiting_one(tmp_path: Path):
    h = Harness(tmp_path)
    h.gg = LocalGreengrass(tmp_path / "empty.db", on_status_event=h.status_events.append, clock=h.clock)
    h.deps, h.db = replace(h.deps, greengrass=h.gg), tmp_path / "empty.db"
    h.deliver_manifest(h.compile(1))
    h.deliver_manifest(h.compile(2))
    assert h.rollout(1)["stage"] == "superseded" and h.rollout(2)["stage"] == "waiting"
    h.gg.ensure_thing_group(CANARY)
    h.gg.add_thing("turbine-01", CANARY)
    assert h.check(1).action == "ignored"
    assert h.check(2).action == "deployed"
    assert [d["components"][MODEL_COMPONENT]["componentVersion"] for d in h.deployments(CANARY)] == ["2.0.0"]


def test_a_version_rejected_while_its_canary_soaks_is_never_promoted(h: Harness) -> None:
    h.to_fleet_done(1)
    h.deliver_manifest(h.compile(2))
    reject(h.deps.registry, GROUP, 2, "bob", "bad model, stop it")  # while v2 soaks on the canary
    h.soak(2)
    assert h.rollout(2)["stage"] == "canary" and (h.deps.state.get(f"group#{GROUP}", "fleet") or {})["version"] == 1
    assert [d["components"][MODEL_COMPONENT]["componentVersion"] for d in h.deployments(FLEET)] == ["1.0.0"]
    assert h.check(2).action == "waiting" and h.rollout(2)["stage"] == "canary"
    notices = [m.subject for m in h.notifier.messages if "not promoted" in m.subject]
    assert notices == [f"{GROUP} v2 soaked on the canary but is Rejected: not promoted"]  # once


def test_a_late_bundle_event_of_an_older_version_never_replaces_a_newer_one(h: Harness) -> None:
    h.compile(1)  # v1 approved and compiled, its Object Created delayed
    h.deliver_manifest(h.compile(2))
    assert h.deliver_manifest(f"compiled/{GROUP}/1/manifest.json")["action"] == "superseded"
    assert (h.rollout(1)["stage"], h.rollout(2)["stage"]) == ("superseded", "canary")
    assert [d["components"][MODEL_COMPONENT]["componentVersion"] for d in h.deployments(CANARY)] == ["2.0.0"]
    h.soak(2)
    h.deliver_manifest(f"compiled/{GROUP}/1/manifest.json")  # again, once v2 is on the fleet
    assert (h.deps.state.get(f"group#{GROUP}", "fleet") or {})["version"] == 2
