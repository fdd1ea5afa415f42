"""data_arrival: validate each raw file, then decide when to retrain.

A file is validated against the group's feature spec; a bad one is copied to quarantine/ with its
report (the original stays untouched) and reported. Accepted files are recorded. The retraining
policy runs on a delayed "retrain check" event (the debounce), fires when the accepted data not yet
trained on reaches a minimum and no job is running, and starts one job per dataset content hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath
from typing import Any

from shared import settings as defaults
from shared.errors import Conflict, DataError, JobAlreadyExists, JobNotFound, NotFound, ObjectNotFound
from shared.events import NACELLE_SOURCE, RETRAIN_CHECK
from shared.ml.metrics import Fault, parse_false_alarms, parse_labels
from shared.ml.spec import FeatureSpec, default_spec, parse_spec_text
from shared.ml.validation import (
    MAX_TEXT_BYTES,
    ProblemLog,
    ValidationReport,
    refuse_too_large,
    validate_bytes,
)
from shared.observability import correlate, logger
from shared.ports import (
    Envelope,
    EventPublisher,
    ModelRegistry,
    ModelVersion,
    Notifier,
    ObjectStore,
    StateStore,
    TrainingRequest,
    TrainingService,
)
from shared.usecases import state_keys as sk
from shared.usecases.approval_scope import canary_only
from shared.usecases.capture_labels import capture_problems, link_captures
from shared.usecases.outcome import Outcome

RAW_PREFIX = "raw/"
LABELS_PREFIX = "labels/"


MIN_TRAINING_ROWS = 300  # the training job refuses fewer usable samples (Hyperparameters.min_samples)


@dataclass(frozen=True)
class RetrainPolicy:
    group: str
    min_new_turbine_hours: float = defaults.MIN_NEW_TURBINE_HOURS
    quiet_period_s: float = defaults.QUIET_PERIOD_S
    hyperparameters: Mapping[str, str] = field(default_factory=dict)
    min_rows: int = MIN_TRAINING_ROWS  # in all accepted data: a job on fewer could only fail
    max_file_bytes: int = MAX_TEXT_BYTES  # of a file's (decompressed) text: max_file_bytes() for a memory size


# A file's validation peaks at about 8 times its text in memory; the rest is the runtime and the bytes read.
VALIDATION_MEMORY_FACTOR = 12


def max_file_bytes(memory_mb: int | None) -> int:
    """The largest file text validation takes on within `memory_mb` (a Lambda function's memory size; None:
    validation's own bound): a larger file is quarantined as file_too_large, where it would otherwise crash
    the function out of memory at every delivery and end at the failure destination without a report."""
    if memory_mb is None:
        return MAX_TEXT_BYTES
    return min(MAX_TEXT_BYTES, memory_mb * 2**20 // VALIDATION_MEMORY_FACTOR)


@dataclass
class ArrivalDeps:
    store: ObjectStore
    state: StateStore
    notifier: Notifier
    events: EventPublisher
    training: TrainingService
    registry: ModelRegistry
    policy: RetrainPolicy
    clock: Callable[[], datetime]


def load_group_spec(store: ObjectStore, group: str) -> tuple[FeatureSpec, str | None]:
    """The group's spec from specs/<group>/ (one YAML or JSON file), else the default spec."""
    files = [o.key for o in store.list(f"specs/{group}/") if o.key.endswith((".yaml", ".yml", ".json"))]
    if not files:
        return default_spec(), None
    return parse_spec_text(store.get(files[0]).decode("utf-8"), files[0]), files[0]


def on_object_created(key: str, deps: ArrivalDeps) -> Outcome:
    outcome = _on_object(key, deps)
    if outcome.action in ("accepted", "duplicate"):  # a redelivery links too: the first may have died before
        link_captures(key, deps.store, deps.state, deps.policy.group)  # labels meet data (capture_labels.py)
    return outcome


def _on_object(key: str, deps: ArrivalDeps) -> Outcome:
    if key.startswith(LABELS_PREFIX) and not key.endswith("/"):
        return on_labels_created(key, deps)
    if not key.startswith(RAW_PREFIX) or key.endswith("/"):
        return Outcome("ignored", f"{key} is not a raw data object")
    pk = sk.group_pk(deps.policy.group)
    fresh = _new_content(key, deps)
    if isinstance(fresh, Outcome):
        return fresh
    previous, data = fresh
    spec, _ = load_group_spec(deps.store, deps.policy.group)
    parts = PurePosixPath(key).parts
    turbine_hint = parts[-2] if len(parts) > 2 else None  # raw/<turbine>/<file>: the file's folder
    report = validate_bytes(data, key, spec, turbine_hint, deps.policy.max_file_bytes)
    report.errors.extend(capture_problems(key, report, spec.time_column))
    now = deps.clock()
    record: dict[str, Any] = {"key": key, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                              "rows": report.rows, "turbines": report.turbines, "start": report.start,
                              "end": report.end, "checked_at": now.isoformat(),
                              "warnings": len(report.warnings)}
    if previous is not None:
        record["replaces_sha256"] = previous.get("sha256")
    if not report.ok:
        return _quarantine(key, data, report.to_dict(), report.summary(), record, deps, previous)
    record.update(status="accepted", accepted_at=now.timestamp(), duration_s=_duration(report.start, report.end))
    if not _record_file(pk, key, record, previous, deps):
        return Outcome("duplicate", f"{key} was recorded concurrently")
    _schedule_check(key, deps)
    logger.info("file accepted", key=key, rows=report.rows, warnings=len(report.warnings))
    return Outcome("accepted", f"{key}: {report.rows} rows, {len(report.warnings)} warning(s)", record)


def _new_content(key: str, deps: ArrivalDeps) -> tuple[dict[str, Any] | None, bytes] | Outcome:
    """(the key's previous record, its bytes) when there is content to check: a new key, or a new
    version of one (S3 versioning: other content under the same name); else the Outcome."""
    previous = deps.state.get(sk.group_pk(deps.policy.group), sk.FILE + key)
    try:
        size = deps.store.size(key)
        if size > deps.policy.max_file_bytes:  # its text is no shorter (but for gzip framing): refused unread
            return _too_large(key, size, previous, deps)
        data = deps.store.get(key)
    except ObjectNotFound:
        return Outcome("ignored", f"{key} no longer exists")
    if previous is None or previous.get("sha256") != hashlib.sha256(data).hexdigest():
        return previous, data
    if previous["status"] == "accepted" and previous.get("kind") != "labels" and not previous.get("check_scheduled"):
        _schedule_check(key, deps)  # the first delivery died between recording and scheduling
    return Outcome("duplicate", f"{key} was already {previous['status']}")


def on_labels_created(key: str, deps: ArrivalDeps) -> Outcome:
    """A labels file is validated on arrival like a data file: a bad one is quarantined with its report
    and never joins a dataset (it would fail every training after it)."""
    pk = sk.group_pk(deps.policy.group)
    fresh = _new_content(key, deps)
    if isinstance(fresh, Outcome):
        return fresh
    previous, data = fresh
    record: dict[str, Any] = {"key": key, "kind": "labels", "sha256": hashlib.sha256(data).hexdigest(),
                              "size": len(data), "checked_at": deps.clock().isoformat()}
    try:
        faults = parse_labels(data.decode("utf-8"), key)
        parse_false_alarms(data.decode("utf-8"), key)
    except (DataError, UnicodeDecodeError) as exc:
        problem = str(exc) if isinstance(exc, DataError) else f"{key}: not UTF-8 text ({exc})"
        report = {"key": key, "ok": False, "errors": [problem], "warnings": []}
        return _quarantine(key, data, report, problem, record, deps, previous)
    record.update(status="accepted", accepted_at=deps.clock().timestamp(), episodes=len(faults))
    if not _record_file(pk, key, record, previous, deps):
        return Outcome("duplicate", f"{key} was recorded concurrently")
    logger.info("labels accepted", key=key, episodes=len(faults))
    return Outcome("accepted", f"{key}: {len(faults)} labelled episode(s)", record)


def retire_file(deps: ArrivalDeps, key: str, actor: str, reason: str) -> dict[str, Any]:
    """Leave a raw or labels object out of every future dataset without touching it (who, when, why
    recorded); a new version of the key is new data again."""
    if not reason.strip():
        raise Conflict(f"retiring {key} needs a --reason")
    pk = sk.group_pk(deps.policy.group)
    record = deps.state.get(pk, sk.FILE + key)
    if record is None:
        raise NotFound(f"{key} was never received by group {deps.policy.group}")
    if record["status"] == "retired":
        return record
    changes = {"status": "retired", "retired_by": actor, "retired_at": deps.clock().isoformat(),
               "retired_reason": reason, "status_before_retirement": record["status"]}
    if not deps.state.update_if(pk, sk.FILE + key, changes, {"status": record["status"]}):
        raise Conflict(f"{key} changed while being retired; try again")
    logger.info("file retired", key=key, actor=actor, reason=reason)
    return {**record, **changes}


def consistent_files(files: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], str]]]:
    """The accepted files that can form one dataset: a file holding a turbine's time range that an
    earlier-accepted file already holds is left out (the training would refuse the overlap); returns
    (kept, [(left out, why)])."""
    kept: list[dict[str, Any]] = []
    left_out: list[tuple[dict[str, Any], str]] = []
    for f in sorted(files, key=lambda f: (float(f["accepted_at"]), f["key"])):
        clash = next((k for k in kept if set(k.get("turbines") or []) & set(f.get("turbines") or [])
                      and k.get("start") and f.get("start") and str(f["start"]) <= str(k["end"])
                      and str(k["start"]) <= str(f["end"])), None)
        if clash is None:
            kept.append(f)
        else:
            shared = ", ".join(sorted(set(clash["turbines"]) & set(f["turbines"])))
            left_out.append((f, f"turbine(s) {shared} from {f['start']} to {f['end']} overlap {clash['key']} "
                                f"({clash['start']} to {clash['end']}), accepted earlier"))
    return kept, left_out


