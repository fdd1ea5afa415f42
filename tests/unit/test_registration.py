"""training_completed's use case: quality gate, registration, notifications, one package per job."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from shared.gate import GatePolicy
from shared.ports import StateStore
from shared.usecases import state_keys as sk
from shared.usecases.registration import RegistrationDeps, on_training_finished
from tests.fakes import Clock, MemoryRegistry, MemoryState, MemoryStore, RecordingEvents, RecordingNotifier

GROUP = "nacelle-turbine"
JOB = "nacelle-0123456789abcdef-1"


def metrics(f1: float, recall_mh: float, fa: float, faults: int = 10) -> dict:
    groups = {"medium": {"count": 10, "detected": round(10 * recall_mh), "recall": recall_mh,
                         "mean_delay_s": 5.0}}
    return {"event": {"precision": f1, "recall": f1, "f1": f1, "mean_delay_s": 5.0, "per_fault": {},
                      "per_severity": groups},
            "point": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "far": 0.01, "mar": 0.5,
                      "confusion": {"tp": 5, "fp": 5, "fn": 5, "tn": 495}},
            "false_alarms_per_turbine_day": fa, "counts": {"faults": faults}}


MANIFEST = {  # the parts of a format-2 manifest registration reads
    "lineage": {"dataset_hash": "ab" * 32, "code_version": "0.1.0+x", "spec_digest": "cd" * 32},
    "model": {"family": "pca", "components": 12, "inputs": {"windows": ["batch", 6, 150]}},
    "selection": {"chosen": "pca", "candidates": [
        {"family": "pca", "validation": {"event_f1": 0.9512, "false_alarms_per_turbine_day": 0.25}},
        {"family": "conv1d", "validation": {"event_f1": None, "false_alarms_per_turbine_day": 1.5}}]},
}


def model_tar(candidate: dict, champion: dict | None = None, manifest: dict | None = None) -> bytes:
    docs = {"manifest.json": MANIFEST if manifest is None else manifest,
            "evaluation.json": {"candidate": candidate,
                                "champion": {"metrics": champion, "lineage": {}} if champion else None}}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, doc in docs.items():
            blob = json.dumps(doc).encode()
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


def running_job(state: StateStore, job: str = JOB) -> None:
    """What training_completed finds for a job the group started."""
    pk = sk.group_pk(GROUP)
    state.put(pk, sk.JOB + job, {"job_name": job, "dataset_hash": "ab" * 32, "status": "InProgress"})
    state.put(pk, sk.DATASET + "ab" * 32, {"status": "running", "max_accepted_at": 123.0})
    state.put(pk, sk.ACTIVE_JOB, {"job_name": job})


@pytest.fixture
def deps() -> RegistrationDeps:
    clock = Clock()
    d = RegistrationDeps(store=MemoryStore(), state=MemoryState(), registry=MemoryRegistry(),
                         notifier=RecordingNotifier(), events=RecordingEvents(clock), gate=GatePolicy(),
                         group=GROUP, clock=clock)
    d.registry.ensure_group(GROUP)
    running_job(d.state)
    return d


def finish(deps, status="Completed", reason=None):
    return on_training_finished(JOB, status, reason, f"jobs/{JOB}/output/model.tar.gz", deps)


def test_a_good_model_waits_for_approval_with_metrics_and_lineage(deps):
    deps.store.put(f"jobs/{JOB}/output/model.tar.gz", model_tar(metrics(0.95, 1.0, 0.5)))
    outcome = finish(deps)
    assert outcome.action == "registered" and outcome.data["status"] == "PendingManualApproval"
    (version,) = deps.registry.list(GROUP)
    assert version.metadata["metric:event_f1"] == "0.95"
    assert version.metadata["nacelle:dataset_hash"] == "ab" * 32 and version.metadata["nacelle:job"] == JOB
    assert version.metadata["nacelle:family"] == "pca"
    assert version.metadata["nacelle:input_shape"] == "1 6 150"  # the graph's input (commas are not allowed)
    assert version.metadata["nacelle:candidates"] == "pca f1 0.951 fa 0.25 / conv1d f1 - fa 1.5"
    assert version.metadata["metric:point_far"] == "0.01" and version.metadata["metric:point_mar"] == "0.5"
    (message,) = deps.notifier.messages
    assert message.topic == "approvals" and "nacelle models approve 1" in message.message
    assert "update-model-package" in message.message
    assert f"--model-package-arn {deps.registry.get(GROUP, 1).arn} --model-approval-status" in message.message
    # the group is free again and the policy re-runs; the data counts as trained on
    assert deps.state.get(sk.group_pk(GROUP), sk.ACTIVE_JOB)["job_name"] == ""
    (check,) = [p.event for p in deps.events.published]
    assert check.detail_type == "Nacelle Retrain Check"
    assert check.detail["correlation"] == {"job_name": JOB, "dataset_hash": "ab" * 32}  # carried onwards
    assert deps.state.get(sk.group_pk(GROUP), sk.WATERMARK)["trained_until"] == 123.0


def test_a_weak_model_is_rejected_with_reasons(deps):
    deps.store.put(f"jobs/{JOB}/output/model.tar.gz", model_tar(metrics(0.6, 0.7, 5.0)))
    outcome = finish(deps)
    assert outcome.data["status"] == "Rejected"
    reasons = " ".join(outcome.data["reasons"])
    assert "event_f1 0.600 is below" in reasons and "false_alarms_per_turbine_day 5.00" in reasons
    assert "rejected" in deps.notifier.messages[0].subject


def test_regression_against_the_champion_on_the_same_data_rejects(deps):
    deps.store.put(f"jobs/{JOB}/output/model.tar.gz", model_tar(metrics(0.90, 1.0, 0.5), metrics(0.97, 1.0, 0.2)))
    outcome = finish(deps)
    assert outcome.data["status"] == "Rejected" and "regresses against the champion" in outcome.data["reasons"][0]


def test_same_event_three_times_gives_one_package_and_one_notification(deps):
    deps.store.put(f"jobs/{JOB}/output/model.tar.gz", model_tar(metrics(0.95, 1.0, 0.5)))
    actions = [finish(deps).action for _ in range(3)]
    assert actions == ["registered", "duplicate", "duplicate"]
    assert len(deps.registry.list(GROUP)) == 1 and len(deps.notifier.messages) == 1
    assert len(deps.events.published) == 1


def test_failed_job_notifies_the_reason_and_frees_the_group(deps):
    outcome = finish(deps, "Failed", "AlgorithmError: too little normal data")
    assert outcome.action == "failed"
    (message,) = deps.notifier.messages
    assert "too little normal data" in message.message and f"nacelle jobs retry {JOB}" in message.message
    assert deps.registry.list(GROUP) == []
    assert deps.state.get(sk.group_pk(GROUP), sk.DATASET + "ab" * 32)["status"] == "failed"


def test_in_progress_and_foreign_jobs_are_ignored(deps):
    assert finish(deps, "InProgress").action == "ignored"
    assert on_training_finished("someone-else", "Completed", None, None, deps).action == "ignored"


def test_completed_without_a_readable_model_is_a_failure(deps):
    deps.store.put(f"jobs/{JOB}/output/model.tar.gz", b"not a tar")
    assert finish(deps).action == "failed"


def test_gate_reasons_are_stored_in_sagemakers_metadata_alphabet(deps):
    from shared.aws.registry import validate_metadata

    deps.store.put(f"jobs/{JOB}/output/model.tar.gz", model_tar(metrics(0.6, 0.7, 5.0)))
    finish(deps)
    (version,) = deps.registry.list(GROUP)
    validate_metadata(version.metadata)  # raises on characters or lengths SageMaker refuses


def test_too_few_faults_to_judge_recall_are_reported_not_enforced(deps):
    deps.store.put(f"jobs/{JOB}/output/model.tar.gz", model_tar(metrics(0.5, 0.5, 0.5, faults=3)))
    outcome = finish(deps)
    assert outcome.data["status"] == "PendingManualApproval"
    assert "only 3 scored fault(s)" in deps.registry.list(GROUP)[0].description


def test_a_family_left_unfitted_is_named_among_the_candidates(deps):
    pca = {"family": "pca", "validation": {"event_f1": 0.9512, "false_alarms_per_turbine_day": 0.25}}
    manifest = {**MANIFEST, "selection": {"chosen": "pca", "candidates": [pca],
                                          "skipped": [{"family": "conv1d", "reason": "pca scores 1.000"}]}}
    deps.store.put(f"jobs/{JOB}/output/model.tar.gz", model_tar(metrics(0.95, 1.0, 0.5), manifest=manifest))
    finish(deps)
    (version,) = deps.registry.list(GROUP)
    assert version.metadata["nacelle:candidates"] == "pca f1 0.951 fa 0.25 / conv1d not fitted"


def test_a_manifest_without_model_or_selection_still_registers(deps):
    bare = {"lineage": MANIFEST["lineage"]}
    deps.store.put(f"jobs/{JOB}/output/model.tar.gz", model_tar(metrics(0.95, 1.0, 0.5), manifest=bare))
    assert finish(deps).action == "registered"
    (version,) = deps.registry.list(GROUP)
    assert version.metadata["nacelle:family"] == "-" and version.metadata["nacelle:input_shape"] == "1 0 0"
    assert "nacelle:candidates" not in version.metadata


def test_an_approval_notice_without_the_packages_arn_looks_it_up_instead_of_leaving_it_empty() -> None:
    from types import SimpleNamespace

    from shared.gate import GateDecision
    from shared.ports import ModelVersion
    from shared.usecases.registration import _notify

    deps = SimpleNamespace(notifier=RecordingNotifier(), group=GROUP)
    version = ModelVersion(GROUP, 4, "PendingManualApproval", "jobs/j/output/model.tar.gz", {}, arn="")
    _notify(version, GateDecision(True, [], {"event_f1": 0.9}), "j", deps)  # type: ignore[arg-type]
    (message,) = deps.notifier.messages
    assert "--model-package-arn --" not in message.message
    assert (f'--model-package-arn "$(aws sagemaker describe-model-package --model-package-name {GROUP}/4 '
            f'--query ModelPackageArn --output text)" --model-approval-status Approved') in message.message


def test_a_registration_notice_that_failed_is_sent_by_the_redelivery_once(deps):
    deps.notifier.refusals = 1
    deps.store.put(f"jobs/{JOB}/output/model.tar.gz", model_tar(metrics(0.95, 1.0, 0.5)))
    with pytest.raises(ConnectionError):
        finish(deps)  # registered, then the publish failed
    assert finish(deps).action == "resumed"
    assert [finish(deps).action for _ in range(2)] == ["duplicate", "duplicate"]
    assert [v.version for v in deps.registry.list(GROUP)] == [1]
    (notice,) = deps.notifier.messages
    assert notice.attributes["model_version"] == "1"


def test_a_training_failure_notice_that_failed_is_sent_by_the_redelivery_once(deps):
    deps.notifier.refusals = 1
    with pytest.raises(ConnectionError):
        finish(deps, "Failed", "AlgorithmError: OOM")
    finish(deps, "Failed", "AlgorithmError: OOM")
    finish(deps, "Failed", "AlgorithmError: OOM")
    (notice,) = deps.notifier.messages
    assert "AlgorithmError: OOM" in notice.message
