"""Every route of the console API on seeded local stores: what it answers, its filters and paging, the decisions
it records (and who made them), and the 4xx of bad input, each naming the field and the reason."""

from __future__ import annotations

import json

import pytest

from benchmarks.console_seed import Seeded
from shared.usecases import state_keys as sk
from shared.usecases.alerts import label_key
from tests.console.conftest import OPERATOR, Caller, active_deployment

ISO_Z = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$"


def test_models_list_pages_filters_and_keeps_numbers_and_iso_times(call: Caller, seeded: Seeded) -> None:
    doc = call.get("/api/models?limit=2")
    assert (doc["total"], doc["offset"], doc["limit"], doc["next_offset"]) == (4, 0, 2, 2)
    newest = doc["items"][0]
    assert newest["version"] == seeded.pending and newest["status"] == "PendingManualApproval"
    assert isinstance(newest["metrics"]["event_f1"], float)
    assert newest["created_at"].endswith("Z") and newest["where"] == "nowhere"
    assert call.get("/api/models?offset=2&limit=2")["next_offset"] is None
    deployed = call.get(f"/api/models/{seeded.deployed}")
    assert deployed["champion"] and sorted(deployed["deployed"]) == ["canary", "fleet"]
    assert [m["version"] for m in call.get("/api/models?status=Rejected")["items"]] == [seeded.gate_rejected]


@pytest.mark.parametrize(("path", "field"), [("/api/models?status=Bogus", "status"), ("/api/models?limit=0", "limit"),
                                             ("/api/models?offset=x", "offset"), ("/api/models/v0", "version"),
                                             ("/api/models/abc", "version"), ("/api/models/1/compare/x", "other")])
def test_bad_parameters_are_400_naming_the_field(call: Caller, path: str, field: str) -> None:
    reply = call("GET", path)
    assert reply.status == 400
    error = reply.json()["error"]
    assert error["field"] == field and error["message"].startswith(f"{field}: ")


def test_unknown_things_are_404(call: Caller) -> None:
    for path in ("/api/models/99", "/api/alerts/episode:nope:1", "/api/turbines/nope/timeline", "/api/jobs/nope",
                 "/static/nope.js", "/static/..%2Fapp.py"):
        reply = call("GET", path)
        assert reply.status == 404, path
        assert reply.json()["error"]["code"] == "not_found"


def test_model_detail_has_gate_family_lineage_history_and_compare(call: Caller, seeded: Seeded) -> None:
    rejected = call.get(f"/api/models/{seeded.gate_rejected}")
    assert rejected["gate"]["verdict"] == "rejected" and rejected["gate"]["refused"] is True
    assert rejected["gate"]["reasons"] == ["event F1 0.40 under 0.75", "recall 0.50 under 0.75"]
    assert rejected["family"] == {"chosen": "conv_ae", "candidates": ["conv_ae f1 0.91 fa 0.5", "pca f1 0.80 fa 1.2"]}
    assert rejected["lineage"]["job"] == f"nacelle-job{seeded.gate_rejected:04d}-1"
    assert rejected["history"][0]["status"] == "Rejected" and rejected["history"][0]["at"].endswith("Z")
    diff = call.get(f"/api/models/1/compare/{seeded.pending}")
    row = next(r for r in diff["metrics"] if r["metric"] == "event_f1")
    assert row["delta"] == pytest.approx(row["b"] - row["a"])


def test_approve_records_the_caller_and_is_idempotent(call: Caller, seeded: Seeded) -> None:
    v = seeded.pending
    reply = call("POST", f"/api/models/{v}/approve", {"reason": "beats the champion"})
    assert reply.status == 200, reply.text
    assert reply.json()["changed"] is True and reply.json()["model"]["status"] == "Approved"
    again = call("POST", f"/api/models/{v}/approve", {"reason": "beats the champion"})
    assert again.json()["changed"] is False
    history = call.get(f"/api/models/{v}")["history"]
    assert [(h["status"], h["actor"], h["reason"]) for h in history[-1:]] == [
        ("Approved", OPERATOR, "beats the champion")]
    assert len(history) == 2  # registered, approved once