def _exclude(record: dict[str, Any], why: str, deps: ArrivalDeps) -> None:
    """Leave an accepted file out of every future dataset, once, with a data-quality notice; the object
    itself stays untouched."""
    if deps.state.update_if(sk.group_pk(deps.policy.group), sk.FILE + record["key"],
                            {"status": "excluded", "excluded_reason": why,
                             "excluded_at": deps.clock().isoformat()}, {"status": "accepted"}):
        deps.notifier.publish(
            "data_quality", f"Left out of training: {record['key']}",
            f"{record['key']} was accepted alone but cannot join the dataset: {why}.\n\nThe file is untouched at "
            f"{deps.store.uri(record['key'])}; training goes on without it. Upload corrected data under "
            f"another name.", {"key": record["key"], "errors": "1"})
        logger.warning("file excluded from datasets", key=record["key"], reason=why)


def _duration(start: str | None, end: str | None) -> float:
    if not start or not end:
        return 0.0
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def _record_file(pk: str, key: str, record: dict[str, Any], previous: dict[str, Any] | None,
                 deps: ArrivalDeps) -> bool:
    """Write a file's record: the first one, or the one of a new version replacing the version recorded
    (nothing of the old version's record is kept)."""
    if previous is None:
        return deps.state.put(pk, sk.FILE + key, record, if_absent=True)
    stale = {k: None for k in previous if k not in record and k not in ("pk", "sk")}
    return deps.state.update_if(pk, sk.FILE + key, {**stale, **record}, {"sha256": previous.get("sha256")})


