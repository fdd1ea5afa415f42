"""The local CompileService end to end: LocalCompile records the job, its runner (nacelle.local.runtime.jobrunner, run
in-process here instead of detached) lays out SageMaker's Processing contract, runs `python -m
training_jobs.compile`, uploads the bundle with manifest.json last and ends the job with a state-change event."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import nacelle.local.adapters.training
from nacelle.local.adapters.jobs import JobTable
from nacelle.local.adapters.objectstore import FsObjectStore
from nacelle.local.adapters.paths import BUCKET, StackPaths
from nacelle.local.adapters.training import LocalCompile
from nacelle.local.runtime import jobrunner
from nacelle.local.runtime.awsevents import PROCESSING_STATE_CHANGE
from nacelle.local.runtime.stack import build_bus
from shared.ml.edge_bundle import verify
from shared.ports import CompileRequest

GROUP = "nacelle-turbine"
MODEL_KEY = "jobs/j3/output/model.tar.gz"
PREFIX = f"compiled/{GROUP}/3/"


class Local:
    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths = StackPaths(tmp_path / "home")
        self.jobs = JobTable(self.paths.jobs_db)
        self.store = FsObjectStore(self.paths.objects, BUCKET)  # the files the stack's store serves
        self.spawned: list[str] = []
        monkeypatch.setattr(nacelle.local.adapters.training, "spawn_runner", self._spawn)
        self.compile = LocalCompile(self.paths, self.jobs)

    def _spawn(self, home: Path, name: str, log_file: Path) -> int:
        assert (home, log_file) == (self.paths.home, self.paths.jobs_dir / name / "runner.log")
        self.spawned.append(name)
        return 1

    def run(self, request: CompileRequest) -> int:
        """Start the job, then run its runner as the detached process would."""
        self.compile.start(request)
        assert self.spawned == [request.job_name]
        return jobrunner.run(self.paths.home, request.job_name)

    def ended_events(self) -> list[dict[str, Any]]:
        return [event["detail"] for event, _ in build_bus(self.paths).events(PROCESSING_STATE_CHANGE)]


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Local:
    return Local(tmp_path, monkeypatch)


def _request(n: int = 1, validation: str | None = None) -> CompileRequest:
    return CompileRequest(f"nacelle-compile-{GROUP}-3-{n}", GROUP, 3, MODEL_KEY, PREFIX, validation)


def test_a_compile_uploads_a_verifiable_bundle_and_ends_completed(local: Local, trained_model: Any, small_dataset: Path,
                                                                  tmp_path: Path) -> None:
    local.store.put(MODEL_KEY, trained_model.model_archive.read_bytes())
    # the training dataset's ManifestFile: a prefix, then keys under it
    files = sorted(p for p in small_dataset.rglob("*.csv*") if p.is_file())
    for path in files:
        local.store.put(f"raw/{path.relative_to(small_dataset).as_posix()}", path.read_bytes())
    manifest_key = f"datasets/{GROUP}/abc.json"
    local.store.put(manifest_key, json.dumps([{"prefix": f"s3://{BUCKET}/raw/"},
                                              *[p.relative_to(small_dataset).as_posix() for p in files]]).encode())

    assert local.run(_request(validation=manifest_key)) == 0

    job = local.compile.describe(_request().job_name)
    assert (job.status, job.failure_reason, job.model_artifact_key) == ("Completed", None, PREFIX + "manifest.json")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for info in local.store.list(PREFIX):
        (bundle / info.key[len(PREFIX):]).write_bytes(local.store.get(info.key))
    checked = verify(bundle)  # digests and sizes in manifest.json match what was uploaded
    assert checked.model_version == 3
    assert checked.edge["equivalence"]["source"] == "validation"  # the ManifestFile's files were laid out
    assert checked.edge["source"]["model_data"] == f"s3://{BUCKET}/{MODEL_KEY}"
    [ended] = local.ended_events()
    assert (ended["ProcessingJobName"], ended["ProcessingJobStatus"]) == (job.job_name, "Completed")
    assert "FailureReason" not in ended


def test_a_failed_compile_ends_failed_with_the_jobs_reason_and_no_bundle(local: Local) -> None:
    local.store.put(MODEL_KEY, b"not a gzip archive")
    assert local.run(_request()) == 1
    job = local.compile.describe(_request().job_name)
    assert (job.status, job.model_artifact_key) == ("Failed", None)
    assert job.failure_reason is not None and "not a readable" in job.failure_reason
    assert local.store.list(PREFIX) == []
    [ended] = local.ended_events()
    assert (ended["ProcessingJobStatus"], ended["FailureReason"]) == ("Failed", job.failure_reason)


def test_a_missing_model_fails_the_job_instead_of_losing_it(local: Local) -> None:
    assert local.run(_request()) == 1
    job = local.compile.describe(_request().job_name)
    assert job.status == "Failed" and job.failure_reason is not None and MODEL_KEY in job.failure_reason
