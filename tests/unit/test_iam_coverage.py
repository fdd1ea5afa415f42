"""Every AWS call a function's code makes is one its role in template.yaml allows.

The unit tests run the handlers on in-memory doubles, so a missing grant passes them and fails in production. Here
each function's handler runs through representative events on those doubles, wrapped in recording proxies; every
port call becomes the IAM requests its AWS adapter (shared/aws/) would send, with the resource ARN and the condition
keys IAM evaluates (dynamodb:LeadingKeys, s3:prefix, iam:PassedToService, ...), and each request is evaluated against
the function's own policy statements.

Which adapter serves which deps field, and with which table, bucket, topic or role, comes from the function's real
composition root (`aws_deps()`, built from the template's environment), so a wiring change is checked too.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from shared.ports import Envelope
from tests.iam.policy import (
    ACCOUNT,
    REGION,
    UNWIRED,
    Request,
    Statement,
    allowing,
    applies,
    condition_holds,
    request,
    statements,
    wildcard,
)
from tests.iam.requests import Recorded, Recorder, Run, service_module
from tests.unit.test_template import functions

EVENTS = Path(__file__).resolve().parents[1] / "events"


# ------------------------------------------------------------------ scenarios
# Representative events per function, reaching each adapter call: the happy path, duplicates, refused rows, missing
# objects, failures. They reuse the doubles and harnesses of the functions' own tests.


def envelope(source: str, detail_type: str, detail: Mapping[str, Any], resources: tuple[str, ...] = ()) -> dict:
    return Envelope(source, detail_type, detail, id="00000000-0000-4000-8000-000000000001",
                    time="2026-03-01T00:00:00Z", resources=resources).to_dict(REGION, ACCOUNT)


def object_created(bucket: str, key: str) -> dict[str, Any]:
    event = json.loads((EVENTS / "s3_object_created.json").read_text())
    event["detail"]["bucket"]["name"], event["detail"]["object"]["key"] = bucket, key
    return event


def due_events(published: list[Any], clock: Callable[[], datetime]) -> list[dict[str, Any]]:
    """What the bus would deliver of RecordingEvents.published, scheduled ones once due."""
    return [copy.deepcopy(p.body) for p in published if p.deliver_at is None or p.deliver_at <= clock()]


def anomaly_alert(run: Run) -> None:
    from tests.fakes import Clock
    from tests.unit.test_alerts import health, make_deps

    fn = "AnomalyAlertFunction"
    clock = Clock()
    deps = make_deps(run.tmp, clock, rate_limit=2)
    health(deps, "wt-01", clock().timestamp() - 3600)  # long silent: offline at the next check
    deps = run.wire(fn, deps)
    handle = run.handle(fn)
    row = json.loads((EVENTS / "iot_anomaly_row.json").read_text())
    handle(row, deps)
    handle(row, deps)  # a duplicate
    handle({**row, "kind": "reopen"}, deps)  # refused: counted
    for n in range(1, 4):  # past the rate limit: folded into a summary
        start = row["started_at"] + 60 * n
        handle({**row, "episode_id": f"turbine-03-{n}", "seq": row["seq"] + n, "started_at": start,
                "opened_at": start + 30, "last_flagged_at": start + 30}, deps)
    handle({**row, "kind": "close", "seq": row["seq"] + 10, "ended_at": row["last_flagged_at"] + 60}, deps)
    clock.advance(2 * 3600)  # escalations, summaries and the offline check are due
    handle(json.loads((EVENTS / "scheduled_event.json").read_text()), deps)
    run.reached(fn, "new", "duplicate", "rejected", "checked")


def drift_monitor(run: Run) -> None:
    from tests.fakes import RecordingEvents
    from tests.unit.test_drift_monitor import PERIOD, T0, capture, make_deps, stats_row

    fn = "DriftMonitorFunction"
    raw = make_deps()
    raw.policy = replace(raw.policy, retrain_turbines=2, retrain_after_s=3600.0, retrain_min_captured_hours=0.5)
    capture(raw, "a", T0 + 4 * PERIOD, 40)
    capture(raw, "b", T0 + 5 * PERIOD, 40)
    deps, handle = run.wire(fn, raw), run.handle(fn)
    for p in range(10):  # a and b drift from period 3, long enough with captured data: a retrain check
        for thing in ("a", "b", "c"):
            handle(stats_row(thing, p, shift=3.0 if 3 <= p < 9 and thing != "c" else 0.0), deps)
    handle(stats_row("a", 9), deps)  # a duplicate
    handle(stats_row("a", 10), deps)  # calm again: resolved
    handle(stats_row("t3", 1, version=7), deps)  # a version never compiled: its manifest is missing
    handle(stats_row("t3", 2, n=100), deps)  # too few windows
    handle({**stats_row("t4", 0), "thing_name": "t5", "client_id": "t5"}, deps)  # another turbine's: refused
    run.reached(fn, "drifting", "duplicate", "rejected", "ignored")
    assert isinstance(raw.events, RecordingEvents) and raw.events.published, "no retrain check was asked for"


def data_arrival(run: Run) -> None:
    from nacelle.simulator.generate import csv_bytes
    from nacelle.simulator.physics import TurbineModel
    from shared.usecases.retraining import ArrivalDeps, RetrainPolicy
    from tests import fakes

    fn, group = "DataArrivalFunction", "nacelle-turbine"
    clock = fakes.Clock()
    bus = fakes.RecordingEvents(clock)
    raw = ArrivalDeps(fakes.MemoryStore("nacelle-data"), fakes.MemoryState(), fakes.RecordingNotifier(), bus,
                      fakes.FakeTraining(), fakes.MemoryRegistry(),
                      RetrainPolicy(group, min_new_turbine_hours=0.4, quiet_period_s=15.0,
                                    hyperparameters={"epochs": "3"}), clock)
    raw.registry.ensure_group(group)
    raw.registry.register(group, "jobs/j0/output/model.tar.gz", "Approved", "", {}, "j0")  # the champion
    model = TurbineModel("wt-01", 5, datetime(2026, 3, 1, tzinfo=UTC))
    files = {f"raw/wt-01/wt-01_part{i}.csv.gz": gzip.compress(csv_bytes(model.step(600)), mtime=0) for i in range(3)}
    files["raw/wt-01/bad.csv"] = b"qx,qy\n1,2\n"
    files["labels/wt-01/bad.json"] = b"{not json"
    for key, data in files.items():
        raw.store.put(key, data)
    deps, handle = run.wire(fn, raw), run.handle(fn)
    for key in [*files, next(iter(files))]:  # every file, and one delivered twice
        handle(object_created("nacelle-data", key), deps)
    handle(object_created("nacelle-data", "raw/wt-01/deleted-meanwhile.csv"), deps)  # missing object
    clock.advance(60)
    for event in due_events(bus.published, clock):  # the debounced check: dataset, job
        handle(event, deps)
    handle(envelope("nacelle", "Nacelle Retrain Check", {"group": group, "requested_at": clock().isoformat()}), deps)
    run.reached(fn, "accepted", "duplicate", "quarantined", "started")


def training_completed(run: Run) -> None:
    from tests.unit.test_auto_approve import registration
    from tests.unit.test_registration import JOB, metrics, model_tar, running_job

    fn = "TrainingCompletedFunction"
    raw = registration(run.tmp, auto=True)
    raw.store.put(f"jobs/{JOB}/output/model.tar.gz", model_tar(metrics(0.95, 1.0, 0.5)))
    running_job(raw.state, "nacelle-0123456789abcdef-2")
    deps, handle = run.wire(fn, raw), run.handle(fn)
    done = json.loads((EVENTS / "training_job_completed.json").read_text())
    done["detail"]["TrainingJobName"] = JOB
    done["detail"]["ModelArtifacts"]["S3ModelArtifacts"] = f"s3://{raw.store.bucket}/jobs/{JOB}/output/model.tar.gz"
    handle(done, deps)
    handle(done, deps)  # a duplicate
    failed = json.loads((EVENTS / "training_job_failed.json").read_text())
    failed["detail"]["TrainingJobName"] = "nacelle-0123456789abcdef-2"
    handle(failed, deps)
    gone = copy.deepcopy(done)  # a completed job whose model is missing
    gone["detail"]["TrainingJobName"] = "nacelle-0123456789abcdef-3"
    gone["detail"]["ModelArtifacts"]["S3ModelArtifacts"] = f"s3://{raw.store.bucket}/jobs/x/output/model.tar.gz"
    running_job(raw.state, "nacelle-0123456789abcdef-3")
    handle(gone, deps)
    run.reached(fn, "registered", "duplicate", "failed")


def model_approved(run: Run) -> None:
    from shared.usecases.compilation import CompileDeps
    from tests.fakes import Clock, FakeCompile, MemoryRegistry, MemoryState, MemoryStore, RecordingNotifier
    from tests.unit.test_compilation import FakeNeo

    fn, group = "ModelApprovedFunction", "nacelle-turbine"
    compiler = FakeCompile()
    raw = CompileDeps(MemoryStore("nacelle-data"), MemoryState(), MemoryRegistry(), RecordingNotifier(), compiler,
                      group, Clock(), neo=FakeNeo(), neo_target="ml_c5")
    raw.registry.ensure_group(group)
    for n in (1, 2):
        raw.registry.register(group, f"jobs/j{n}/output/model.tar.gz", "PendingManualApproval", "",
                              {"nacelle:dataset_hash": "ab" * 32, "nacelle:input_shape": "1 6 100"}, f"j{n}")
    raw.registry.register(group, "jobs/j3/output/model.tar.gz", "Rejected", "gate",
                          {"nacelle:gate": "rejected", "nacelle:gate_reasons": "event_f1 0.41 below 0.75"}, "j3")
    raw.store.put(f"datasets/{group}/{'ab' * 32}.json", b"[]")
    deps, handle = run.wire(fn, raw), run.handle(fn)

    def approved(version: int) -> dict[str, Any]:
        raw.registry.set_status(group, version, "Approved", "ok", "alice")
        return envelope("aws.sagemaker", "SageMaker Model Package State Change",
                        {"ModelPackageGroupName": group, "ModelPackageVersion": version,
                         "ModelApprovalStatus": "Approved"})

    def finished(job: str, status: str) -> dict[str, Any]:
        return envelope("aws.sagemaker", "SageMaker Processing Job State Change",
                        {"ProcessingJobName": job, "ProcessingJobStatus": status, "FailureReason": "boom"})

    handle(approved(1), deps)
    handle(approved(1), deps)  # a duplicate
    job = compiler.started[0].job_name
    prefix = f"compiled/{group}/1/"
    raw.store.put(prefix + "model.onnx", b"onnx-bytes")
    raw.store.put(prefix + "manifest.json", json.dumps({"edge": {"artifacts": {"model.onnx": {}}}}).encode())
    compiler.finish(job, "Completed")
    handle(finished(job, "Completed"), deps)  # Neo starts on the packed ONNX model
    raw.store.put(prefix + "neo/output/model-ml_c5.tar.gz", b"neo-artifact")
    handle(object_created("nacelle-data", prefix + "neo/output/model-ml_c5.tar.gz"), deps)
    handle(approved(2), deps)
    compiler.finish(compiler.started[-1].job_name, "Failed")
    handle(finished(compiler.started[-1].job_name, "Failed"), deps)  # reported
    handle(approved(3), deps)  # refused by the quality gate
    handle(approved(1), deps)  # approved again after it compiled: the bundle is announced again
    run.reached(fn, "started", "duplicate", "completed", "recorded", "failed", "refused", "announced")


def rollout(run: Run) -> None:
    from tests.unit.test_rollout import GROUP, Harness

    h = Harness(run.tmp)
    compiled, status = "CompilationCompletedFunction", "DeploymentStatusFunction"
    with run.patched(h.deps, compiled, status):
        h.to_fleet_done(1)
        key = h.compile(2)
        h.deliver_manifest(key)
        h.deliver_manifest(key)  # a duplicate
        h.deliver_manifest(f"compiled/{GROUP}/9/manifest.json")  # a version the registry does not know
        h.report("turbine-01", h.rollout(2)["canary_deployment_id"], "FAILED", "broke")  # fail, restore v1
        h.compile(3)  # approved and compiled, never rolled out: no component yet
        h.deliver_manifest(h.compile(4))
        h.report("turbine-01", h.rollout(4)["canary_deployment_id"], "FAILED", "broke")  # restore v3: built now
        h.deliver_manifest(h.compile(5))
        h.clock.advance(4 * 3600)  # the watchdog's checks are due: timeout, stuck
        handle = service_module(status).handle
        for event in due_events(h.events.published, h.clock):
            handle(event, h.deps)
        handle({**h.health("turbine-02", 1, 4.0, h.clock().timestamp()), "thing_name": "turbine-03"}, h.deps)
    run.reached(compiled, "deployed", "duplicate", "ignored")
    run.reached(status, "promoted", "done", "failed", "rejected")


def bundle(deps: Any, version: int) -> None:
    """A compiled bundle of `version` and the pinned detector's recipe, as the compile step and a release leave them."""
    from shared.components import DETECTOR_COMPONENT, artifact_digest

    onnx = f"onnx-{version}".encode()
    prefix = f"compiled/{deps.group}/{version}/"
    manifest = {"model_version": version, "edge": {"format_version": 1, "artifacts": {
        "model.onnx": {"sha256": hashlib.sha256(onnx).hexdigest(), "size": len(onnx)}}}}
    deps.store.put(prefix + "model.onnx", onnx)
    deps.store.put(prefix + "manifest.json", json.dumps(manifest).encode())
    recipe = {"RecipeFormatVersion": "2020-01-25", "ComponentName": DETECTOR_COMPONENT,
              "ComponentVersion": deps.detector_version, "Manifests": [{"Artifacts": [
                  {"Uri": f"s3://{deps.store.bucket}/components/{DETECTOR_COMPONENT}/{deps.detector_version}/d.zip",
                   "Digest": artifact_digest(b"detector"), "Algorithm": "SHA-256", "Unarchive": "ZIP"}]}]}
    deps.store.put(f"components/{DETECTOR_COMPONENT}/{deps.detector_version}/recipe.json",
                   json.dumps(recipe).encode())


