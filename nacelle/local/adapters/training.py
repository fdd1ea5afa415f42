"""The local TrainingService: SageMaker's contract in a job directory, run by a detached runner."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from nacelle.local.adapters.jobs import JobTable, job_owner, spawn_runner
from nacelle.local.adapters.paths import StackPaths
from shared.ports import CompileRequest, TrainingJob, TrainingRequest


class LocalTraining:
    def __init__(self, paths: StackPaths, jobs: JobTable) -> None:
        self.paths = paths
        self.jobs = jobs

    def start(self, request: TrainingRequest) -> None:
        job_dir = self.paths.jobs_dir / request.job_name
        request_doc = asdict(request)
        request_doc["hyperparameters"] = dict(request.hyperparameters)
        request_doc["tags"] = dict(request.tags)
        self.jobs.create(request.job_name, "training", request_doc, job_dir)  # raises JobAlreadyExists
        owner = job_owner(self.paths.home)
        pid = spawn_runner(self.paths.home, request.job_name, job_dir / "runner.log")
        self.jobs.set_pid(request.job_name, pid, owner)

    def describe(self, job_name: str) -> TrainingJob:
        record = self.jobs.get(job_name)
        return TrainingJob(job_name, record.status, record.failure_reason,  # type: ignore[arg-type]
                           record.model_key)

    def log_file(self, job_name: str) -> Path:
        return self.jobs.get(job_name).job_dir / "output" / "train.log"


class LocalCompile:
    """The local CompileService: `python -m training_jobs.compile` run by the same detached runner."""

    def __init__(self, paths: StackPaths, jobs: JobTable) -> None:
        self.paths = paths
        self.jobs = jobs

    def start(self, request: CompileRequest) -> None:
        job_dir = self.paths.jobs_dir / request.job_name
        self.jobs.create(request.job_name, "compile", asdict(request), job_dir)  # raises JobAlreadyExists
        owner = job_owner(self.paths.home)
        self.jobs.set_pid(request.job_name, spawn_runner(self.paths.home, request.job_name, job_dir / "runner.log"),
                          owner)

    def describe(self, job_name: str) -> TrainingJob:
        record = self.jobs.get(job_name)
        return TrainingJob(job_name, record.status, record.failure_reason, record.model_key)  # type: ignore[arg-type]
