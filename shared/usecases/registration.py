"""training_completed: a finished training job becomes a registered model version (or a report).

Failed or Stopped: notify with the reason. Completed: read evaluation.json from model.tar.gz, apply
the quality gate, register the package (PendingManualApproval or Rejected with reasons), notify the
approvers with the metrics and the exact command. Either way the retraining policy runs again.

With `auto_approve_canary` (DriftAutoApproveCanary), a version that passed the gate and was trained for a drift
retraining request (the job took it: retraining.drift_requests_of) is approved for the canary group only, recorded
as automatic with the reason (approve_for_canary); a redelivery finishes an approval a crash interrupted and never
approves twice or over a person's decision.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.errors import BundleError, ObjectNotFound
from shared.gate import GateDecision, GatePolicy, apply_gate
from shared.ml.bundle import EVALUATION_FILE, MANIFEST_FILE, input_shape, read_tar_documents
from shared.observability import correlate, logger
from shared.ports import EventPublisher, ModelRegistry, ModelVersion, Notifier, ObjectStore, StateStore
from shared.usecases import state_keys as sk
from shared.usecases.approval_scope import (
    APPROVAL_SCOPE,
    AUTO_APPROVED,
    AUTO_APPROVER,
    SCOPE_CANARY,
    SCOPE_FLEET,
    canary_only,
)
from shared.usecases.lifecycle import ABSENT, APPROVE, GATE_REJECT, PENDING, REGISTER, REGISTRY, REGISTRY_STATUS
from shared.usecases.outcome import Outcome
from shared.usecases.retraining import drift_requests_of, release_active_job, request_check

TERMINAL = ("Completed", "Failed", "Stopped")
METADATA_LIMIT = 256


@dataclass
class RegistrationDeps:
    store: ObjectStore
    state: StateStore
    registry: ModelRegistry
    notifier: Notifier
    events: EventPublisher
    gate: GatePolicy
    group: str
    clock: Callable[[], datetime]
    auto_approve_canary: bool = False  # DriftAutoApproveCanary


def on_training_finished(job_name: str, status: str, failure_reason: str | None, model_key: str | None,
                         deps: RegistrationDeps) -> Outcome:
    if status not in TERMINAL:
        return Outcome("ignored", f"{job_name} is {status}")
    correlate(job_name=job_name)
    pk = sk.group_pk(deps.group)
    job = deps.state.get(pk, sk.JOB + job_name)
    if job is None:
        return Outcome("ignored", f"{job_name} was not started by group {deps.group}")
    if job.get("status") in TERMINAL and job.get("finished") and not job.get("notified"):
        # recorded, but its notice failed or the function died before sending it: handled again (idempotent)
        redone = (_completed(job_name, job, model_key, deps) if job["status"] == "Completed"
                  else _failed(job_name, job, str(job["status"]), str(job.get("failure_reason") or ""), deps))
        _after_job(job_name, job, deps)
        return Outcome("resumed", redone.detail, redone.data)
    if job.get("status") in TERMINAL and job.get("finished"):
        if job.get("gate") == "passed" and job.get("model_version") is not None:
            _auto_approve(int(job["model_version"]), job_name, job, deps, notify=True)  # a crash came before it?
        _after_job(job_name, job, deps)
        return Outcome("duplicate", f"{job_name} was already handled ({job['status']})")
    correlate(dataset_hash=job.get("dataset_hash"))
    if status != "Completed":
        outcome = _failed(job_name, job, status, failure_reason or "no reason given", deps)
    else:
        outcome = _completed(job_name, job, model_key, deps)
    _after_job(job_name, job, deps)
    return outcome


def _failed(job_name: str, job: dict[str, Any], status: str, reason: str, deps: RegistrationDeps) -> Outcome:
    pk = sk.group_pk(deps.group)
    first = deps.state.update_if(pk, sk.JOB + job_name, {"status": status, "failure_reason": reason,
                                                         "finished": True, "ended_at": deps.clock().isoformat()},
                                 {"status": "InProgress"})
    deps.state.update_if(pk, sk.DATASET + job["dataset_hash"], {"status": "failed"}, {"status": "running"})
    if first or _unsent(job):
        deps.notifier.publish("approvals", f"Training job {job_name} {status.lower()}",
                              f"Training job {job_name} ({status}) did not produce a model.\nReason: {reason}\n\n"
                              f"Retry it with: nacelle jobs retry {job_name}",
                              {"job_name": job_name, "status": status})
        _sent(job_name, deps)
    logger.warning("training job did not complete", status=status, reason=reason)
    return Outcome("failed", reason, {"job_name": job_name, "status": status})


def _completed(job_name: str, job: dict[str, Any], model_key: str | None, deps: RegistrationDeps) -> Outcome:
    pk = sk.group_pk(deps.group)
    model_key = model_key or f"jobs/{job_name}/output/model.tar.gz"
    try:
        docs = read_tar_documents(deps.store.get(model_key), source=deps.store.uri(model_key))
    except (BundleError, ObjectNotFound) as exc:
        return _failed(job_name, job, "Failed", f"completed without a usable model: {exc}", deps)
    manifest, evaluation = docs[MANIFEST_FILE], docs[EVALUATION_FILE]
    decision = apply_gate(evaluation, deps.gate)
    state = REGISTRY.target(ABSENT, REGISTER if decision.passed else GATE_REJECT)
    version = deps.registry.register(deps.group, model_key, REGISTRY_STATUS[state], _description(decision),
                                     _metadata(job_name, manifest, decision), idempotency_token=job_name)
    correlate(model_version=version.version)
    auto = _auto_approve(version.version, job_name, job, deps, notify=False) if decision.passed else None
    version = auto or version
    first = deps.state.update_if(pk, sk.JOB + job_name, {"status": "Completed", "finished": True,
                                                         "model_version": version.version,
                                                         "gate": "passed" if decision.passed else "rejected",
                                                         "ended_at": deps.clock().isoformat()},
                                 {"status": "InProgress"})
    deps.state.update_if(pk, sk.DATASET + job["dataset_hash"], {"status": "completed"}, {"status": "running"})
    dataset = deps.state.get(pk, sk.DATASET + job["dataset_hash"]) or {}
    watermark = deps.state.get(pk, sk.WATERMARK) or {}
    trained_until = float(dataset.get("max_accepted_at", 0.0))
    if trained_until > float(watermark.get("trained_until", 0.0)):
        deps.state.put(pk, sk.WATERMARK, {"trained_until": trained_until, "dataset_hash": job["dataset_hash"]})
    if first or _unsent(job):
        _notify(version, decision, job_name, deps, automatic=canary_only(version))
        _sent(job_name, deps)
    logger.info("model registered", model_version=version.version, status=version.status,
                reasons=decision.reasons)
    return Outcome("registered", f"version {version.version} {version.status}",
                   {"version": version.version, "status": version.status, "reasons": decision.reasons})


def _unsent(job: dict[str, Any]) -> bool:
    """A job recorded as finished (as it was read) whose notice was never recorded as sent: a redelivery sends it
    (at least once: a crash between the publish and its record sends it twice)."""
    return bool(job.get("finished")) and not job.get("notified")


def _sent(job_name: str, deps: RegistrationDeps) -> None:
    deps.state.update_if(sk.group_pk(deps.group), sk.JOB + job_name, {"notified": True}, {})


def _auto_approve(version: int, job_name: str, job: dict[str, Any], deps: RegistrationDeps,
                  notify: bool) -> ModelVersion | None:
    """The canary-only approval of a drift retraining's version, when the setting is on; None when not made now.
    `notify`: tell the approvers here (the first delivery's registration notice says it otherwise)."""
    if not deps.auto_approve_canary:
        return None
    requests = drift_requests_of(deps.state, deps.group, job_name, job)
    if not requests:
        return None
    details = [deps.state.get(sk.group_pk(deps.group), key) or {} for key in requests]
    turbines = sorted({str(t) for d in details for t in d.get("turbines") or []})
    reason = (f"trained by {job_name} for the drift retraining request of model "
              f"{', '.join('v' + k.removeprefix(sk.DRIFT_RETRAIN) for k in requests)} (drift on "
              f"{', '.join(turbines) or 'the fleet'}) and passed the quality gate")
    approved = approve_for_canary(deps.registry, deps.group, version, reason, deps.clock())
    if approved is not None:
        logger.warning("approved automatically for the canary group only", model_version=version, requests=requests)
        if notify:
            deps.notifier.publish("approvals", f"Model {deps.group} v{version} {AUTO_SUBJECT}",
                                  f"{_promotion_hint(approved)}",
                                  {"model_version": str(version), "status": "Approved", "job_name": job_name,
                                   "scope": SCOPE_CANARY})
    return approved


AUTO_SUBJECT = "approved automatically for the canary only"


def _promotion_hint(version: ModelVersion) -> str:
    return (f"{version.metadata.get(AUTO_APPROVED, '')}\n\nIt goes to the canary group and soaks there; promotion to "
            f"the fleet stays yours: approve it again (nacelle models approve {version.version} --reason \"...\", or "
            "Approve in the console) and the rollout promotes it once the canary has soaked.")


def approve_for_canary(registry: ModelRegistry, group: str, version: int, reason: str,
                       now: datetime) -> ModelVersion | None:
    """The automatic approval of a version for the canary group only; None when the version is no longer pending (a
    person decided, or an earlier delivery approved it). The scope is written before the status: the approval event
    that follows (compile, then the canary) must find it. A person deciding at the same moment wins: a status that
    left Pending while the scope was written takes the scope back (and a person's approval that reads the scope
    after this write widens it to the fleet itself: shared/usecases/approval.py)."""
    current = registry.get(group, version)
    if current.status != REGISTRY_STATUS[PENDING]:
        return None
    status = REGISTRY_STATUS[REGISTRY.target(PENDING, APPROVE)]
    registry.update_metadata(group, version, {APPROVAL_SCOPE: SCOPE_CANARY, AUTO_APPROVED: metadata_value(
        f"{now.isoformat(timespec='seconds')}: {reason}")})
    if registry.get(group, version).status != REGISTRY_STATUS[PENDING]:
        registry.update_metadata(group, version, {APPROVAL_SCOPE: SCOPE_FLEET})
        return None
    return registry.set_status(group, version, status, f"automatic approval for the canary group only: {reason}",
                               AUTO_APPROVER)


def _after_job(job_name: str, job: dict[str, Any], deps: RegistrationDeps) -> None:
    """Free the group for the next job and re-run the retraining policy (both idempotent)."""
    if release_active_job(deps.state, deps.group, job_name):
        request_check(deps.events, deps.group, f"{job_name} ended", deps.clock(),
                      {"job_name": job_name, "dataset_hash": str(job.get("dataset_hash", ""))})


def _description(decision: GateDecision) -> str:
    if decision.passed:
        return "Passed the quality gate. " + "; ".join(decision.notes)
    return "Rejected by the quality gate: " + "; ".join(decision.reasons)


def _metadata(job_name: str, manifest: dict[str, Any], decision: GateDecision) -> dict[str, str]:
    lineage = manifest.get("lineage", {})
    model = manifest.get("model", {})
    meta = {"nacelle:token": job_name, "nacelle:job": job_name,
            "nacelle:dataset_hash": str(lineage.get("dataset_hash") or ""),
            "nacelle:code_version": str(lineage.get("code_version") or ""),
            "nacelle:spec_digest": str(lineage.get("spec_digest") or ""),
            "nacelle:gate": "passed" if decision.passed else "rejected",
            "nacelle:family": str(model.get("family") or ""),
            "nacelle:input_shape": ",".join(str(x) for x in input_shape(manifest))}
    selection = manifest.get("selection") or {}
    candidates = [f"{c['family']} f1 {_figure(c['validation'].get('event_f1'))} "
                  f"fa {_figure(c['validation'].get('false_alarms_per_turbine_day'))}"
                  for c in selection.get("candidates") or ()]
    candidates += [f"{s['family']} not fitted" for s in selection.get("skipped") or ()]
    if candidates:
        meta["nacelle:candidates"] = " / ".join(candidates)
    if decision.reasons:
        meta["nacelle:gate_reasons"] = metadata_value(" / ".join(decision.reasons))
    if decision.hard_examples:
        meta["nacelle:hard_examples"] = decision.hard_examples.replace(";", " /").replace(",", " /")
    for name, value in decision.figures.items():
        if value is not None:
            meta[f"metric:{name}"] = f"{value:.4g}"
    for name, value in (decision.champion_figures or {}).items():
        if value is not None and name in ("event_f1", "false_alarms_per_turbine_day"):
            meta[f"champion:{name}"] = f"{value:.4g}"
    return {key: metadata_value(value) for key, value in meta.items()}


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def metadata_value(text: str) -> str:
    """SageMaker metadata values allow letters, digits, spaces and _.:/=+-@ only, at most 256 characters."""
    cleaned = " ".join(re.sub(r"[^\w\s.:/=+\-@]", " ", text).split())
    return cleaned[:METADATA_LIMIT].strip() or "-"


def _notify(version: ModelVersion, decision: GateDecision, job_name: str, deps: RegistrationDeps,
            automatic: bool = False) -> None:
    lines = [f"{name:30s} {'-' if value is None else f'{value:.3f}'}" for name, value in decision.figures.items()]
    if automatic:
        subject = f"Model {deps.group} v{version.version} passed the gate: {AUTO_SUBJECT}"
        action = _promotion_hint(version)
    elif decision.passed:
        subject = f"Model {deps.group} v{version.version} passed the quality gate: approve to roll out"
        # the ARN when the registry gave it; else the CLI looks it up by the versioned package's name
        arn = version.arn or (f'"$(aws sagemaker describe-model-package --model-package-name '
                              f'{deps.group}/{version.version} --query ModelPackageArn --output text)"')
        action = (f"Approve it locally:   nacelle models approve {version.version}\n"
                  f"or on AWS:            aws sagemaker update-model-package --model-package-arn {arn} "
                  f"--model-approval-status Approved")
    else:
        subject = f"Model {deps.group} v{version.version} was rejected by the quality gate"
        action = "Reasons:\n- " + "\n- ".join(decision.reasons)
    body = (f"Training job {job_name} registered {deps.group} version {version.version} "
            f"({version.status}).\n\nMetrics on held-out data:\n" + "\n".join(lines)
            + "\n\n" + "\n".join(decision.notes) + "\n\n" + action)
    deps.notifier.publish("approvals", subject, body,
                          {"model_version": str(version.version), "status": version.status, "job_name": job_name})