def _too_large(key: str, size: int, previous: dict[str, Any] | None, deps: ArrivalDeps) -> Outcome:
    """A file larger than validation takes on here, quarantined unread (reading it could exhaust the function's
    memory): its report only; any content of that size gets the same verdict, so a redelivery changes nothing."""
    if previous is not None and previous.get("status") == "quarantined" and previous.get("unread_size") == size:
        return Outcome("duplicate", f"{key} was already quarantined unread")
    spec, _ = load_group_spec(deps.store, deps.policy.group)
    report = ValidationReport(key, spec.name, spec.digest())
    log = ProblemLog(key)
    refuse_too_large(log, f"file of {size / 2**20:.4g} MiB", deps.policy.max_file_bytes)
    report.errors = log.errors
    record: dict[str, Any] = {"key": key, "size": size, "unread_size": size, "checked_at": deps.clock().isoformat()}
    if previous is not None:
        record["replaces_sha256"] = previous.get("sha256")
    return _quarantine(key, None, report.to_dict(), report.summary(), record, deps, previous)


def _quarantine(key: str, data: bytes | None, report: dict[str, Any], summary: str, record: dict[str, Any],
                deps: ArrivalDeps, previous: dict[str, Any] | None = None) -> Outcome:
    """Copy the file (unless it was too large to read) and its report to quarantine/; the original stays byte
    for byte where it was."""
    qkey = f"quarantine/{key}"
    if data is not None:
        deps.store.put(qkey, data)
    deps.store.put(f"{qkey}.report.json", json.dumps(report, indent=2).encode(), "application/json")
    record.update(status="quarantined", quarantine_key=qkey, errors=len(report["errors"]))
    if _record_file(sk.group_pk(deps.policy.group), key, record, previous, deps):
        copy = f"Copy and report: {deps.store.uri(qkey)} and " if data is not None else "Report (no copy): "
        deps.notifier.publish(
            "data_quality", f"Quarantined {key}: {len(report['errors'])} problem(s)",
            f"{summary}\n\nThe original is untouched at {deps.store.uri(key)}.\n"
            f"{copy}{deps.store.uri(qkey)}.report.json",
            {"key": key, "errors": str(len(report["errors"]))})
    logger.warning("file quarantined", key=key, errors=len(report["errors"]))
    return Outcome("quarantined", summary, record)


