"""model_approved: an approved model version becomes a verified edge bundle.

Only `Approved` starts anything (the seed also redeployed on Rejected). One compile per version
however often the event arrives: a conditional write on compile#<version> claims it (its states:
lifecycle.COMPILE), the job name is derived from the version and attempt, and an existing manifest means
the work is done. A failed compile is reported and leaves the version approved but not compiled, retriable.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime

from shared.errors import Conflict, JobAlreadyExists, JobNotFound, ModelVersionNotFound
from shared.observability import correlate, logger
from shared.ports import (
    CompileRequest,
    CompileService,
    ModelRegistry,
    ModelVersion,
    NeoCompiler,
    NeoRequest,
    Notifier,
    ObjectStore,
    StateStore,
)
from shared.usecases import lifecycle
from shared.usecases import state_keys as sk
from shared.usecases.approval import GATE_REASONS, approval_state
from shared.usecases.lifecycle import (
    ABSENT,
    APPROVED,
    APPROVED_AGAINST_GATE,
    APPROVED_EVENT,
    COMPLETED_EVENT,
    FAILED,
    FAILED_EVENT,
    IN_PROGRESS,
    RETRY,
)
from shared.usecases.outcome import Outcome

COMPILE = "compile#"
COMPILE_PREFIX = "nacelle-compile-"


@dataclass
class CompileDeps:
    store: ObjectStore
    state: StateStore
    registry: ModelRegistry
    notifier: Notifier
    compiler: CompileService
    group: str
    clock: Callable[[], datetime]
    neo: NeoCompiler | None = None
    neo_target: str = ""  # empty: no Neo job (devices run model.onnx either way)


def bundle_prefix(group: str, version: int) -> str:
    return f"compiled/{group}/{version}/"


def compile_job_name(group: str, version: int, attempt: int) -> str:
    return f"{COMPILE_PREFIX}{group}-{version}-{attempt}"[:63]


def on_model_package_change(group: str, version: int, status: str, deps: CompileDeps) -> Outcome:
    if status != "Approved":
        return Outcome("ignored", f"{group} v{version} is {status}; only Approved versions are compiled")
    if group != deps.group:
        return Outcome("ignored", f"group {group} is not {deps.group}")
    correlate(model_version=version)
    try:
        current = deps.registry.get(group, version)
    except ModelVersionNotFound:
        logger.warning("approval of a version not in the registry", model_version=version)
        return Outcome("ignored", f"{group} v{version} is not in the registry (deleted?)")
    state = approval_state(current)
    if state == APPROVED_AGAINST_GATE:  # approved without the override (e.g. in the console)
        _refuse_once(current, deps)
        return Outcome("refused", f"{group} v{version} failed the quality gate and was approved without "
                                  "an override: nothing is compiled or deployed")
    if state != APPROVED:  # a stale event: the version changed again since
        return Outcome("ignored", f"{group} v{version} is now {current.status}")
    prefix = bundle_prefix(group, version)
    if deps.store.exists(prefix + "manifest.json"):
        # compiled already: approved again after a rejection that came while it compiled, or a redelivery;
        # the manifest is written again (same bytes) so the rollout sees it (it ignores what it has started)
        deps.store.put(prefix + "manifest.json", deps.store.get(prefix + "manifest.json"), "application/json")
        return Outcome("announced", f"{prefix}manifest.json exists; announced again for the rollout")
    pk = sk.group_pk(group)
    record = {"version": version, "attempt": 1, "job_name": compile_job_name(group, version, 1),
              "started_at": deps.clock().isoformat(), "input_shape": current.metadata.get("nacelle:input_shape", "")}
    if not lifecycle.advance(deps.state, lifecycle.COMPILE, pk, COMPILE + str(version), ABSENT, APPROVED_EVENT,
                             IN_PROGRESS, record):
        claimed = deps.state.get(pk, COMPILE + str(version))
        if claimed is None or claimed.get("status") != IN_PROGRESS:
            return Outcome("duplicate", f"the compile of v{version} was already started")
        # claimed by a delivery that may have failed or died before its job was created: starting the job again
        # is a no-op when it exists (its name is the claim's), so a redelivery always completes the work
        return _launch(current.model_data_key, current.metadata.get("nacelle:dataset_hash", ""), claimed, deps,
                       resumed=True)
    return _launch(current.model_data_key, current.metadata.get("nacelle:dataset_hash", ""), record, deps)


def _refuse_once(version: ModelVersion, deps: CompileDeps) -> None:
    if deps.state.put(sk.group_pk(deps.group), f"gate-refused#{version.version}", {"version": version.version},
                      if_absent=True):
        deps.notifier.publish(
            "approvals", f"{deps.group} v{version.version} approved against the quality gate: not deployed",
            f"v{version.version} failed the quality gate ({version.metadata.get(GATE_REASONS) or '-'}) and was "
            f"approved without an override, so it is neither compiled nor deployed. To deploy it anyway: "
            f"nacelle models approve {version.version} --override-gate --reason \"...\" (recorded).",
            {"model_version": str(version.version), "status": "refused"})


def retry_compile(version: int, deps: CompileDeps) -> Outcome:
    """`nacelle jobs retry nacelle-compile-…`: compile a version again after a failed attempt."""
    pk = sk.group_pk(deps.group)
    record = deps.state.get(pk, COMPILE + str(version))
    if record is None:
        raise JobNotFound(f"v{version} of {deps.group} was never compiled")
    if record["status"] == IN_PROGRESS and not _job_exists(str(record["job_name"]), deps):
        current = deps.registry.get(deps.group, version)  # claimed, but its job was never created: create it
        return _launch(current.model_data_key, current.metadata.get("nacelle:dataset_hash", ""), record, deps)
    if record["status"] != FAILED:
        raise Conflict(f"the compile of v{version} is {record['status']}, not Failed")
    attempt = int(record["attempt"]) + 1
    changes = {"attempt": attempt, "job_name": compile_job_name(deps.group, version, attempt),
               "failure_reason": None, "followed_up": None,
               "started_at": deps.clock().isoformat()}  # never the key (pk, sk)
    if not lifecycle.advance(deps.state, lifecycle.COMPILE, pk, COMPILE + str(version), FAILED, RETRY, IN_PROGRESS,
                             changes, {"attempt": record["attempt"]}):
        raise Conflict(f"the compile of v{version} changed concurrently")
    current = deps.registry.get(deps.group, version)
    return _launch(current.model_data_key, current.metadata.get("nacelle:dataset_hash", ""), {**record, **changes},
                   deps)


def _job_exists(job_name: str, deps: CompileDeps) -> bool:
    try:
        deps.compiler.describe(job_name)
    except JobNotFound:
        return False
    return True


def _launch(model_key: str, dataset_hash: str, record: Mapping[str, object], deps: CompileDeps,
            resumed: bool = False) -> Outcome:
    version = int(str(record["version"]))
    job_name = str(record["job_name"])
    correlate(job_name=job_name)
    prefix = bundle_prefix(deps.group, version)
    manifest = f"datasets/{deps.group}/{dataset_hash}.json" if dataset_hash else None
    request = CompileRequest(job_name, deps.group, version, model_key, prefix,
                             manifest if manifest and deps.store.exists(manifest) else None)
    try:
        deps.compiler.start(request)
    except JobAlreadyExists:
        logger.info("compile job already exists", job_name=job_name)
        if resumed:
            return Outcome("duplicate", f"the compile of v{version} was already started ({job_name})")
    logger.info("compile started", job_name=job_name, version=version)
    return Outcome("started", job_name, {"job_name": job_name, "version": version})


def on_compile_finished(job_name: str, status: str, failure_reason: str | None, deps: CompileDeps) -> Outcome:
    """A compile job ended: record it; a failure is reported once and can be retried."""
    if not job_name.startswith(COMPILE_PREFIX) or status not in ("Completed", "Failed", "Stopped"):
        return Outcome("ignored", f"{job_name} {status}")
    pk = sk.group_pk(deps.group)
    record = next((r for r in deps.state.query(pk, COMPILE) if r.get("job_name") == job_name), None)
    if record is None:
        return Outcome("ignored", f"{job_name} is not a compile of group {deps.group}")
    event = COMPLETED_EVENT if status == "Completed" else FAILED_EVENT  # Failed or Stopped
    final = lifecycle.COMPILE.target(IN_PROGRESS, event)
    changes = {"failure_reason": failure_reason, "ended_at": deps.clock().isoformat()}
    key = COMPILE + str(record["version"])
    moved = lifecycle.advance(deps.state, lifecycle.COMPILE, pk, key, IN_PROGRESS, event, final, changes,
                              {"job_name": job_name})
    if not moved and (record.get("status") != final or record.get("followed_up")):
        return Outcome("duplicate", f"{job_name} was already recorded")
    # what follows the record is idempotent and runs again on a redelivery until it is recorded as done (a failed
    # or interrupted publish is retried with the event: at least once)
    if final == "Completed":
        _start_neo(int(record["version"]), str(record.get("input_shape") or ""), deps)
    if final == "Failed":
        deps.notifier.publish(
            "approvals", f"Compiling {deps.group} v{record['version']} failed",
            f"The edge compile job {job_name} failed: {failure_reason or status}.\n"
            f"v{record['version']} stays Approved but is not compiled and will not be deployed.\n"
            f"Retry with: nacelle jobs retry {job_name}",
            {"model_version": str(record["version"]), "job_name": job_name, "status": final})
    deps.state.update_if(pk, key, {"followed_up": True}, {"job_name": job_name})
    return Outcome(final.lower() if moved else "resumed", job_name, {"version": record["version"]})


def _start_neo(version: int, input_shape: str, deps: CompileDeps) -> None:
    """Alongside the ONNX bundle, when a target is configured: Neo compiles the verified model.onnx.

    Neo takes a .tar.gz holding one .onnx file, so the ONNX model is packed under neo/input/ first.
    Devices keep running model.onnx with ONNX Runtime (the Neo device runtime is not installable).
    """
    if deps.neo is None or not deps.neo_target:
        return
    prefix = bundle_prefix(deps.group, version)
    archive = prefix + "neo/input/model.tar.gz"
    deps.store.put_if_absent(archive, _tar_single("model.onnx", deps.store.get(prefix + "model.onnx")))
    # registration writes "1,6,100" through metadata_value, which turns the commas into spaces: accept both
    shape = tuple(int(x) for x in input_shape.replace(",", " ").split()) if input_shape.strip() else (1, 6, 100)
    with suppress(JobAlreadyExists):
        deps.neo.start(NeoRequest(f"nacelle-neo-{deps.group}-{version}"[:63], archive, prefix + "neo/output/",
                                  deps.neo_target, shape))


def _tar_single(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


NEO_FILE = "neo.json"  # beside manifest.json, which stays as the compile wrote it


def on_neo_output(key: str, deps: CompileDeps) -> Outcome:
    """A Neo artifact appeared under compiled/<group>/<version>/neo/output/: record its key and digest in
    compiled/<group>/<version>/neo.json. The manifest is not touched: the compile writes it last, and its
    arrival starts the rollout. Devices ignore Neo's output: they run model.onnx."""
    parts = key.split("/")
    if len(parts) < 6 or parts[0] != "compiled" or parts[3:5] != ["neo", "output"] or parts[1] != deps.group:
        return Outcome("ignored", f"{key} is not a Neo output of group {deps.group}")
    target = bundle_prefix(deps.group, int(parts[2])) + NEO_FILE
    data = deps.store.get(key)
    entry = {"key": key, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "target": deps.neo_target}
    if deps.store.exists(target) and json.loads(deps.store.get(target)) == entry:
        return Outcome("duplicate", f"{key} is already recorded in {target}")
    deps.store.put(target, json.dumps(entry, indent=2, sort_keys=True).encode(), "application/json")
    logger.info("neo artifact recorded", key=key, sha256=entry["sha256"], record=target)
    return Outcome("recorded", key, entry)