def test_a_gate_rejected_version_needs_a_recorded_override(call: Caller, seeded: Seeded) -> None:
    v = seeded.gate_rejected
    refused = call("POST", f"/api/models/{v}/approve", {"reason": "looks fine"})
    assert refused.status == 409 and "quality gate" in refused.json()["error"]["message"]
    no_reason = call("POST", f"/api/models/{v}/approve", {"override_gate": True})
    assert no_reason.status == 400 and no_reason.json()["error"]["field"] == "reason"
    bad_flag = call("POST", f"/api/models/{v}/approve", {"override_gate": "yes", "reason": "x"})
    assert bad_flag.status == 400 and bad_flag.json()["error"]["field"] == "override_gate"
    done = call("POST", f"/api/models/{v}/approve", {"override_gate": True, "reason": "labels were late"})
    assert done.status == 200, done.text
    model = done.json()["model"]
    assert model["status"] == "Approved" and model["gate"]["override"].startswith(f"{OPERATOR} at ")
    assert model["gate"]["override"].endswith("labels were late")


def test_reject_with_a_reason(call: Caller, seeded: Seeded) -> None:
    reply = call("POST", f"/api/models/{seeded.pending}/reject", {"reason": "too many false alarms"})
    assert reply.status == 200 and reply.json()["model"]["status"] == "Rejected"
    assert call("POST", f"/api/models/{seeded.pending}/reject", {"reason": "again"}).json()["changed"] is False
    assert call("POST", "/api/models/99/reject", {}).status == 404
    assert call("POST", f"/api/models/{seeded.pending}/reject", b"[1, 2]").json()["error"]["field"] == "body"
    assert call("POST", f"/api/models/{seeded.pending}/reject", b"{oops").json()["error"]["field"] == "body"


def test_fleet_devices_health_offline_and_deployments(call: Caller, seeded: Seeded) -> None:
    doc = call.get("/api/fleet")
    rows = {d["thing"]: d for d in doc["items"]}
    assert doc["total"] == len(seeded.things) and doc["counts"] == {"ONLINE": 4, "OFFLINE": 1}
    first, stale = rows["turbine-01"], rows[seeded.things[-1]]
    assert first["role"] == "canary" and first["model_version"] == seeded.deployed and first["state"] == "ONLINE"
    assert first["inference_rate_hz"] == 20.0 and first["last_seen"].endswith("Z")
    assert first["components"]["nacelle.model"] == f"{seeded.deployed}.0.0"
    assert first["deployment"]["status"] == "SUCCEEDED" and first["episodes"]["total"] >= 1
    assert stale["state"] == "OFFLINE" and stale["inference_rate_hz"] is None
    assert [d["thing"] for d in call.get("/api/fleet?state=OFFLINE")["items"]] == [stale["thing"]]
    assert call("GET", "/api/fleet?state=DOWN").json()["error"]["field"] == "state"
    deployments = call.get("/api/fleet/deployments")
    assert deployments["rollout_active"] is False and deployments["rollouts"][0]["stage"] == "done"
    assert {(d["role"], d["model_version"], d["succeeded"]) for d in deployments["deployments"]} == {
        ("canary", seeded.deployed, 1), ("fleet", seeded.deployed, len(seeded.things) - 1)}


def test_rollback_goes_through_the_rollout_use_case(call: Caller, seeded: Seeded) -> None:
    assert call("POST", "/api/fleet/rollback", {}).json()["error"]["field"] == "version"
    assert call("POST", "/api/fleet/rollback", {"version": "one"}).json()["error"]["field"] == "version"
    pending = call("POST", "/api/fleet/rollback", {"version": seeded.pending})
    assert pending.status == 409 and "only an approved" in pending.json()["error"]["message"]
    never_compiled = call("POST", "/api/fleet/rollback", {"version": 1})
    assert never_compiled.status == 404 and "never compiled" in never_compiled.json()["error"]["message"]


def test_cancel_stops_an_active_deployment_through_the_rollout_use_case(call: Caller, seeded: Seeded) -> None:
    assert call("POST", "/api/fleet/cancel", {}).json()["error"]["field"] == "deployment_id"
    assert call("POST", "/api/fleet/cancel", {"deployment_id": 7}).json()["error"]["field"] == "deployment_id"
    assert call("POST", "/api/fleet/cancel", {"deployment_id": "nope"}).status == 404
    active = active_deployment(seeded, 9, "canary")
    assert next(d for d in call.get("/api/fleet/deployments")["deployments"]
                if d["deployment_id"] == active)["status"] == "ACTIVE"
    reply = call("POST", "/api/fleet/cancel", {"deployment_id": active})
    assert reply.status == 200, reply.text
    assert reply.json()["action"] == "canceled" and reply.json()["deployment_id"] == active
    assert seeded.stack.greengrass.get_deployment(active).status == "CANCELED"