def _schedule_check(key: str, deps: ArrivalDeps) -> None:
    """A delayed retrain check after the quiet period; later arrivals push the decision back."""
    now = deps.clock()
    pk = sk.group_pk(deps.policy.group)
    arrivals = deps.state.get(pk, sk.ARRIVALS) or {}
    if now.timestamp() > float(arrivals.get("last_arrival_at", 0.0)):
        deps.state.put(pk, sk.ARRIVALS, {"last_arrival_at": now.timestamp()})
    due = now + timedelta(seconds=deps.policy.quiet_period_s)
    deps.events.publish(
        Envelope(NACELLE_SOURCE, RETRAIN_CHECK, {"group": deps.policy.group, "requested_at": now.isoformat(),
                                                 "reason": f"{key} arrived"}),
        deliver_at=due, dedup_key=f"retrain-{deps.policy.group}-{int(due.timestamp())}")
    deps.state.update_if(pk, sk.FILE + key, {"check_scheduled": True}, {"status": "accepted"})


def request_check(deps_events: EventPublisher, group: str, reason: str, now: datetime,
                  correlation: Mapping[str, str] | None = None) -> None:
    """An immediate re-evaluation of the policy (after a job ends), carrying the correlation ids."""
    deps_events.publish(Envelope(NACELLE_SOURCE, RETRAIN_CHECK,
                                 {"group": group, "requested_at": now.isoformat(), "reason": reason,
                                  "correlation": dict(correlation or {})}))


@dataclass(frozen=True)
class RetrainStatus:
    """Where the retraining policy stands now (`nacelle data status`; on_retrain_check decides on it)."""

    new_turbine_hours: float  # accepted since the watermark (the data the last completed job trained on)
    min_new_turbine_hours: float
    rows: int  # in every accepted data file
    min_rows: int
    accepted_files: int
    new_files: int
    last_arrival_at: float | None  # epoch s
    quiet_period_s: float
    quiet_left_s: float  # until the debounce lets a check decide
    active_job: str | None
    trained_until: float | None  # the watermark: accepted_at of the newest file a completed job trained on
    blocker: str | None  # why a check now would not start a job; None: it would start one

    @property
    def figures(self) -> dict[str, Any]:
        return {"new_turbine_hours": self.new_turbine_hours, "rows": self.rows}


def retrain_status(deps: ArrivalDeps) -> RetrainStatus:
    return _retrain_state(deps)[0]


def _retrain_state(deps: ArrivalDeps) -> tuple[RetrainStatus, list[dict[str, Any]]]:
    """The policy's inputs and its verdict, with the accepted data files a job would train on."""
    policy, state = deps.policy, deps.state
    pk = sk.group_pk(policy.group)
    now = deps.clock().timestamp()
    last_arrival = float((state.get(pk, sk.ARRIVALS) or {}).get("last_arrival_at", 0.0))
    quiet_left = max(0.0, last_arrival + policy.quiet_period_s - now) if last_arrival else 0.0
    active = (state.get(pk, sk.ACTIVE_JOB) or {}).get("job_name") or None
    files = [f for f in state.query(pk, sk.FILE) if f.get("status") == "accepted" and f.get("kind") != "labels"]
    watermark = float((state.get(pk, sk.WATERMARK) or {}).get("trained_until", 0.0))
    new = [f for f in files if f["accepted_at"] > watermark]
    new_hours = sum(float(f.get("duration_s", 0.0)) for f in new) / 3600
    rows = sum(int(f.get("rows", 0)) for f in files)
    blocker = None
    if now < last_arrival + policy.quiet_period_s - 1.0:
        blocker = "debounced: more data arrived; a later check will decide"
    elif active:
        blocker = f"job {active} is running; the policy runs again when it ends"
    elif new_hours < policy.min_new_turbine_hours and not _drift_requested(state, policy.group):
        blocker = f"{new_hours:.2f} new turbine-hours < {policy.min_new_turbine_hours} needed"
    elif rows < policy.min_rows:
        blocker = f"{rows} accepted rows < {policy.min_rows} the training needs"
    status = RetrainStatus(new_hours, policy.min_new_turbine_hours, rows, policy.min_rows, len(files), len(new),
                           last_arrival or None, policy.quiet_period_s, quiet_left, active, watermark or None,
                           blocker)
    return status, files


