"""`python -m nacelle.local.runtime.jobrunner HOME JOB`: run one local training job to its end.

Materialises the channels from the object store exactly as SageMaker would (the train channel from
the dataset's S3 ManifestFile), runs the training contract, uploads model.tar.gz to
jobs/<job>/output/, records the status and puts the state-change event on the bus.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

from nacelle.local.adapters.jobs import JobRecord, JobTable
from nacelle.local.adapters.paths import BUCKET, StackPaths
from nacelle.local.runtime.awsevents import JOB_END, job_end_event
from nacelle.local.runtime.bus import EventBus
from nacelle.local.runtime.stack import build_bus, build_store
from nacelle.train_runner import PROJECT_ROOT, run_training_job
from shared.errors import DataError
from shared.ports import ObjectStore

JOB_NICENESS = 10  # jobs yield the cores to the stack's devices (detectors score in real time)


def materialise(store: ObjectStore, manifest_key: str, dest: Path) -> int:
    """Copy every object a ManifestFile lists into dest/<key relative to the prefix>."""
    entries = json.loads(store.get(manifest_key))
    prefix = entries[0]["prefix"]
    bucket_prefix = f"s3://{BUCKET}/"
    if not prefix.startswith(bucket_prefix):
        raise DataError(f"{manifest_key}: prefix {prefix} is not in bucket {BUCKET}")
    base = prefix[len(bucket_prefix):]
    for key in entries[1:]:
        target = dest / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(store.get(base + key))
    return len(entries) - 1


def run(home: Path, name: str) -> int:
    paths = StackPaths(home)
    jobs = JobTable(paths.jobs_db)
    record = jobs.get(name)
    bus = build_bus(paths)
    store = build_store(paths, bus)
    if record.kind == "compile":
        return run_compile(record, jobs, bus, store)
    request = record.request
    status, reason, model_key = "Failed", None, None
    try:
        data = record.job_dir / "input" / "data"
        if data.exists():
            shutil.rmtree(data)
        channels = {"train": data / "train"}
        count = materialise(store, request["dataset_manifest_key"], channels["train"])
        print(f"train channel: {count} object(s) from {request['dataset_manifest_key']}", flush=True)
        for channel, key in (("spec", request.get("spec_key")), ("champion", request.get("champion_model_key"))):
            if key:
                target = data / channel / Path(key).name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(store.get(key))
                channels[channel] = target.parent
        result = run_training_job(record.job_dir, name, channels, request["hyperparameters"])
        if result.ok and result.model_archive is not None:
            model_key = f"jobs/{name}/output/model.tar.gz"
            for doc in ("report.png", "evaluation.json"):
                path = record.job_dir / "output" / "data" / doc
                if path.is_file():
                    store.put(f"jobs/{name}/output/{doc}", path.read_bytes())
            store.put(model_key, result.model_archive.read_bytes())
            status = "Completed"
        else:
            reason = result.failure_reason
    except Exception as exc:  # any failure is reported, never lost
        traceback.print_exc()
        reason = f"{type(exc).__name__}: {exc}"
    if jobs.finish(name, status, reason, model_key):  # killed here, the stack puts the event (Stack.reap_jobs)
        bus.put(job_end_event(jobs.get(name)), dedup_key=JOB_END + name)
    print(f"job {name}: {status}" + (f" ({reason})" if reason else ""), flush=True)
    return 0 if status == "Completed" else 1


def run_compile(record: JobRecord, jobs: JobTable, bus: EventBus, store: ObjectStore) -> int:
    """The Processing contract locally: model in, bundle out, manifest.json uploaded last."""
    request = record.request
    status, reason = "Failed", None
    root = record.job_dir / "processing"
    try:
        if root.exists():
            shutil.rmtree(root)
        model_dir = root / "input" / "model"
        model_dir.mkdir(parents=True)
        (model_dir / "model.tar.gz").write_bytes(store.get(request["model_data_key"]))
        if request.get("validation_manifest_key"):
            materialise(store, request["validation_manifest_key"], root / "input" / "validation")
        output = root / "output"
        env = {**os.environ, "NACELLE_PROCESSING_ROOT": str(root),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
        args = [sys.executable, "-m", "training_jobs.compile", "--model-version", str(request["version"]),
                "--model-data", store.uri(request["model_data_key"])]
        result = subprocess.run(args, env=env, cwd=record.job_dir, check=False)
        if result.returncode == 0:
            prefix = request["output_prefix"]
            files = sorted(p for p in output.rglob("*") if p.is_file() and p.name != "manifest.json")
            for path in [*files, output / "manifest.json"]:  # the manifest last: it means "complete"
                store.put(prefix + path.relative_to(output).as_posix(), path.read_bytes())
            status = "Completed"
        else:
            failure = output / "failure"
            reason = failure.read_text().strip() if failure.is_file() else f"exit code {result.returncode}"
    except Exception as exc:  # any failure is reported, never lost
        traceback.print_exc()
        reason = f"{type(exc).__name__}: {exc}"
    if jobs.finish(record.name, status, reason, request["output_prefix"] + "manifest.json" if status == "Completed"
                   else None):
        bus.put(job_end_event(jobs.get(record.name)), dedup_key=JOB_END + record.name)
    print(f"job {record.name}: {status}" + (f" ({reason})" if reason else ""), flush=True)
    return 0 if status == "Completed" else 1


if __name__ == "__main__":
    print(f"job runner at nice {os.nice(JOB_NICENESS)}", flush=True)  # its training/compile process inherits it
    sys.exit(run(Path(sys.argv[1]), sys.argv[2]))