def console(run: Run) -> None:
    from benchmarks.console_seed import seed
    from services.console.app import NoTraining
    from shared.capture import CaptureName
    from shared.usecases import state_keys as sk
    from tests.console.conftest import Caller, active_deployment

    fn = "ConsoleFunction"
    seeded = seed(run.tmp / "home")
    local = seeded.stack.operator_deps()
    # As on AWS (services/console/app.py aws_deps): no compile or training retries, no local-only sources.
    local = replace(local, compile=None, training_retry=False, history=None, jobs=None, inventory=None,
                    notification_log=None, arrival=replace(local.arrival, training=NoTraining()))
    cancel = active_deployment(seeded, seeded.deployed, "canary")
    bundle(local.rollout, 1)  # so that a rollback to v1 builds and deploys its component
    local.rollout.state.put(sk.group_pk(local.rollout.group), sk.JOB + "nacelle-job0001-1",  # a failed job
                            {"job_name": "nacelle-job0001-1", "dataset_hash": "ab" * 32, "status": "Failed"})
    call = Caller(run.wire(fn, local))
    thing, alert = seeded.things[0], seeded.alert_ids[0]
    captured = CaptureName.parse(seeded.captures[0].rsplit("/", 1)[-1])
    assert captured is not None
    window = f"start={captured.start - 60:.0f}&end={captured.start + 600:.0f}"
    with run.recorder.active(fn):
        replies = [call("GET", path) for path in (
            "/api/models", f"/api/models/{seeded.pending}", f"/api/models/1/compare/{seeded.pending}", "/api/jobs",
            "/api/jobs/nacelle-job0001-1", "/api/data", "/api/fleet", "/api/fleet/deployments", "/api/alerts",
            f"/api/alerts/{alert}", f"/api/turbines/{thing}/timeline", f"/api/turbines/{thing}/signals?{window}", "/")]
        replies += [call("POST", f"/api/models/{seeded.pending}/approve", {"reason": "ok"}),
                    call("POST", f"/api/models/{seeded.gate_rejected}/reject", {"reason": "no"}),
                    call("POST", "/api/jobs/nacelle-job0001-1/retry", {}),
                    call("POST", f"/api/alerts/{alert}/ack", {"verdict": "fault", "note": "bearing"}),
                    call("POST", "/api/fleet/cancel", {"deployment_id": cancel}),
                    call("POST", "/api/fleet/rollback", {"version": 1})]
    assert all(r.status < 500 for r in replies), [r.text for r in replies if r.status >= 500]