def _drift_requested(state: StateStore, group: str) -> bool:
    """A drift retraining request no job has taken: reason enough to train without the minimum of new data
    (drift_monitor asked only once the drifting turbines had captured enough normal data)."""
    return any(r.get("status") == "requested" and not r.get("job_name")
               for r in state.query(sk.group_pk(group), sk.DRIFT_RETRAIN))


def on_retrain_check(deps: ArrivalDeps, requested_at: datetime, reason: str = "") -> Outcome:
    _free_unstarted_claim(deps)
    status, files = _retrain_state(deps)
    if status.blocker is not None:
        return Outcome("skipped", status.blocker, status.figures)
    return start_training(deps, files, reason or "enough new data", status.new_turbine_hours)


def dataset_hash(entries: list[tuple[str, str]]) -> str:
    """sha256 of the sorted (key, sha256) pairs."""
    return hashlib.sha256("\n".join(f"{k} {h}" for k, h in sorted(entries)).encode()).hexdigest()


def start_training(deps: ArrivalDeps, files: list[dict[str, Any]], reason: str, new_hours: float) -> Outcome:
    """Write the immutable dataset manifest of every accepted file (plus labels) and start its job."""
    policy, state, store = deps.policy, deps.state, deps.store
    files, left_out = consistent_files(files)
    for record, why in left_out:
        _exclude(record, why, deps)
    if not files:
        return Outcome("skipped", "no accepted file is left once the overlapping ones are left out")
    entries = [(f["key"], f["sha256"]) for f in files]
    entries += _accepted_labels(deps)
    digest = dataset_hash(entries)
    correlate(dataset_hash=digest)
    dataset = state.get(sk.group_pk(policy.group), sk.DATASET + digest) or {}
    if dataset.get("status") in ("running", "completed", "failed"):
        hint = " (retry it with `nacelle jobs retry`)" if dataset["status"] == "failed" else ""
        return Outcome("skipped", f"dataset {digest[:16]} is already {dataset['status']}{hint}")
    manifest_key = f"datasets/{policy.group}/{digest}.json"
    manifest = [{"prefix": f"s3://{store.bucket}/"}, *sorted(k for k, _ in entries)]
    store.put_if_absent(manifest_key, json.dumps(manifest, indent=1).encode(), "application/json")
    return launch(deps, digest, manifest_key, attempt=1, reason=reason, new_hours=new_hours,
                  files=len(files), max_accepted_at=max(f["accepted_at"] for f in files))


def _accepted_labels(deps: ArrivalDeps) -> list[tuple[str, str]]:
    """(key, sha256) of the labels files whose current content passed validation (checked here when
    its event has not been handled yet; a duplicate otherwise) and contradicts no earlier one."""
    pk, accepted = sk.group_pk(deps.policy.group), []
    for o in deps.store.list(LABELS_PREFIX):
        if o.key.endswith("/"):
            continue
        on_labels_created(o.key, deps)
        record = deps.state.get(pk, sk.FILE + o.key)
        if record is not None and record.get("status") == "accepted":
            text = deps.store.get(o.key).decode("utf-8")
            accepted.append((record, parse_labels(text, o.key), parse_false_alarms(text, o.key)))
    kept, left_out = consistent_labels(accepted)
    for record, why in left_out:
        _exclude(record, why, deps)
    return [(r["key"], str(r["sha256"])) for r in kept]