def test_alerts_filter_and_page(call: Caller, seeded: Seeded) -> None:
    everything = call.get("/api/alerts?limit=500")
    assert everything["total"] == len(seeded.alert_ids)
    since = [a["since"] for a in everything["items"]]
    assert since == sorted(since, reverse=True)  # newest first
    mine = call.get("/api/alerts?turbine=turbine-02&severity=medium")
    assert mine["items"] and all(a["turbine_id"] == "turbine-02" and a["severity"] == "medium" for a in mine["items"])
    assert all(a["status"] == "open" for a in call.get("/api/alerts?state=open")["items"])
    assert call("GET", "/api/alerts?severity=dire").json()["error"]["field"] == "severity"
    assert call("GET", "/api/alerts?state=odd").json()["error"]["field"] == "state"


def test_ack_keeps_the_history_writes_the_label_and_refuses_bad_verdicts(call: Caller, seeded: Seeded) -> None:
    alert_id = seeded.alert_ids[-1]
    path = f"/api/alerts/{alert_id.replace(':', '%3A')}/ack"
    bad = call("POST", path, {"verdict": "maybe"})
    assert bad.status == 400 and bad.json()["error"]["field"] == "verdict"
    assert call("POST", path, {"verdict": "fault", "note": 7}).json()["error"]["field"] == "note"
    first = call("POST", path, {"verdict": "fault", "note": "bearing replaced"})
    assert first.status == 200, first.text
    assert call("POST", path, {"verdict": "fault", "note": "bearing replaced"}).json()["acks"] == first.json()["acks"]
    second = call("POST", path, {"verdict": "false_alarm", "note": "sensor glitch"}).json()
    assert [(a["by"], a["verdict"], a["note"]) for a in second["acks"]] == [
        (OPERATOR, "fault", "bearing replaced"), (OPERATOR, "false-alarm", "sensor glitch")]
    assert second["acks"][0]["at"].endswith("Z") and second["verdict"] == "false-alarm"
    label = json.loads(seeded.stack.store.get(label_key(alert_id)))
    assert label["source"]["verdict"] == "false-alarm" and len(label["source"]["acks"]) == 2
    shown = call.get(f"/api/alerts/{alert_id}")
    assert [n["kind"] for n in shown["notifications"]] == ["alert"] and len(shown["acks"]) == 2


def test_turbine_timeline(call: Caller, seeded: Seeded) -> None:
    t = call.get("/api/turbines/turbine-01/timeline")
    assert t["threshold"] == 1.0 and t["model_version"] == seeded.deployed
    assert t["episodes"] and all(e["score"] > 1.0 and e["started_at"].endswith("Z") for e in t["episodes"])
    assert [s["model_version"] for s in t["model_swaps"]] == [seeded.deployed]
    assert len(t["alerts"]) == len(t["episodes"]) and t["first_at"] <= t["last_at"]


def test_data_status_uploads_quarantine_and_jobs(call: Caller, seeded: Seeded, tmp_path) -> None:
    stack = seeded.stack
    pk = sk.group_pk(stack.settings.group)
    stack.state.put(pk, sk.FILE + "raw/t1/bad.csv", {"key": "raw/t1/bad.csv", "status": "quarantined", "rows": 3,
                                                     "checked_at": "2026-01-02T03:04:05+00:00",
                                                     "quarantine_key": "quarantine/raw/t1/bad.csv", "errors": 1})
    stack.store.put("quarantine/raw/t1/bad.csv.report.json", json.dumps(
        {"source": "raw/t1/bad.csv", "rows": 3, "errors": [{"code": "missing_column", "message": "no rpm"}],
         "warnings": []}).encode())
    doc = call.get("/api/data")
    assert doc["retraining"]["would_start"] is False and isinstance(doc["retraining"]["min_rows"], int)
    assert doc["recent"][0]["key"] == "raw/t1/bad.csv" and doc["counts"]["quarantined"] == 1
    (q,) = doc["quarantined"]
    assert q["report"]["errors"][0]["message"] == "no rpm" and q["report"]["error_count"] == 1
    job = stack.jobs.create("nacelle-abc-1", "training", {"hyperparameters": {}}, tmp_path / "job")
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "runner.log").write_text("loaded 3 files\nepoch 1/4 train_loss=0.5; val_loss=0.6\n")
    stack.jobs.finish(job.name, "Failed", "diverged")
    (listed,) = call.get("/api/jobs")["items"]
    assert listed["name"] == job.name and listed["status"] == "Failed" and listed["created_at"].endswith("Z")
    shown = call.get(f"/api/jobs/{job.name}?lines=5")
    assert shown["log_tail"][-1].startswith("epoch 1/4") and shown["progress"]
    retry = call("POST", f"/api/jobs/{job.name}/retry", {})
    assert retry.status == 404 and "no training job" in retry.json()["error"]["message"]
    assert call("GET", f"/api/jobs/{job.name}?lines=many").json()["error"]["field"] == "lines"