def provisioning_hook(run: Run) -> None:
    from shared.usecases.provisioning import CLAIMABLE_ATTRIBUTE, ProvisioningDeps
    from tests.fakes import MemoryState, MemoryThings
    from tests.unit.test_provisioning_hook import CANARY, NEW_CERT, OTHER_CERT, POLICY, hook_input

    fn = "ProvisioningHookFunction"
    now = [1_772_323_200.0]
    things = MemoryThings({"wt-08": (NEW_CERT,), "wt-12": ()}, {"wt-12": {CLAIMABLE_ATTRIBUTE: "true"}},
                          {"wt-12": frozenset({CANARY})})
    deps = run.wire(fn, ProvisioningDeps(things, MemoryState(), POLICY, lambda: now[0]))
    handle = run.handle(fn)
    handle(hook_input(), deps)  # a new name: reserved
    handle(hook_input("wt-08"), deps)  # a retry
    handle(hook_input("wt-12"), deps)  # a thing marked claimable: its attributes and groups are read
    handle(hook_input(certificateId=OTHER_CERT), deps)  # another device for the reserved name: refused
    now[0] += POLICY.reservation_s + 1
    handle(hook_input(certificateId=OTHER_CERT), deps)  # the reservation expired: taken over


SCENARIOS: dict[str, Callable[[Run], None]] = {
    "AnomalyAlertFunction": anomaly_alert,
    "DriftMonitorFunction": drift_monitor,
    "DataArrivalFunction": data_arrival,
    "TrainingCompletedFunction": training_completed,
    "ModelApprovedFunction": model_approved,
    "CompilationCompletedFunction": rollout,
    "DeploymentStatusFunction": rollout,
    "ConsoleFunction": console,
    "ProvisioningHookFunction": provisioning_hook,
}