def consistent_labels(files: list[tuple[dict[str, Any], list[Fault], list[Fault]]]
                      ) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], str]]]:
    """Labels files (record, faults, spans called normal) that can join one dataset: a file calling fault
    what an earlier-accepted file calls a false alarm, or the reverse, is left out; returns (kept records,
    [(left out, why)])."""
    def clash(a: list[Fault], b: list[Fault]) -> Fault | None:
        return next((x for x in a for y in b if x.turbine_id == y.turbine_id and x.start <= y.end
                     and y.start <= x.end), None)

    kept: list[tuple[dict[str, Any], list[Fault], list[Fault]]] = []
    left_out: list[tuple[dict[str, Any], str]] = []
    for record, faults, normal in sorted(files, key=lambda f: (float(f[0]["accepted_at"]), f[0]["key"])):
        against = next(((k, hit, what) for k in kept for hit, what in ((clash(faults, k[2]), "a false alarm"),
                                                                       (clash(normal, k[1]), "a fault"))
                        if hit is not None), None)
        if against is None:
            kept.append((record, faults, normal))
            continue
        other, hit, what = against
        left_out.append((record, f"it labels turbine {hit.turbine_id} from {_iso(hit.start)} to {_iso(hit.end)} "
                                 f"against {other[0]['key']} (accepted earlier), which calls that time {what}"))
    return [k[0] for k in kept], left_out


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def retry_training(deps: ArrivalDeps, job_name: str) -> Outcome:
    """Train a failed job's dataset again, as attempt n+1 (`nacelle jobs retry`)."""
    pk = sk.group_pk(deps.policy.group)
    job = deps.state.get(pk, sk.JOB + job_name)
    if job is None:
        raise JobNotFound(f"no training job {job_name} in group {deps.policy.group}")
    dataset = deps.state.get(pk, sk.DATASET + job["dataset_hash"]) or {}
    if dataset.get("status") != "failed" or dataset.get("last_job") != job_name:
        raise Conflict(f"{job_name} is not the latest failed attempt of its dataset "
                       f"(dataset status {dataset.get('status')}, latest job {dataset.get('last_job')})")
    return launch(deps, job["dataset_hash"], dataset["manifest_key"], attempt=int(dataset["attempts"]) + 1,
                  reason=f"retry of {job_name}", new_hours=float(job.get("new_turbine_hours", 0.0)),
                  files=int(dataset.get("files", 0)), max_accepted_at=float(dataset.get("max_accepted_at", 0.0)),
                  drift_requests=drift_requests_of(deps.state, deps.policy.group, job_name, job))


def drift_requests_of(state: StateStore, group: str, job_name: str, job: Mapping[str, Any]) -> list[str]:
    """The drift retraining requests (drift_monitor's, sk.DRIFT_RETRAIN keys) a job serves: those it took when it
    started, those its job record lists (a retry carries its failed attempt's)."""
    taken = {str(r["sk"]) for r in state.query(sk.group_pk(group), sk.DRIFT_RETRAIN) if r.get("job_name") == job_name}
    return sorted(taken | {str(k) for k in job.get("drift_requests") or []})


def _take_drift_requests(state: StateStore, group: str, job_name: str) -> list[str]:
    """Claim the drift retraining requests no job has taken yet for this job (it trains on every accepted file,
    the captured data the request counted included)."""
    pk, taken = sk.group_pk(group), []
    for request in state.query(pk, sk.DRIFT_RETRAIN):
        key = str(request["sk"])
        if request.get("status") == "requested" and not request.get("job_name") \
                and state.update_if(pk, key, {"job_name": job_name}, {"status": "requested", "job_name": None}):
            taken.append(key)
    return taken


