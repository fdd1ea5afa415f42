"""Data and jobs as operators read them: recent uploads, quarantined files with their validation reports, the new
data against the retraining threshold and quiet period (shared.usecases.retraining.retrain_status), training and
compile jobs, and the retry of a failed one."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from shared.errors import JobNotFound, NacelleError, NotFound
from shared.usecases import state_keys as sk
from shared.usecases.compilation import COMPILE, retry_compile
from shared.usecases.operator import OperatorDeps
from shared.usecases.outcome import Outcome
from shared.usecases.retraining import retrain_status, retry_training

FILE_FIELDS = ("key", "status", "kind", "rows", "size", "turbines", "start", "end", "checked_at", "accepted_at",
               "warnings", "errors", "quarantine_key", "retired_by", "retired_at", "retired_reason")
REPORT_PROBLEMS = 20  # of a quarantined file's report, the first ones


def status(deps: OperatorDeps) -> dict[str, Any]:
    s = retrain_status(deps.arrival)
    return {**asdict(s), "would_start": s.blocker is None}


def files(deps: OperatorDeps) -> list[dict[str, Any]]:
    """Every recorded upload (raw data and labels), the latest checked first."""
    items = deps.arrival.state.query(sk.group_pk(deps.arrival.policy.group), sk.FILE)
    docs = [{k: item.get(k) for k in FILE_FIELDS if item.get(k) is not None} for item in items]
    return sorted(docs, key=lambda d: str(d.get("checked_at") or ""), reverse=True)


def report(deps: OperatorDeps, quarantine_key: str) -> dict[str, Any] | None:
    """A quarantined file's validation report: its problems (the first few), counts and summary."""
    try:
        doc = json.loads(deps.arrival.store.get(f"{quarantine_key}.report.json"))
    except (NotFound, ValueError):
        return None
    errors, warnings = list(doc.get("errors") or []), list(doc.get("warnings") or [])
    return {"errors": errors[:REPORT_PROBLEMS], "error_count": len(errors), "warnings": warnings[:REPORT_PROBLEMS],
            "warning_count": len(warnings), "rows": doc.get("rows"), "source": doc.get("source"),
            "spec_name": doc.get("spec_name")}


def data_view(deps: OperatorDeps, recent: int) -> dict[str, Any]:
    docs = files(deps)
    quarantined = [{**d, "report": report(deps, str(d["quarantine_key"]))} for d in docs
                   if d.get("status") == "quarantined" and d.get("quarantine_key")][:recent]
    return {"retraining": status(deps), "recent": docs[:recent], "quarantined": quarantined,
            "counts": {s: sum(d.get("status") == s for d in docs) for s in ("accepted", "quarantined", "retired")}}


def _state_jobs(deps: OperatorDeps) -> list[dict[str, Any]]:
    pk = sk.group_pk(deps.group)
    out = [{"name": j.get("job_name"), "kind": j.get("kind") or "training", "status": j.get("status"),
            "created_at": j.get("started_at"), "failure_reason": j.get("failure_reason"),
            "model_version": j.get("model_version"), "attempt": j.get("attempt")}
           for j in deps.arrival.state.query(pk, sk.JOB)]
    out += [{"name": c.get("job_name"), "kind": "compile", "status": c.get("status"), "created_at": c.get("started_at"),
             "failure_reason": c.get("failure_reason"), "model_version": c.get("version"), "attempt": c.get("attempt")}
            for c in deps.arrival.state.query(pk, COMPILE)]
    return sorted(out, key=lambda d: str(d.get("created_at") or ""), reverse=True)


def jobs(deps: OperatorDeps) -> list[dict[str, Any]]:
    return deps.jobs.jobs() if deps.jobs is not None else _state_jobs(deps)


def job(deps: OperatorDeps, name: str, log_lines: int) -> dict[str, Any]:
    if deps.jobs is not None:
        return deps.jobs.job(name, log_lines)
    found = next((j for j in _state_jobs(deps) if j["name"] == name), None)
    if found is None:
        raise JobNotFound(f"no job {name!r}")
    return {**found, "progress": None, "log_tail": None}


def retry(deps: OperatorDeps, name: str) -> Outcome:
    """Run a failed job again as its next attempt (`nacelle jobs retry`)."""
    deps.changed()
    found = job(deps, name, 0)
    if found.get("kind") == "compile":
        if deps.compile is None:
            raise NacelleError("compile retries are not offered here (`nacelle jobs retry` on the stack)")
        version = found.get("model_version")
        if version is None:
            raise NotFound(f"{name}: no model version recorded for this compile job")
        return retry_compile(int(version), deps.compile)
    if not deps.training_retry:
        raise NacelleError("training retries are not offered here (on AWS: upload the data again under new names, "
                           "or retry on a local stack)")
    return retry_training(deps.arrival, name)