@cache
def recorded(scenario: Callable[[Run], None]) -> tuple[Recorded, ...]:
    recorder = Recorder()
    with tempfile.TemporaryDirectory(prefix="iam-coverage-") as tmp:
        scenario(Run(Path(tmp), recorder))
    return tuple(recorder.records)


def requests_of(function: str) -> list[Recorded]:
    return [r for r in recorded(SCENARIOS[function]) if r.function == function]


# ------------------------------------------------------------------ tests


def test_every_function_has_a_scenario() -> None:
    assert sorted(SCENARIOS) == sorted(functions()), "add a scenario for each function (and drop removed ones)"


def why_refused(sts: list[Statement], req: Request) -> str:
    """The nearest grant and what keeps it from applying."""
    if req.action == UNWIRED:
        return "the function's AWS adapter itself refuses this call: its wiring in the service's aws_deps() lacks it"
    granting = [st for st in sts if st.effect == "Allow" and any(wildcard(a, req.action, False) for a in st.actions)]
    if not granting:
        return f"no statement grants {req.action}"
    on_resource = [st for st in granting if any(wildcard(r, req.resource) for r in st.resources)]
    if not on_resource:
        return "; ".join(f"{st.sid} grants it on {', '.join(st.resources)} only" for st in granting)
    context = dict(req.context)
    return "; ".join(f"{st.sid} grants it on this resource only if {op} {key} in {list(wanted)}"
                     for st in on_resource for op, key, wanted in st.conditions
                     if not condition_holds(op, key, wanted, context))