def launch(deps: ArrivalDeps, digest: str, manifest_key: str, *, attempt: int, reason: str, new_hours: float,
           files: int, max_accepted_at: float, drift_requests: list[str] | None = None) -> Outcome:
    policy, state = deps.policy, deps.state
    pk = sk.group_pk(policy.group)
    job_name = f"nacelle-{digest[:16]}-{attempt}"
    correlate(dataset_hash=digest, job_name=job_name)
    now = deps.clock()
    if not claim_active_job(state, policy.group, job_name, now):
        return Outcome("skipped", "another job is running")
    try:  # anything failing before the job exists gives the claim back: the next check or a retry starts it
        drift_requests = sorted({*(drift_requests or []), *_take_drift_requests(state, policy.group, job_name)})
        state.put(pk, sk.DATASET + digest, {"hash": digest, "manifest_key": manifest_key, "attempts": attempt,
                                            "status": "running", "last_job": job_name, "files": files,
                                            "max_accepted_at": max_accepted_at})
        state.put(pk, sk.JOB + job_name, {"job_name": job_name, "dataset_hash": digest, "attempt": attempt,
                                          "status": "InProgress", "started_at": now.isoformat(), "reason": reason,
                                          "new_turbine_hours": round(new_hours, 3), "kind": "training",
                                          "drift_requests": drift_requests})
        spec_key = load_group_spec(deps.store, policy.group)[1]
        champion_key = champion_model_key(deps.registry, policy.group)
        request = TrainingRequest(job_name=job_name, dataset_manifest_key=manifest_key,
                                  hyperparameters={**policy.hyperparameters, "dataset_hash": digest},
                                  spec_key=spec_key, champion_model_key=champion_key,
                                  tags={"nacelle:dataset_hash": digest, "nacelle:group": policy.group})
        deps.training.start(request)
    except JobAlreadyExists:
        logger.info("training job already exists", job_name=job_name)
    except Exception:
        _unclaim(deps, digest, job_name, attempt, "could not start")
        raise
    logger.info("training started", job_name=job_name, files=files, new_turbine_hours=new_hours)
    return Outcome("started", job_name, {"job_name": job_name, "dataset_hash": digest, "files": files,
                                         "champion": champion_key, "attempt": attempt})


CLAIM_GRACE_S = 900.0  # a function that claimed a job has created it or stopped by then (Lambda: 15 min at most)


def _free_unstarted_claim(deps: ArrivalDeps) -> None:
    """The group's job claim whose job was never created (the claiming function was killed in between) is
    given back once CLAIM_GRACE_S has passed (_unclaim)."""
    pk = sk.group_pk(deps.policy.group)
    active = deps.state.get(pk, sk.ACTIVE_JOB) or {}
    job_name, since = str(active.get("job_name") or ""), str(active.get("since") or "")
    if not job_name or not since or (deps.clock() - datetime.fromisoformat(since)).total_seconds() < CLAIM_GRACE_S:
        return
    try:
        deps.training.describe(job_name)
        return
    except JobNotFound:
        pass
    job = deps.state.get(pk, sk.JOB + job_name) or {}
    logger.warning("a claimed training job was never created: the claim is given back", job_name=job_name)
    if job.get("dataset_hash"):
        _unclaim(deps, str(job["dataset_hash"]), job_name, int(job.get("attempt", 1)),
                 "never started: the function that claimed it stopped")
    else:
        release_active_job(deps.state, deps.policy.group, job_name)


def _unclaim(deps: ArrivalDeps, digest: str, job_name: str, attempt: int, reason: str) -> None:
    """A claimed job that never started: the group is free again. A first attempt's dataset is left unstarted (the
    redelivered check, or the next one, starts it); a retry's fails again (`nacelle jobs retry` once more)."""
    pk = sk.group_pk(deps.policy.group)
    release_active_job(deps.state, deps.policy.group, job_name)
    deps.state.update_if(pk, sk.DATASET + digest, {"status": "unstarted" if attempt == 1 else "failed"},
                         {"status": "running"})
    deps.state.update_if(pk, sk.JOB + job_name, {"status": "Failed", "failure_reason": reason},
                         {"status": "InProgress"})


def claim_active_job(state: StateStore, group: str, job_name: str, now: datetime) -> bool:
    """At most one job per group: a conditional write on the group's active-job item ("" = free)."""
    pk = sk.group_pk(group)
    item = {"job_name": job_name, "since": now.isoformat()}
    return state.put(pk, sk.ACTIVE_JOB, item, if_absent=True) or state.update_if(pk, sk.ACTIVE_JOB, item,
                                                                                  {"job_name": ""})


def release_active_job(state: StateStore, group: str, job_name: str) -> bool:
    return state.update_if(sk.group_pk(group), sk.ACTIVE_JOB, {"job_name": "", "since": ""}, {"job_name": job_name})


def champion(registry: ModelRegistry, group: str) -> ModelVersion | None:
    """The champion: the newest Approved version not marked failed nor approved for the canary only, or None."""
    approved = [v for v in registry.list(group, "Approved") if not v.failed and not canary_only(v)]
    return approved[-1] if approved else None


def champion_model_key(registry: ModelRegistry, group: str) -> str | None:
    best = champion(registry, group)
    return best.model_data_key if best is not None else None