def test_pages_are_served_with_a_strict_policy(call: Caller) -> None:
    for path in ("/", "/models", "/fleet", "/alerts", "/data", "/turbines/turbine-01"):
        reply = call("GET", path)
        assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/html"), path
        assert "script-src 'self'" in reply.headers["Content-Security-Policy"]
        assert '<script src="/static/console.js"' in reply.text
    for name in ("console.js", "chart.js", "console.css"):
        assert call("GET", f"/static/{name}").status == 200


@pytest.mark.parametrize(("headers", "why"), [
    ({"content-type": "application/json"}, "x-nacelle-console"),
    ({"x-nacelle-console": "1", "origin": "https://evil.example", "host": "console.test"}, "is not this console"),
    ({"x-nacelle-console": "1", "sec-fetch-site": "cross-site"}, "cross-site"),
    ({"x-nacelle-console": "1", "origin": "null"}, "opaque origin"),
])
def test_cross_site_mutations_are_refused(call: Caller, seeded: Seeded, headers: dict[str, str], why: str) -> None:
    for path in (f"/api/models/{seeded.pending}/approve", f"/api/alerts/{seeded.alert_ids[0]}/ack",
                 "/api/fleet/rollback", "/api/fleet/cancel", "/api/jobs/x/retry",
                 f"/api/models/{seeded.pending}/reject"):
        reply = call("POST", path, {"reason": "x", "version": 1}, headers=headers)
        assert reply.status == 403 and why in reply.json()["error"]["message"], path
    assert call.get(f"/api/models/{seeded.pending}")["status"] == "PendingManualApproval"


def test_a_mutation_without_a_caller_identity_is_refused(call: Caller, seeded: Seeded) -> None:
    reply = call("POST", f"/api/models/{seeded.pending}/approve", {"reason": "x"}, identity={"sourceIp": "1.2.3.4"})
    assert reply.status == 403 and "identity" in reply.json()["error"]["message"]


def test_a_local_signing_proxy_may_change_things_on_aws_but_not_another_local_port(call: Caller,
                                                                                    seeded: Seeded) -> None:
    path = f"/api/models/{seeded.pending}/reject"
    other_port = {"x-nacelle-console": "1", "origin": "http://localhost:9999", "host": "127.0.0.1:8640"}
    assert call("POST", path, {"reason": "x"}, headers=other_port).status == 403
    proxied = {"x-nacelle-console": "1", "origin": "http://localhost:8080",
               "host": "abc123.execute-api.eu-west-1.amazonaws.com"}
    assert call("POST", path, {"reason": "x"}, headers=proxied).status == 200


def test_where_training_retries_are_not_offered_nothing_is_written(seeded: Seeded, tmp_path) -> None:
    from dataclasses import replace

    stack = seeded.stack
    job = stack.jobs.create("nacelle-def-1", "training", {"hyperparameters": {}}, tmp_path / "job")
    stack.jobs.finish(job.name, "Failed", "diverged")
    call = Caller(replace(stack.operator_deps(), training_retry=False))  # as on AWS
    before = stack.state.query(sk.group_pk(stack.settings.group))
    reply = call("POST", f"/api/jobs/{job.name}/retry", {})
    assert reply.status == 422 and "not offered" in reply.json()["error"]["message"]
    assert stack.state.query(sk.group_pk(stack.settings.group)) == before