@pytest.mark.parametrize("function", sorted(SCENARIOS))
def test_every_call_is_allowed_by_the_functions_policy(function: str) -> None:
    records = requests_of(function)
    assert records, f"{function}: the scenario made no AWS call"
    sts = statements(function)
    missing: dict[tuple[str, str, tuple[Any, ...]], list[Recorded]] = {}
    for r in records:
        if not allowing(sts, r.request):  # grouped by call site, action and condition values
            missing.setdefault((r.call.split("(")[0], r.request.action, r.request.context), []).append(r)
    lines = [f"  {found[0].call} needs {found[0].request}" + (f" (and {len(found) - 1} like it)" if found[1:] else "")
             + f"\n      {why_refused(sts, found[0].request)}" for found in missing.values()]
    if missing:
        pytest.fail(f"{function}: calls its policy in template.yaml does not allow:\n" + "\n".join(lines),
                    pytrace=False)


def test_the_evaluator_reads_conditions_as_iam_does() -> None:
    st = Statement("S", "Allow", ("dynamodb:GetItem",), ("arn:t",),
                   (("ForAllValues:StringEquals", "dynamodb:LeadingKeys", ("a", "b")),))
    assert applies(st, request("dynamodb:GetItem", "arn:t", {"dynamodb:LeadingKeys": "a"}))
    assert not applies(st, request("dynamodb:GetItem", "arn:t", {"dynamodb:LeadingKeys": "c"}))
    assert not applies(st, request("dynamodb:PutItem", "arn:t", {"dynamodb:LeadingKeys": "a"}))
    listing = Statement("L", "Allow", ("s3:ListBucket",), ("arn:aws:s3:::b",),
                        (("StringLike", "s3:prefix", ("raw/capture/*",)),))
    assert applies(listing, request("s3:ListBucket", "arn:aws:s3:::b", {"s3:prefix": "raw/capture/t1/x.csv"}))
    assert not applies(listing, request("s3:ListBucket", "arn:aws:s3:::b", {"s3:prefix": "compiled/g/7/manifest.json"}))
    assert not applies(listing, request("s3:ListBucket", "arn:aws:s3:::b"))
    assert wildcard("arn:aws:s3:::b/compiled/*/neo.json", "arn:aws:s3:::b/compiled/g/1/neo.json")
